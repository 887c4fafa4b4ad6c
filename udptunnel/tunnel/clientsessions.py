"""
A connecting end with C{--sessions}, in phantom mode: every new source on
the shared UDP socket opens a connection of its own, and what comes back on
it goes to that source only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel.interfaces import IDatagramRelay, IDatagramSocket, ILink, ILinkRelay
from udptunnel.link.why import describeFailure
from udptunnel.show import showAddress
from udptunnel.tunnel.access import AddressFilter
from udptunnel.tunnel.flow import CongestionFlag
from udptunnel.tunnel.lanes import Lanes, SessionLane, sessionLane
from udptunnel.tunnel.pending import DEFAULT_LIMIT, DEFAULT_TIMEOUT, PendingLinks
from udptunnel.tunnel.reconnect import retryDelay
from udptunnel.tunnel.session import Session
from udptunnel.tunnel.sessions import (
    QUEUE_BYTES,
    QUEUE_DATAGRAMS,
    QUEUE_TOTAL_BYTES,
    SessionsService,
)


@implementer(ILinkRelay)
class _SessionEnd:
    """
    What one client session's connection reports to: the sessions, told
    which session it is for.
    """

    def __init__(self, sessions: ClientSessions, session: Session) -> None:
        self._sessions = sessions
        self._session = session

    def linkConnected(self, link: ILink) -> bool:
        return self._sessions.sessionConnected(self._session, link)

    def linkIdentified(self, link: ILink) -> bool:
        return True  # a connection we opened carries no PROXY header

    def linkMade(self, link: ILink) -> None:
        self._sessions.sessionLinkMade(self._session, link)

    def framesReceived(self, link: ILink, frames: list[bytes]) -> None:
        self._sessions.sessionFrames(self._session, link, frames)

    def linkLost(self, link: ILink, reason: Failure) -> None:
        self._sessions.sessionLinkLost(self._session, link, reason)

    def internalError(self, where: str, failure: Failure) -> None:
        self._sessions.internalError(where, failure)

class _Connecting:
    """
    A client session's connection in the making: the queue of datagrams
    that wait for it, and its attempts.
    """

    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.queuedBytes = 0
        self.attempts = 0
        self.attempt: Deferred[Any] | None = None
        self.retry: IDelayedCall | None = None
        self.arrivedSinceAttempt = False
        #: When the source last sent (clock seconds).
        self.lastArrival = 0.0


#: Opens the connection of a client session: C{connect(relay)} returns the
#: Deferred of an endpoint's C{connect} with a factory reporting to C{relay}.
Connect = Callable[[ILinkRelay], "Deferred[Any]"]


@implementer(IDatagramRelay)
class ClientSessions(SessionsService):
    """
    A phantom end that opens one connection per UDP source.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connect: Connect,
        udpAllow: AddressFilter | None = None,
        pendingTimeout: float = DEFAULT_TIMEOUT,
        maxPending: int = DEFAULT_LIMIT,
        random: Callable[[], float] | None = None,
        lanes: Lanes | None = None,
        **options: Any,
    ) -> None:
        """
        @param lanes: the process's lanes, in which each session whose link
            is up gets a lane of the compiled pump when it runs
            (L{udptunnel.tunnel.lanes}); C{None}: never.
        """
        super().__init__(clock, maxPending=maxPending, role="client", **options)
        self._lanes = lanes
        self._laneOf: dict[Session, SessionLane] = {}
        self.udpPeer = None
        self.udpAllow = udpAllow
        self.udp: IDatagramSocket | None = None
        self._connect = connect
        self._random = random
        #: By source, least recently active first.
        self.sessions: OrderedDict[tuple[str, int], Session] = OrderedDict()
        self._connecting: dict[Session, _Connecting] = {}
        self._byLink: dict[ILink, Session] = {}
        #: Connections being made (their TLS handshake, if any), each with
        #: the deadline of --pending-timeout; no cap: a client opens them.
        self._handshaking = PendingLinks(clock, self._handshakeTimedOut, _neverEvicted,
                                         pendingTimeout, limit=0)
        self._queuedBytes = 0

    def liveSessions(self) -> list[Session]:
        return list(self.sessions.values())

    def sessionCount(self) -> int:
        return len(self.sessions)

    def pendingCount(self) -> int:
        return len(self._connecting)

    def udpSockets(self) -> list[IDatagramSocket]:
        return [self.udp] if self.udp is not None else []

    def stopService(self) -> Deferred[Any]:
        for session in list(self.sessions.values()):
            if session.link is None:
                self._end(session, "stopping")
        links = list(self._byLink)
        return self.stopWith(links)

    # The UDP side

    def udpStarted(self, transport: IDatagramSocket) -> None:
        self.udp = transport
        host = transport.getHost()
        self.log.info("UDP bound on {address}, sessions by source",
                      address=showAddress((host.host, host.port)))
        for session in self.sessions.values():
            session.udp = transport

    def udpStopped(self) -> None:
        for session in list(self._laneOf):
            self._laneOf.pop(session).release()
        if self._lanes is not None and self.udp is not None:
            self._lanes.forgetShared(self.udp)
        self.udp = None

    def datagramsReceived(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """
        Sort one read's datagrams by source, in order, and hand each
        source's to its session, opening the sessions of new sources.
        """
        bySource: dict[tuple[str, int], list[bytes]] = {}
        for data, addr in datagrams:
            carried = bySource.get(addr)
            if carried is None:
                carried = bySource[addr] = []
            carried.append(data)
        sessions = self.sessions
        for addr, carried in bySource.items():
            session = sessions.get(addr)
            if session is None:
                session = self._open(addr, len(carried))
                if session is not None:
                    # Queued first: a connection that fails at once must
                    # find the datagram that opened the session waiting.
                    self._enqueue(session, carried)
                    self._attempt(session)
                continue
            sessions.move_to_end(addr)
            if session.link is not None:
                if session.congested:
                    self._drop("congested", "session of {peer}: its link is full",
                               count=len(carried), peer=showAddress(addr))
                else:
                    session.toTunnel(carried)
            else:
                self._enqueue(session, carried)

    def _open(self, addr: tuple[str, int], count: int) -> Session | None:
        if self.udpAllow is not None and not self.udpAllow.allows(addr[0]):
            self._drop("udp-not-allowed", "datagram from {source}", count=count,
                       source=showAddress(addr))
            return None
        while self.maxSessions and len(self.sessions) >= self.maxSessions:
            oldestAddr, oldest = next(iter(self.sessions.items()))
            self.stats.sessionsEvicted += 1
            self._warn.warn("session-evicted", "session of {peer} closed to make room for "
                            "{newcomer} ({count} sessions, --max-sessions)",
                            peer=showAddress(oldestAddr), newcomer=showAddress(addr),
                            count=len(self.sessions))
            self._end(oldest, "evicted")
        session = Session(self.udp, addr, self._drop)
        self.sessions[addr] = session
        self._connecting[session] = _Connecting()
        self._opened(session)
        return session

    def _enqueue(self, session: Session, datagrams: list[bytes]) -> None:
        """
        Keep what arrives while the session's connection is being made, in
        order and bounded, so the query that opened the session is not lost.
        """
        connecting = self._connecting.get(session)
        if connecting is None:
            self._drop("no-link", "session of {peer} has no link", count=len(datagrams),
                       peer=showAddress(session.peer))
            return
        connecting.arrivedSinceAttempt = True
        connecting.lastArrival = self.clock.seconds()
        for data in datagrams:
            if (len(connecting.queue) >= QUEUE_DATAGRAMS
                    or connecting.queuedBytes + len(data) > QUEUE_BYTES
                    or self._queuedBytes + len(data) > QUEUE_TOTAL_BYTES):
                self._drop("queue-full", "session of {peer}: its connection is not up yet "
                           "and its queue is full", peer=showAddress(session.peer))
                continue
            connecting.queue.append(data)
            connecting.queuedBytes += len(data)
            self._queuedBytes += len(data)

    def _attempt(self, session: Session) -> None:
        connecting = self._connecting[session]
        connecting.retry = None
        connecting.attempts += 1
        connecting.arrivedSinceAttempt = False
        self.stats.connectAttempts += 1
        attempt = self._connect(_SessionEnd(self, session))
        connecting.attempt = attempt
        attempt.addErrback(self._attemptFailed, session)

    def _attemptFailed(self, reason: Failure, session: Session) -> None:
        connecting = self._connecting.get(session)
        if connecting is None:
            return  # the session ended meanwhile (cancelled)
        connecting.attempt = None
        self.stats.connectFailures += 1
        self._warn.warn("connect-failed", "session of {peer}: cannot connect: {why}",
                        peer=showAddress(session.peer), why=describeFailure(reason))
        if self._worthRetrying(connecting):
            delay = retryDelay(connecting.attempts, *([self._random] if self._random else []))
            connecting.retry = self.clock.callLater(delay, self._retry, session)
        else:
            self._end(session, "cannot connect")
        return

    def _retry(self, session: Session) -> None:
        connecting = self._connecting.get(session)
        if connecting is None:
            return
        connecting.retry = None
        if self._worthRetrying(connecting):
            self._attempt(session)
        else:
            self._end(session, "cannot connect, and no traffic since")

    def _worthRetrying(self, connecting: _Connecting) -> bool:
        """
        Whether a session whose connection failed tries again: while its
        source keeps sending, and while what it queued is younger than
        C{--session-idle} (so a query is not lost to a server that is away
        for a moment, nor retried for ever once its source went quiet).
        """
        if connecting.arrivedSinceAttempt:
            return True
        return bool(connecting.queue) and (
            self.sessionIdle <= 0
            or self.clock.seconds() - connecting.lastArrival < self.sessionIdle)

    # A session's connection

    def sessionConnected(self, session: Session, link: ILink) -> bool:
        self._byLink[link] = session
        self._handshaking.add(link)
        return True

    def _handshakeTimedOut(self, link: ILink) -> None:
        self.pendingClosed(link, "timeout", f"no session after {self._handshaking.timeout:g} s")
        self.closeHere(link, abort=True)

    def sessionLinkMade(self, session: Session, link: ILink) -> None:
        self._handshaking.remove(link)
        connecting = self._connecting.pop(session, None)
        if self.sessions.get(session.peer) is not session:  # type: ignore[arg-type]
            # The session ended while its connection was being made.
            self.closeHere(link, abort=True)
            return
        session.link = link
        self.stats.linksUp += 1
        link.attachProducer(CongestionFlag(session))
        if connecting is not None and connecting.queue:
            self._queuedBytes -= connecting.queuedBytes
            session.toTunnel(connecting.queue)
        lane = sessionLane(self._lanes, session, shared=True, carried=self._carried)
        if lane is not None:
            self._laneOf[session] = lane

    def _carried(self, session: Session) -> None:
        """
        The compiled pump carried datagrams or frames of C{session}: it is
        the most recently active (what --max-sessions evicts last).
        """
        if session.peer is not None and self.sessions.get(session.peer) is session:
            self.sessions.move_to_end(session.peer)

    def sessionFrames(self, session: Session, link: ILink, frames: list[bytes]) -> None:
        if session.link is not link:
            self._drop("replaced-link", "frame from a session's old connection",
                       count=len(frames))
            return
        if session.peer in self.sessions:
            self.sessions.move_to_end(session.peer)  # type: ignore[arg-type]
        session.fromTunnel(frames)

    def sessionLinkLost(self, session: Session, link: ILink, reason: Failure) -> None:
        why = self.whyLost(link, reason)
        self._byLink.pop(link, None)
        self._handshaking.remove(link)
        if session.link is link:
            self.stats.linksLost += 1
            self._end(session, why, closeLink=False)
        elif session in self._connecting:
            # Lost during its TLS handshake: a failed attempt.
            self.stats.linksFailed += 1
            self._attemptFailed(Failure(ConnectionError(why)), session)
        self.linkGone(link)

    # Ending

    def _end(self, session: Session, why: str, closeLink: bool = True) -> None:
        lane = self._laneOf.pop(session, None)
        if lane is not None:
            lane.release()  # its counters first, before the session's last line
        addr = session.peer
        if addr is not None and self.sessions.get(addr) is session:
            del self.sessions[addr]
        connecting = self._connecting.pop(session, None)
        if connecting is not None:
            if connecting.queue:
                self._queuedBytes -= connecting.queuedBytes
                self._drop("connect-failed", "session of {peer} ended before its connection "
                           "was up", count=len(connecting.queue), peer=showAddress(addr))
            if connecting.retry is not None and connecting.retry.active():
                connecting.retry.cancel()
            if connecting.attempt is not None:
                connecting.attempt.cancel()
        self._ended(session, why)
        link, session.link = session.link, None
        if link is not None and closeLink:
            self.closeHere(link)

    def _expire(self, session: Session) -> None:
        self._end(session, f"idle for {self.sessionIdle:g} s")

    def _connectingNow(self, session: Session) -> bool:
        # An attempt in flight, or one due (a retry after a failure): the
        # retry itself ends a session that no longer sends.
        connecting = self._connecting.get(session)
        return connecting is not None and (connecting.attempt is not None
                                           or connecting.retry is not None)


def _neverEvicted(link: ILink) -> None:
    raise AssertionError("an uncapped list evicts nobody")


def connectFrom(endpoint: IStreamClientEndpoint,
                factoryFor: Callable[[ILinkRelay], Any]) -> Connect:
    """
    How a client session opens its connection: C{endpoint}, with a factory
    that reports to the session.
    """

    def connect(relay: ILinkRelay) -> Deferred[Any]:
        return endpoint.connect(factoryFor(relay))

    return connect
