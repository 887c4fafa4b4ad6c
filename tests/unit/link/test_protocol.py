"""
L{udptunnel.link.protocol}: the TCP protocol: frames in and out, whatever
the reads and whatever the bytes; what it keeps of C{Int16StringReceiver};
and a bug in the relay that does not stop it (the UDP protocol's part is in
L{tests.unit.udp.test_protocol}).
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import tempfile
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import StringTooLongError
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.support.certs import Authority
from tests.support.fakes import RecordingRelay
from tests.support.net import frame, waitUntil
from tests.support.properties import chunksOf, joined, properties
from udptunnel.interfaces import ILinkRelay
from udptunnel.link.protocol import TunnelFactory, TunnelStreamProtocol
from udptunnel.link.tls import loadCredentials, serverFactory
from udptunnel.sockopts import SocketSettings


class BuggyRelay(RecordingRelay):
    """
    A relay with a bug that shows on the first frames only.
    """

    def framesReceived(self, link, frames):
        if not hasattr(self, "raisedTCP"):
            self.raisedTCP = True
            raise KeyError("a bug")
        super().framesReceived(link, frames)


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
        """
        Frames fed one byte at a time, empty and 65535-byte ones included,
        reach the relay whole and in order.
        """
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
        """
        A frame cut across two reads is delivered once its last byte arrived,
        in a read of its own, after the complete frame before it.
        """
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
        """
        L{TunnelStreamProtocol.sendFrames} writes each datagram after its length,
        back to back, in order across calls.
        """
        protocol = self.connect()
        protocol.sendFrames(self.SAMPLES[:3])
        protocol.sendFrames(self.SAMPLES[3:])
        self.assertEqual(self.transport.value(), b"".join(frame(s) for s in self.SAMPLES))

    def test_wireIsBigEndian(self) -> None:
        """
        The 2-byte length is big-endian: a 258-byte datagram goes out after
        C{01 02}.
        """
        protocol = self.connect()
        protocol.sendFrames([b"\xab" * 258])
        self.assertEqual(self.transport.value()[:2], b"\x01\x02")

    def test_linkLifecycle(self) -> None:
        """
        Without TLS or preamble a connection is the link at once, named
        C{host:port}; its loss is reported to the relay.
        """
        protocol = self.connect()
        self.assertEqual(self.relay.links, [protocol])
        self.assertEqual(protocol.remote, "192.0.2.7:4321")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.relay.lost, [protocol])

    def test_ipv6PeerInBrackets(self) -> None:
        """
        An IPv6 peer is named with its host in brackets.
        """
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
        """
        A connection the relay refuses is aborted at once; bytes that arrive
        before the close took effect are no frames, and the relay hears of it
        neither as a link nor as a loss.
        """
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
        its peer: it becomes the link at C{handshakeCompleted}, not before.
        """
        protocol = self.connect(tls=True)
        self.assertEqual(self.relay.links, [])
        protocol.handshakeCompleted()
        self.assertEqual(self.relay.links, [protocol])

    def tlsHandshake(self, authority: Authority, clientAuthority: Authority
                     ) -> tuple[Any, StringTransport]:
        """
        A real TLS handshake, in memory, between a server end whose CA is
        C{authority} and a client presenting a certificate signed by
        C{clientAuthority}, run until neither side has more to send.

        @return: the server's TLS protocol, which wraps its tunnel protocol,
            and its transport.
        """
        self.relay = RecordingRelay()
        serverEnd = loadCredentials(*authority.issue("server"), authority.path)
        clientEnd = loadCredentials(*clientAuthority.issue("client"), clientAuthority.path)
        server = serverFactory(serverEnd, TunnelFactory(self.relay, tls=True))
        client = TLSMemoryBIOFactory(
            optionsForClientTLS("localhost", trustRoot=serverEnd.authority,
                                clientCertificate=clientEnd.own),
            True, Factory.forProtocol(Protocol))
        serverTLS = server.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4321))
        clientTLS = client.buildProtocol(IPv4Address("TCP", "192.0.2.1", 9999))
        serverTransport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
        clientTransport = StringTransport()
        serverTLS.makeConnection(serverTransport)
        clientTLS.makeConnection(clientTransport)

        def pump() -> None:
            moved = True
            while moved:
                moved = False
                for source, destination in ((clientTransport, serverTLS),
                                            (serverTransport, clientTLS)):
                    data = source.value()
                    if data:
                        source.clear()
                        destination.dataReceived(data)
                        moved = True

        pump()
        #: Moves what either side wrote to the other until neither has more.
        self.pump = pump
        return serverTLS, serverTransport

    def test_tlsFailedHandshakeNoLink(self) -> None:
        """
        Over TLS, a client whose certificate the CA did not sign fails the
        handshake: its connection is closed and never becomes the link (the
        relay hears of its loss only), so it never displaces the link; a
        client whose certificate the CA signed becomes the link.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        stranger = Authority(directory, "stranger-ca")

        tls, transport = self.tlsHandshake(authority, authority)
        self.assertEqual(self.relay.links, [tls.wrappedProtocol])
        self.assertFalse(transport.disconnecting)

        tls, transport = self.tlsHandshake(authority, stranger)
        protocol = tls.wrappedProtocol
        self.assertTrue(transport.disconnecting)  # closed by the TLS layer
        self.assertEqual(self.relay.links, [])
        tls.connectionLost(Failure(ConnectionLost()))  # as the reactor reports it
        self.assertEqual(self.relay.links, [])
        self.assertEqual(self.relay.lost, [protocol])

    def test_tlsLinkClosesWithItsProducer(self) -> None:
        """
        L{TunnelStreamProtocol.close} of a TLS link with the relay's producer
        attached lets the producer go (C{stopProducing}, as a loss would),
        exchanges TLS close alerts with the peer and closes the connection:
        it does not wait for an abort.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        tls, transport = self.tlsHandshake(authority, authority)
        protocol = tls.wrappedProtocol
        producer = RecordingProducer()
        protocol.attachProducer(producer)
        self.assertIsNotNone(transport.producer)
        protocol.close()
        self.pump()
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertEqual(producer.calls, ["stopProducing"])

    def test_closeLetsTheProducerGo(self) -> None:
        """
        Over plain TCP too, L{TunnelStreamProtocol.close} unregisters the
        relay's producer and stops it before closing; with no producer it
        only closes.
        """
        protocol = self.connect()
        producer = RecordingProducer()
        protocol.attachProducer(producer)
        self.assertIs(self.transport.producer, producer)
        protocol.close()
        self.assertIsNone(self.transport.producer)
        self.assertEqual(producer.calls, ["stopProducing"])
        self.assertTrue(self.transport.disconnecting)
        other = self.connect()
        other.close()
        self.assertTrue(self.transport.disconnecting)

    def test_abort(self) -> None:
        """
        L{TunnelStreamProtocol.abort} closes the connection.
        """
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
        """
        The default C{MAX_LENGTH} is 65535: a frame of the largest length, fed
        one byte at a time or in one chunk, is delivered and never calls
        C{lengthLimitExceeded}.
        """
        protocol = self.connect()
        self.assertEqual(protocol.MAX_LENGTH, 65535)
        protocol.lengthLimitExceeded = lambda length: self.fail(f"limit hit at {length}")
        for oneByteAtATime in (True, False):
            self.feed(protocol, frame(b"z" * 65535), oneByteAtATime)
        self.assertEqual(self.relay.frames, [b"z" * 65535] * 2)

    def test_stringReceivedDeliversOneFrame(self) -> None:
        """
        C{stringReceived} hands the relay its one frame, as a read of one frame.
        """
        protocol = self.connect()
        protocol.stringReceived(b"one frame")
        self.assertEqual(self.relay.frames, [b"one frame"])
        self.assertEqual(self.relay.reads, [1])

    def test_sendStringInOrderWithSendFrames(self) -> None:
        """
        C{sendString} writes one frame, in order with those of
        L{TunnelStreamProtocol.sendFrames}; a string too long for a 2-byte
        length raises L{StringTooLongError}.
        """
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


