"""
L{udptunnel.tunnel.serversessions}: one UDP socket per TCP connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import (
    FakeLink,
    FakeUDPTransport,
    attachedLanes,
    captureLogEvents,
    plainConnection,
)
from udptunnel.tunnel.serversessions import ServerSessions

PEER = ("192.0.2.53", 51820)


class ServerTestMixin:
    def makeServer(self, **options: Any) -> ServerSessions:
        self.clock = Clock()
        self.sockets: list[FakeUDPTransport] = []
        self.bindError: OSError | None = None

        def bind(protocol: Any) -> FakeUDPTransport:
            if self.bindError is not None:
                raise self.bindError
            udp = FakeUDPTransport()
            udp.protocol = protocol  # type: ignore[attr-defined]
            udp.port = 40001 + len(self.sockets)
            self.sockets.append(udp)
            return udp

        return ServerSessions(self.clock, PEER, bind, **options)

    def connect(self, server: ServerSessions, remote: str = "192.0.2.1:1") -> FakeLink:
        link = FakeLink(remote)
        self.assertTrue(server.linkConnected(link))
        server.linkMade(link)
        return link


class ServerTests(ServerTestMixin, SynchronousTestCase):
    def test_sessionsToldApartInTheLog(self) -> None:
        """
        A server's sessions share their peer; each line names the session's
        own socket too, so they can be told apart.
        """
        events = captureLogEvents(self)
        server = self.makeServer()
        one = self.connect(server, "192.0.2.1:1")
        self.clock.advance(10)  # past the rate limit of these lines
        self.connect(server, "192.0.2.2:1")
        server.linkLost(one, Failure(ConnectionDone()))
        lines = [e["udp"] for e in events if "udp" in e]
        self.assertEqual(lines, [f"127.0.0.1:40001 <-> {PEER[0]}:{PEER[1]}",
                                 f"127.0.0.1:40002 <-> {PEER[0]}:{PEER[1]}",
                                 f"127.0.0.1:40001 <-> {PEER[0]}:{PEER[1]}"])

    def test_socketPerConnection(self) -> None:
        """
        Each connection gets a UDP socket of its own: frames of a connection go
        out of its socket to the peer, a reply on a socket goes back on its
        connection only, and no connection replaces another.
        """
        server = self.makeServer()
        one, two = self.connect(server, "192.0.2.1:1"), self.connect(server, "192.0.2.2:1")
        self.assertEqual(len(self.sockets), 2)
        server.framesReceived(one, [b"from one"])
        server.framesReceived(two, [b"from two"])
        self.assertEqual(self.sockets[0].written, [(b"from one", PEER)])
        self.assertEqual(self.sockets[1].written, [(b"from two", PEER)])
        self.sockets[1].protocol.datagramsReceived([(b"reply two", PEER)])  # type: ignore[attr-defined]
        self.assertEqual((one.frames, two.frames), ([], [b"reply two"]))
        self.assertFalse(one.aborted or two.aborted)
        self.assertEqual(server.stats.linksReplaced, 0)

    def test_lossClosesItsSocketOnly(self) -> None:
        """
        A lost connection closes its own session's socket and ends its session;
        the other sessions go on.
        """
        server = self.makeServer()
        one, two = self.connect(server), self.connect(server)
        closed = []
        self.sockets[0].stopListening = lambda: closed.append(0)  # type: ignore[attr-defined]
        server.linkLost(one, Failure(ConnectionDone()))
        self.assertEqual(closed, [0])
        self.assertEqual(list(server.sessions), [two])
        self.assertEqual(server.stats.sessionsClosed, 1)

    def test_capRefuses(self) -> None:
        """
        At C{maxSessions} sessions open, a new connection is refused and
        counted.
        """
        server = self.makeServer(maxSessions=2)
        self.connect(server)
        self.connect(server)
        self.assertFalse(server.linkConnected(FakeLink()))
        self.assertEqual(server.stats.sessionsRefused, 1)

    def test_noSocketAborts(self) -> None:
        """
        A connection whose session cannot bind a UDP socket is aborted, opens no
        session, and counts as a failed session.
        """
        server = self.makeServer()
        self.bindError = OSError(24, "Too many open files")
        link = self.connect(server)
        self.assertTrue(link.aborted)
        self.assertEqual(server.sessionCount(), 0)
        self.assertEqual(server.stats.sessionsFailed, 1)

    def test_congestionPausesItsSocketOnly(self) -> None:
        """
        A congested connection pauses reading on its own session's socket only,
        and resumes it when the congestion ends.
        """
        server = self.makeServer()
        one, _ = self.connect(server), self.connect(server)
        assert one.producer is not None
        one.producer.pauseProducing()
        self.assertEqual([udp.reading for udp in self.sockets], [False, True])
        one.producer.resumeProducing()
        self.assertTrue(self.sockets[0].reading)

    def test_idleSessionEnds(self) -> None:
        """
        A session with no traffic for C{sessionIdle} seconds closes its
        connection, and counts as expired.
        """
        server = self.makeServer(sessionIdle=10)
        server.startService()
        self.addCleanup(server.stopService)
        link = self.connect(server)
        self.clock.pump([1] * 20)
        self.assertTrue(link.closed)
        self.assertEqual(server.stats.sessionsExpired, 1)

    def test_silentConnectionTimesOutOnlyBeforeHandshake(self) -> None:
        """
        A connection whose handshake never completes is aborted at the pending
        timeout and counted as a pending link closed for C{timeout}; one that
        connected at the same time and completed its handshake (a session
        made) is neither aborted nor closed at that deadline, nor counted, and
        its session goes on carrying datagrams.
        """
        server = self.makeServer()
        waiting = FakeLink("192.0.2.1:1")
        server.linkConnected(waiting)  # TLS handshake never done
        done = FakeLink("192.0.2.2:1")
        self.assertTrue(server.linkConnected(done))
        self.clock.advance(5)
        server.linkMade(done)  # its handshake completed, before the deadline
        self.clock.advance(5)
        self.assertTrue(waiting.aborted)
        self.assertEqual(server.stats.pendingClosed["timeout"], 1)
        self.assertFalse(done.aborted or done.closed)
        self.assertEqual(server.sessionCount(), 1)
        self.clock.advance(60)
        self.assertFalse(done.aborted or done.closed)
        self.assertEqual(server.stats.pendingClosed["timeout"], 1)
        server.framesReceived(done, [b"still carried"])
        self.assertEqual(self.sockets[0].written, [(b"still carried", PEER)])


class DroppingSocket(FakeUDPTransport):
    """
    A server session's socket on which the kernel dropped C{drops}
    datagrams.
    """

    def __init__(self, drops: int) -> None:
        super().__init__()
        self.drops = drops
        self.closed = False

    def kernelDrops(self) -> int:
        return self.drops

    def stopListening(self) -> None:
        self.closed = True


class ServerKernelDropsTests(SynchronousTestCase):
    """
    A server with sessions counts what the kernel dropped on every
    session's socket, asking each socket: the C{/proc/net/udp} table lists
    every UDP socket of the host, and reading it once per session closed and
    once per session at each scrape took seconds of the event loop with a
    few thousand sessions (the server fell behind, answers were lost).
    """

    def test_closedAndLiveAdded(self) -> None:
        """
        The drops of a session that ended and those of a live one add up,
        each socket asked for its own.
        """

        made = iter([DroppingSocket(5), DroppingSocket(3)])
        sessions = ServerSessions(Clock(), ("127.0.0.1", 53), lambda protocol: next(made))
        links = [FakeLink("127.0.0.1:7000"), FakeLink("127.0.0.1:7001")]
        for link in links:
            self.assertTrue(sessions.linkConnected(link))
            sessions.linkMade(link)
        first = sessions.sessions[links[0]].udp
        sessions.linkLost(links[0], Failure(ConnectionDone()))
        assert isinstance(first, DroppingSocket)
        self.assertTrue(first.closed)
        sessions.summary()
        self.assertEqual(sessions.stats.kernelDrops, 8)


class LaneTests(ServerTestMixin, SynchronousTestCase):
    def test_sessionHasALaneForItsLife(self) -> None:
        """
        With the compiled pump running, each session's socket and link get a
        pair, armed at the next wait; when the link is lost the pair is let
        go, and what the pump carried is in the session's last line.
        """
        lanes, pump = attachedLanes()
        events = captureLogEvents(self)
        server = self.makeServer(lanes=lanes)
        link = FakeLink()
        link.transport = plainConnection(self)
        self.assertTrue(server.linkConnected(link))
        server.linkMade(link)
        (pair,) = pump.pairs
        self.assertEqual((pair.udpFd, pair.tcpFd, pair.source),
                         (7, link.transport.fileno(), PEER))
        lanes.prepare()
        self.assertEqual((pair.up, pair.down), (True, True))
        pair.counters = (2, 20, 3, 30, 0.0)
        server.linkLost(link, Failure(ConnectionDone()))
        self.assertEqual(pump.pairs, [])
        ended = [e for e in events if "toTunnel" in e][-1]
        self.assertEqual((ended["toTunnel"], ended["fromTunnel"]), (20, 30))
