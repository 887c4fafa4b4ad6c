"""
The tunnel's UDP port, on a real loopback socket.
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

from udptunnel.datagram import TunnelUDPPort, UDPService

from .fakes import captureLogEvents


class Counting(DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Any]] = []
        self.reads: list[int] = []

    def datagramsReceived(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.reads.append(len(datagrams))
        self.datagrams.extend(datagrams)


class PortTests(TestCase):
    def listen(self, interface: str = "127.0.0.1") -> tuple[TunnelUDPPort, Counting]:
        protocol = Counting()
        port = TunnelUDPPort(0, protocol, interface, 65535, reactor)
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
        try:
            port, protocol = self.listen("::1")
        except Exception as e:  # noqa: BLE001
            self.skipTest(f"no IPv6 loopback: {e}")
        sender = self.sender(socket.AF_INET6)
        sender.bind(("::1", 0))
        sender.sendto(b"six", ("::1", port.getHost().port))
        port.doRead()
        self.assertEqual(protocol.datagrams, [(b"six", ("::1", sender.getsockname()[1]))])


class ServiceTests(TestCase):
    def test_bindsOnceAndCloses(self) -> Any:
        protocol = Counting()
        service = UDPService(0, protocol, "127.0.0.1", 65535, reactor)
        service.privilegedStartService()
        port = service.port
        service.startService()
        self.assertIs(service.port, port)
        assert port is not None
        self.assertTrue(port.connected)
        return service.stopService().addCallback(
            lambda _: self.assertFalse(port.connected)
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
        port = TunnelUDPPort(0, protocol, "127.0.0.1", 65535, reactor)
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
        self.assertTrue(port.connected)
        self.assertEqual(len([e for e in events if "log_failure" in e]), 1)
        self.flushLoggedErrors(ZeroDivisionError)
