"""
C{--handshake rfc1036}: the 32-byte preamble of Marco d'Itri's udptunnel,
sent by our client before any frame, required and stripped by our server.

Unit tests drive L{TunnelStreamProtocol} over a C{StringTransport} (with a
recording relay, and with the real relays to see the mismatch counted); the
end-to-end tests run the installed twistd against stand-in peers that do
what rfc1036/udptunnel does: a client that sends the preamble then frames,
a server that reads 32 bytes, compares them and hangs up on a mismatch.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from udptunnel.link.preamble import (
    NO_HANDSHAKE,
    RFC1036_PREAMBLE,
    Handshake,
    HandshakeMismatch,
    checkPreamble,
    handshakeFor,
)
from udptunnel.link.protocol import TunnelFactory
from udptunnel.tunnel.serversessions import ServerSessions
from udptunnel.tunnel.single import Relay

from .fakes import FakeUDPTransport, captureLogEvents
from .test_metrics import scrape
from .test_protocols import RecordingRelay, frame
from .test_twistd import (
    STOPPED_BY_SIGTERM,
    TIMEOUT,
    TWISTD,
    TwistdTestCase,
    freePort,
    receive,
)

SERVER = handshakeFor("rfc1036", connecting=False)
CLIENT = handshakeFor("rfc1036", connecting=True)
#: The same length as the preamble, one byte wrong (the last).
WRONG = RFC1036_PREAMBLE[:-1] + b"\x00"


class ReasonRecordingRelay(RecordingRelay):
    def linkLost(self, link, reason):
        super().linkLost(link, reason)
        self.reasons = getattr(self, "reasons", []) + [reason]


def connect(relay, handshake=NO_HANDSHAKE, tls=False):
    protocol = TunnelFactory(relay, tls=tls, handshake=handshake).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
    protocol.makeConnection(transport)
    return protocol, transport


class PreambleTests(SynchronousTestCase):
    def test_theBytes(self) -> None:
        """
        The preamble is the 32 bytes the issue quotes from rfc1036/udptunnel.
        """
        self.assertEqual(RFC1036_PREAMBLE.hex(" "),
                         "75 64 70 74 75 6e 6e 65 6c 20 62 79 20 6d 64 2e "
                         "00 00 00 01 03 06 10 15 21 28 36 45 55 66 78 91")

    def test_profiles(self) -> None:
        self.assertEqual((CLIENT.send, CLIENT.expect), (RFC1036_PREAMBLE, b""))
        self.assertEqual((SERVER.send, SERVER.expect), (b"", RFC1036_PREAMBLE))
        self.assertEqual(handshakeFor("none", True), NO_HANDSHAKE)
        # A listening end without a preamble watches for rfc1036's.
        self.assertEqual(handshakeFor("none", False),
                         Handshake(foreign=(("rfc1036", RFC1036_PREAMBLE),)))
        self.assertEqual(SERVER.foreign, ())

    def test_check(self) -> None:
        self.assertIsNone(checkPreamble(b"abc", b""))
        self.assertIsNone(checkPreamble(b"abc", b"ab"))
        self.assertTrue(checkPreamble(b"abc", b"abc"))
        self.assertTrue(checkPreamble(b"abc", b"abcdef"))
        self.assertFalse(checkPreamble(b"abc", b"x"))
        self.assertFalse(checkPreamble(b"abc", b"abx"))


class ServerProtocolTests(SynchronousTestCase):
    """
    A listening end with the profile requires the preamble, strips it, and
    only then makes the connection the link.
    """

    def test_preambleThenFramesInOneRead(self) -> None:
        relay = RecordingRelay()
        protocol, transport = connect(relay, SERVER)
        self.assertEqual(relay.links, [])
        protocol.dataReceived(RFC1036_PREAMBLE + frame(b"one") + frame(b"two"))
        self.assertEqual(relay.links, [protocol])
        self.assertEqual(relay.frames, [b"one", b"two"])
        self.assertEqual(transport.value(), b"")  # a server sends no preamble
        self.assertFalse(transport.disconnecting)

    def test_oneByteAtATime(self) -> None:
        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER)
        stream = RFC1036_PREAMBLE + frame(b"") + frame(b"x" * 300)
        for i in range(len(stream)):
            protocol.dataReceived(stream[i : i + 1])
            self.assertEqual(relay.links, [protocol] if i >= 31 else [], i)
        self.assertEqual(relay.frames, [b"", b"x" * 300])

    def test_preambleAloneThenFrames(self) -> None:
        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertEqual((relay.links, relay.frames), ([protocol], []))
        protocol.dataReceived(frame(b"after"))
        self.assertEqual(relay.frames, [b"after"])

    def test_mismatchCloses(self) -> None:
        """
        A wrong preamble closes the connection; nothing of it is a frame,
        it never becomes the link, and the relay is told why.
        """
        relay = ReasonRecordingRelay()
        protocol, transport = connect(relay, SERVER)
        protocol.dataReceived(WRONG + frame(b"never"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual((relay.links, relay.frames), ([], []))
        protocol.dataReceived(frame(b"late"))
        self.assertEqual(relay.frames, [])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(relay.lost, [protocol])
        self.assertTrue(relay.reasons[0].check(HandshakeMismatch))

    def test_mismatchAtTheFirstWrongByte(self) -> None:
        """
        The classic wire (a frame's length first) is refused as soon as a
        byte differs, without waiting for 32 bytes.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, SERVER)
        protocol.dataReceived(b"u")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"\x00")
        self.assertTrue(transport.disconnecting)

    def test_tlsAndPreamble(self) -> None:
        """
        Over TLS the connection becomes the link once both the handshake is
        done and the preamble (inside the TLS stream) arrived.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER, tls=True)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertEqual(relay.links, [])
        protocol.handshakeCompleted()
        self.assertEqual(relay.links, [protocol])

        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER, tls=True)
        protocol.handshakeCompleted()
        self.assertEqual(relay.links, [])
        protocol.dataReceived(RFC1036_PREAMBLE + frame(b"a"))
        self.assertEqual((relay.links, relay.frames), ([protocol], [b"a"]))

    def test_withoutProfileThePreambleIsFrames(self) -> None:
        """
        The default (C{none}) is the classic wire: the preamble's first two
        bytes are read as a frame length, as 1.1 would.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay)
        self.assertEqual(relay.links, [protocol])
        protocol.dataReceived(frame(RFC1036_PREAMBLE))
        self.assertEqual(relay.frames, [RFC1036_PREAMBLE])


