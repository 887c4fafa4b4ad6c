"""
Regression tests, with fakes and a L{Clock}, for defects of the sessions
(C{--sessions}) that the end-to-end tests (L{tests.test_sessions_e2e})
found.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeLink, FakeUDPTransport
from udptunnel.interfaces import IRelay
from udptunnel.tunnel.clientsessions import ClientSessions
from udptunnel.tunnel.serversessions import ServerSessions
from udptunnel.udp.port import DatagramSocket

SOURCE = ("127.0.0.1", 5000)


class SlowConnectionTests(SynchronousTestCase):
    """
    A client session whose connection takes longer than C{--session-idle}
    to be made (a server whose listen queue overflowed answers a SYN on its
    retransmission, a second later) keeps the datagram that opened it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.attempts: list[tuple[IRelay, Deferred[Any]]] = []
        self.sessions = ClientSessions(self.clock, self.connect, sessionIdle=1)
        self.sessions.startService()
        self.addCleanup(self.sessions.stopService)
        self.sessions.udpStarted(FakeUDPTransport())

    def connect(self, relay: IRelay) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((relay, attempt))
        return attempt

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.05)):
            self.clock.advance(0.05)

    def test_notIdleWhileConnecting(self) -> None:
        """
        Three idle periods pass while the connection is being made: the
        session stays, its attempt is not cancelled, and its queued datagram
        goes out once the connection is up.  Idle from then on, it expires.
        """
        self.sessions.datagramsReceived([(b"query", SOURCE)])
        self.advance(3)
        self.assertEqual(self.sessions.sessionCount(), 1)
        self.assertEqual(self.sessions.stats.sessionsExpired, 0)
        [(relay, attempt)] = self.attempts
        self.assertNoResult(attempt)

        link = FakeLink("127.0.0.1:7000")
        self.assertTrue(relay.linkConnected(link))
        relay.linkMade(link)
        attempt.callback(None)
        self.assertEqual(link.frames, [b"query"])

        self.advance(3)
        self.assertEqual(self.sessions.sessionCount(), 0)
        self.assertEqual(self.sessions.stats.sessionsExpired, 1)
        self.assertTrue(link.closed)


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


class SessionSocketDropsTests(SynchronousTestCase):
    """
    A session socket's L{DatagramSocket.kernelDrops} reads the kernel's
    count for its own socket.
    """

    def test_overflowCounted(self) -> None:
        """
        A session socket nobody reads, with a small buffer, overflows: it
        reports what the kernel dropped.
        """
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(peer.close)
        peer.bind(("127.0.0.1", 0))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        sock.connect(peer.getsockname())
        udp = DatagramSocket(sock, DatagramProtocol(), MemoryReactor())
        udp.startListening()
        self.addCleanup(udp.stopListening)
        self.assertEqual(udp.kernelDrops(), 0)
        for _ in range(200):
            peer.sendto(b"x" * 1000, sock.getsockname())
        drops = udp.kernelDrops()
        assert drops is not None
        self.assertGreater(drops, 0)
        udp.stopListening()
        self.assertIsNone(udp.kernelDrops())


class ImmediateFailureTests(SynchronousTestCase):
    """
    An endpoint that fails at once (synchronously) must find the datagram
    that opened the session queued, and retry for it.
    """

    def test_openingDatagramKept(self) -> None:
        from twisted.internet.defer import fail

        from udptunnel.tunnel.clientsessions import ClientSessions

        clock = Clock()
        attempts: list[object] = []

        def connect(relay: object) -> object:
            attempts.append(relay)
            return fail(ConnectionRefusedError("refused"))

        client = ClientSessions(clock, connect, random=lambda: 0.5)  # type: ignore[arg-type]
        client.udpStarted(FakeUDPTransport())
        client.datagramsReceived([(b"query", ("127.0.0.1", 40001))])
        self.assertEqual(client.sessionCount(), 1)
        self.assertEqual(client.stats.drops["no-link"], 0)
        clock.advance(0.5)
        self.assertEqual(len(attempts), 2)
