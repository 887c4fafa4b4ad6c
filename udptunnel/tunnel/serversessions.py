"""
A listening end with C{--sessions}: every admitted connection is a session
with a UDP socket of its own, connected to the peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel.interfaces import IDatagramRelay, IDatagramSocket, ILink, ILinkRelay
from udptunnel.show import showAddress
from udptunnel.tunnel.access import AddressFilter
from udptunnel.tunnel.flow import PauseSocket
from udptunnel.tunnel.lanes import Lanes, SessionLane, sessionLane
from udptunnel.tunnel.pending import DEFAULT_LIMIT, DEFAULT_TIMEOUT, PendingLinks
from udptunnel.tunnel.session import Session
from udptunnel.tunnel.sessions import SessionsService, kernelDropsOf


@implementer(IDatagramRelay)
class _SessionDatagrams:
    """
    What the socket of one server session reports to: its datagrams are
    that session's.
    """

    def __init__(self, sessions: ServerSessions, session: Session) -> None:
        self._sessions = sessions
        self._session = session
        self.name = sessions.name

    def udpStarted(self, transport: IDatagramSocket) -> None:
        pass  # the session holds its socket from the start

    def udpStopped(self) -> None:
        pass

    def datagramsReceived(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        self._session.toTunnel([data for data, _ in datagrams])

    def internalError(self, where: str, failure: Failure) -> None:
        self._sessions.internalError(where, failure)


#: Makes a server session's UDP socket: C{bind(relay)} returns it bound to
#: an ephemeral port and connected to the peer, reporting to C{relay}, or
#: raises L{OSError}.
BindUDP = Callable[[IDatagramRelay], IDatagramSocket]


@implementer(ILinkRelay)
class ServerSessions(SessionsService):
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
        lanes: Lanes | None = None,
        **options: Any,
    ) -> None:
        """
        @param lanes: the process's lanes, in which each session's socket
            and link get a lane of the compiled pump when it runs
            (L{udptunnel.tunnel.lanes}); C{None}: never.
        """
        super().__init__(clock, maxPending=maxPending, role="server", **options)
        self.udpPeer = udpPeer
        self._lanes = lanes
        self._laneOf: dict[ILink, SessionLane] = {}
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
        # Each session's link is drained: its last frames still go out of
        # its own socket, which closes when the link is gone.
        return self.stopWith(links, drain=set(self.sessions))

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
            session.udp = self._bindUDP(_SessionDatagrams(self, session))
        except OSError as e:
            self.stats.sessionsFailed += 1
            self._warn.warn("session-failed", "no UDP socket for the session of {remote}: "
                            "{error}", remote=link.remote, error=e)
            self.closeHere(link, abort=True)
            return
        self.sessions[link] = session
        self.stats.linksUp += 1
        link.attachProducer(PauseSocket(session.udp))
        lane = sessionLane(self._lanes, session)
        if lane is not None:
            self._laneOf[link] = lane
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
        lane = self._laneOf.pop(link, None)
        if lane is not None:
            lane.release()  # before its socket closes, and its counters first
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
            self._closedKernelDrops += kernelDropsOf(udp)
            udp.stopListening()

    def _readKernelDrops(self) -> None:
        """
        The drops of the sessions that ended plus those of the live ones,
        each socket asked for its own (L{SessionSocket.kernelDrops}).
        """
        live = sum(kernelDropsOf(udp) for udp in self.udpSockets())
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
