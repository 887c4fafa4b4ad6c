"""
The thin protocols: framing on the TCP side, forwarding on the UDP side.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from udptunnel.interfaces import ILink, IRelay
from udptunnel.protocols import TunnelDatagramProtocol, TunnelFactory

from .fakes import FakeUDPTransport


@implementer(IRelay)
class RecordingRelay:
    """
    Records what the protocols report.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self.links: list[ILink] = []
        self.lost: list[ILink] = []
        self.udp = None

    def udpStarted(self, transport):
        self.udp = transport

    def udpStopped(self):
        self.udp = None

    def datagramReceived(self, data, addr):
        self.datagrams.append((data, addr))

    def linkMade(self, link):
        self.links.append(link)

    def frameReceived(self, link, data):
        self.frames.append(data)

    def linkLost(self, link, reason):
        self.lost.append(link)


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


class NoDelayTransport(StringTransport):
    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class StreamProtocolTests(SynchronousTestCase):
    SAMPLES = [b"", b"a", b"\x00\x01\x02", b"x" * 1400, b"y" * 8193, b"z" * 65535]

    def connect(self, transport: StringTransport | None = None):
        self.relay = RecordingRelay()
        protocol = TunnelFactory(self.relay).buildProtocol(None)
        self.transport = transport or StringTransport(
            peerAddress=IPv4Address("TCP", "192.0.2.7", 4321)
        )
        protocol.makeConnection(self.transport)
        return protocol

    def test_oneByteAtATime(self) -> None:
        protocol = self.connect()
        stream = b"".join(frame(s) for s in self.SAMPLES)
        for i in range(len(stream)):
            protocol.dataReceived(stream[i : i + 1])
        self.assertEqual(self.relay.frames, self.SAMPLES)

    def test_oneChunk(self) -> None:
        protocol = self.connect()
        protocol.dataReceived(b"".join(frame(s) for s in self.SAMPLES))
        self.assertEqual(self.relay.frames, self.SAMPLES)

    def test_largestFrameIsNoError(self) -> None:
        """
        65535 bytes is a legal frame: the relay decides whether UDP can
        carry it, the framing does not drop the connection.
        """
        protocol = self.connect()
        protocol.dataReceived(frame(b"z" * 65535) + frame(b"next"))
        self.assertEqual([len(f) for f in self.relay.frames], [65535, 4])
        self.assertFalse(self.transport.disconnecting)

    def test_sendFrame(self) -> None:
        protocol = self.connect()
        for sample in self.SAMPLES:
            protocol.sendFrame(sample)
        self.assertEqual(self.transport.value(), b"".join(frame(s) for s in self.SAMPLES))

    def test_wireIsBigEndian(self) -> None:
        protocol = self.connect()
        protocol.sendFrame(b"\xab" * 258)
        self.assertEqual(self.transport.value()[:2], b"\x01\x02")

    def test_linkLifecycle(self) -> None:
        protocol = self.connect()
        self.assertEqual(self.relay.links, [protocol])
        self.assertEqual(protocol.peer, "192.0.2.7:4321")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.relay.lost, [protocol])

    def test_ipv6PeerInBrackets(self) -> None:
        protocol = self.connect(
            StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::1", 9999))
        )
        self.assertEqual(protocol.peer, "[2001:db8::1]:9999")

    def test_noDelay(self) -> None:
        """
        Nagle off: frames are batched per reactor turn by Twisted already.
        """
        transport = NoDelayTransport()
        self.connect(transport)
        self.assertTrue(transport.noDelay)

    def test_abort(self) -> None:
        protocol = self.connect()
        protocol.abort()
        self.assertTrue(self.transport.disconnecting)

    @given(
        st.lists(st.binary(max_size=300), max_size=20),
        st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10),
    )
    def test_anySplitGivesSameFrames(self, datagrams, cuts) -> None:
        """
        However TCP slices the stream, the same datagrams come out.
        """
        protocol = self.connect()
        stream = b"".join(frame(d) for d in datagrams)
        position, i = 0, 0
        while position < len(stream):
            step = cuts[i % len(cuts)]
            protocol.dataReceived(stream[position : position + step])
            position += step
            i += 1
        self.assertEqual(self.relay.frames, datagrams)


class DatagramProtocolTests(SynchronousTestCase):
    def test_forwardsAndAnnounces(self) -> None:
        relay = RecordingRelay()
        protocol = TunnelDatagramProtocol(relay)
        transport = FakeUDPTransport()
        protocol.makeConnection(transport)
        self.assertIs(relay.udp, transport)
        protocol.datagramReceived(b"", ("127.0.0.1", 1))
        protocol.datagramReceived(b"data", ("::1", 2))
        self.assertEqual(relay.datagrams, [(b"", ("127.0.0.1", 1)), (b"data", ("::1", 2))])
        protocol.doStop()
        self.assertIsNone(relay.udp)
