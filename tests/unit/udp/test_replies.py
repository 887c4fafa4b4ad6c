"""
L{udptunnel.udp.replies}: a wildcard-bound socket answers from the address
it was asked on.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support.net import Recorder, pausedUDPPort
from tests.support.system import skipUnlessAble, whyNoIPv6
from udptunnel.udp.port import DatagramSocket
from udptunnel.udp.replies import IN_PKTINFO, IP_PKTINFO, LocalAddresses


class AnswerFromDestinationTests(TestCase):
    """
    A wildcard-bound port answers each source from the local address its
    datagrams were sent to: on Linux all of 127.0.0.0/8 is local, so a
    datagram sent to 127.0.0.5 must be answered from 127.0.0.5 (routing
    alone would pick 127.0.0.1).
    """

    def listen(self, interface: str) -> tuple[DatagramSocket, Recorder]:
        if ":" in interface:
            skipUnlessAble(whyNoIPv6())
        return pausedUDPPort(self, interface)

    def sender(self, family: int = socket.AF_INET) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.settimeout(5)
        if family == socket.AF_INET:
            sock.bind(("127.0.0.1", 0))
        return sock

    def answer(self, port: DatagramSocket, protocol: Recorder, sender: socket.socket,
               to: str) -> Any:
        """
        Send from C{sender} to C{to}, answer what the port read, and return
        where the answer came from.
        """
        sender.sendto(b"question", (to, port.getHost().port))
        port.doRead()
        data, addr = protocol.received[-1]
        self.assertEqual(data, b"question")
        port.sendTo(b"answer", addr)
        answer, source = sender.recvfrom(100)
        self.assertEqual(answer, b"answer")
        return source[:2]

    def test_ipv4(self) -> None:
        """
        On C{0.0.0.0}, each source is answered from the address it sent to,
        from the port's number; the protocol gets the datagram and its source
        as on any socket.
        """
        port, protocol = self.listen("0.0.0.0")
        number = port.getHost().port
        one, two = self.sender(), self.sender()
        self.assertEqual(self.answer(port, protocol, one, "127.0.0.5"), ("127.0.0.5", number))
        self.assertEqual(self.answer(port, protocol, two, "127.0.0.2"), ("127.0.0.2", number))
        self.assertEqual(self.answer(port, protocol, one, "127.0.0.5"), ("127.0.0.5", number))
        # The protocol still gets (data, source address).
        self.assertEqual(protocol.received[0], (b"question", one.getsockname()))

    def test_sourceMoves(self) -> None:
        """
        A source that sends to another local address is answered from that.
        """
        port, protocol = self.listen("0.0.0.0")
        sender = self.sender()
        self.assertEqual(self.answer(port, protocol, sender, "127.0.0.5")[0], "127.0.0.5")
        self.assertEqual(self.answer(port, protocol, sender, "127.0.0.6")[0], "127.0.0.6")

    def test_dualStack(self) -> None:
        """
        On C{::}, an IPv4 datagram (its source IPv4-mapped) and an IPv6 one.
        """
        port, protocol = self.listen("::")
        number = port.getHost().port
        four = self.sender()
        self.assertEqual(self.answer(port, protocol, four, "127.0.0.7"), ("127.0.0.7", number))
        self.assertTrue(protocol.received[-1][1][0].startswith("::ffff:"))
        six = self.sender(socket.AF_INET6)
        six.bind(("::1", 0))
        self.assertEqual(self.answer(port, protocol, six, "::1"), ("::1", number))

    def test_errorsAsTheyAre(self) -> None:
        """
        The kernel's refusals still reach the relay, to be counted.
        """
        port, protocol = self.listen("0.0.0.0")
        sender = self.sender()
        self.answer(port, protocol, sender, "127.0.0.5")
        error = self.assertRaises(OSError, port.sendTo, b"x" * 65508, sender.getsockname())
        self.assertEqual(error.errno, errno.EMSGSIZE)

    def test_bounded(self) -> None:
        """
        Only the most recent sources are remembered; an older one is
        answered from the address routing picks until it sends again.
        """
        port, protocol = self.listen("0.0.0.0")
        assert port.localAddresses is not None
        port.localAddresses.size = 3
        senders = [self.sender() for _ in range(5)]
        for sender in senders:
            self.answer(port, protocol, sender, "127.0.0.5")
        remembered = [port.localAddresses.localFor(s.getsockname()) for s in senders]
        self.assertEqual(remembered, [None, None, "127.0.0.5", "127.0.0.5", "127.0.0.5"])
        port.sendTo(b"late", senders[0].getsockname())
        self.assertEqual(senders[0].recvfrom(100), (b"late", ("127.0.0.1", port.getHost().port)))
        self.assertEqual(self.answer(port, protocol, senders[0], "127.0.0.5")[0], "127.0.0.5")

    def test_boundKeepsPlainPath(self) -> None:
        """
        A socket bound to one address answers from it anyway: it reads with
        C{recvfrom} and sends with the socket's own C{sendto}, as before.
        """
        port, protocol = self.listen("127.0.0.1")
        self.assertIsNone(port.localAddresses)
        self.assertEqual(port.sendTo, port.getHandle().sendto)
        self.assertEqual(port._receive, port.getHandle().recvfrom)
        sender = self.sender()
        self.assertEqual(self.answer(port, protocol, sender, "127.0.0.1")[0], "127.0.0.1")


class GoneSocket:
    """
    A socket whose local address was removed: sendmsg from it fails.
    """

    family = socket.AF_INET

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)

    def sendmsg(self, buffers: Any, ancillary: Any, flags: int, addr: Any) -> int:
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")


class LocalAddressesTests(TestCase):
    def test_addressGone(self) -> None:
        """
        A local address the host no longer has is forgotten: the datagram
        goes from the address routing picks, not into an error.
        """
        sock = GoneSocket()
        local = LocalAddresses(sock)  # type: ignore[arg-type]
        source = ("192.0.2.9", 4000)
        info = IN_PKTINFO.pack(2, socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.1"))
        local.saw(source, [(socket.IPPROTO_IP, IP_PKTINFO, info)])
        self.assertEqual(local.localFor(source), "192.0.2.1")
        self.assertEqual(local.sendTo(b"data", source), 4)
        self.assertEqual(sock.sent, [(b"data", source)])
        self.assertIsNone(local.localFor(source))

    def test_otherAncillaryIgnored(self) -> None:
        """
        Ancillary data other than a pktinfo message teaches no local address
        for the source.
        """
        local = LocalAddresses(GoneSocket())  # type: ignore[arg-type]
        local.saw(("192.0.2.9", 4000), [(socket.SOL_SOCKET, 40, b"\0" * 4)])
        self.assertIsNone(local.localFor(("192.0.2.9", 4000)))
