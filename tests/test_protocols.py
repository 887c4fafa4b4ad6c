"""
The thin protocols: framing on the TCP side, forwarding on the UDP side.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import abstract, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.protocols.basic import StringTooLongError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from udptunnel._twisted import writethrough
from udptunnel.interfaces import ILink, IRelay
from udptunnel.link.protocol import TunnelFactory, TunnelStreamProtocol
from udptunnel.sockopts import SocketSettings
from udptunnel.udp.protocol import TunnelDatagramProtocol

from .fakes import FakeUDPTransport, captureLogEvents


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

    def linkIdentified(self, link):
        return self.allowed

    def linkMade(self, link):
        self.links.append(link)

    def framesReceived(self, link, frames):
        self.reads.append(len(frames))
        self.frames.extend(frames)

    def linkLost(self, link, reason):
        self.lost.append(link)

    errors: list[tuple[str, Failure]]

    def internalError(self, where, failure):
        self.errors = getattr(self, "errors", [])
        self.errors.append((where, failure))


class BuggyRelay(RecordingRelay):
    """
    A relay with a bug that shows on the first datagrams and frames only.
    """

    def datagramsReceived(self, datagrams):
        if not hasattr(self, "raisedUDP"):
            self.raisedUDP = True
            raise KeyError("a bug")
        super().datagramsReceived(datagrams)

    def framesReceived(self, link, frames):
        if not hasattr(self, "raisedTCP"):
            self.raisedTCP = True
            raise KeyError("a bug")
        super().framesReceived(link, frames)


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
        self.assertEqual(protocol.remote, "192.0.2.7:4321")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.relay.lost, [protocol])

    def test_ipv6PeerInBrackets(self) -> None:
        protocol = self.connect(
            StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::1", 9999))
        )
        self.assertEqual(protocol.remote, "[2001:db8::1]:9999")

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


class Limited(TunnelStreamProtocol):
    """
    A subclass that refuses frames longer than 10 bytes, and records the
    lengths it refused.
    """

    MAX_LENGTH = 10

    def __init__(self) -> None:
        self.exceeded: list[int] = []

    def lengthLimitExceeded(self, length: int) -> None:
        self.exceeded.append(length)
        super().lengthLimitExceeded(length)


class PausingRelay(RecordingRelay):
    """
    Pauses the link after each read it is given, as a consumer that wants
    no more for now would.
    """

    def framesReceived(self, link, frames):
        super().framesReceived(link, frames)
        link.pauseProducing()


class InheritedSurfaceTests(SynchronousTestCase):
    """
    What TunnelStreamProtocol keeps of Int16StringReceiver works: pausing,
    the length limit, C{stringReceived}, C{sendString}.  Each is fed one
    byte at a time and in one chunk, as Twisted's own test_basic does.
    """

    FRAMES = [b"a", b"", b"b" * 10, b"c" * 300]

    def connect(self, relay: RecordingRelay | None = None, protocolClass: type = TunnelStreamProtocol):
        self.relay = relay or RecordingRelay()
        factory = TunnelFactory(self.relay)
        factory.protocol = protocolClass
        protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
        protocol.makeConnection(self.transport)
        return protocol

    def feed(self, protocol, stream: bytes, oneByteAtATime: bool) -> None:
        if oneByteAtATime:
            for i in range(len(stream)):
                protocol.dataReceived(stream[i : i + 1])
        else:
            protocol.dataReceived(stream)

    def test_pausedDeliversNothingUntilResumed(self) -> None:
        """
        While paused, no frame reaches the relay, and the transport is told
        to stop reading; on resume, the frames that came meanwhile are
        delivered, in order, in one read.
        """
        stream = b"".join(frame(f) for f in self.FRAMES)
        for oneByteAtATime in (True, False):
            protocol = self.connect()
            protocol.pauseProducing()
            self.assertEqual(self.transport.producerState, "paused")
            self.feed(protocol, stream + frame(b"half")[:3], oneByteAtATime)
            self.assertEqual(self.relay.frames, [])
            protocol.resumeProducing()
            self.assertEqual(self.transport.producerState, "producing")
            self.assertEqual(self.relay.frames, self.FRAMES)
            self.assertEqual(self.relay.reads, [len(self.FRAMES)])
            protocol.dataReceived(frame(b"half")[3:])
            self.assertEqual(self.relay.frames, [*self.FRAMES, b"half"])

    def test_pausedByTheRelay(self) -> None:
        """
        A relay that pauses the link while it handles a read gets nothing
        more until it resumes it.
        """
        for oneByteAtATime in (True, False):
            protocol = self.connect(PausingRelay())
            protocol.dataReceived(frame(b"first"))
            self.assertTrue(protocol.paused)
            self.feed(protocol, b"".join(frame(f) for f in self.FRAMES), oneByteAtATime)
            self.assertEqual(self.relay.frames, [b"first"])
            protocol.resumeProducing()
            self.assertEqual(self.relay.frames, [b"first", *self.FRAMES])
            self.assertEqual(self.relay.reads, [1, len(self.FRAMES)])

    def test_lengthLimitOfASubclass(self) -> None:
        """
        A subclass's lower C{MAX_LENGTH} makes a longer frame's length go to
        C{lengthLimitExceeded} as soon as its prefix arrives, after the
        frames before it; its bytes never reach the relay, and the base
        class's C{lengthLimitExceeded} closes the connection.
        """
        for oneByteAtATime in (True, False):
            protocol = self.connect(protocolClass=Limited)
            limits = protocol.exceeded
            stream = frame(b"x" * 10) + frame(b"y" * 11) + frame(b"after")
            if oneByteAtATime:
                for i in range(len(stream)):
                    protocol.dataReceived(stream[i : i + 1])
                    if limits:
                        break
                self.assertEqual(i, 13, "not at the prefix of the long frame")
            else:
                protocol.dataReceived(stream)
            self.assertEqual(limits[0], 11)
            self.assertEqual(self.relay.frames, [b"x" * 10])
            self.assertTrue(self.transport.disconnecting)

    def test_lengthLimitOnAnInstance(self) -> None:
        """
        As Twisted's test_basic does: C{MAX_LENGTH} set on the instance, and
        C{lengthLimitExceeded} replaced.
        """
        protocol = self.connect()
        limits: list[int] = []
        protocol.lengthLimitExceeded = limits.append
        protocol.MAX_LENGTH = 10
        protocol.dataReceived(struct.pack("!H", 11))
        self.assertEqual(limits, [11])
        self.assertEqual(protocol.recvd, struct.pack("!H", 11))
        protocol.dataReceived(b"x" * 11)
        self.assertEqual(self.relay.frames, [])

    def test_defaultLimitAcceptsEveryLength(self) -> None:
        protocol = self.connect()
        self.assertEqual(protocol.MAX_LENGTH, 65535)
        protocol.lengthLimitExceeded = lambda length: self.fail(f"limit hit at {length}")
        for oneByteAtATime in (True, False):
            self.feed(protocol, frame(b"z" * 65535), oneByteAtATime)
        self.assertEqual(self.relay.frames, [b"z" * 65535] * 2)

    def test_stringReceivedDeliversOneFrame(self) -> None:
        protocol = self.connect()
        protocol.stringReceived(b"one frame")
        self.assertEqual(self.relay.frames, [b"one frame"])
        self.assertEqual(self.relay.reads, [1])

    def test_sendStringInOrderWithSendFrames(self) -> None:
        protocol = self.connect()
        protocol.sendFrames([b"one"])
        protocol.sendString(b"two")
        protocol.sendFrames([b"three"])
        self.assertEqual(self.transport.value(), frame(b"one") + frame(b"two") + frame(b"three"))
        self.assertRaises(StringTooLongError, protocol.sendString, b"x" * 65536)

    def test_recvdIsReadOnly(self) -> None:
        """
        C{recvd} shows the bytes not parsed yet; replacing it, which the base
        class's parser honours, is refused rather than silently ignored.
        """
        protocol = self.connect()
        protocol.dataReceived(frame(b"whole") + frame(b"half")[:3])
        self.assertEqual(protocol.recvd, frame(b"half")[:3])
        self.assertRaises(AttributeError, setattr, protocol, "recvd", b"")


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
    Twisted's buffer when the kernel's is full: in order either way.  When
    the installed Twisted fails the write-through's check, every frame goes
    through Twisted's buffer: in order too.
    """

    @inlineCallbacks
    def connectLink(self, relay: RecordingRelay, factory: TunnelFactory) -> Any:
        """
        A link, served by C{factory}, to a L{Reader} that does not read yet.
        """
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        count = len(relay.links)
        reader = yield ClientCreator(reactor, Reader).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        self.addCleanup(lambda: reader.lost)
        self.addCleanup(reader.transport.loseConnection)
        for _ in range(500):
            if len(relay.links) > count:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        link = relay.links[-1]
        self.addCleanup(link.abort)
        return link, reader

    @inlineCallbacks
    def checkOrderWhenTheSocketFills(self, writeThrough: bool) -> Any:
        relay = RecordingRelay()
        # A small kernel send buffer, so that the socket fills.
        factory = TunnelFactory(relay, SocketSettings(tcpSendBuffer=16384))
        link, reader = yield self.connectLink(relay, factory)
        self.assertEqual(link.writesThrough, writeThrough)

        link.sendFrames([b"first"])
        queued = bool(link.transport.dataBuffer or link.transport._tempDataBuffer)
        # Written through, nothing waits; else it waits for the next turn.
        self.assertEqual(queued, not writeThrough)
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
        return factory

    def test_orderKeptWhenTheSocketFills(self) -> Any:
        return self.checkOrderWhenTheSocketFills(writeThrough=True)

    @inlineCallbacks
    def test_fallbackWhenTwistedChanged(self) -> Any:
        """
        A Twisted whose connections carry a buffer the write-through does not
        know of: frames go through C{transport.write}, in order, and one
        warning says so, however many connections follow.
        """
        self.patch(writethrough, "_connectionVerdict", None)
        # What a release that added a send buffer would look like.
        abstract.FileDescriptor._sendQueue = []  # type: ignore[attr-defined]
        self.addCleanup(delattr, abstract.FileDescriptor, "_sendQueue")
        events = captureLogEvents(self)

        factory = yield self.checkOrderWhenTheSocketFills(writeThrough=False)
        link, _ = yield self.connectLink(factory.relay, factory)
        self.assertFalse(link.writesThrough)

        warnings = [
            e
            for e in events
            if e.get("log_level") == LogLevel.warn
            and e.get("log_namespace") == "udptunnel._twisted.writethrough"
        ]
        self.assertEqual(len(warnings), 1)
        self.assertIn("_sendQueue looks like another send buffer", warnings[0]["problems"])


class GuardTests(SynchronousTestCase):
    """
    An exception of the relay's is reported to it, and traffic goes on.
    """

    def test_datagramsGoOn(self) -> None:
        relay = BuggyRelay()
        protocol = TunnelDatagramProtocol(relay)
        protocol.datagramsReceived([(b"one", ("127.0.0.1", 1))])
        protocol.datagramsReceived([(b"two", ("127.0.0.1", 1))])
        self.assertEqual(relay.datagrams, [(b"two", ("127.0.0.1", 1))])
        self.assertEqual([where for where, _ in relay.errors], ["datagrams"])
        self.assertTrue(relay.errors[0][1].check(KeyError))

    def test_linkSurvives(self) -> None:
        relay = BuggyRelay()
        protocol = TunnelFactory(relay).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(b"lost") + frame(b"also lost"))
        protocol.dataReceived(frame(b"next"))
        self.assertEqual(relay.frames, [b"next"])
        self.assertEqual([where for where, _ in relay.errors], ["frames"])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(relay.lost, [])
