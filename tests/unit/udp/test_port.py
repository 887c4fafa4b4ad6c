"""
L{udptunnel.udp.port}: the tunnel's UDP sockets and their one batched read
loop, on loopback.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.fakes import captureLogEvents
from tests.support.net import Recorder, Sink, pausedUDPPort, udpSocket
from tests.support.system import skipUnlessAble, whyNoIPv6
from udptunnel.udp.port import DatagramSocket, bindUDP, connectedUDP, waiting
from udptunnel.udp.service import UDPService


class PortTests(TestCase):
    def listen(self, interface: str = "127.0.0.1") -> tuple[DatagramSocket, Recorder]:
        return pausedUDPPort(self, interface)

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
            counts.append(len(protocol.received))
        self.assertEqual(counts, [50, 100, 120, 120])
        self.assertEqual(protocol.reads, [50, 50, 20])
        self.assertEqual({d for d, _ in protocol.received}, {b""})

    def test_largestDatagramIntact(self) -> None:
        """
        The largest UDP payload over IPv4, 65507 bytes, is read whole, with its
        source.
        """
        port, protocol = self.listen()
        sender = self.sender()
        sender.bind(("127.0.0.1", 0))
        payload = bytes(range(256)) * 255 + bytes(227)
        self.assertEqual(len(payload), 65507)
        sender.sendto(payload, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(protocol.received, [(payload, sender.getsockname())])

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
        skipUnlessAble(whyNoIPv6())
        port, protocol = self.listen("::1")
        sender = self.sender(socket.AF_INET6)
        sender.bind(("::1", 0))
        sender.sendto(b"six", ("::1", port.getHost().port))
        port.doRead()
        self.assertEqual(protocol.received, [(b"six", ("::1", sender.getsockname()[1]))])


class RaisingOnce(Recorder):
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
        """
        After the protocol raised on a read, logged once with its traceback,
        the port still reads and hands over the next datagram.
        """
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
        self.assertEqual([d for d, _ in protocol.received], [b"second"])
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
        """
        A socket from L{connectedUDP} receives the peer's datagrams and not a
        stranger's, and sends to the peer; stopped, it is closed and no longer
        read.
        """
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
        self.assertEqual(protocol.received, [(b"peer", peer.getsockname())])
        port.sendTo(b"reply", peer.getsockname())
        peer.settimeout(5)
        self.assertEqual(peer.recvfrom(100), (b"reply", address))
        self.assertIn(port, reactor.getReaders())
        port.stopListening()
        self.assertEqual(port.socket.fileno(), -1)
        self.assertNotIn(port, reactor.getReaders())


class AdoptionTests(TestCase):
    """
    The adopted socket is a L{DatagramSocket}: the tunnel's own batched,
    bounded read.
    """

    def test_adoptedReadsInBatches(self) -> None:
        """
        A descriptor passed blocking is adopted on its port as a
        L{DatagramSocket}, made non-blocking, that reads at most
        C{maxDatagramsPerRead} datagrams a turn, in order.
        """
        passed = udpSocket(self)
        passed.setblocking(True)  # as systemd passes it
        protocol = Recorder()
        service = UDPService(0, protocol, "", reactor, fd=passed.fileno())
        service.startService()
        self.addCleanup(service.stopService)
        port = service.port
        assert port is not None
        self.assertIsInstance(port, DatagramSocket)
        self.assertEqual(port.getHost().port, passed.getsockname()[1])
        port.stopReading()  # the test reads itself
        port.maxDatagramsPerRead = 3
        sender = udpSocket(self)
        for n in range(5):
            sender.sendto(b"%d" % n, passed.getsockname())
        for _ in range(3):
            port.doRead()  # never blocks: the socket was made non-blocking
        self.assertEqual(protocol.reads, [3, 2])
        self.assertEqual([d for d, _ in protocol.received], [b"0", b"1", b"2", b"3", b"4"])

    def test_stopKeepsThePassedDescriptor(self) -> Any:
        """
        The port works on a duplicate: stopping it leaves the descriptor
        systemd passed open, so a restart adopts it again.
        """
        passed = udpSocket(self)
        service = UDPService(0, Recorder(), "", reactor, fd=passed.fileno())
        service.startService()

        def restart(_: object) -> None:
            os.fstat(passed.fileno())  # still open: raises if closed
            service.startService()
            self.addCleanup(service.stopService)
            assert service.port is not None
            self.assertEqual(service.port.getHost().port, passed.getsockname()[1])

        return service.stopService().addCallback(restart)


class WaitingTests(TestCase):
    """
    The UDP read loop asks whether more waits instead of reading until a
    read fails with EAGAIN (the latency path's costliest call of ours).
    """

    def test_waiting(self) -> None:
        """
        L{waiting} says whether a datagram waits to be read, an empty one
        included, and no longer once it was read.
        """
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        readable = waiting(receiver)
        self.assertFalse(readable())
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.sendto(b"", receiver.getsockname())  # FIONREAD would say 0 here
        self.assertTrue(readable())
        receiver.recv(10)
        self.assertFalse(readable())

    def test_oneDatagramOneRead(self) -> None:
        """
        A single datagram waiting is delivered with one receive call, without
        another that would fail with EAGAIN.
        """
        port = bindUDP("127.0.0.1", 0, Sink(), reactor)
        port.startListening()
        port.stopReading()
        self.addCleanup(port.stopListening)
        got: list[Any] = []
        port.protocol.datagramsReceived = got.extend  # type: ignore[attr-defined]
        real = port._receive
        calls: list[int] = []

        def counting(size: int) -> Any:
            calls.append(size)
            return real(size)

        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.sendto(b"one", port.socket.getsockname())
        port._receive = counting
        port.doRead()
        self.assertEqual([d for d, _ in got], [b"one"])
        self.assertEqual(len(calls), 1)


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
