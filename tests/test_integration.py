"""
Both ends of the tunnel in one process, on real loopback sockets.

Each end is built the way twistd builds it (L{udptunnel.tap.Options} then
L{udptunnel.tap.makeService}) and driven by the real reactor; applications
are plain UDP sockets.  Nothing waits a fixed time: every wait polls a
condition, bounded in time, so a slow machine makes a test slower, not red.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, DatagramProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from udptunnel import tap
from udptunnel.tunnel.single import Relay

#: The sizes every round trip carries: empty, tiny, a typical MTU-sized
#: datagram, one past Twisted's default read buffer (8192), and the largest
#: datagram IPv4 can carry.
SIZES = [0, 1, 1400, 8193, 65507]

#: Generous bounds for anything asynchronous: the machine is shared and slow.
TIMEOUT = 15.0
#: How often a readiness probe is resent.
PROBE_INTERVAL = 0.2
#: Readiness probes start with this; test payloads never do.
PROBE = b"udptunnel-probe "


def freePort(
    host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM
) -> int:
    """
    A port number that was free a moment ago on C{host}, found by binding
    port 0 and closing the socket again: for the options that need a port
    number before the service starts (and keep it across restarts).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pattern(index: int, size: int) -> bytes:
    """
    C{size} bytes that differ from those of every other C{index}, so a
    datagram delivered twice, out of order or with another's bytes shows.
    """
    return bytes((index * 37 + j * 7 + j // 251) % 256 for j in range(size))


def waitUntil(
    predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT
) -> Deferred[None]:
    """
    Poll C{predicate} every 10 ms until it is true; fail, saying C{what} was
    awaited, after C{timeout} seconds.
    """

    @inlineCallbacks
    def poll() -> Any:
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            yield deferLater(reactor, 0.01, lambda: None)

    return poll()


class Collector(DatagramProtocol):
    """
    An application socket: records what it receives and from where,
    readiness probes apart from everything else.
    """

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.probes: list[tuple[bytes, tuple[str, int]]] = []
        self.probeRounds = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(PROBE):
            self.probes.append((data, addr))
        else:
            self.received.append((data, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None, "not listening"
        self.transport.write(data, addr)

    @inlineCallbacks
    def probe(self, destination: tuple[str, int], timeout: float = TIMEOUT) -> Any:
        """
        Send a probe to C{destination} every L{PROBE_INTERVAL} seconds until
        one comes back (the tunnel is up end to end), or fail after
        C{timeout} seconds.  Each call tags its probes, so a late probe of an
        earlier call cannot pass for one of this call.

        @return: a L{Deferred} firing with the address the probe came back
            from.
        """
        self.probeRounds += 1
        tag = PROBE + b"%d:" % (self.probeRounds,)
        deadline = reactor.seconds() + timeout
        attempt = 0
        while True:
            for data, source in self.probes:
                if data.startswith(tag):
                    return source
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"no probe came back through {destination} in {timeout} s"
                )
            attempt += 1
            self.send(tag + b"%d" % (attempt,), destination)
            yield deferLater(reactor, PROBE_INTERVAL, lambda: None)

    def waitFor(self, count: int) -> Deferred[None]:
        """
        Wait until C{count} datagrams other than probes have arrived.
        """
        return waitUntil(
            lambda: len(self.received) >= count, f"{count} datagrams at {self}"
        )


class Echo(Collector):
    """
    The remote service (the "POP server"): returns every datagram to its
    sender and remembers who sent it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sources: set[tuple[str, int]] = set()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.add(addr)
        self.send(data, addr)


class RawLink(Protocol):
    """
    A TCP connection to the server written to by hand, frames and all.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def sendFrame(self, data: bytes) -> None:
        assert self.transport is not None, "not connected"
        self.transport.write(len(data).to_bytes(2, "big") + data)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


def address(host: str, port: int) -> str:
    """
    C{HOST:PORT} as the command line takes it, IPv6 in brackets.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def udpPort(relay: Relay) -> int:
    """
    The port the UDP socket of a started end is bound to.
    """
    assert relay.udp is not None, "the UDP socket is not bound"
    return int(relay.udp.getHost().port)


class Tunnel(NamedTuple):
    """
    What L{TunnelTestCase.startTunnel} started.
    """

    server: Relay
    client: Relay
    app: Collector
    echo: Echo
    serverUDP: tuple[str, int]
    tcpPort: int


class TunnelTestCase(TestCase):
    """
    Helpers to start ends and application sockets that are stopped and
    closed when the test ends.
    """

    def startEnd(self, *argv: str) -> Relay:
        """
        Parse C{argv} as twistd would (C{twistd udptunnel ARGV}), build the
        service and start it.
        """
        options = tap.Options()
        options.parseOptions(list(argv))
        service = tap.makeService(options, reactor)
        assert isinstance(service, Relay)
        service.privilegedStartService()
        service.startService()

        def stop() -> Any:
            if service.running:
                return service.stopService()
            return None

        self.addCleanup(stop)
        return service

    def startServer(self, tcpPort: int, udp: str = "127.0.0.1:0", *more: str) -> Relay:
        """
        A server listening on 127.0.0.1:C{tcpPort}.
        """
        return self.startEnd(
            "server", "--tcp", f"tcp:{tcpPort}:interface=127.0.0.1", "--udp", udp, *more
        )

    def startTunnel(
        self, serverOptions: tuple[str, ...] = (), clientOptions: tuple[str, ...] = ()
    ) -> Tunnel:
        """
        The seed arrangement on loopback: an echo as the client's --peer, a
        server in phantom mode, and an application socket.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        server = self.startServer(tcpPort, "127.0.0.1:0", *serverOptions)
        client = self.startEnd(
            "client",
            "--tcp", f"127.0.0.1:{tcpPort}",
            "--udp", "127.0.0.1:0",
            "--peer", f"127.0.0.1:{echoPort}",
            *clientOptions,
        )
        app = Collector()
        self.listen(app)
        return Tunnel(server, client, app, echo, ("127.0.0.1", udpPort(server)), tcpPort)

    def listen(self, protocol: DatagramProtocol, interface: str = "127.0.0.1") -> int:
        """
        Bind C{protocol} to an ephemeral UDP port, closed after the test.

        @return: the port number
        """
        port = reactor.listenUDP(  # type: ignore[attr-defined]
            0, protocol, interface=interface, maxPacketSize=65535
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def roundTrips(
        self, app: Collector, destination: tuple[str, int], expectedSource: tuple[str, int]
    ) -> Any:
        """
        Send one datagram of each of L{SIZES} from C{app} to C{destination}
        in one go, and check each comes back intact, in order, from
        C{expectedSource}.
        """
        sent = [pattern(index, size) for index, size in enumerate(SIZES)]
        for data in sent:
            app.send(data, destination)
        yield app.waitFor(len(sent))
        received = [data for data, _ in app.received]
        self.assertEqual([len(data) for data in received], SIZES)
        self.assertEqual(received, sent)
        self.assertEqual({source for _, source in app.received}, {expectedSource})


class ServerPhantomTests(TunnelTestCase):
    """
    The seed arrangement: the application talks to the server, which learns
    its address (phantom mode); the client sends everything to a fixed peer.
    """

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        Datagrams of every size, up to the IPv4 maximum, cross the tunnel to
        the peer and back byte for byte and in order; the application gets
        replies from the server's UDP port, the peer sees the client's
        fixed --udp port.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        clientUDP = freePort(kind=socket.SOCK_DGRAM)
        server = self.startServer(tcpPort)
        self.startEnd(
            "client",
            "--tcp", f"127.0.0.1:{tcpPort}",
            "--udp", f"127.0.0.1:{clientUDP}",
            "--peer", f"127.0.0.1:{echoPort}",
        )
        app = Collector()
        self.listen(app)
        serverUDP = ("127.0.0.1", udpPort(server))

        replyFrom = yield app.probe(serverUDP)

        self.assertEqual(replyFrom, serverUDP)
        yield self.roundTrips(app, serverUDP, serverUDP)
        self.assertEqual(echo.sources, {("127.0.0.1", clientUDP)})


class ClientPhantomTests(TunnelTestCase):
    """
    The reverse arrangement: the application talks to the client (phantom
    mode) and the server sends everything to a fixed peer.
    """

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        The tunnel is symmetric: with the roles of the ends swapped,
        datagrams of every size still cross both ways intact and in order.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        serverUDP = freePort(kind=socket.SOCK_DGRAM)
        self.startServer(tcpPort, f"127.0.0.1:{serverUDP}", "--peer", f"127.0.0.1:{echoPort}")
        client = self.startEnd(
            "client", "--tcp", f"127.0.0.1:{tcpPort}", "--udp", "127.0.0.1:0"
        )
        app = Collector()
        self.listen(app)
        clientUDP = ("127.0.0.1", udpPort(client))

        replyFrom = yield app.probe(clientUDP)

        self.assertEqual(replyFrom, clientUDP)
        yield self.roundTrips(app, clientUDP, clientUDP)
        self.assertEqual(echo.sources, {("127.0.0.1", serverUDP)})


class ForeignSourceTests(TunnelTestCase):
    """
    An end with --peer accepts datagrams from that peer only.
    """

    @inlineCallbacks
    def test_foreignDatagramDropped(self) -> Any:
        """
        A datagram from any other address is counted as a "foreign-source"
        drop and never reaches the other end: a datagram the peer sends
        afterwards is the first thing the application receives.
        """
        _, client, app, echo, serverUDP, _ = self.startTunnel()
        clientUDP = ("127.0.0.1", udpPort(client))
        yield app.probe(serverUDP)
        carried = client.stats.toTunnelDatagrams
        stranger = Collector()
        self.listen(stranger)

        stranger.send(b"from a stranger", clientUDP)
        yield waitUntil(
            lambda: client.stats.drops["foreign-source"] == 1, "the foreign-source drop"
        )
        echo.send(b"from the peer", clientUDP)
        yield app.waitFor(1)

        self.assertEqual(app.received, [(b"from the peer", serverUDP)])
        self.assertEqual(client.stats.toTunnelDatagrams, carried + 1)
        self.assertEqual(stranger.received, [])


class IPv6TestCase(TunnelTestCase):
    """
    Tests that need the IPv6 loopback, skipped where it is missing.
    """

    def setUp(self) -> None:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.bind(("::1", 0))
        except OSError as e:
            raise SkipTest(f"IPv6 loopback unavailable: {e}")


class IPv6Tests(IPv6TestCase):
    """
    Both sides of the tunnel work over IPv6.
    """

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        With [::1] for both UDP sockets and the TCP link (a tcp6 endpoint
        with an escaped interface on the server, [::1]:PORT on the client),
        a datagram crosses the tunnel and comes back.
        """
        echo = Echo()
        echoPort = self.listen(echo, "::1")
        tcpPort = freePort("::1")
        clientUDP = freePort("::1", socket.SOCK_DGRAM)
        server = self.startEnd(
            "server", "--tcp", f"tcp6:{tcpPort}:interface=\\:\\:1", "--udp", "[::1]:0"
        )
        self.startEnd(
            "client",
            "--tcp", f"[::1]:{tcpPort}",
            "--udp", f"[::1]:{clientUDP}",
            "--peer", f"[::1]:{echoPort}",
        )
        app = Collector()
        self.listen(app, "::1")
        serverUDP = ("::1", udpPort(server))

        replyFrom = yield app.probe(serverUDP)
        app.send(b"over IPv6", serverUDP)
        yield app.waitFor(1)

        self.assertEqual(replyFrom[:2], serverUDP)
        received = [(data, source[:2]) for data, source in app.received]
        self.assertEqual(received, [(b"over IPv6", serverUDP)])
        self.assertEqual({source[:2] for source in echo.sources}, {("::1", clientUDP)})


class DualStackTests(IPv6TestCase):
    """
    A phantom end bound to C{[::]} serves an IPv4 application too: the
    kernel shows its address as C{::ffff:a.b.c.d}, and replies go there.
    """

    @inlineCallbacks
    def test_ipv4AppThroughIPv6Socket(self) -> Any:
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        server = self.startEnd(
            "server", "--tcp", f"tcp:{tcpPort}:interface=127.0.0.1", "--udp", "[::]:0"
        )
        self.startEnd("client", "--tcp", f"127.0.0.1:{tcpPort}", "--udp", "127.0.0.1:0",
                      "--peer", f"127.0.0.1:{echoPort}")
        app = Collector()
        appPort = self.listen(app)
        serverUDP = ("127.0.0.1", udpPort(server))

        replyFrom = yield app.probe(serverUDP)

        self.assertEqual(replyFrom, serverUDP)
        self.assertEqual(server.learnedPeer, ("::ffff:127.0.0.1", appPort))


class ReconnectTests(TunnelTestCase):
    """
    The client outlives the server: it reconnects, keeping its UDP socket.
    """

    @inlineCallbacks
    def test_serverRestart(self) -> Any:
        """
        When the server stops and a new one starts on the same TCP port,
        the client connects to it by itself and traffic resumes, from the
        same client UDP port as before.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        serverUDP = ("127.0.0.1", freePort(kind=socket.SOCK_DGRAM))
        first = self.startServer(tcpPort, address(*serverUDP))
        client = self.startEnd(
            "client",
            "--tcp", f"127.0.0.1:{tcpPort}",
            "--udp", "127.0.0.1:0",
            "--peer", f"127.0.0.1:{echoPort}",
        )
        clientUDP = ("127.0.0.1", udpPort(client))
        app = Collector()
        self.listen(app)
        yield app.probe(serverUDP)

        yield first.stopService()
        yield waitUntil(lambda: client.link is None, "the client to see its link go")
        self.startServer(tcpPort, address(*serverUDP))
        replyFrom = yield app.probe(serverUDP)

        self.assertEqual(replyFrom, serverUDP)
        self.assertEqual(client.stats.linksUp, 2)
        self.assertEqual(udpPort(client), clientUDP[1])
        self.assertEqual(echo.sources, {clientUDP})


class NewestLinkTests(TunnelTestCase):
    """
    The server keeps only the newest TCP connection as its link, so a client
    that reconnects is never locked out by its own half-dead connection.
    """

    @inlineCallbacks
    def test_newestLinkWins(self) -> Any:
        """
        A second TCP connection to a server replaces the client's link: the
        server closes the old connection, and frames written on the new
        one come out of the server's UDP socket to the application.
        """
        server, client, app, _, serverUDP, tcpPort = self.startTunnel()
        yield app.probe(serverUDP)
        serverSide, clientSide = server.link, client.link
        assert serverSide is not None and clientSide is not None

        raw = yield ClientCreator(reactor, RawLink).connectTCP("127.0.0.1", tcpPort)
        self.addCleanup(lambda: raw.lost)
        self.addCleanup(raw.transport.abortConnection)
        raw.sendFrame(b"first on the new link")
        raw.sendFrame(b"")
        raw.sendFrame(pattern(7, 65507))
        yield app.waitFor(3)

        self.assertEqual(
            app.received,
            [
                (b"first on the new link", serverUDP),
                (b"", serverUDP),
                (pattern(7, 65507), serverUDP),
            ],
        )
        # At least: the client reconnects (~0.5 s after losing its link) and
        # in its turn replaces the raw link, perhaps already.
        self.assertGreaterEqual(server.stats.linksReplaced, 1)
        yield waitUntil(
            lambda: serverSide.transport.disconnected  # type: ignore[attr-defined]
            and clientSide.transport.disconnected,  # type: ignore[attr-defined]
            "the replaced link to be closed at both ends",
        )
