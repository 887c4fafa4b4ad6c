"""
Both ends of the tunnel in one process, on real loopback sockets.

Each end is built the way twistd builds it (L{udptunnel.tap.Options} then
L{udptunnel.tap.makeService}) and driven by the real reactor; applications
are plain UDP sockets.  Nothing waits a fixed time: every wait polls a
condition, bounded in time, so a slow machine makes a test slower, not red.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import formatEvent
from twisted.web.client import Agent, readBody

from tests.support.certs import Authority
from tests.support.fakes import captureLogEvents
from tests.support.inprocess import RawLink, TunnelTestCase, address, udpPort
from tests.support.net import Echo, Recorder, freePort, pattern, waitUntil
from tests.support.system import skipUnlessAble, whyNoIPv6, whyNoMarks
from udptunnel.sockopts import SO_BINDTODEVICE, SO_MARK


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
        app = Recorder()
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
        app = Recorder()
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
        stranger = Recorder()
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
        skipUnlessAble(whyNoIPv6())


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
        tcpPort = freePort(host="::1")
        clientUDP = freePort(socket.SOCK_DGRAM, "::1")
        server = self.startEnd(
            "server", "--tcp", f"tcp6:{tcpPort}:interface=\\:\\:1", "--udp", "[::1]:0"
        )
        self.startEnd(
            "client",
            "--tcp", f"[::1]:{tcpPort}",
            "--udp", f"[::1]:{clientUDP}",
            "--peer", f"[::1]:{echoPort}",
        )
        app = Recorder()
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
        """
        A server whose UDP socket is bound to C{[::]} learns an IPv4
        application as C{::ffff:127.0.0.1}, and its replies reach the
        application from the IPv4 address it sent to.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        server = self.startEnd(
            "server", "--tcp", f"tcp:{tcpPort}:interface=127.0.0.1", "--udp", "[::]:0"
        )
        self.startEnd("client", "--tcp", f"127.0.0.1:{tcpPort}", "--udp", "127.0.0.1:0",
                      "--peer", f"127.0.0.1:{echoPort}")
        app = Recorder()
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
        app = Recorder()
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


class AllowTests(TunnelTestCase):
    @inlineCallbacks
    def test_strangerRefusedLinkKept(self) -> Any:
        """
        A connection from outside --allow is closed at once and counted; the
        client's link stays the link and keeps relaying.
        """
        server, _, app, _, serverUDP, tcpPort = self.startTunnel(("--allow", "127.0.0.1/32"))
        yield app.probe(serverUDP)
        link = server.link

        stranger = yield ClientCreator(reactor, RawLink).connectTCP(
            "127.0.0.1", tcpPort, bindAddress=("127.0.0.2", 0)
        )
        stranger.sendFrame(b"let me in")
        yield stranger.lost

        self.assertEqual(server.stats.linksRefused, 1)
        self.assertIs(server.link, link)
        yield app.probe(serverUDP)
        self.assertEqual(server.stats.linksUp, 1)


    @inlineCallbacks
    def test_refusedClientSaysSo(self) -> Any:
        """
        A client the server's --allow refuses never logs "link up": each
        attempt is a failed one, with the likely reason.
        """
        events = captureLogEvents(self)
        server, client, _, _, _, _ = self.startTunnel(("--allow", "127.0.0.2/32"))
        yield waitUntil(lambda: client.stats.linksFailed >= 2, "two refused attempts")
        self.assertEqual((client.stats.linksUp, client.stats.linksLost), (0, 0))
        self.assertGreaterEqual(server.stats.linksRefused, 2)
        lines = [formatEvent(e) for e in events]
        self.assertFalse([line for line in lines if line.startswith("link up")], lines)
        self.assertTrue([line for line in lines if "before it carried anything" in line], lines)


