"""
Counters of what the tunnel carried and dropped, in the words the metrics,
the status and the stats line share.
"""

from __future__ import annotations

from collections import Counter

from udptunnel.tunnel.session import Traffic

#: The drop reason under which the kernel's drops on our socket appear.
KERNEL_DROPS = "kernel-overflow"
#: Every reason a datagram can be dropped for, so that each has a series
#: from the start; a send error not listed appears under its errno name
#: when it first happens.
DROP_REASONS = (
    "no-link", "no-address", "no-socket", "foreign-source", "udp-not-allowed",
    "oversize", "replaced-link", KERNEL_DROPS,
    "EAGAIN", "ENOBUFS", "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EPERM",
)


class TunnelStats(Traffic):
    """
    Plain attributes rather than a dict: they are bumped once per datagram.
    """

    def __init__(self) -> None:
        super().__init__()
        self.drops: Counter[str] = Counter()
        self.linksUp = 0
        self.linksReplaced = 0
        self.linksRefused = 0
        self.linksFailed = 0
        self.linksLost = 0
        self.connectAttempts = 0
        self.connectFailures = 0
        #: Times a phantom end's source changed (two applications sharing
        #: one phantom end change it at every datagram).
        self.phantomChanges = 0
        #: Links taken over from a live one, by why the newcomer won.
        self.takeovers: Counter[str] = Counter()
        #: Connections closed before they became the link, by why.
        self.pendingClosed: Counter[str] = Counter()
        #: Exceptions of our own code while handling traffic, by where.
        self.internalErrors: Counter[str] = Counter()
        #: Datagrams the kernel dropped on our UDP socket (its receive
        #: buffer was full, e.g. while reading was paused), read from the
        #: socket's own counter when the figures are reported.
        self.kernelDrops = 0
        #: Sessions (C{--sessions}): opened, ended, and ended for a reason.
        self.sessionsOpened = 0
        self.sessionsClosed = 0
        self.sessionsExpired = 0
        self.sessionsEvicted = 0
        self.sessionsRefused = 0
        self.sessionsFailed = 0

    def allDrops(self) -> Counter[str]:
        """
        Our drops by reason, and the kernel's on our socket as one more.
        """
        drops = Counter(self.drops)
        if self.kernelDrops:
            drops[KERNEL_DROPS] = self.kernelDrops
        return drops

    def dropCounts(self) -> dict[str, int]:
        """
        L{allDrops}, with every known reason (L{DROP_REASONS}) there from
        the start, at 0: what the metrics and the status show.
        """
        counts = dict.fromkeys(DROP_REASONS, 0)
        counts.update(self.allDrops())
        return counts

    def linkEvents(self, server: bool) -> dict[str, int]:
        """
        The links' events this end can have: a client's links are never
        replaced or refused.
        """
        events = {"up": self.linksUp, "lost": self.linksLost, "failed": self.linksFailed}
        if server:
            events.update(replaced=self.linksReplaced, refused=self.linksRefused)
        return events

    def summary(self, server: bool) -> str:
        """
        One line, for the log: every --stats-interval and at shutdown.  Its
        words are the metrics' (C{to tunnel} is C{udptunnel_to_tunnel_*},
        C{pending closed (timeout=1)} is
        C{udptunnel_pending_closed_total{reason="timeout"}}), so a figure
        read in the log can be looked up in the metrics and back; and it
        has the figures a C{server} or a client can have, as they do.
        """
        allDrops = self.allDrops()
        drops = ", ".join(f"{reason}={n}" for reason, n in sorted(allDrops.items()))
        pending = ", ".join(f"{why}={n}" for why, n in sorted(self.pendingClosed.items()))
        links = ", ".join(f"{event} {count}" for event, count in self.linkEvents(server).items())
        errors = sum(self.internalErrors.values())
        parts = [
            f"to tunnel {self.toTunnelDatagrams} datagrams {self.toTunnelBytes} bytes",
            f"from tunnel {self.fromTunnelDatagrams} datagrams {self.fromTunnelBytes} bytes",
            f"dropped datagrams {sum(allDrops.values())} ({drops or 'none'})",
            f"phantom changes {self.phantomChanges}",
            f"links {links}",
        ]
        if server:
            takeovers = ", ".join(f"{why}={n}" for why, n in sorted(self.takeovers.items()))
            parts.append(f"link takeovers {sum(self.takeovers.values())} "
                         f"({takeovers or 'none'})")
        parts.append(f"pending closed {sum(self.pendingClosed.values())} "
                     f"({pending or 'none'})")
        if not server:
            parts.append(f"connect attempts {self.connectAttempts}, "
                         f"connect failures {self.connectFailures}")
        if self.sessionsOpened or self.sessionsRefused or self.sessionsFailed:
            parts.append(f"sessions opened {self.sessionsOpened}, closed {self.sessionsClosed}, "
                         f"expired {self.sessionsExpired}, "
                         + (f"refused {self.sessionsRefused}, failed {self.sessionsFailed}"
                            if server else f"evicted {self.sessionsEvicted}"))
        if errors:
            parts.append(f"internal errors {errors}")
        return "; ".join(parts)
