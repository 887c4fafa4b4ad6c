"""
How the client reconnects: the retry schedule, and an endpoint wrapper that
logs and counts each failed attempt (L{ClientService} only says when it will
retry, not why the attempt failed).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError, TimeoutError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .stats import TunnelStats

#: Delay before the first retry, in seconds; it doubles on each failure...
FIRST_DELAY = 0.5
#: ...up to this cap, so a server back from a long outage is found within
#: about half a minute, while a dead one costs one attempt per 30 s.
MAX_DELAY = 30.0
#: Each delay is scaled by a random factor in 1 +/- JITTER, so clients that
#: lost the same server do not all come back in the same instant.
JITTER = 0.2


def retryDelay(attempt: int, random: Callable[[], float] = random.random) -> float:
    """
    Seconds to wait before attempt number C{attempt} (1 for the first retry):
    0.5, 1, 2, 4, 8, 16, then 30 s, each +/- 20%.
    """
    base = min(FIRST_DELAY * 2 ** min(attempt - 1, 16), MAX_DELAY)
    return base * (1 + JITTER * (2 * random() - 1))


#: How long one connection attempt may take, in seconds (Twisted's default).
CONNECT_TIMEOUT = 30.0

#: A link that lasts less than this many seconds counts as a failed attempt.
STABLE_LINK = 5.0


class Backoff:
    """
    The client's retry policy: L{retryDelay} of the number of attempts that
    failed in a row, where a link that died young counts as a failure too.

    L{ClientService} restarts its count at every TCP connection, so a server
    that accepts and then drops the client at once (a TLS certificate it
    rejects, a full server, a proxy with nothing behind it) would otherwise
    see a new connection every half second, forever.
    """

    def __init__(self, random: Callable[[], float] = random.random) -> None:
        self._random = random
        self._shortLinks = 0

    def __call__(self, attempt: int) -> float:
        # Rounded: ClientService logs the delay as it is, and "in
        # 0.5208733124871612 seconds" is noise in a log.
        return round(retryDelay(attempt + self._shortLinks, self._random), 2)

    def linkEnded(self, lifetime: float) -> None:
        self._shortLinks = self._shortLinks + 1 if lifetime < STABLE_LINK else 0


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """
    Wraps an endpoint to log why each connection attempt failed and count it.
    One line per attempt is no flood: attempts are spaced by L{retryDelay}.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        description: str,
        stats: TunnelStats,
        timeout: float | None = CONNECT_TIMEOUT,
        log: Logger | None = None,
        name: str | None = None,
    ) -> None:
        """
        @param timeout: how long C{endpoint} lets an attempt take, in
            seconds, to say so when it times out (C{None}: unknown).
        @param log: where to log (a named tunnel's logger), if not our own.
        @param name: the tunnel's name, for Twisted's own lines about this
            endpoint ("Scheduling retry 1 to connect ...").
        """
        self._name = name
        if log is not None:
            self.log = log
        self._endpoint = endpoint
        self._description = description
        self._stats = stats
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._stats.connectAttempts += 1
        d = self._endpoint.connect(protocolFactory)
        d.addErrback(self._failed)
        return d

    def _failed(self, reason: Failure) -> Failure:
        if reason.check(CancelledError, ConnectingCancelledError):
            # The client is stopping: the attempt did not fail, it was
            # called off (Twisted's message would be the address alone).
            return reason
        self._stats.connectFailures += 1
        if reason.check(TimeoutError):
            # Twisted's "User timeout caused connection failure" reads as if
            # --user-timeout had fired.
            after = f" after {self._timeout:g} s" if self._timeout is not None else ""
            why = f"connect timed out{after}"
        else:
            why = reason.getErrorMessage()
        self.log.warn("cannot connect to {where}: {why}", where=self._description, why=why)
        return reason

    def __repr__(self) -> str:
        if self._name is not None:
            return f"{self._description} (tunnel {self._name})"
        return self._description