class GuardTests(SynchronousTestCase):
    """
    An exception of the relay's is reported to it, and traffic goes on.
    """

    def test_linkSurvives(self) -> None:
        """
        An exception of the relay's while it handles a read's frames costs only
        that read's frames: it is reported to the relay (C{frames}), the
        connection stays open, and the next read's frames are delivered.
        """
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


def encode(datagrams: list[bytes]) -> bytes:
    """
    The reference encoder: each datagram after its 2-byte big-endian length.
    """
    return b"".join(struct.pack("!H", len(d)) + d for d in datagrams)


def decode(stream: bytes, limit: int = 0xFFFF) -> tuple[list[bytes], bytes, int | None]:
    """
    The reference decoder: the complete frames at the start of C{stream},
    the bytes after them, and the first length prefix above C{limit} (where
    decoding stopped, the bytes from it on being the rest), if any.
    """
    frames = []
    offset = 0
    while len(stream) - offset >= 2:
        (length,) = struct.unpack_from("!H", stream, offset)
        if length > limit:
            return frames, stream[offset:], length
        if len(stream) - offset - 2 < length:
            break
        frames.append(stream[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return frames, stream[offset:], None


def _randomBytes(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


#: Datagrams: short ones hypothesis can shrink, and longer ones (up to 3000
#: bytes, and the largest, 65535) whose bytes come from a drawn seed.
datagrams = st.one_of(
    st.binary(max_size=32),
    st.builds(
        _randomBytes,
        st.one_of(st.integers(0, 3000), st.sampled_from([0, 1, 2, 255, 256, 65534, 65535])),
        st.integers(0, 2**32 - 1),
    ),
)


#: Bytes that are mostly not a valid stream: garbage, frames, and length
#: prefixes with or without what they announce.
streamish = joined(st.lists(st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=40).map(lambda d: encode([d])),
    st.integers(0, 0xFFFF).map(lambda n: struct.pack("!H", n)),
    st.integers(0, 64).map(lambda n: struct.pack("!H", n)),
), max_size=20))


@implementer(ILinkRelay)
class FrameRecorder:
    """
    A relay that admits every connection and records the frames, in order,
    and any internal error.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.links: list[Any] = []
        self.lost: list[Failure] = []
        self.errors: list[tuple[str, Failure]] = []

    def linkConnected(self, link: Any) -> bool:
        return True

    def linkIdentified(self, link: Any) -> bool:
        return True

    def linkMade(self, link: Any) -> None:
        self.links.append(link)

    def framesReceived(self, link: Any, frames: list[bytes]) -> None:
        self.frames.extend(frames)

    def linkLost(self, link: Any, reason: Failure) -> None:
        self.lost.append(reason)

    def internalError(self, where: str, failure: Failure) -> None:
        self.errors.append((where, failure))


class LimitRecorder(TunnelStreamProtocol):
    """
    Records each call of C{lengthLimitExceeded}: the length, and how many
    frames the relay had then (the base class's closes the connection).
    """

    def __init__(self) -> None:
        self.exceeded: list[tuple[int, int]] = []

    def lengthLimitExceeded(self, length: int) -> None:
        self.exceeded.append((length, len(self.factory.relay.frames)))  # type: ignore[attr-defined]
        super().lengthLimitExceeded(length)


def connectStream(limit: int | None = None) -> tuple[LimitRecorder, FrameRecorder, StringTransport]:
    """
    A connected tunnel protocol, with C{MAX_LENGTH} lowered to C{limit} on
    the instance if given.
    """
    relay = FrameRecorder()
    factory = TunnelFactory(relay)
    factory.protocol = LimitRecorder
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, LimitRecorder)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
    protocol.makeConnection(transport)
    if limit is not None:
        protocol.MAX_LENGTH = limit
    return protocol, relay, transport


class FramingPropertyTests(SynchronousTestCase):
    """
    L{TunnelStreamProtocol.dataReceived}, the parser of what the peer (or
    whoever reaches the TCP port) sends.
    """

    @properties(40)
    @given(st.lists(datagrams, max_size=12), datagrams, st.data())
    def test_anySplitGivesTheDatagrams(self, sent: list[bytes], partial: bytes,
                                       data: st.DataObject) -> None:
        """
        Datagrams encoded back to back, then the beginning of one more, come
        out to the relay exactly, in order, each as soon as its last byte
        arrived, however the stream is cut (at drawn points, one byte at a
        time, in one chunk); the incomplete frame's bytes stay in C{recvd},
        and the connection stays open.
        """
        whole = encode([partial])
        tail = whole[: data.draw(st.integers(0, len(whole) - 1), label="tail")]
        stream = encode(sent) + tail
        ends = []
        for datagram in sent:
            ends.append((ends[-1] if ends else 0) + 2 + len(datagram))
        splits = [chunksOf(data, stream), [stream], [stream[i : i + 1] for i in range(len(stream))]]
        for chunks in splits:
            protocol, relay, transport = connectStream()
            fed = 0
            for chunk in chunks:
                protocol.dataReceived(chunk)
                fed += len(chunk)
                complete = sum(1 for end in ends if end <= fed)
                self.assertEqual(len(relay.frames), complete)
            self.assertEqual(relay.frames, sent)
            self.assertEqual(protocol.recvd, tail)
            self.assertEqual(relay.errors, [])
            self.assertEqual(protocol.exceeded, [])
            self.assertFalse(transport.disconnecting)

    @properties(400)
    @given(streamish, st.sampled_from([None, 0, 1, 40, 100, 65534]), st.data())
    def test_anyBytesAsTheReference(self, stream: bytes, limit: int | None,
                                    data: st.DataObject) -> None:
        """
        Any bytes, cut anywhere, with the default C{MAX_LENGTH} or a lower
        one: nothing raises, and after each read the relay has had exactly
        the reference decoder's complete frames of the bytes so far, the
        unparsed bytes are its rest, and C{lengthLimitExceeded} was called
        (closing the connection) once a prefix above the limit arrived, and
        only then.
        """
        protocol, relay, transport = connectStream(limit)
        fed = b""
        for chunk in chunksOf(data, stream):
            protocol.dataReceived(chunk)
            fed += chunk
            frames, rest, exceeded = decode(fed, 0xFFFF if limit is None else limit)
            self.assertEqual(relay.frames, frames)
            self.assertEqual(protocol.recvd, rest)
            if exceeded is None:
                self.assertEqual(protocol.exceeded, [])
            else:
                self.assertTrue(protocol.exceeded)
                self.assertEqual({length for length, _ in protocol.exceeded}, {exceeded})
            self.assertEqual(transport.disconnecting, exceeded is not None)
        self.assertEqual(relay.errors, [])

    @properties(300)
    @given(st.integers(0, 300), st.data())
    def test_lengthLimit(self, limit: int, data: st.DataObject) -> None:
        """
        With C{MAX_LENGTH} lowered on the instance, a length prefix above it
        calls C{lengthLimitExceeded} (which closes the connection) as soon
        as its two bytes arrived, after the frames before it were delivered;
        no frame at or after it is ever delivered, even valid ones that
        follow, and its bytes stay unparsed.
        """
        before = data.draw(st.lists(st.binary(max_size=limit), max_size=8), label="before")
        tooLong = data.draw(st.integers(limit + 1, 0xFFFF), label="tooLong")
        after = data.draw(st.one_of(
            st.binary(max_size=64),
            st.lists(st.binary(max_size=limit), max_size=4).map(encode),
        ), label="after")
        head = encode(before)
        stream = head + struct.pack("!H", tooLong) + after
        protocol, relay, transport = connectStream(limit)
        fed = 0
        for chunk in chunksOf(data, stream):
            protocol.dataReceived(chunk)
            fed += len(chunk)
            arrived = fed >= len(head) + 2
            self.assertEqual(transport.disconnecting, arrived)
            self.assertEqual(bool(protocol.exceeded), arrived)
        self.assertEqual(relay.frames, before)
        self.assertTrue(protocol.exceeded)
        self.assertEqual(set(protocol.exceeded), {(tooLong, len(before))})
        self.assertEqual(protocol.recvd, stream[len(head):])
        self.assertEqual(relay.errors, [])


@implementer(IPushProducer)
class RecordingProducer:
    """
    A producer that records which of its methods were called.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")

    def resumeProducing(self) -> None:
        self.calls.append("resumeProducing")

    def stopProducing(self) -> None:
        self.calls.append("stopProducing")


class DrainTests(TestCase):
    """
    L{TunnelStreamProtocol.drain}, on a real loopback connection.
    """

    @inlineCallbacks
    def connected(self) -> Any:
        """
        A relay's link accepted on loopback, and the peer's plain socket.
        """
        relay = RecordingRelay()
        port = reactor.listenTCP(0, TunnelFactory(relay), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        self.addCleanup(peer.close)
        yield waitUntil(lambda: relay.links, "the link")
        return relay, peer

    @inlineCallbacks
    def test_halfClose(self) -> Any:
        """
        A drained link sends its FIN after what was written, and still
        reads: a frame the peer sends after seeing the FIN reaches the
        relay; the connection ends when the peer closes its side.
        """
        relay, peer = yield self.connected()
        link = relay.links[0]
        link.sendFrames([b"before the FIN"])
        link.drain()
        stream = b""
        while True:
            yield deferLater(reactor, 0.01, lambda: None)
            peer.setblocking(False)
            try:
                chunk = peer.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            stream += chunk
        self.assertEqual(stream, frame(b"before the FIN"))
        peer.sendall(frame(b"after it"))
        yield waitUntil(lambda: relay.frames, "the peer's last frame")
        self.assertEqual((relay.frames, relay.lost), ([b"after it"], []))
        peer.close()
        yield waitUntil(lambda: relay.lost, "the connection to end")

    @inlineCallbacks
    def test_peerHalfCloses(self) -> Any:
        """
        When the peer closes its sending half (it drains), this side closes
        once what it wrote is sent: the peer reads every frame, then EOF.
        """
        relay, peer = yield self.connected()
        relay.links[0].sendFrames([b"x" * 1000] * 200)
        peer.shutdown(socket.SHUT_WR)
        yield waitUntil(lambda: relay.lost, "this side to close")
        peer.settimeout(5)
        stream = b""
        while chunk := peer.recv(65536):
            stream += chunk
        self.assertEqual(stream, frame(b"x" * 1000) * 200)
