"""
The thin protocols: framing on the TCP side, forwarding on the UDP side.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from udptunnel.interfaces import ILink, IRelay
from udptunnel.protocols import TunnelDatagramProtocol, TunnelFactory
from udptunnel.sockopts import SocketSettings

from .fakes import FakeUDPTransport


@implementer(IRelay)
class RecordingRelay:
    """
    Records what the protocols report.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.reads: list[int] = []
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self.links: list[ILink] = []
        self.lost: list[ILink] = []
        self.udp = None

    def udpStarted(self, transport):
        self.udp = transport

    def udpStopped(self):
        self.udp = None

    def datagramsReceived(self, datagrams):
        self.datagrams.extend(datagrams)

    allowed = True

    def linkConnected(self, link):
        return self.allowed

    def linkMade(self, link):
        self.links.append(link)

    def framesReceived(self, link, frames):
        self.reads.append(len(frames))
        self.frames.extend(frames)

    def linkLost(self, link, reason):
        self.lost.append(link)


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


class SocketTransport(StringTransport):
    """
    A fake transport over a real (unconnected) TCP socket, to see which
    options the protocol sets on it.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def getHandle(self) -> socket.socket:
        return self.socket


class StreamProtocolTests(SynchronousTestCase):
    SAMPLES = [b"", b"a", b"\x00\x01\x02", b"x" * 1400, b"y" * 8193, b"z" * 65535]

    def connect(self, transport: StringTransport | None = None, **factoryOptions):
        self.relay = RecordingRelay()
        protocol = TunnelFactory(self.relay, **factoryOptions).buildProtocol(None)
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
        """
        The frames of one read reach the relay in one call.
        """
        protocol = self.connect()
        protocol.dataReceived(b"".join(frame(s) for s in self.SAMPLES))
        self.assertEqual(self.relay.frames, self.SAMPLES)
        self.assertEqual(self.relay.reads, [len(self.SAMPLES)])

    def test_incompleteFrameWaits(self) -> None:
        protocol = self.connect()
        protocol.dataReceived(frame(b"whole") + frame(b"half")[:3])
        protocol.dataReceived(frame(b"half")[3:])
        self.assertEqual(self.relay.frames, [b"whole", b"half"])
        self.assertEqual(self.relay.reads, [1, 1])

    def test_largestFrameIsNoError(self) -> None:
        """
        65535 bytes is a legal frame: the relay decides whether UDP can
        carry it, the framing does not drop the connection.
        """
        protocol = self.connect()
        protocol.dataReceived(frame(b"z" * 65535) + frame(b"next"))
        self.assertEqual([len(f) for f in self.relay.frames], [65535, 4])
        self.assertFalse(self.transport.disconnecting)

    def test_sendFrames(self) -> None:
        protocol = self.connect()
        protocol.sendFrames(self.SAMPLES[:3])
        protocol.sendFrames(self.SAMPLES[3:])
        self.assertEqual(self.transport.value(), b"".join(frame(s) for s in self.SAMPLES))

    def test_wireIsBigEndian(self) -> None:
        protocol = self.connect()
        protocol.sendFrames([b"\xab" * 258])
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

    def test_socketTuned(self) -> None:
        """
        Nagle off (frames are batched per reactor turn by Twisted already),
        and keepalive on with the configured timings.
        """
        transport = SocketTransport()
        self.addCleanup(transport.socket.close)
        settings = SocketSettings(keepaliveIdle=7, keepaliveInterval=3, keepaliveCount=2)
        self.connect(transport, settings=settings)
        sock = transport.socket
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 7)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 3)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 2)
        # No --user-timeout: the keepalive figure, 7 + 3 x 2 s.
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 13000)

    def test_refusedConnectionAborted(self) -> None:
        self.relay = RecordingRelay()
        self.relay.allowed = False
        protocol = TunnelFactory(self.relay).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(frame(b"before the close took effect"))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.relay.links, [])
        self.assertEqual(self.relay.frames, [])
        self.assertEqual(self.relay.lost, [])

    def test_tlsLinkOnlyAfterHandshake(self) -> None:
        """
        Over TLS, a connection is no link until the handshake authenticated
        its peer: one that fails the handshake never displaces the link.
        """
        protocol = self.connect(tls=True)
        self.assertEqual(self.relay.links, [])
        protocol.handshakeCompleted()
        self.assertEqual(self.relay.links, [protocol])

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


class Reader(Protocol):
    """
    The far end of a real TCP connection: reads only when told to.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class WriteThroughTests(TestCase):
    """
    Frames go straight to the socket when nothing is queued, and through
    Twisted's buffer when the kernel's is full: in order either way.
    """

    @inlineCallbacks
    def test_orderKeptWhenTheSocketFills(self) -> Any:
        relay = RecordingRelay()
        # A small kernel send buffer, so that the socket fills.
        factory = TunnelFactory(relay, SocketSettings(tcpSendBuffer=16384))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        reader = yield ClientCreator(reactor, Reader).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        self.addCleanup(lambda: reader.lost)
        self.addCleanup(reader.transport.loseConnection)
        while not relay.links:
            yield deferLater(reactor, 0.01, lambda: None)
        link = relay.links[0]
        self.addCleanup(link.abort)

        link.sendFrames([b"first"])
        self.assertFalse(link.transport.dataBuffer or link.transport._tempDataBuffer)
        datagrams = [bytes([i % 251]) * 1400 for i in range(2000)]
        for i in range(0, len(datagrams), 8):
            link.sendFrames(datagrams[i : i + 8])
        queued = len(link.transport.dataBuffer) + link.transport._tempDataLen
        self.assertGreater(queued, 0, "the kernel took 2.8 MB at once: nothing tested")

        # While the queue drains, more frames come, a reactor turn apart:
        # each must wait behind what is queued, not jump ahead of it.
        reader.transport.resumeProducing()
        later = [b"later %d" % i for i in range(300)]
        for datagram in later:
            link.sendFrames([datagram])
            yield deferLater(reactor, 0.001, lambda: None)
        expected = b"".join(frame(d) for d in [b"first", *datagrams, *later])
        for _ in range(1000):
            if len(reader.received) >= len(expected):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(bytes(reader.received), expected)
