"""
Sessions' decisions, with fake sockets, fake links, fake connections and a
Clock: routing by source, the connect queue, eviction, idle expiry, failed
connections, and one socket per server connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from udptunnel.interfaces import ILinkRelay
from udptunnel.tunnel.clientsessions import ClientSessions
from udptunnel.tunnel.serversessions import ServerSessions
from udptunnel.tunnel.sessions import QUEUE_DATAGRAMS

from .fakes import FakeLink, FakeUDPTransport, captureLogEvents

ONE, TWO, THREE = ("127.0.0.1", 40001), ("127.0.0.1", 40002), ("127.0.0.1", 40003)
PEER = ("192.0.2.53", 51820)


class Connections:
    """
    A fake endpoint: each connect is a Deferred the test fires, and the
    relay the session's connection reports to.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[ILinkRelay, Deferred[Any]]] = []

    def connect(self, relay: ILinkRelay) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append((relay, d))
        return d

    def succeed(self, index: int = -1, remote: str = "192.0.2.1:9999") -> FakeLink:
        relay, d = self.attempts[index]
        link = FakeLink(remote)
        relay.linkConnected(link)
        relay.linkMade(link)
        d.callback(None)
        return link

    def fail(self, index: int = -1) -> None:
        self.attempts[index][1].errback(Failure(ConnectionRefusedError("refused")))


class ClientTestMixin:
    def makeClient(self, **options: Any) -> ClientSessions:
        self.clock = Clock()
        self.udp = FakeUDPTransport()
        self.connections = Connections()
        client = ClientSessions(self.clock, self.connections.connect, random=lambda: 0.5,
                                **options)
        client.udpStarted(self.udp)
        return client


class ClientRoutingTests(ClientTestMixin, SynchronousTestCase):
    def test_connectionPerSource(self) -> None:
        client = self.makeClient()
        client.datagramsReceived([(b"one", ONE), (b"two", TWO), (b"one again", ONE)])
        self.assertEqual(len(self.connections.attempts), 2)
        first, second = self.connections.succeed(0), self.connections.succeed(1)
        self.assertEqual(first.frames, [b"one", b"one again"])
        self.assertEqual(second.frames, [b"two"])
        self.assertEqual(client.sessionCount(), 2)

    def test_repliesGoToTheirSource(self) -> None:
        client = self.makeClient()
        client.datagramsReceived([(b"q1", ONE), (b"q2", TWO)])
        first, second = self.connections.succeed(0), self.connections.succeed(1)
        relayOne, relayTwo = self.connections.attempts[0][0], self.connections.attempts[1][0]
        relayTwo.framesReceived(second, [b"a2"])
        relayOne.framesReceived(first, [b"a1"])
        self.assertEqual(self.udp.written, [(b"a2", TWO), (b"a1", ONE)])

    def test_upSessionCarriesAtOnce(self) -> None:
        client = self.makeClient()
        client.datagramsReceived([(b"first", ONE)])
        link = self.connections.succeed()
        client.datagramsReceived([(b"second", ONE)])
        self.assertEqual(link.frames, [b"first", b"second"])
        self.assertEqual(len(self.connections.attempts), 1)
        self.assertEqual(client.stats.sessionsOpened, 1)

    def test_udpAllow(self) -> None:
        from udptunnel.tunnel.access import AddressFilter, parseNetwork

        client = self.makeClient(udpAllow=AddressFilter([parseNetwork("127.0.0.0/8")]))
        client.datagramsReceived([(b"stranger", ("192.0.2.9", 1)), (b"ok", ONE)])
        self.assertEqual(len(self.connections.attempts), 1)
        self.assertEqual(client.stats.drops["udp-not-allowed"], 1)

    def test_congestedSessionDropsAlone(self) -> None:
        """
        One session's full link drops its own datagrams; the others go on
        (the socket they share is never paused).
        """
        client = self.makeClient()
        client.datagramsReceived([(b"a", ONE), (b"b", TWO)])
        first, second = self.connections.succeed(0), self.connections.succeed(1)
        assert first.producer is not None
        first.producer.pauseProducing()
        client.datagramsReceived([(b"a2", ONE), (b"b2", TWO)])
        self.assertEqual(first.frames, [b"a"])
        self.assertEqual(second.frames, [b"b", b"b2"])
        self.assertEqual(client.stats.drops["congested"], 1)
        self.assertTrue(self.udp.reading)
        first.producer.resumeProducing()
        client.datagramsReceived([(b"a3", ONE)])
        self.assertEqual(first.frames, [b"a", b"a3"])


