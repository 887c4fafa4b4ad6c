"""
L{udptunnel._twisted.writethrough}: frames straight to the socket when
nothing is queued, the check of Twisted's private attributes it relies on,
and the fallback when they changed.
"""

from __future__ import annotations

import collections
import socket
from typing import Any

from twisted.internet import abstract, reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, DatagramProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.fakes import RecordingRelay, captureLogEvents
from tests.support.net import frame
from udptunnel._twisted import writethrough
from udptunnel._twisted.writethrough import (
    _StandInReactor,
    connectionProblems,
    writerFor,
)
from udptunnel.link.protocol import TunnelFactory
from udptunnel.sockopts import SocketSettings


def warningsOf(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_level") == LogLevel.warn and e.get("log_namespace") == "udptunnel._twisted.writethrough"
    ]


class InstalledTwistedTests(SynchronousTestCase):
    """
    The installed Twisted is what udptunnel/_twisted.py expects: if one of
    these fails, a Twisted upgrade broke an assumption, and the tunnel runs
    on its slower public-API fallback.
    """

    def test_connectionCheckPasses(self) -> None:
        """
        L{connectionProblems} finds nothing wrong with the installed Twisted's
        C{tcp.Connection}.
        """
        self.assertEqual(connectionProblems(), [])


class Renamed(tcp.Connection):
    """
    A release that renamed C{_tempDataBuffer}.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pendingWrites = self.__dict__.pop("_tempDataBuffer")


class ExtraBuffer(tcp.Connection):
    """
    A release that added a buffer in front of Twisted's two.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sendQueue: collections.deque[bytes] = collections.deque()

    def write(self, data: bytes) -> None:
        self._sendQueue.append(data)


class Chunks:
    """
    A container that does not look like a buffer to the attribute scan.
    """

    def __init__(self) -> None:
        self.items: list[bytes] = []


class HiddenBuffer(tcp.Connection):
    """
    A release that queues writes in an object the attribute scan cannot
    recognise: only the behavioural check catches it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunks = Chunks()

    def write(self, data: bytes) -> None:
        self._chunks.items.append(data)


class LazyDrain(tcp.Connection):
    """
    A release whose C{doWrite} keeps sent bytes in C{dataBuffer}, moving
    C{offset} only: "nothing queued" no longer means an empty buffer.
    """

    def doWrite(self) -> None:
        self.dataBuffer = b"".join(self._tempDataBuffer)
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.offset = self.socket.send(self.dataBuffer)


class Broken(tcp.Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("new signature")


class ConnectionCheckTests(SynchronousTestCase):
    """
    L{connectionProblems} names what a changed Twisted would break.
    """

    def test_renamedAttribute(self) -> None:
        """
        A renamed C{_tempDataBuffer} is reported as missing, and its new name
        as another send buffer.
        """
        problems = connectionProblems(Renamed)
        self.assertIn("test_writethrough.Renamed has no _tempDataBuffer", problems)
        self.assertIn("test_writethrough.Renamed._pendingWrites looks like another send buffer", problems)

    def test_extraBuffer(self) -> None:
        """
        An instance attribute that looks like a send buffer is reported, and
        nothing else.
        """
        self.assertEqual(
            connectionProblems(ExtraBuffer),
            ["test_writethrough.ExtraBuffer._sendQueue looks like another send buffer"],
        )

    def test_extraClassLevelBuffer(self) -> None:
        """
        A class attribute that looks like a send buffer is reported too.
        """
        class ClassBuffer(tcp.Connection):
            _outgoing = b""

        self.assertEqual(
            connectionProblems(ClassBuffer),
            ["test_writethrough.ClassBuffer._outgoing looks like another send buffer"],
        )

    def test_writeQueuesElsewhere(self) -> None:
        """
        A C{write} that queues anywhere but C{_tempDataBuffer} is reported, by
        trying it, though no attribute looks like a buffer.
        """
        self.assertEqual(
            connectionProblems(HiddenBuffer),
            ["test_writethrough.HiddenBuffer.write does not queue into _tempDataBuffer"],
        )

    def test_drainedBufferNotEmpty(self) -> None:
        """
        A C{doWrite} that leaves bytes in C{dataBuffer} once all is sent is
        reported.
        """
        self.assertEqual(
            connectionProblems(LazyDrain),
            ["test_writethrough.LazyDrain.doWrite leaves its buffers non-empty once all is sent"],
        )

    def test_checkRaising(self) -> None:
        """
        A connection class that cannot be built is reported with the exception,
        which the check does not raise.
        """
        self.assertEqual(
            connectionProblems(Broken),
            ["checking test_writethrough.Broken raised TypeError('new signature')"],
        )

    def test_wrongType(self) -> None:
        """
        A required attribute of another type is reported with the type it has
        and the one expected.
        """
        class TextBuffer(tcp.Connection):
            dataBuffer = ""  # type: ignore[assignment]

        self.assertIn("test_writethrough.TextBuffer.dataBuffer is a str, not bytes", connectionProblems(TextBuffer))


class WriterChoiceTests(SynchronousTestCase):
    """
    L{writerFor} runs the check once per process, logs a failure once, and
    then hands out C{transport.write}.
    """

    def connection(self) -> tcp.Connection:
        mine, peer = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(peer.close)
        connection = tcp.Connection(mine, DatagramProtocol(), reactor=_StandInReactor())  # type: ignore[arg-type]
        connection.connected = 1
        return connection

    def test_checkedOnceAndWarnedOnce(self) -> None:
        """
        A check that fails runs once for any number of connections, one warning
        names the problem, and each connection gets its C{transport.write}.
        """
        calls = []

        def failing() -> list[str]:
            calls.append(None)
            return ["tcp.Connection has no dataBuffer (simulated)"]

        self.patch(writethrough, "_connectionVerdict", None)
        self.patch(writethrough, "connectionProblems", failing)
        events = captureLogEvents(self)
        for _ in range(3):
            connection = self.connection()
            self.assertEqual(writerFor(connection), connection.write)
        self.assertEqual(len(calls), 1)
        [warning] = warningsOf(events)
        self.assertIn("tcp.Connection has no dataBuffer (simulated)", warning["problems"])

    def test_passingCheckWritesThrough(self) -> None:
        """
        When the check passes, L{writerFor} gives a writer of its own, which
        sends to the socket at once: nothing is left in Twisted's buffers, and
        nothing is warned.
        """
        self.patch(writethrough, "_connectionVerdict", None)
        events = captureLogEvents(self)
        connection = self.connection()
        write = writerFor(connection)
        self.assertNotEqual(write, connection.write)
        write(b"straight to the socket")
        self.assertEqual((connection.dataBuffer, connection._tempDataBuffer), (b"", []))
        self.assertEqual(warningsOf(events), [])

    def test_tlsNeverWritesThrough(self) -> None:
        """
        A connection with TLS started on it gets its C{transport.write}.
        """
        connection = self.connection()
        connection.TLS = True
        self.assertEqual(writerFor(connection), connection.write)


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
        """
        Written through, the first frame leaves at once; once the kernel's
        buffer is full, frames queue in Twisted's, and those that follow wait
        behind them: the reader receives every frame, in order.
        """
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
