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
        from udptunnel.stats import TunnelStats

        stats = TunnelStats()
        stats.pendingClosed["timeout"] = 2
        stats.takeovers["first-frame"] = 1
        stats.connectAttempts, stats.connectFailures = 5, 4
        stats.sessionsOpened, stats.sessionsExpired = 3, 1
        line = stats.summary()
        for words in ("to tunnel 0 datagrams", "from tunnel 0 datagrams",
                      "dropped datagrams 0", "pending closed 2 (timeout=2)",
                      "link takeovers 1 (first-frame=1)", "connect attempts 5",
                      "connect failures 4", "sessions opened 3", "expired 1"):
            self.assertIn(words, line)
        for old in ("UDP->TCP", "closed waiting", "connection attempts", "idle"):
            self.assertNotIn(old, line)