class ConnectQueueTests(ClientTestMixin, SynchronousTestCase):
    def test_queuedInOrder(self) -> None:
        client = self.makeClient()
        for i in range(5):
            client.datagramsReceived([(b"%d" % i, ONE)])
        link = self.connections.succeed()
        self.assertEqual(link.frames, [b"0", b"1", b"2", b"3", b"4"])

    def test_queueBounded(self) -> None:
        client = self.makeClient()
        for i in range(QUEUE_DATAGRAMS + 10):
            client.datagramsReceived([(b"%d" % i, ONE)])
        link = self.connections.succeed()
        self.assertEqual(len(link.frames), QUEUE_DATAGRAMS)
        self.assertEqual(link.frames[0], b"0")
        self.assertEqual(client.stats.drops["queue-full"], 10)

    def test_queueBytesBounded(self) -> None:
        client = self.makeClient()
        for _ in range(10):
            client.datagramsReceived([(b"x" * 60000, ONE)])
        link = self.connections.succeed()
        self.assertEqual(len(link.frames), 4)  # 256 KiB per session
        self.assertEqual(client.stats.drops["queue-full"], 6)


class FailedConnectionTests(ClientTestMixin, SynchronousTestCase):
    def test_retriedWhileTrafficFlows(self) -> None:
        events = captureLogEvents(self)
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        self.connections.fail()
        self.assertEqual(len(self.connections.attempts), 1)
        self.clock.advance(0.5)  # the first retry delay (random 0.5: no jitter)
        self.assertEqual(len(self.connections.attempts), 2)
        link = self.connections.succeed()
        self.assertEqual(link.frames, [b"query"])
        self.assertEqual(client.stats.connectFailures, 1)
        self.assertTrue([e for e in events if "cannot connect" in e.get("log_format", "")])

    def test_backsOff(self) -> None:
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        times = []
        for _ in range(4):
            self.connections.fail()
            before = self.clock.seconds()
            attempts = len(self.connections.attempts)
            while len(self.connections.attempts) == attempts:
                self.clock.advance(0.25)
            times.append(self.clock.seconds() - before)
        self.assertEqual(times, [0.5, 1.0, 2.0, 4.0])

    def test_endsWithoutTraffic(self) -> None:
        """
        A failed attempt with nothing queued and nothing new ends the session;
        the source's next datagram opens a new one.
        """
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        link = self.connections.succeed()
        relay = self.connections.attempts[0][0]
        relay.linkLost(link, Failure(ConnectionDone()))
        self.assertEqual(client.sessionCount(), 0)
        client.datagramsReceived([(b"again", ONE)])
        self.connections.fail()
        self.clock.advance(0.5)
        self.assertEqual(len(self.connections.attempts), 3)  # queued datagram: retried
        self.connections.fail()
        self.clock.advance(60)
        # Still queued ("again" waits): it keeps trying, with backoff.
        self.assertGreater(len(self.connections.attempts), 3)

    def test_givesUpOnceQuiet(self) -> None:
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        link = self.connections.succeed()
        self.assertEqual(link.frames, [b"query"])
        self.connections.attempts[0][0].linkLost(link, Failure(ConnectionDone()))
        self.assertEqual(client.sessionCount(), 0)
        self.assertEqual(client.stats.sessionsClosed, 1)


