"""
The installed twistd against stand-ins for rfc1036/udptunnel's ends, and a
bare C{--tcp PORT} on both stacks.
"""

from __future__ import annotations

import socket

from tests.support.net import (
    TIMEOUT,
    closedByPeer,
    frame,
    freePort,
    readExactly,
    readFrame,
    receive,
)
from tests.support.processes import STOPPED_BY_SIGTERM, TWISTD, TwistdTestCase
from tests.support.system import skipUnlessAble, whyNoIPv6
from udptunnel.link.preamble import (
    RFC1036_PREAMBLE,
)


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
        """
        A server with C{--handshake rfc1036} relays a stand-in rfc1036 client's
        frames to its peer, after the preamble, and the peer's reply back.
        """
        tcp, pop = self.startServer()
        self.assertCarries(tcp, pop)

    def test_serverSessionsWithStandInClient(self) -> None:
        """
        The same with C{--sessions}: the client's connection becomes a session
        after its preamble, and relays both ways.
        """
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
        """
        The server says it listens on C{[::]} for IPv6 and IPv4; an IPv6 client
        outside C{--allow 127.0.0.0/8} is hung up on and logged as C{[::1]}; an
        IPv4 client is judged, relayed and logged as C{127.0.0.1}, never as
        C{::ffff:127.0.0.1}.
        """
        skipUnlessAble(whyNoIPv6())
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
