"""
The bounds on the metrics endpoint (L{udptunnel.ops.limits}): connections at
once, in all and per host, a deadline a drip does not extend, a byte cap,
and a reserve of descriptors left to the tunnel.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import captureLogEvents
from udptunnel.ops import limits
from udptunnel.ops.limits import (
    DEADLINE,
    MAX_BYTES,
    MAX_CONNECTIONS,
    MAX_PER_HOST,
    BoundedFactory,
)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class BoundsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = BoundedFactory(Factory.forProtocol(Recorder), self.clock, "metrics")
        self.patch(limits, "descriptorsFree", lambda: 1000)
        self.port = 40000

    def connect(self, host: str = "192.0.2.1") -> tuple[object, StringTransportWithDisconnection]:
        """
        A connection from C{host}, as a listening port would make it:
        C{None} when the factory refused it.
        """
        self.port += 1
        address = IPv4Address("TCP", host, self.port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        if protocol is not None:
            transport.protocol = protocol
            protocol.makeConnection(transport)
        return protocol, transport

    def test_capInAll(self) -> None:
        """
        Beyond L{MAX_CONNECTIONS} open at once, from any hosts, a new connection
        is refused; once one of them closes, a new one is taken again.
        """
        hosts = [f"192.0.2.{i}" for i in range(MAX_CONNECTIONS)]
        opened = [self.connect(host) for host in hosts]
        self.assertNotIn(None, [protocol for protocol, _ in opened])
        self.assertIsNone(self.connect("198.51.100.1")[0])
        opened[0][1].loseConnection()
        self.assertIsNotNone(self.connect("198.51.100.1")[0])

    def test_capPerHost(self) -> None:
        """
        Beyond L{MAX_PER_HOST} connections open from one host, that host's next
        one is refused; another host's is still taken.
        """
        for _ in range(MAX_PER_HOST):
            self.assertIsNotNone(self.connect()[0])
        self.assertIsNone(self.connect()[0])
        self.assertIsNotNone(self.connect("192.0.2.2")[0])

    def test_reserveKept(self) -> None:
        """
        With fewer than the reserve of descriptors free, nothing is taken:
        they are the tunnel's.
        """
        self.patch(limits, "descriptorsFree", lambda: limits.RESERVE - 1)
        self.assertIsNone(self.connect()[0])
        self.patch(limits, "descriptorsFree", lambda: None)  # cannot tell: no bound
        self.assertIsNotNone(self.connect()[0])

    def test_dripDoesNotExtendTheDeadline(self) -> None:
        """
        A connection is closed L{DEADLINE} seconds after its accept, however
        often it sends a byte meanwhile; nothing stays scheduled after.
        """
        protocol, transport = self.connect()
        assert protocol is not None
        for _ in range(int(DEADLINE) - 1):
            protocol.dataReceived(b"x")  # type: ignore[attr-defined]
            self.clock.advance(1)
        self.assertFalse(transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no flush due: the first line

    def test_closedConnectionCancelsItsDeadline(self) -> None:
        """
        A connection that closes before its deadline leaves no delayed call
        behind.
        """
        _, transport = self.connect()
        transport.loseConnection()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_byteCap(self) -> None:
        """
        A connection may send L{MAX_BYTES} bytes; the byte beyond closes it, and
        is not passed to the wrapped protocol.
        """
        protocol, transport = self.connect()
        assert protocol is not None
        recorder = protocol.wrappedProtocol  # type: ignore[attr-defined]
        protocol.dataReceived(b"x" * MAX_BYTES)  # type: ignore[attr-defined]
        self.assertFalse(transport.disconnected)
        protocol.dataReceived(b"x")  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(recorder.data), MAX_BYTES)

    def test_refusalsLoggedRateLimited(self) -> None:
        """
        Refusals are logged rate-limited: the first one at once, with the peer
        and why; those held back are counted in one line written when the
        factory stops, which leaves no delayed call.
        """
        events = captureLogEvents(self)
        transports = [self.connect()[1] for _ in range(MAX_PER_HOST + 50)]
        lines = [formatEvent(e) for e in events if "closed the connection" in formatEvent(e)]
        self.assertEqual(lines, [(f"metrics: closed the connection from 192.0.2.1:{40000 + 5}: "
                                 f"{MAX_PER_HOST} connections open from its host")])
        for transport in transports[:MAX_PER_HOST]:
            transport.loseConnection()
        self.factory.doStop()  # at stop, what was held back is written
        lines = [formatEvent(e) for e in events if "closed the connection" in formatEvent(e)]
        self.assertEqual(len(lines), 2)
        self.assertIn("(48 more since the last such message)", lines[1])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DescriptorsTests(SynchronousTestCase):
    def test_freeDescriptors(self) -> None:
        """
        On Linux, the count is what the limit leaves: positive, below it.
        """
        import resource

        free = limits.descriptorsFree()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            self.assertIsNone(free)
        else:
            assert free is not None
            self.assertGreater(free, 0)
            self.assertLess(free, soft)