class EvictionTests(ClientTestMixin, SynchronousTestCase):
    def test_leastRecentlyActiveEvicted(self) -> None:
        client = self.makeClient(maxSessions=2)
        client.datagramsReceived([(b"1", ONE)])
        one = self.connections.succeed()
        client.datagramsReceived([(b"2", TWO)])
        self.connections.succeed()
        client.datagramsReceived([(b"1 again", ONE)])  # TWO is now the least recent
        client.datagramsReceived([(b"3", THREE)])
        self.assertEqual(set(client.sessions), {ONE, THREE})
        self.assertEqual(client.stats.sessionsEvicted, 1)
        self.assertFalse(one.closed)

    def test_evictedLinkClosed(self) -> None:
        client = self.makeClient(maxSessions=1)
        client.datagramsReceived([(b"1", ONE)])
        one = self.connections.succeed()
        client.datagramsReceived([(b"2", TWO)])
        self.assertTrue(one.closed)
        self.assertEqual(list(client.sessions), [TWO])

    def test_evictedWhileConnectingCancels(self) -> None:
        client = self.makeClient(maxSessions=1)
        client.datagramsReceived([(b"1", ONE)])
        first = self.connections.attempts[0][1]
        client.datagramsReceived([(b"2", TWO)])
        # Cancelled, and the cancellation handled by the session (no
        # unhandled error left behind).
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(client.stats.connectFailures, 0)
        self.assertEqual(client.stats.drops["connect-failed"], 1)


class IdleTests(ClientTestMixin, SynchronousTestCase):
    def test_idleSessionEnds(self) -> None:
        client = self.makeClient(sessionIdle=20)
        client.startService()
        self.addCleanup(client.stopService)
        client.datagramsReceived([(b"1", ONE)])
        link = self.connections.succeed()
        self.clock.pump([1] * 19)
        self.assertEqual(client.sessionCount(), 1)
        self.clock.pump([1] * 10)
        self.assertEqual(client.sessionCount(), 0)
        self.assertTrue(link.closed)
        self.assertEqual(client.stats.sessionsExpired, 1)

    def test_trafficKeepsItOpen(self) -> None:
        client = self.makeClient(sessionIdle=20)
        client.startService()
        self.addCleanup(client.stopService)
        client.datagramsReceived([(b"1", ONE)])
        link = self.connections.succeed()
        relay = self.connections.attempts[0][0]
        for _ in range(60):
            self.clock.advance(1)
            relay.framesReceived(link, [b"reply"])
        self.assertEqual(client.sessionCount(), 1)


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
        server = self.makeServer()
        one, two = self.connect(server), self.connect(server)
        closed = []
        self.sockets[0].stopListening = lambda: closed.append(0)  # type: ignore[attr-defined]
        server.linkLost(one, Failure(ConnectionDone()))
        self.assertEqual(closed, [0])
        self.assertEqual(list(server.sessions), [two])
        self.assertEqual(server.stats.sessionsClosed, 1)

    def test_capRefuses(self) -> None:
        server = self.makeServer(maxSessions=2)
        self.connect(server)
        self.connect(server)
        self.assertFalse(server.linkConnected(FakeLink()))
        self.assertEqual(server.stats.sessionsRefused, 1)

    def test_noSocketAborts(self) -> None:
        server = self.makeServer()
        self.bindError = OSError(24, "Too many open files")
        link = self.connect(server)
        self.assertTrue(link.aborted)
        self.assertEqual(server.sessionCount(), 0)
        self.assertEqual(server.stats.sessionsFailed, 1)

    def test_congestionPausesItsSocketOnly(self) -> None:
        server = self.makeServer()
        one, _ = self.connect(server), self.connect(server)
        assert one.producer is not None
        one.producer.pauseProducing()
        self.assertEqual([udp.reading for udp in self.sockets], [False, True])
        one.producer.resumeProducing()
        self.assertTrue(self.sockets[0].reading)

    def test_idleSessionEnds(self) -> None:
        server = self.makeServer(sessionIdle=10)
        server.startService()
        self.addCleanup(server.stopService)
        link = self.connect(server)
        self.clock.pump([1] * 20)
        self.assertTrue(link.closed)
        self.assertEqual(server.stats.sessionsExpired, 1)

    def test_silentConnectionTimesOutOnlyBeforeHandshake(self) -> None:
        server = self.makeServer()
        waiting = FakeLink()
        server.linkConnected(waiting)  # TLS handshake never done
        self.clock.advance(10)
        self.assertTrue(waiting.aborted)
        self.assertEqual(server.stats.pendingClosed["timeout"], 1)