class TLSTestCase(TunnelTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.authority = Authority(directory)
        self.rogue = Authority(directory, "rogue-ca")

    def tlsOptions(self, authority: Authority, name: str, trusted: Authority) -> list[str]:
        cert, key = authority.issue(name)
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", trusted.path]

    def startPair(self, clientAuthority: Authority, clientTrusts: Authority) -> None:
        self.server, self.client, self.app, _, self.serverUDP, self.tcpPort = self.startTunnel(
            tuple(self.tlsOptions(self.authority, "server", self.authority)),
            tuple(self.tlsOptions(clientAuthority, "client", clientTrusts)),
        )


class MutualTLSTests(TLSTestCase):
    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        With both ends' certificates signed by the CA each trusts, the link
        comes up over TLS, and a datagram of the IPv4 maximum (65507 bytes)
        crosses to the peer and back whole.
        """
        self.startPair(self.authority, self.authority)
        yield self.app.probe(self.serverUDP)
        self.app.send(b"x" * 65507, self.serverUDP)
        yield self.app.waitFor(1)
        self.assertEqual(self.app.received, [(b"x" * 65507, self.serverUDP)])

    @inlineCallbacks
    def test_clientFromOtherCANeverBecomesLink(self) -> Any:
        """
        A client whose certificate another CA signed fails the handshake:
        it never displaces the link of the good client.
        """
        self.startPair(self.authority, self.authority)
        yield self.app.probe(self.serverUDP)
        good = self.server.link
        self.startEnd(
            "client", "--tcp", f"127.0.0.1:{self.tcpPort}", "--udp", "127.0.0.1:0",
            "--peer", "127.0.0.1:9", *self.tlsOptions(self.rogue, "client", self.authority),
        )
        yield waitUntil(lambda: self.server.stats.linksFailed >= 2, "two failed handshakes")
        self.assertIs(self.server.link, good)
        self.assertEqual(self.server.stats.linksUp, 1)
        yield self.app.probe(self.serverUDP)

    @inlineCallbacks
    def test_clientRejectsUnknownServer(self) -> Any:
        """
        A client that trusts another CA does not accept the server: no link
        on either side.
        """
        self.startPair(self.authority, self.rogue)
        yield waitUntil(lambda: self.client.stats.linksFailed >= 2, "two failed handshakes")
        self.assertEqual(self.client.stats.linksUp, 0)
        self.assertEqual(self.server.stats.linksUp, 0)


class TLSLinesTests(TLSTestCase):
    @inlineCallbacks
    def test_nameMismatchSaysWhatToGive(self) -> Any:
        """
        A server whose certificate does not carry the name the client
        checks: each attempt is one line, saying so and what to give, with
        the next delay and the count of failures (not service_identity's
        repr, nor Twisted's "Scheduling retry 1" whose count never grew).
        """
        events = captureLogEvents(self)
        self.startPair(self.authority, self.authority)
        self.client.stopService()
        self.startEnd("client", "--tcp", f"127.0.0.1:{self.tcpPort}", "--udp", "127.0.0.1:0",
                      "--peer", "127.0.0.1:9", "--tls-name", "other.example",
                      *self.tlsOptions(self.authority, "client", self.authority))
        yield waitUntil(lambda: sum("2 failed in a row" in formatEvent(e) for e in events),
                        "two failed attempts")
        lines = [formatEvent(e) for e in events if "cannot connect" in formatEvent(e)]
        self.assertIn("TLS: the server's certificate is not for other.example (give "
                      "--tls-name with a name the certificate carries); next attempt in ",
                      lines[0])
        self.assertIn("(1 failed in a row)", lines[0])
        self.assertIn("(2 failed in a row)", lines[1])
        everything = " ".join(formatEvent(e) for e in events)
        self.assertNotIn("VerificationError", everything)
        self.assertNotIn("Scheduling retry", everything)


class MetricsTests(TunnelTestCase):
    @inlineCallbacks
    def test_scrape(self) -> Any:
        """
        The counters are served in Prometheus' text format.
        """
        metricsPort = freePort()
        server, _, app, _, serverUDP, _ = self.startTunnel(
            ("--metrics", f"tcp:{metricsPort}:interface=127.0.0.1")
        )
        yield app.probe(serverUDP)

        events = captureLogEvents(self)
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{metricsPort}/metrics".encode()
        )
        body = (yield readBody(response)).decode()

        self.assertEqual(response.code, 200)
        self.assertFalse(
            [e for e in events if "GET /metrics" in formatEvent(e)], "a scrape is no log line"
        )
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        carried = server.stats.toTunnelDatagrams
        self.assertGreaterEqual(carried, 1)
        self.assertIn(f"udptunnel_to_tunnel_datagrams_total {carried}.0", body)
        self.assertIn("udptunnel_link_up 1.0", body)
        self.assertIn('udptunnel_links_total{event="up"} 1.0', body)
        self.assertIn('mode="phantom"', body)

    @inlineCallbacks
    def test_headIsQuiet(self) -> Any:
        """
        A HEAD (what some health checkers send) gets the GET's headers and
        no body, and no warning in the log.
        """
        metricsPort = freePort()
        self.startTunnel(("--metrics", f"tcp:{metricsPort}:interface=127.0.0.1"))
        events = captureLogEvents(self)
        response = yield Agent(reactor).request(
            b"HEAD", f"http://127.0.0.1:{metricsPort}/metrics".encode()
        )
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, b""))
        self.assertGreater(int(response.headers.getRawHeaders(b"content-length")[0]), 100)
        self.assertEqual([formatEvent(e) for e in events if "HEAD" in formatEvent(e)], [])





def routeOf(sock: socket.socket) -> tuple[int, bytes]:
    """
    The mark and the device of C{sock}, as the kernel has them.
    """
    mark = sock.getsockopt(socket.SOL_SOCKET, SO_MARK)
    device = sock.getsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, 16).rstrip(b"\0")
    return mark, device


class RoutedTests(TunnelTestCase):
    """
    C{--fwmark} and C{--bind-device}: the sockets that face the network
    carry them, those that face the applications do not, and the tunnel
    relays as before.
    """

    @inlineCallbacks
    def test_device(self) -> Any:
        """
        A client with C{--bind-device lo} relays; its link's socket and its
        UDP socket towards C{--peer} are bound to C{lo}; the server's
        phantom UDP socket, which faces the application, is not.  The
        start-up says so.
        """
        events = captureLogEvents(self)
        tunnel = self.startTunnel(clientOptions=("--bind-device", "lo"))
        replyFrom = yield tunnel.app.probe(tunnel.serverUDP)
        self.assertEqual(replyFrom, tunnel.serverUDP)
        assert tunnel.client.link is not None
        self.assertEqual(routeOf(tunnel.client.link.transport.getHandle()), (0, b"lo"))
        self.assertEqual(routeOf(tunnel.client.udp.getHandle()), (0, b"lo"))
        self.assertEqual(routeOf(tunnel.server.udp.getHandle()), (0, b""))
        self.assertIn("sockets towards the network bound to lo (--bind-device)",
                      [formatEvent(event) for event in events])

    @inlineCallbacks
    def test_marks(self) -> Any:
        """
        With C{--fwmark} on both ends: the client's link socket and its UDP
        socket towards C{--peer} carry the client's mark, the server's end
        of the link (accepted on its marked listening socket) the server's;
        the phantom UDP socket none.  Both relay.
        """
        skipUnlessAble(whyNoMarks())
        tunnel = self.startTunnel(serverOptions=("--fwmark", "0x51"),
                                  clientOptions=("--fwmark", "7"))
        replyFrom = yield tunnel.app.probe(tunnel.serverUDP)
        self.assertEqual(replyFrom, tunnel.serverUDP)
        assert tunnel.client.link is not None and tunnel.server.link is not None
        self.assertEqual(routeOf(tunnel.client.link.transport.getHandle()), (7, b""))
        self.assertEqual(routeOf(tunnel.client.udp.getHandle()), (7, b""))
        self.assertEqual(routeOf(tunnel.server.link.transport.getHandle()), (0x51, b""))
        self.assertEqual(routeOf(tunnel.server.udp.getHandle()), (0, b""))

    @inlineCallbacks
    def test_throughAProxy(self) -> Any:
        """
        Through C{--proxy}, the connection to the proxy is the one that
        faces the network: it is bound to the device (a stand-in proxy that
        answers C{CONNECT} and then holds the connection).
        """
        requests: list[bytes] = []

        class Proxy(Protocol):
            def dataReceived(self, data: bytes) -> None:
                requests.append(data)
                if b"\r\n\r\n" in b"".join(requests) and self.transport is not None:
                    self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        port = reactor.listenTCP(0, Factory.forProtocol(Proxy),  # type: ignore[attr-defined]
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = self.startEnd(
            "client", "--tcp", "relay.invalid:9999", "--udp", "127.0.0.1:0",
            "--proxy", f"http://127.0.0.1:{port.getHost().port}", "--bind-device", "lo")
        yield waitUntil(lambda: client.link is not None, "the link through the proxy")
        self.assertTrue(b"".join(requests).startswith(b"CONNECT relay.invalid:9999 HTTP/1.1"))
        assert client.link is not None
        self.assertEqual(routeOf(client.link.transport.getHandle()), (0, b"lo"))


class HoldTests(TunnelTestCase):
    """
    The hold queue, with both ends: what is sent while the link is down
    crosses once it is back.
    """

    @inlineCallbacks
    def test_clientRestart(self) -> Any:
        """
        The client end stops and starts again (as an upgrade restarts it);
        what the application sends meanwhile waits in the server's hold
        queue and crosses, in order, once the new client's link is up: all
        of it comes back from the echo, none counted as dropped.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        server = self.startServer(tcpPort)
        clientArgv = ("client", "--tcp", f"127.0.0.1:{tcpPort}", "--udp", "127.0.0.1:0",
                      "--peer", f"127.0.0.1:{echoPort}")
        client = self.startEnd(*clientArgv)
        app = Recorder()
        self.listen(app)
        serverUDP = ("127.0.0.1", udpPort(server))
        yield app.probe(serverUDP)
        yield client.stopService()
        yield waitUntil(lambda: server.link is None, "the server to see the link end")
        sent = [b"during the restart %d" % i for i in range(20)]
        for data in sent:
            app.send(data, serverUDP)
        yield waitUntil(lambda: len(server.session.hold) == len(sent), "the datagrams held")
        self.startEnd(*clientArgv)
        yield app.waitFor(len(sent))
        self.assertEqual([data for data, _ in app.received], sent)
        self.assertEqual(sum(server.stats.drops.values()), 0)

    @inlineCallbacks
    def test_longOutage(self) -> Any:
        """
        With no client for longer than --hold, under a flood: the queue
        never holds more than its bounds, what is too old is counted
        C{expired} and what does not fit C{hold-full}; when the client
        comes, nothing stale crosses, and a fresh datagram does.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        server = self.startServer(tcpPort, "127.0.0.1:0", "--hold", "0.5",
                                  "--hold-datagrams", "100")
        app = Recorder()
        self.listen(app)
        serverUDP = ("127.0.0.1", udpPort(server))
        most = 0
        for burst in range(30):
            for i in range(50):
                app.send(b"flood %d %d" % (burst, i), serverUDP)
            yield deferLater(reactor, 0.05, lambda: None)
            most = max(most, len(server.session.hold))
        self.assertLessEqual(most, 100)
        self.assertGreater(server.stats.drops["expired"], 0)
        self.assertGreater(server.stats.drops["hold-full"], 0)
        yield deferLater(reactor, 0.6, lambda: None)
        self.startEnd("client", "--tcp", f"127.0.0.1:{tcpPort}", "--udp", "127.0.0.1:0",
                      "--peer", f"127.0.0.1:{echoPort}")
        yield waitUntil(lambda: server.link is not None, "the client's link")
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(echo.sources, set())
        self.assertEqual(len(server.session.hold), 0)
        app.send(b"fresh", serverUDP)
        yield app.waitFor(1)
        self.assertEqual(app.received, [(b"fresh", serverUDP)])