NONE_SERVER = handshakeFor("none", connecting=False)


class ForeignPreambleTests(SynchronousTestCase):
    """
    A listening end of the classic wire that receives rfc1036's preamble
    closes the connection and says which C{--handshake} the peer wants,
    instead of reading the preamble's C{ud} as a 30,052-byte frame.
    """

    def test_preambleRefusedWithTheHint(self) -> None:
        relay = ReasonRecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        self.assertEqual(relay.links, [protocol])  # the link at once, as before
        protocol.dataReceived(RFC1036_PREAMBLE + frame(b"never"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(relay.frames, [])
        (reason,) = relay.reasons
        self.assertTrue(reason.check(HandshakeMismatch))
        self.assertIn("the peer sends rfc1036's handshake: use --handshake rfc1036",
                      reason.getErrorMessage())

    def test_oneByteAtATime(self) -> None:
        relay = ReasonRecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        for i, byte in enumerate(RFC1036_PREAMBLE):
            self.assertFalse(transport.disconnecting, i)
            protocol.dataReceived(bytes([byte]))
        self.assertTrue(transport.disconnecting)

    def test_framesPassAtOnce(self) -> None:
        """
        A stream whose first byte cannot begin the preamble is frames from
        that byte; one that begins like it is held only until a byte
        differs, and then parsed whole.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay, NONE_SERVER)
        protocol.dataReceived(frame(b"one"))
        self.assertEqual(relay.frames, [b"one"])

        relay = RecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        big = b"u" + b"x" * (0x7578 - 1)
        stream = frame(big) + frame(b"two")
        protocol.dataReceived(stream[:1])
        self.assertEqual(protocol.recvd, b"")  # held: it may be the preamble
        protocol.dataReceived(stream[1:])
        self.assertEqual(relay.frames, [big, b"two"])
        self.assertFalse(transport.disconnecting)

    def test_nearMissIsFrames(self) -> None:
        """
        The preamble with its last byte wrong is no preamble: frames.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        protocol.dataReceived(WRONG)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol.recvd, WRONG)

    def test_pendingConnectionCounted(self) -> None:
        """
        Refused while waiting (a live link was there), it is counted as a
        pending connection closed for C{handshake}, and logged with the
        hint; the live link is untouched.
        """
        events = captureLogEvents(self)
        relay = Relay(Clock(), role="server")
        relay.udpStarted(FakeUDPTransport())
        live, _ = connect(relay, NONE_SERVER)
        live.dataReceived(frame(b"traffic"))
        protocol, transport = connect(relay, NONE_SERVER)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(relay.link, live)
        self.assertEqual(relay.stats.pendingClosed["handshake"], 1)
        self.assertTrue(any("use --handshake rfc1036" in str(e.get("why", "")) for e in events))

    def test_clientDoesNotWatch(self) -> None:
        """
        A connecting end never receives a preamble (rfc1036's server sends
        none): its first bytes are frames, whatever they are.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, handshakeFor("none", connecting=True))
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertFalse(transport.disconnecting)


class ClientProtocolTests(SynchronousTestCase):
    """
    A connecting end with the profile sends the preamble before any frame.
    """

    def test_preambleFirst(self) -> None:
        relay = RecordingRelay()
        protocol, transport = connect(relay, CLIENT)
        self.assertEqual(transport.value(), RFC1036_PREAMBLE)
        self.assertEqual(relay.links, [protocol])
        protocol.sendFrames([b"hello"])
        self.assertEqual(transport.value(), RFC1036_PREAMBLE + frame(b"hello"))
        protocol.dataReceived(frame(b"reply"))  # the server sends no preamble
        self.assertEqual(relay.frames, [b"reply"])

    def test_afterTLS(self) -> None:
        relay = RecordingRelay()
        protocol, transport = connect(relay, CLIENT, tls=True)
        self.assertEqual(transport.value(), b"")
        protocol.handshakeCompleted()
        self.assertEqual(transport.value(), RFC1036_PREAMBLE)

    def test_refusedSendsNothing(self) -> None:
        relay = RecordingRelay()
        relay.allowed = False
        _, transport = connect(relay, CLIENT)
        self.assertEqual(transport.value(), b"")

    def test_defaultSendsNothing(self) -> None:
        _, transport = connect(RecordingRelay())
        self.assertEqual(transport.value(), b"")


class CountedTests(SynchronousTestCase):
    """
    The relays count a mismatch as a pending connection closed for
    C{handshake}, log it rate-limited, and the metric has the series.
    """

    def assertCounted(self, relay, what: str) -> None:
        events = captureLogEvents(self)
        for _ in range(3):
            protocol, transport = connect(relay, SERVER)
            self.assertEqual(relay.pendingCount(), 1)
            protocol.dataReceived(WRONG)
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(relay.pendingCount(), 0)
        self.assertEqual(relay.stats.pendingClosed["handshake"], 3)
        self.assertEqual(relay.stats.linksFailed, 0)
        self.assertEqual(relay.stats.linksUp, 0)
        warnings = [e for e in events if "preamble" in str(e.get("why", ""))]
        self.assertEqual(len(warnings), 1)  # rate-limited: 3 within the interval
        self.assertIn(what, warnings[0]["log_format"])
        self.assertIn('udptunnel_pending_closed_total{reason="handshake"} 3.0', scrape(relay))

    def test_relay(self) -> None:
        relay = Relay(Clock(), role="server")
        relay.udpStarted(FakeUDPTransport())
        self.assertIn('udptunnel_pending_closed_total{reason="handshake"} 0.0', scrape(relay))
        self.assertCounted(relay, "never became the link")

    def test_serverSessions(self) -> None:
        relay = ServerSessions(Clock(), ("192.0.2.1", 53), lambda protocol: FakeUDPTransport())
        self.assertCounted(relay, "never became a session")

    def test_serverSessionsMatch(self) -> None:
        relay = ServerSessions(Clock(), ("192.0.2.1", 53), lambda protocol: FakeUDPTransport())
        protocol, _ = connect(relay, SERVER)
        self.assertEqual(relay.sessionCount(), 0)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertEqual(relay.sessionCount(), 1)

    def test_pendingTimeoutBoundsTheWait(self) -> None:
        """
        A connection that never sends its preamble is closed at the pending
        deadline, as one that never sends a frame.
        """
        clock = Clock()
        relay = Relay(clock, role="server", pendingTimeout=5)
        relay.udpStarted(FakeUDPTransport())
        protocol, transport = connect(relay, SERVER)
        protocol.dataReceived(RFC1036_PREAMBLE[:10])
        clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(relay.stats.pendingClosed["timeout"], 1)


def readExactly(sock: socket.socket, count: int) -> bytes:
    """
    C{count} bytes from C{sock} (fewer if it closes), within L{TIMEOUT}.
    """
    sock.settimeout(TIMEOUT)
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def readFrame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", readExactly(sock, 2))
    return readExactly(sock, length)


def closedByPeer(sock: socket.socket) -> bool:
    """
    Whether the peer closes C{sock} (EOF or reset) within L{TIMEOUT}.
    """
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class StandInPeerTests(TwistdTestCase):
    """
    The installed twistd against stand-ins for rfc1036/udptunnel's ends.
    """

    def tcpClient(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        return sock

    def startServer(self, *extra: str) -> tuple[int, socket.socket]:
        """
        Our server with C{--handshake rfc1036}, its fixed peer a UDP socket
        of the test; returns its TCP port and that socket.
        """
        tcp, pop = freePort(), self.udpSocket()
        self.server = self.spawn(
            "server", TWISTD, "-n", "--pidfile=", "udptunnel", "server",
            "--tcp", f"tcp:{tcp}:interface=127.0.0.1", "--udp", "127.0.0.1:0",
            "--peer", f"127.0.0.1:{pop.getsockname()[1]}", "--handshake", "rfc1036",
            "--stats-interval", "0", *extra,
        )
        self.waitForOutput(self.server, "listening for the TCP link on")
        return tcp, pop

    def assertCarries(self, tcp: int, pop: socket.socket) -> None:
        """
        A stand-in rfc1036 client: the preamble, then frames; they come out
        at the peer, and the peer's reply comes back framed, no preamble.
        """
        client = self.tcpClient(tcp)
        client.sendall(RFC1036_PREAMBLE + frame(b"hello"))
        received = receive(pop, TIMEOUT)
        assert received is not None, self.output(self.server)
        self.assertEqual(received[0], b"hello")
        pop.sendto(b"reply", received[1])
        self.assertEqual(readFrame(client), b"reply")

    def test_serverWithStandInClient(self) -> None:
        tcp, pop = self.startServer()
        self.assertCarries(tcp, pop)

    def test_serverSessionsWithStandInClient(self) -> None:
        tcp, pop = self.startServer("--sessions")
        self.assertCarries(tcp, pop)

    def test_serverMismatch(self) -> None:
        """
        A client of the classic wire (no preamble) is hung up on; the
        server says why, and counts it in the stats line.
        """
        tcp, pop = self.startServer()
        client = self.tcpClient(tcp)
        client.sendall(frame(b"classic"))
        self.assertTrue(closedByPeer(client))
        self.waitForOutput(self.server, "preamble of --handshake")
        self.assertIsNone(receive(pop, 0.5))
        self.assertIn(self.stop(self.server), STOPPED_BY_SIGTERM)
        self.assertIn("handshake=1", self.output(self.server))

    def test_serverWithoutProfile(self) -> None:
        """
        A server without C{--handshake} hangs up on a stand-in rfc1036
        client and says what to use, instead of relaying garbage.
        """
        tcp, pop = freePort(), self.udpSocket()
        self.server = self.spawn(
            "server", TWISTD, "-n", "--pidfile=", "udptunnel", "server",
            "--tcp", f"tcp:{tcp}:interface=127.0.0.1", "--udp", "127.0.0.1:0",
            "--peer", f"127.0.0.1:{pop.getsockname()[1]}", "--stats-interval", "0",
        )
        self.waitForOutput(self.server, "listening for the TCP link on")
        client = self.tcpClient(tcp)
        client.sendall(RFC1036_PREAMBLE + frame(b"hello") * 2000)
        self.assertTrue(closedByPeer(client))
        self.waitForOutput(self.server, "the peer sends rfc1036's handshake: "
                                        "use --handshake rfc1036")
        self.assertIsNone(receive(pop, 0.5))

    def test_clientWithStandInServer(self) -> None:
        """
        A stand-in rfc1036 server: it reads 32 bytes and compares them, then
        frames flow both ways.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        app = self.udpSocket()
        udp = freePort(socket.SOCK_DGRAM)
        self.spawn(
            "client", TWISTD, "-n", "--pidfile=", "udptunnel", "client",
            "--tcp", f"127.0.0.1:{listener.getsockname()[1]}",
            "--udp", f"127.0.0.1:{udp}", "--peer", f"127.0.0.1:{app.getsockname()[1]}",
            "--handshake", "rfc1036",
        )
        connection, _ = listener.accept()
        self.addCleanup(connection.close)
        self.assertEqual(readExactly(connection, 32), RFC1036_PREAMBLE)
        app.sendto(b"query", ("127.0.0.1", udp))
        self.assertEqual(readFrame(connection), b"query")
        connection.sendall(frame(b"answer"))
        self.assertEqual(receive(app, TIMEOUT), (b"answer", ("127.0.0.1", udp)))


class DualStackTests(TwistdTestCase):
    """
    A bare C{--tcp PORT} listens on C{::} for IPv6 and IPv4; IPv4 peers
    (C{::ffff:127.0.0.1} to the socket) are shown and filtered as IPv4.
    """

    def test_barePort(self) -> None:
        from udptunnel.link.listening import hasIPv6

        if not hasIPv6():
            self.skipTest("this host has no IPv6")
        tcp, pop = freePort(), self.udpSocket()
        server = self.spawn(
            "server", TWISTD, "-n", "--pidfile=", "udptunnel", "server",
            "--tcp", str(tcp), "--udp", "127.0.0.1:0",
            "--peer", f"127.0.0.1:{pop.getsockname()[1]}", "--allow", "127.0.0.0/8",
        )
        self.waitForOutput(server, f"listening for the TCP link on [::]:{tcp} (IPv6 and IPv4)")

        ipv6 = socket.create_connection(("::1", tcp), timeout=TIMEOUT)
        self.addCleanup(ipv6.close)
        self.assertTrue(closedByPeer(ipv6))  # ::1 is not in --allow 127.0.0.0/8
        self.waitForOutput(server, "[::1]:")

        ipv4 = socket.create_connection(("127.0.0.1", tcp), timeout=TIMEOUT)
        self.addCleanup(ipv4.close)
        ipv4.sendall(frame(b"over IPv4"))
        received = receive(pop, TIMEOUT)
        self.assertIsNotNone(received, self.output(server))
        self.assertEqual(received[0], b"over IPv4")
        self.waitForOutput(server, "link up: 127.0.0.1:")
        self.assertNotIn("::ffff:", self.output(server))
