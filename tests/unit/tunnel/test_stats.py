"""
The stats line uses the words of the metrics.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase


class StatsWordsTests(SynchronousTestCase):
    """
    The stats line names each figure as the metrics do.
    """

    def test_metricWords(self) -> None:
        """
        Both roles' stats lines name the traffic, drops, pending links closed
        and sessions in the metrics' words, never the old ones; a server's
        names its link takeovers, a client's its connect attempts and failures.
        """
        from udptunnel.tunnel.stats import TunnelStats

        stats = TunnelStats()
        stats.pendingClosed["timeout"] = 2
        stats.takeovers["first-frame"] = 1
        stats.connectAttempts, stats.connectFailures = 5, 4
        stats.sessionsOpened, stats.sessionsExpired = 3, 1
        server, client = stats.summary(server=True), stats.summary(server=False)
        for line in (server, client):
            for words in ("to tunnel 0 datagrams", "from tunnel 0 datagrams",
                          "dropped datagrams 0", "pending closed 2 (timeout=2)",
                          "sessions opened 3", "expired 1"):
                self.assertIn(words, line)
            for old in ("UDP->TCP", "closed waiting", "connection attempts", "idle"):
                self.assertNotIn(old, line)
        self.assertIn("link takeovers 1 (first-frame=1)", server)
        for words in ("connect attempts 5", "connect failures 4"):
            self.assertIn(words, client)

    def test_eachRoleItsOwnFigures(self) -> None:
        """
        As the metrics: a server makes no connection attempts and evicts no
        session; a client has no link replaced, refused or taken over, and
        refuses no session.
        """
        from udptunnel.tunnel.stats import TunnelStats

        stats = TunnelStats()
        stats.sessionsOpened = 1
        server, client = stats.summary(server=True), stats.summary(server=False)
        for words in ("connect attempts", "connect failures", "evicted"):
            self.assertNotIn(words, server)
        for words in ("replaced", "refused", "link takeovers"):
            self.assertNotIn(words, client)
