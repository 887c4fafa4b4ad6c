"""
C{--proxy-protocol}: the PROXY protocol header (v1 and v2) a load balancer
sends first, parsed (L{udptunnel.link.proxyheader}), consumed by the server's
protocol before admission so that C{--allow}, the logs and the metrics see
the client it names, and a real HAProxy (Debian's package) in front of two
installed-twistd servers.

Without C{/usr/sbin/haproxy} the HAProxy test is skipped, unless the
environment has C{UDPTUNNEL_REQUIRE_INTEROP=1} (as CI does): then it fails.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import tempfile
import urllib.request

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from udptunnel.link.preamble import RFC1036_PREAMBLE, handshakeFor
from udptunnel.link.protocol import TunnelFactory
from udptunnel.link.proxyheader import (
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parseProxyHeader,
)
from udptunnel.tunnel.access import AddressFilter, parseNetwork
from udptunnel.tunnel.serversessions import ServerSessions
from udptunnel.tunnel.single import Relay

from .certs import Authority
from .fakes import FakeUDPTransport, captureLogEvents
from .test_faults import metric
from .test_handshake import closedByPeer, readFrame
from .test_interop import REQUIRE_VARIABLE
from .test_metrics import scrape
from .test_options import parse
from .test_protocols import RecordingRelay, frame
from .test_twistd import TIMEOUT, TWISTD, TwistdTestCase, freePort, receive, waitFor

V1 = b"PROXY TCP4 198.51.100.7 192.0.2.1 40001 9999\r\n"
V1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 9999\r\n"


def v2(command: int = 1, family: int = 1, body: bytes | None = None) -> bytes:
    """
    A version 2 header: PROXY (1) or LOCAL (0), IPv4 (1) or IPv6 (2),
    stream transport, with the addresses of L{V1} or L{V1_6}.
    """
    if body is None:
        if family == 1:
            body = (ipaddress.IPv4Address("198.51.100.7").packed
                    + ipaddress.IPv4Address("192.0.2.1").packed)
        else:
            body = (ipaddress.IPv6Address("2001:db8::7").packed
                    + ipaddress.IPv6Address("2001:db8::1").packed)
        body += struct.pack("!HH", 40001, 9999)
    return V2_SIGNATURE + bytes([0x20 | command, family << 4 | 1]) + struct.pack(
        "!H", len(body)) + body


class ParserTests(SynchronousTestCase):
    def assertParsesTo(self, header: bytes, source: tuple[str, int] | None) -> None:
        """
        C{header} parses to C{source}, whole, with bytes after it, and fed
        byte by byte (incomplete until its last byte).
        """
        self.assertEqual(parseProxyHeader(header), ProxyHeader(source, len(header)))
        self.assertEqual(parseProxyHeader(header + b"\x00\x05hello"),
                         ProxyHeader(source, len(header)))
        for end in range(len(header)):
            self.assertIsNone(parseProxyHeader(header[:end]), header[:end])

    def test_v1IPv4(self) -> None:
        self.assertParsesTo(V1, ("198.51.100.7", 40001))

    def test_v1IPv6(self) -> None:
        self.assertParsesTo(V1_6, ("2001:db8::7", 40001))

    def test_v1Unknown(self) -> None:
        self.assertParsesTo(b"PROXY UNKNOWN\r\n", None)
        self.assertParsesTo(b"PROXY UNKNOWN ffff:: 1.2.3.4 1 2\r\n", None)

    def test_v2IPv4(self) -> None:
        self.assertParsesTo(v2(), ("198.51.100.7", 40001))

    def test_v2IPv6(self) -> None:
        self.assertParsesTo(v2(family=2), ("2001:db8::7", 40001))

    def test_v2WithTLVs(self) -> None:
        """
        Bytes after the addresses (HAProxy's TLVs) are part of the header.
        """
        body = v2()[16:] + b"\x04\x00\x01x"
        self.assertParsesTo(v2(body=body), ("198.51.100.7", 40001))

    def test_v2Local(self) -> None:
        """
        LOCAL (the balancer's health check) names no client.
        """
        self.assertParsesTo(v2(command=0), None)
        self.assertParsesTo(v2(command=0, family=0, body=b""), None)

    def test_v2Unix(self) -> None:
        self.assertParsesTo(v2(family=3, body=b"\x00" * 216), None)

    def assertRefused(self, data: bytes) -> None:
        self.assertRaises(ProxyHeaderError, parseProxyHeader, data)

    def test_garbage(self) -> None:
        """
        A frame of the classic wire, or anything else, is refused at its
        first byte that cannot begin a header.
        """
        self.assertRefused(frame(b"hello"))
        self.assertRefused(b"G")
        self.assertRefused(b"PROXX")
        self.assertRefused(b"\r\n\r\n\x00\r\nQUIX")
        self.assertRefused(RFC1036_PREAMBLE)

    def test_v1Malformed(self) -> None:
        for line in (b"PROXY TCP4 198.51.100.7 192.0.2.1 40001\r\n",
                     b"PROXY TCP5 198.51.100.7 192.0.2.1 40001 9999\r\n",
                     b"PROXY TCP4 2001:db8::7 192.0.2.1 40001 9999\r\n",
                     b"PROXY TCP6 198.51.100.7 192.0.2.1 40001 9999\r\n",
                     b"PROXY TCP4 198.51.100.999 192.0.2.1 40001 9999\r\n",
                     b"PROXY TCP4 198.51.100.7 192.0.2.1 70000 9999\r\n",
                     b"PROXY TCP4 198.51.100.7 192.0.2.1 -1 9999\r\n",
                     b"PROXY TCP4  198.51.100.7 192.0.2.1 40001 9999\r\n",
                     b"PROXY TCP4 198.51.100.7 192.0.2.1 40001 9999\n",
                     b"PROXY TCP4 198.51.100.7\r192.0.2.1 40001 9999\r\n"):
            self.assertRefused(line)

    def test_v1ScopedAddress(self) -> None:
        """
        A balancer names an address, never a scope: a scope id (what
        Python's ipaddress would take, whatever it holds) is refused, in
        either address of the line.
        """
        self.assertRefused(b"PROXY TCP6 fe80::1%eth0 ::1 5555 9999\r\n")
        self.assertRefused(b"PROXY TCP6 ::1 ::1%\x1b[2J 5555 9999\r\n")

    def test_v1TooLong(self) -> None:
        """
        No CRLF within 107 bytes: refused then, not awaited for ever.
        """
        long = b"PROXY UNKNOWN " + b"x" * 200
        self.assertIsNone(parseProxyHeader(long[:V1_MAX - 1]))
        self.assertRefused(long[:V1_MAX])

    def test_v2Malformed(self) -> None:
        header = v2()
        self.assertRefused(header[:12] + b"\x11" + header[13:])  # version 1
        self.assertRefused(header[:12] + b"\x22" + header[13:])  # command 2
        self.assertRefused(header[:12] + b"\x11")  # early, at the version byte
        self.assertRefused(v2(body=b"\x00" * 11))  # IPv4 addresses too short
        self.assertRefused(v2(family=2, body=b"\x00" * 35))


class PrefixRelay(RecordingRelay):
    """
    Records the address each connection had when the relay heard of it,
    and when its header named its client.
    """

    def linkConnected(self, link):
        self.connected = getattr(self, "connected", []) + [(link.remoteHost, link.remote)]
        return super().linkConnected(link)

    def linkIdentified(self, link):
        self.identified = getattr(self, "identified", []) + [(link.remoteHost, link.remote)]
        return super().linkIdentified(link)


def connect(relay, handshake=None):
    factory = TunnelFactory(relay, proxyProtocol=True,
                            **({"handshake": handshake} if handshake else {}))
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.100", 5555))
    protocol.makeConnection(transport)
    return protocol, transport


class ProtocolTests(SynchronousTestCase):
    def test_admittedWithTheClientsAddress(self) -> None:
        """
        The relay hears of the connection as soon as it is accepted, with
        nobody to judge yet (the balancer's address, no host), and again
        once the header named the client; the bytes after the header in the
        same read are frames.
        """
        relay = PrefixRelay()
        protocol, _ = connect(relay)
        self.assertEqual(relay.connected, [(None, "192.0.2.100:5555")])
        self.assertEqual(getattr(relay, "identified", []), [])
        self.assertEqual(relay.links, [])
        protocol.dataReceived(V1 + frame(b"one"))
        self.assertEqual(relay.identified, [("198.51.100.7", "198.51.100.7:40001")])
        self.assertEqual(relay.links, [protocol])
        self.assertEqual(relay.frames, [b"one"])

    def test_byteByByte(self) -> None:
        relay = PrefixRelay()
        protocol, _ = connect(relay)
        for byte in v2(family=2) + frame(b"one"):
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(relay.identified, [("2001:db8::7", "[2001:db8::7]:40001")])
        self.assertEqual(relay.frames, [b"one"])

    def test_localKeepsTheBalancer(self) -> None:
        relay = PrefixRelay()
        protocol, _ = connect(relay)
        protocol.dataReceived(v2(command=0))
        self.assertEqual(relay.identified, [("192.0.2.100", "192.0.2.100:5555")])

    def test_refusedClientNotReported(self) -> None:
        """
        A client the relay refuses once the header named it is closed; the
        relay, which refused it, hears nothing more of it.
        """
        relay = PrefixRelay()
        protocol, transport = connect(relay)
        relay.allowed = False
        protocol.dataReceived(V1 + frame(b"one"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((relay.links, relay.frames, relay.lost), ([], [], []))

    def test_thenThePreamble(self) -> None:
        """
        The header comes first, then C{--handshake}'s preamble, then frames.
        """
        relay = PrefixRelay()
        protocol, _ = connect(relay, handshake=handshakeFor("rfc1036", connecting=False))
        protocol.dataReceived(V1 + RFC1036_PREAMBLE + frame(b"one"))
        self.assertEqual(relay.links, [protocol])
        self.assertEqual(relay.frames, [b"one"])

    def test_allowSeesTheClient(self) -> None:
        """
        The real relay's C{--allow} judges the address in the header, not
        the balancer's.
        """
        relay = Relay(Clock(), role="server",
                      allow=AddressFilter([parseNetwork("198.51.100.0/24")]))
        relay.udpStarted(FakeUDPTransport())
        protocol, transport = connect(relay)
        protocol.dataReceived(V1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(relay.stats.linksRefused, 0)
        other, transport = connect(relay)
        other.dataReceived(V1.replace(b"198.51.100.7", b"203.0.113.9"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(relay.stats.linksRefused, 1)

    def test_noFramesBeforeTheHeader(self) -> None:
        relay = PrefixRelay()
        protocol, transport = connect(relay)
        protocol.dataReceived(frame(b"classic"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(relay.frames, [])
        self.assertEqual(relay.links, [])


class CountedTests(SynchronousTestCase):
    """
    A missing or malformed header is counted as a pending connection closed
    for C{proxy-header}, logged rate-limited, and has its metric series.
    """

    def assertCounted(self, relay, what: str) -> None:
        events = captureLogEvents(self)
        for _ in range(3):
            protocol, transport = connect(relay)
            protocol.dataReceived(b"GET / HTTP/1.0\r\n")
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(relay.pendingCount(), 0)
        self.assertEqual(relay.stats.pendingClosed["proxy-header"], 3)
        self.assertEqual(relay.stats.linksFailed, 0)
        self.assertEqual(relay.stats.linksRefused, 0)
        warnings = [e for e in events if "PROXY" in str(e.get("why", ""))]
        self.assertEqual(len(warnings), 1)  # rate-limited
        self.assertIn(what, warnings[0]["log_format"])
        self.assertIn("192.0.2.100", warnings[0]["remote"])
        self.assertIn('udptunnel_pending_closed_total{reason="proxy-header"} 3.0', scrape(relay))

    def test_relay(self) -> None:
        relay = Relay(Clock(), role="server",
                      allow=AddressFilter([parseNetwork("198.51.100.0/24")]))
        relay.udpStarted(FakeUDPTransport())
        self.assertIn('udptunnel_pending_closed_total{reason="proxy-header"} 0.0', scrape(relay))
        self.assertCounted(relay, "never became the link")

    def test_serverSessions(self) -> None:
        relay = ServerSessions(Clock(), ("192.0.2.1", 53), lambda protocol: FakeUDPTransport(),
                               allow=AddressFilter([parseNetwork("198.51.100.0/24")]))
        self.assertCounted(relay, "never became a session")

    def test_silentConnectionClosed(self) -> None:
        """
        A connection that never completes its header is closed at the
        pending deadline, which runs from its accept, and counted as a
        timeout (as one that never completes a preamble); no timer of the
        protocol's own is left.
        """
        clock = Clock()
        relay = Relay(clock, role="server", pendingTimeout=5)
        relay.udpStarted(FakeUDPTransport())
        protocol, transport = connect(relay)
        protocol.dataReceived(V1[:10])
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(relay.stats.pendingClosed["timeout"], 1)
        self.assertEqual(relay.pendingCount(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_headersWithinMaxPending(self) -> None:
        """
        Connections still sending their header count against
        C{--max-pending}: one more closes the oldest, so a drip of partial
        headers cannot hold more descriptors than the cap.
        """
        for relay in (Relay(Clock(), role="server", maxPending=4),
                      ServerSessions(Clock(), ("192.0.2.1", 53),
                                     lambda protocol: FakeUDPTransport(), maxPending=4)):
            transports = []
            for _ in range(6):
                protocol, transport = connect(relay)
                protocol.dataReceived(b"PROXY TCP4 10.")
                transports.append(transport)
            self.assertEqual([t.disconnecting for t in transports], [True] * 2 + [False] * 4)
            self.assertEqual(relay.stats.pendingClosed["evicted"], 2)
            self.assertEqual(relay.pendingCount(), 4)

    def test_goneBeforeItsHeader(self) -> None:
        """
        A connection its peer closes before any header (a balancer's TCP
        health check) is counted as closed by its peer, as a probe of a
        server without the PROXY protocol is; it is no failure.
        """
        for relay in (Relay(Clock(), role="server"),
                      ServerSessions(Clock(), ("192.0.2.1", 53),
                                     lambda protocol: FakeUDPTransport())):
            protocol, _ = connect(relay)
            protocol.dataReceived(V1[:10])
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(relay.stats.pendingClosed["peer-closed"], 1)
            self.assertEqual(relay.stats.linksFailed, 0)
            self.assertEqual(relay.pendingCount(), 0)

    def test_scopedAddressRefused(self) -> None:
        """
        A v1 header whose address has a scope id (which Python's ipaddress
        takes, whatever it holds, and C{--allow} would ignore) is refused
        and counted; the bytes it carried reach the log escaped.
        """
        events = captureLogEvents(self)
        relay = Relay(Clock(), role="server", allow=AddressFilter([parseNetwork("::1/128")]))
        relay.udpStarted(FakeUDPTransport())
        for scope in (b"\x1b[2J\x1b[31mESC", b"\nFORGED line"):
            protocol, transport = connect(relay)
            protocol.dataReceived(b"PROXY TCP6 ::1%" + scope + b" ::1 5555 9999\r\n")
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(relay.stats.pendingClosed["proxy-header"], 2)
        self.assertIsNone(relay.link)
        text = "\n".join(formatEvent(event) for event in events)
        self.assertIn("scoped address", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\nFORGED", text)


def haproxyProblem() -> str | None:
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (apt-get install haproxy)"
    return None


class HAProxyTests(TwistdTestCase):
    """
    Debian's HAProxy, on loopback, in front of two installed-twistd servers
    with C{--sessions --proxy-protocol}: one sent PROXY v1, the other v2.
    """

    def setUp(self) -> None:
        problem = haproxyProblem()
        if problem is not None:
            if os.environ.get(REQUIRE_VARIABLE) == "1":
                self.fail(f"{problem}, and {REQUIRE_VARIABLE}=1")
            self.skipTest(problem)
        super().setUp()

    def startServer(self, name: str) -> tuple[int, int, socket.socket]:
        tcp, metrics, peer = freePort(), freePort(), self.udpSocket()
        process = self.spawn(
            name, TWISTD, "-n", "--pidfile=", "udptunnel", "server", "--sessions",
            "--proxy-protocol", "--tcp", f"tcp:{tcp}:interface=127.0.0.1",
            "--udp", "127.0.0.1:0", "--peer", f"127.0.0.1:{peer.getsockname()[1]}",
            "--allow", "127.0.0.5/32", "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
            "--stats-interval", "0")
        self.waitForOutput(process, "serving metrics on")
        self.servers.append(process)
        return tcp, metrics, peer

    def metrics(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as r:
            return r.read().decode()

    def connectFrom(self, source: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return sock

    def test_realClientAddress(self) -> None:
        self.servers: list = []
        (tcp1, metrics1, peer1), (tcp2, metrics2, peer2) = (
            self.startServer("s1"), self.startServer("s2"))
        front = freePort()
        config = self.path("haproxy.cfg")
        with open(config, "w") as f:
            f.write(f"""\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tunnel
    bind 127.0.0.1:{front}
    default_backend relays
backend relays
    balance roundrobin
    server s1 127.0.0.1:{tcp1} send-proxy
    server s2 127.0.0.1:{tcp2} send-proxy-v2
""")
        haproxy = self.spawn("haproxy", shutil.which("haproxy") or "haproxy",
                             "-f", config, "-db")
        self.addCleanup(self.stop, haproxy)

        def listening() -> bool:
            try:
                # From an allowed address: the servers' first refusal (the
                # one their rate-limited log shows) is then the test's own.
                self.connectFrom("127.0.0.5", front).close()
            except OSError:
                return False
            return True

        waitFor(listening, f"haproxy to listen on {front}")
        # Round robin alternates, but the probe above took a turn: each
        # datagram is looked for at both peers rather than at the expected one.
        peers = (peer1, peer2)
        seen = set()
        for n in range(4):
            client = self.connectFrom("127.0.0.5", front)
            payload = f"hello {n}".encode()
            client.sendall(frame(payload))
            got = None
            for index, peer in enumerate(peers):
                got = receive(peer, TIMEOUT / 4)
                if got is not None:
                    seen.add(index)
                    break
            assert got is not None, (self.output(self.servers[0]), self.output(self.servers[1]),
                                     self.output(haproxy))
            self.assertEqual(got[0], payload)
            peers[index].sendto(b"reply " + payload, got[1])
            self.assertEqual(readFrame(client), b"reply " + payload)
        self.assertEqual(seen, {0, 1})  # through both backends (v1 and v2)
        for _ in range(4):
            refused = self.connectFrom("127.0.0.6", front)
            refused.sendall(frame(b"not allowed"))
            self.assertTrue(closedByPeer(refused))
        for n, port in enumerate((metrics1, metrics2)):
            text = self.metrics(port)
            self.assertGreaterEqual(metric(text, "udptunnel_links_total", 'event="up"'), 2)
            self.assertGreaterEqual(metric(text, "udptunnel_links_total", 'event="refused"'), 2)
        for process in self.servers:
            output = self.output(process)
            self.assertIn("TCP 127.0.0.5:", output)
            self.assertNotIn("TCP 127.0.0.1:", output)
            self.assertIn("refused TCP connection from 127.0.0.6:", output)
            self.assertNotIn("Traceback", output)


class OptionsTests(SynchronousTestCase):
    BASE = ("server", "--tcp", "tcp:9999:interface=127.0.0.1", "--peer", "127.0.0.1:53")

    def test_flag(self) -> None:
        self.assertTrue(parse(*self.BASE, "--proxy-protocol").subOptions.config.proxyProtocol)
        self.assertFalse(parse(*self.BASE).subOptions.config.proxyProtocol)

    def test_notWithTLS(self) -> None:
        """
        The balancer's header would come before the TLS handshake, which
        the server reads first: refused on the command line.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        cert, key = authority.issue("server")
        error = self.assertRaises(
            usage.UsageError, parse, *self.BASE, "--proxy-protocol", "--tls-cert", cert,
            "--tls-key", key, "--tls-ca", authority.path)
        self.assertIn("--proxy-protocol is not for --tls-cert", str(error))

    def test_clientHasNone(self) -> None:
        self.assertRaises(usage.UsageError, parse, "client", "--tcp", "127.0.0.1:9999",
                          "--udp", "1", "--proxy-protocol")
