"""
Many sessions through one tunnel end (C{--sessions}).

The classic wire carries no addresses, so a session is a TCP connection:

  - L{ServerSessions}: every admitted connection gets a UDP socket of its
    own, bound to an ephemeral port and connected to C{--peer}, so what the
    peer answers on that socket is that connection's, and the kernel drops
    every other source (what mullvad's C{tcp2udp} does);
  - L{ClientSessions}: every new source on the shared UDP socket gets a
    connection of its own, opened on its first datagram, and what comes
    back on it goes to that source only (what wstunnel does).

Where a datagram enters, who decides, where it leaves:

  UDP in  -> C{datagramsReceived} (per source, or per socket) -> its
             L{Session}.toTunnel -> that session's link
  TCP in  -> C{framesReceived(link)} -> the link's L{Session}.fromTunnel ->
             the session's socket, to the session's peer
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel.interfaces import IDatagramRelay, IDatagramSocket, ILink, ILinkRelay
from udptunnel.link.why import describeFailure
from udptunnel.show import showAddress
from udptunnel.tunnel.access import AddressFilter
from udptunnel.tunnel.pending import DEFAULT_LIMIT, DEFAULT_TIMEOUT, PendingLinks
from udptunnel.tunnel.reconnect import retryDelay
from udptunnel.tunnel.service import TunnelService
from udptunnel.tunnel.session import Session, Traffic

#: Seconds without a datagram either way after which a session ends (what
#: udp2raw and phantun use).
DEFAULT_SESSION_IDLE = 180
#: Sessions at once, by default.
DEFAULT_MAX_SESSIONS = 1024
#: Datagrams a client session queues while its connection is being made,
#: and their bytes; and the bytes all sessions may queue together.
QUEUE_DATAGRAMS = 64
QUEUE_BYTES = 256 * 1024
QUEUE_TOTAL_BYTES = 16 * 1024 * 1024
#: Descriptors a process needs beside its sessions (listeners, log, epoll).
BASE_DESCRIPTORS = 64


class SessionTraffic:
    """
    The traffic of the tunnel: that of the sessions that ended, plus that
    of those alive, summed when the figures are reported.
    """

    def __init__(self) -> None:
        self.closed = Traffic()

    def total(self, live: list[Session]) -> Traffic:
        total = Traffic()
        total.add(self.closed)
        for session in live:
            total.add(session.traffic)
        return total


class _SessionsBase(TunnelService):
    """
    What both ends with sessions share: the count, the idle expiry, the
    per-session log lines and the descriptor budget.
    """

    becomes = "a session"

    def __init__(
        self,
        clock: IReactorTime,
        maxSessions: int = DEFAULT_MAX_SESSIONS,
        sessionIdle: float = DEFAULT_SESSION_IDLE,
        exitOnStartupError: bool = False,
        statsInterval: float = 0,
        role: str = "server",
        maxPending: int = DEFAULT_LIMIT,
        name: str | None = None,
    ) -> None:
        super().__init__(clock, exitOnStartupError, statsInterval, role, name)
        self.maxSessions = maxSessions
        self.sessionIdle = sessionIdle
        self._maxPending = maxPending
        self._traffic = SessionTraffic()
        #: What each session had carried at the last idle check, and since when.
        self._seen: dict[Session, tuple[int, float]] = {}
        if sessionIdle > 0:
            self._every(min(sessionIdle / 4, 5.0), self._expireIdle)

    def liveSessions(self) -> list[Session]:
        raise NotImplementedError()

    def sessionCount(self) -> int:
        return len(self.liveSessions())

    def linksUp(self) -> int:
        return sum(1 for session in self.liveSessions() if session.link is not None)

    def state(self) -> str:
        # In the metrics' words: udptunnel_sessions_open, ..._session_links_up.
        return f"sessions open {self.sessionCount()}, session links up {self.linksUp()}"

    def summary(self) -> str:
        total = self._traffic.total(self.liveSessions())
        stats = self.stats
        stats.toTunnelDatagrams, stats.toTunnelBytes = total.toTunnelDatagrams, total.toTunnelBytes
        stats.fromTunnelDatagrams = total.fromTunnelDatagrams
        stats.fromTunnelBytes = total.fromTunnelBytes
        return super().summary()

    def privilegedStartService(self) -> None:
        self._startChildren(self._ensureDescriptors)
        super().privilegedStartService()

    def _ensureDescriptors(self) -> None:
        """
        Each session holds a descriptor or two: raise the soft limit to what
        the cap needs, or refuse to start, saying what to change.
        """
        needed = 2 * self.maxSessions + self._maxPending + BASE_DESCRIPTORS
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            if hard != resource.RLIM_INFINITY and hard < needed:
                raise ValueError(
                    f"--max-sessions {self.maxSessions} needs {needed} file descriptors, "
                    f"and the hard limit is {hard}: lower --max-sessions, or raise the "
                    f"limit (ulimit -Hn, or LimitNOFILE= under systemd)"
                )
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
            self.log.info("raised the open-files limit from {soft} to {needed} for "
                          "{sessions} sessions", soft=soft, needed=needed,
                          sessions=self.maxSessions)

    # Sessions opening and ending

    def _opened(self, session: Session) -> None:
        self.stats.sessionsOpened += 1
        self._seen[session] = (-1, self.clock.seconds())
        session.since = self.clock.seconds()
        self._warn.info("session-opened", "session opened: UDP {udp}, TCP {remote}",
                        **session.describe())
        self.stateChanged()

    def _ended(self, session: Session, why: str) -> None:
        self.stats.sessionsClosed += 1
        self._seen.pop(session, None)
        self._traffic.closed.add(session.traffic)
        lifetime = self.clock.seconds() - session.since
        self._warn.info("session-closed", "session closed: UDP {udp}, TCP {remote}, after "
                        "{lifetime:.1f} s, {toTunnel} bytes in, {fromTunnel} bytes out "
                        "({why})", lifetime=lifetime, why=why, **session.describe())
        self.stateChanged()

    def _expireIdle(self) -> None:
        now = self.clock.seconds()
        for session in self.liveSessions():
            carried = session.traffic.datagrams()
            seen, since = self._seen.get(session, (-1, now))
            if carried != seen or self._connectingNow(session):
                self._seen[session] = (carried, now)
            elif now - since >= self.sessionIdle:
                self.stats.sessionsExpired += 1
                self._seen[session] = (carried, now)
                self._expire(session)

    def _expire(self, session: Session) -> None:
        raise NotImplementedError()

    def _connectingNow(self, session: Session) -> bool:
        """
        Whether C{session}'s connection is being made: it is not idle then,
        whatever it carried (its first datagrams wait for that connection,
        which has a timeout of its own).
        """
        return False


@implementer(IPushProducer)
class _PausingSocket:
    """
    A server session's flow control: its link's full send buffer pauses
    reading of its own socket only; the other sessions go on.
    """

    def __init__(self, udp: IDatagramSocket) -> None:
        self._udp = udp

    def pauseProducing(self) -> None:
        self._udp.stopReading()

    def resumeProducing(self) -> None:
        self._udp.startReading()

    def stopProducing(self) -> None:
        pass  # the session's socket closes with its link


class _SessionSocketProtocol(DatagramProtocol):
    """
    The protocol of one server session's socket: its datagrams are that
    session's.
    """

    noisy = False

    def __init__(self, sessions: ServerSessions, session: Session) -> None:
        self._sessions = sessions
        self._session = session

    def logPrefix(self) -> str:
        return "udptunnel session UDP"

    def datagramsReceived(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        try:
            self._session.toTunnel([data for data, _ in datagrams])
        except Exception:  # noqa: BLE001 (a bug of ours, whatever it raises)
            self._sessions.internalError("datagrams", Failure())

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.datagramsReceived([(datagram, addr)])


def _kernelDropsOf(udp: IDatagramSocket) -> int:
    """
    What the kernel dropped on a server session's socket, if it says.
    """
    read = getattr(udp, "kernelDrops", None)
    drops = read() if read is not None else None
    return drops or 0


#: Makes a server session's UDP socket: C{bind(protocol)} returns it bound
#: to an ephemeral port and connected to the peer, or raises L{OSError}.
BindUDP = Callable[[DatagramProtocol], IDatagramSocket]


@implementer(ILinkRelay)
class ServerSessions(_SessionsBase):
    """
    A listening end where every admitted connection is a session with its
    own UDP socket connected to C{udpPeer}.  Connections never replace each
    other; at C{maxSessions} a new one is refused.
    """

    def __init__(
        self,
        clock: IReactorTime,
        udpPeer: tuple[str, int],
        bindUDP: BindUDP,
        allow: AddressFilter | None = None,
        pendingTimeout: float = DEFAULT_TIMEOUT,
        maxPending: int = DEFAULT_LIMIT,
        **options: Any,
    ) -> None:
        super().__init__(clock, maxPending=maxPending, role="server", **options)
        self.udpPeer = udpPeer
        self.allow = allow
        self._bindUDP = bindUDP
        self._pending = PendingLinks(clock, self._pendingExpired, self._pendingEvicted,
                                     pendingTimeout, maxPending)
        self.sessions: dict[ILink, Session] = {}
        self._closedKernelDrops = 0

    def liveSessions(self) -> list[Session]:
        return list(self.sessions.values())

    def sessionCount(self) -> int:
        return len(self.sessions)

    def pendingCount(self) -> int:
        return len(self._pending)

    def startService(self) -> None:
        super().startService()
        self.log.info("sessions: each connection gets a UDP socket of its own, connected "
                      "to {peer} (at most {count})", peer=showAddress(self.udpPeer),
                      count=self.maxSessions)

    def udpSockets(self) -> list[IDatagramSocket]:
        return [s.udp for s in self.sessions.values() if s.udp is not None]

    def stopService(self) -> Deferred[Any]:
        links = [*self.sessions, *self._pending]
        for link in list(self._pending):
            self._pending.remove(link)
        return self.stopWith(links)

    # The TCP side: each session's socket reports to its own protocol

    def linkConnected(self, link: ILink) -> bool:
        if not self.allowed(link):
            return False
        if len(self.sessions) >= self.maxSessions:
            self.stats.sessionsRefused += 1
            self._warn.warn("sessions-full", "refused TCP connection from {remote}: "
                            "{count} sessions open (--max-sessions)", remote=link.remote,
                            count=len(self.sessions))
            return False
        self._pending.add(link)
        return True

    def linkMade(self, link: ILink) -> None:
        """
        The connection is ready (its TLS handshake, if any, done): it gets
        its session and its socket now.
        """
        self._pending.remove(link)
        session = Session(None, self.udpPeer, self._drop, link=link)
        try:
            session.udp = self._bindUDP(_SessionSocketProtocol(self, session))
        except OSError as e:
            self.stats.sessionsFailed += 1
            self._warn.warn("session-failed", "no UDP socket for the session of {remote}: "
                            "{error}", remote=link.remote, error=e)
            self.closeHere(link, abort=True)
            return
        self.sessions[link] = session
        self.stats.linksUp += 1
        link.attachProducer(_PausingSocket(session.udp))
        self._opened(session)

    def framesReceived(self, link: ILink, frames: list[bytes]) -> None:
        session = self.sessions.get(link)
        if session is None:
            self._drop("no-session", "frame from a connection with no session",
                       count=len(frames))
            return
        session.fromTunnel(frames)

    def linkLost(self, link: ILink, reason: Failure) -> None:
        why = self.whyLost(link, reason)
        session = self.sessions.pop(link, None)
        if session is not None:
            self.stats.linksLost += 1
            self._ended(session, why)  # first: its line names the socket
            self._closeSocket(session)
        elif self._pending.remove(link):
            self.waitingLost(link, reason, why)
        self.linkGone(link)

    def forgetWaiting(self, link: ILink) -> None:
        self._pending.remove(link)

    def _closeSocket(self, session: Session) -> None:
        udp, session.udp = session.udp, None
        if udp is not None:
            self._closedKernelDrops += _kernelDropsOf(udp)
            stop = getattr(udp, "stopListening", None)
            if stop is not None:
                stop()

    def _readKernelDrops(self) -> None:
        """
        The drops of the sessions that ended plus those of the live ones,
        each socket asked for its own (L{SessionSocket.kernelDrops}).
        """
        live = sum(_kernelDropsOf(udp) for udp in self.udpSockets())
        self.stats.kernelDrops = max(self.stats.kernelDrops, self._closedKernelDrops + live)

    def _expire(self, session: Session) -> None:
        if session.link is not None:
            self.closeHere(session.link)

    def _pendingExpired(self, link: ILink) -> None:
        self.pendingClosed(link, "timeout", f"no session after {self._pending.timeout:g} s")
        self.closeHere(link, abort=True)

    def _pendingEvicted(self, link: ILink) -> None:
        self.pendingClosed(link, "evicted",
                           f"{self._pending.limit} connections waiting, it was the oldest")
        self.closeHere(link, abort=True)

@implementer(IPushProducer)
class _CongestionFlag:
    """
    A client session's flow control: its sessions share one socket, so a
    full link cannot pause reading without stalling the others; while its
    send buffer is full, that session's datagrams are dropped instead.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def pauseProducing(self) -> None:
        self._session.congested = True

    def resumeProducing(self) -> None:
        self._session.congested = False

    def stopProducing(self) -> None:
        self._session.congested = False


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


#: Opens the connection of a client session: C{connect(relay)} returns the
#: Deferred of an endpoint's C{connect} with a factory reporting to C{relay}.
Connect = Callable[[ILinkRelay], "Deferred[Any]"]


@implementer(IDatagramRelay)
class ClientSessions(_SessionsBase):
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
        **options: Any,
    ) -> None:
        super().__init__(clock, maxPending=maxPending, role="client", **options)
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
        if connecting.queue or connecting.arrivedSinceAttempt:
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
        if connecting.queue or connecting.arrivedSinceAttempt:
            self._attempt(session)
        else:
            self._end(session, "cannot connect, and no traffic since")

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
        link.attachProducer(_CongestionFlag(session))
        if connecting is not None and connecting.queue:
            self._queuedBytes -= connecting.queuedBytes
            session.toTunnel(connecting.queue)

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
