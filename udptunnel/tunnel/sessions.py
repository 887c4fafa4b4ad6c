"""
What both ends with C{--sessions} share: the count, the idle expiry, the
per-session log lines and the descriptor budget.

The classic wire carries no addresses, so a session is a TCP connection:

  - L{udptunnel.tunnel.serversessions.ServerSessions}: every admitted
    connection gets a UDP socket of its own, bound to an ephemeral port and
    connected to C{--peer}, so what the peer answers on that socket is that
    connection's, and the kernel drops every other source (what mullvad's
    C{tcp2udp} does);
  - L{udptunnel.tunnel.clientsessions.ClientSessions}: every new source on
    the shared UDP socket gets a connection of its own, opened on its first
    datagram, and what comes back on it goes to that source only (what
    wstunnel does).

Where a datagram enters, who decides, where it leaves:

  UDP in  -> C{datagramsReceived} (per source, or per socket) -> its
             L{Session}.toTunnel -> that session's link
  TCP in  -> C{framesReceived(link)} -> the link's L{Session}.fromTunnel ->
             the session's socket, to the session's peer
"""

from __future__ import annotations

import resource

from twisted.internet.interfaces import IReactorTime

from udptunnel.interfaces import IDatagramSocket
from udptunnel.tunnel.pending import DEFAULT_LIMIT
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


class SessionsService(TunnelService):
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


def kernelDropsOf(udp: IDatagramSocket) -> int:
    """
    What the kernel dropped on a server session's socket, if it says.
    """
    return udp.kernelDrops() or 0
