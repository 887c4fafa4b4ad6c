"""
The tunnel's UDP sockets (L{udptunnel.udp.port}), their service and their
replies from the right address, on real loopback sockets.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from udptunnel.link.listening import hasIPv6
from udptunnel.udp.port import DatagramSocket, bindUDP, connectedUDP
from udptunnel.udp.replies import IN_PKTINFO, IP_PKTINFO, LocalAddresses
from udptunnel.udp.service import UDPService

from .fakes import captureLogEvents


class Counting(DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Any]] = []
        self.reads: list[int] = []

    def datagramsReceived(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.reads.append(len(datagrams))
        self.datagrams.extend(datagrams)


class PortTests(TestCase):
    def listen(self, interface: str = "127.0.0.1") -> tuple[DatagramSocket, Counting]:
        protocol = Counting()
        port = bindUDP(interface, 0, protocol, reactor)
        port.startListening()
        port.stopReading()  # the test calls doRead itself
        self.addCleanup(port.stopListening)
        return port, protocol

    def sender(self, family: int = socket.AF_INET) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        return sock

    def test_emptyDatagramFloodBounded(self) -> None:
        """
        One event-loop turn reads a bounded number of datagrams, however
        small: a flood of empty ones cannot starve the reactor.  (A small
        bound here, so the kernel's default receive buffer holds them all.)
        """
        port, protocol = self.listen()
        port.maxDatagramsPerRead = 50
        sender = self.sender()
        for _ in range(120):
            sender.sendto(b"", ("127.0.0.1", port.getHost().port))
        counts = []
        for _ in range(4):
            port.doRead()
            counts.append(len(protocol.datagrams))
        self.assertEqual(counts, [50, 100, 120, 120])
        self.assertEqual(protocol.reads, [50, 50, 20])
        self.assertEqual({d for d, _ in protocol.datagrams}, {b""})

    def test_largestDatagramIntact(self) -> None:
        port, protocol = self.listen()
        sender = self.sender()
        sender.bind(("127.0.0.1", 0))
        payload = bytes(range(256)) * 255 + bytes(227)
        self.assertEqual(len(payload), 65507)
        sender.sendto(payload, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(protocol.datagrams, [(payload, sender.getsockname())])

    def test_sendTo(self) -> None:
        """
        sendTo is the socket's own: errors come as they are, to be counted.
        """
        port, _ = self.listen()
        receiver = self.sender()
        receiver.bind(("127.0.0.1", 0))
        port.sendTo(b"hello", receiver.getsockname())
        self.assertEqual(receiver.recv(100), b"hello")
        error = self.assertRaises(OSError, port.sendTo, b"x" * 65508, receiver.getsockname())
        self.assertEqual(error.errno, errno.EMSGSIZE)

    def test_ipv6AddressIsHostAndPort(self) -> None:
        """
        An IPv6 source is (host, port), without flow and scope ids.
        """
        if not hasIPv6():
            self.skipTest("this host has no IPv6")
        port, protocol = self.listen("::1")
        sender = self.sender(socket.AF_INET6)
        sender.bind(("::1", 0))
        sender.sendto(b"six", ("::1", port.getHost().port))
        port.doRead()
        self.assertEqual(protocol.datagrams, [(b"six", ("::1", sender.getsockname()[1]))])


class AnswerFromDestinationTests(TestCase):
    """
    A wildcard-bound port answers each source from the local address its
    datagrams were sent to: on Linux all of 127.0.0.0/8 is local, so a
    datagram sent to 127.0.0.5 must be answered from 127.0.0.5 (routing
    alone would pick 127.0.0.1).
    """

    def listen(self, interface: str) -> tuple[DatagramSocket, Counting]:
        if ":" in interface and not hasIPv6():
            self.skipTest("this host has no IPv6")
        protocol = Counting()
        port = bindUDP(interface, 0, protocol, reactor)
        port.startListening()
        port.stopReading()  # the test calls doRead itself
        self.addCleanup(port.stopListening)
        return port, protocol

    def sender(self, family: int = socket.AF_INET) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.settimeout(5)
        if family == socket.AF_INET:
            sock.bind(("127.0.0.1", 0))
        return sock

    def answer(self, port: DatagramSocket, protocol: Counting, sender: socket.socket,
               to: str) -> Any:
        """
        Send from C{sender} to C{to}, answer what the port read, and return
        where the answer came from.
        """
        sender.sendto(b"question", (to, port.getHost().port))
        port.doRead()
        data, addr = protocol.datagrams[-1]
        self.assertEqual(data, b"question")
        port.sendTo(b"answer", addr)
        answer, source = sender.recvfrom(100)
        self.assertEqual(answer, b"answer")
        return source[:2]

    def test_ipv4(self) -> None:
        port, protocol = self.listen("0.0.0.0")
        number = port.getHost().port
        one, two = self.sender(), self.sender()
        self.assertEqual(self.answer(port, protocol, one, "127.0.0.5"), ("127.0.0.5", number))
        self.assertEqual(self.answer(port, protocol, two, "127.0.0.2"), ("127.0.0.2", number))
        self.assertEqual(self.answer(port, protocol, one, "127.0.0.5"), ("127.0.0.5", number))
        # The protocol still gets (data, source address).
        self.assertEqual(protocol.datagrams[0], (b"question", one.getsockname()))

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
        self.assertTrue(protocol.datagrams[-1][1][0].startswith("::ffff:"))
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
        local = LocalAddresses(GoneSocket())  # type: ignore[arg-type]
        local.saw(("192.0.2.9", 4000), [(socket.SOL_SOCKET, 40, b"\0" * 4)])
        self.assertIsNone(local.localFor(("192.0.2.9", 4000)))


class ServiceTests(TestCase):
    def test_bindsOnceAndCloses(self) -> Any:
        protocol = Counting()
        service = UDPService(0, protocol, "127.0.0.1", reactor)
        service.privilegedStartService()
        port = service.port
        service.startService()
        self.assertIs(service.port, port)
        assert port is not None
        self.assertNotEqual(port.fileno(), -1)
        return service.stopService().addCallback(
            lambda _: self.assertEqual(port.fileno(), -1)
        )


class RaisingOnce(Counting):
    """
    A protocol with a bug that shows on the first read only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raised = False
        self.arrived: Deferred[None] = Deferred()

    def datagramsReceived(self, datagrams: list[tuple[bytes, Any]]) -> None:
        if not self.raised:
            self.raised = True
            raise ZeroDivisionError("a bug in the relay")
        super().datagramsReceived(datagrams)
        if not self.arrived.called:
            self.arrived.callback(None)


class GuardTests(TestCase):
    """
    An exception out of the protocol must not close the port: the reactor
    treats one raised by doRead as a lost connection.
    """

    @inlineCallbacks
    def test_socketStaysOpen(self) -> Any:
        events = captureLogEvents(self)
        protocol = RaisingOnce()
        port = bindUDP("127.0.0.1", 0, protocol, reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        address = ("127.0.0.1", port.getHost().port)
        sender.sendto(b"first", address)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertTrue(protocol.raised)
        sender.sendto(b"second", address)
        yield protocol.arrived.addTimeout(5, reactor)
        self.assertEqual([d for d, _ in protocol.datagrams], [b"second"])
        self.assertIn(port, reactor.getReaders())
        self.assertEqual(len([e for e in events if "log_failure" in e]), 1)
        self.flushLoggedErrors(ZeroDivisionError)


class SessionSocketTests(TestCase):
    """
    A server session's own socket, connected to the peer: the kernel drops
    every other source.
    """

    @inlineCallbacks
    def test_onlyThePeerGetsThrough(self) -> Any:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(peer.close)
        peer.bind(("127.0.0.1", 0))
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(stranger.close)
        protocol = RaisingOnce()
        protocol.raised = True  # no bug here: just collect
        port = connectedUDP("127.0.0.1", peer.getsockname(), protocol, reactor)
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)
        stranger.sendto(b"stranger", address)
        peer.sendto(b"peer", address)
        yield protocol.arrived.addTimeout(5, reactor)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(protocol.datagrams, [(b"peer", peer.getsockname())])
        port.sendTo(b"reply", peer.getsockname())
        peer.settimeout(5)
        self.assertEqual(peer.recvfrom(100), (b"reply", address))
        self.assertIn(port, reactor.getReaders())
        port.stopListening()
        self.assertEqual(port.socket.fileno(), -1)
        self.assertNotIn(port, reactor.getReaders())
