"""
Counters of what the tunnel carried and dropped, and a rate-limited logger
so a flood of bad datagrams costs a counter increment, not a log line each.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class TunnelStats:
    """
    Plain attributes rather than a dict: they are bumped once per datagram.
    """

    def __init__(self) -> None:
        self.toTunnelDatagrams = 0
        self.toTunnelBytes = 0
        self.fromTunnelDatagrams = 0
        self.fromTunnelBytes = 0
        self.drops: Counter[str] = Counter()
        self.linksUp = 0
        self.linksReplaced = 0
        self.linksRefused = 0
        self.linksFailed = 0
        self.linksLost = 0
        self.connectAttempts = 0
        self.connectFailures = 0

    def summary(self) -> str:
        """
        One line, for the log: every --stats-interval and at shutdown.
        """
        drops = ", ".join(f"{reason}={n}" for reason, n in sorted(self.drops.items()))
        return (
            f"UDP->TCP {self.toTunnelDatagrams} datagrams {self.toTunnelBytes} bytes; "
            f"TCP->UDP {self.fromTunnelDatagrams} datagrams "
            f"{self.fromTunnelBytes} bytes; "
            f"dropped {sum(self.drops.values())} ({drops or 'none'}); "
            f"links up {self.linksUp}, lost {self.linksLost}, "
            f"replaced {self.linksReplaced}, refused {self.linksRefused}, "
            f"failed {self.linksFailed}; "
            f"connection attempts {self.connectAttempts} (failed {self.connectFailures})"
        )


class RateLimitedLog:
    """
    Log the first message of each kind at once, then at most one per
    C{interval} seconds, saying how many were held back meanwhile.
    """

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = 10.0):
        self._log = log
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warn(self, kind: str, format: str, **fields: Any) -> None:
        now = self._clock.seconds()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        held = self._suppressed.pop(kind, 0)
        if held:
            format += " ({held} more since the last such message)"
        self._log.warn(format, held=held, **fields)
