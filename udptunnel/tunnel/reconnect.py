"""
How the client reconnects: the retry schedule (L{Backoff}) and the service
that keeps the link connected (L{Reconnector}), one line per failed attempt.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from udptunnel.link.why import describeFailure
from udptunnel.tunnel.stats import TunnelStats

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


class Backoff:
    """
    The client's retry schedule: L{retryDelay} of the number of attempts
    that failed in a row.  An attempt fails when it cannot connect, and also
    when the server closes the connection before it became a link (it
    refused us: its C{--allow}, a TLS certificate, a full server, a proxy
    with nothing behind it), so such a server sees fewer and fewer tries
    rather than one every half second for ever.  A link that came up resets
    the count, however short it was: a link the server gave to a newcomer
    (a client that roamed, or a stranger) is no failure of ours, and the
    client must be back within a second of the newcomer's leaving.
    """

    def __init__(self, random: Callable[[], float] = random.random) -> None:
        self._random = random
        #: Attempts that failed in a row.
        self.failures = 0

    def failed(self) -> float:
        """
        Count a failed attempt; the seconds to wait before the next.
        """
        self.failures += 1
        return self._delay(self.failures)

    def succeeded(self) -> float:
        """
        A link came up and ended: the seconds to wait before reconnecting.
        """
        self.failures = 0
        return self._delay(1)

    def _delay(self, attempt: int) -> float:
        # Rounded: "in 0.5208733124871612 s" is noise in a log.
        return round(retryDelay(attempt, self._random), 2)


class Reconnector(Service):
    """
    Keeps the client's one link connected: one connection attempt at a
    time; when an attempt fails or its connection ends, the next after the
    L{Backoff}'s delay.

    In place of Twisted's C{ClientService} because a failed attempt must be
    one line, in the tunnel's words, saying why and when the next one comes:
    C{ClientService} adds a line of its own ("Scheduling retry 1 ..."),
    whose count restarts at every TCP connection, so that a server that
    refuses us after accepting (TLS, C{--allow}) read as "retry 1" for
    ever.  The relay tells it how each connection ended (L{linkEnded}): a
    connection is the relay's to judge, an attempt is ours.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        clock: IReactorTime,
        where: str,
        stats: TunnelStats,
        timeout: float | None = CONNECT_TIMEOUT,
        backoff: Backoff | None = None,
        log: Logger | None = None,
    ) -> None:
        """
        @param where: what the attempts connect to, as the log says it.
        @param timeout: how long C{endpoint} lets an attempt take, in
            seconds, to say so when it times out (C{None}: unknown).
        @param log: where to log (a named tunnel's logger), if not our own.
        """
        self._endpoint = endpoint
        self._factory = factory
        self._clock = clock
        self._where = where
        self._stats = stats
        self._timeout = timeout
        self.backoff = backoff if backoff is not None else Backoff()
        if log is not None:
            self.log = log
        self._attempt: Deferred[IProtocol] | None = None
        self._next: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> None:
        """
        Call off the attempt in flight or the one due (the link itself is
        the relay's to close).
        """
        super().stopService()
        next, self._next = self._next, None
        if next is not None and next.active():
            next.cancel()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()

    def _connect(self) -> None:
        self._next = None
        self._stats.connectAttempts += 1
        attempt = self._attempt = self._endpoint.connect(self._factory)
        attempt.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, protocol: IProtocol) -> IProtocol:
        self._attempt = None
        return protocol

    def _connectFailed(self, reason: Failure) -> None:
        self._attempt = None
        if not self.running or reason.check(CancelledError, ConnectingCancelledError):
            # Called off: we are stopping.  (An endpoint cancelled while it
            # resolves a name fails with DNSLookupError, not CancelledError.)
            return
        self._stats.connectFailures += 1
        self.attemptFailed(describeFailure(reason, self._timeout))

    def linkEnded(self, failure: str | None, closedByPeer: bool = False) -> None:
        """
        The connection of the last attempt ended: C{None} when it had been
        a link, else why it came to nothing.  After a stop (which closes
        the link, and whose close completes later) there is nothing to say
        and nothing to try again.

        @param closedByPeer: the server closed it cleanly (a FIN): a planned
            stop or restart, after which the next attempt goes at once (a
            server whose socket systemd holds accepts it while it restarts);
            a link lost otherwise waits the first delay of the schedule.
        """
        if not self.running:
            return
        if failure is None:
            delay = self.backoff.succeeded()
            self._again(0 if closedByPeer else delay)
        else:
            self.attemptFailed(failure)

    def attemptFailed(self, why: str) -> None:
        """
        Say why the attempt failed and when the next comes, in one line.
        """
        delay = self.backoff.failed()
        failures = self.backoff.failures
        self.log.warn("cannot connect to {where}: {why}; next attempt in {delay} s "
                      "({failures} failed in a row)", where=self._where, why=why,
                      delay=delay, failures=failures)
        self._again(delay)

    def _again(self, delay: float) -> None:
        if self.running:
            self._next = self._clock.callLater(delay, self._connect)
