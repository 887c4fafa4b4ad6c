"""
The checks that guard udptunnel's uses of Twisted's private API (the fence,
udptunnel/_twisted/): they pass on the installed Twisted, they catch what
a changed release would look like, and when they fail the tunnel falls back
to the public API and says so once.

If a test of L{InstalledTwistedTests} fails after a Twisted upgrade, the
tunnel still works, but on the slow path: re-read what the failing check
names in the new Twisted before adjusting udptunnel/_twisted/.
"""

from __future__ import annotations

import collections
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from udptunnel._twisted import writethrough
from udptunnel._twisted.writethrough import (
    _StandInReactor,
    connectionProblems,
    writerFor,
)

from .fakes import captureLogEvents


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
        problems = connectionProblems(Renamed)
        self.assertIn("test_private.Renamed has no _tempDataBuffer", problems)
        self.assertIn("test_private.Renamed._pendingWrites looks like another send buffer", problems)

    def test_extraBuffer(self) -> None:
        self.assertEqual(
            connectionProblems(ExtraBuffer),
            ["test_private.ExtraBuffer._sendQueue looks like another send buffer"],
        )

    def test_extraClassLevelBuffer(self) -> None:
        class ClassBuffer(tcp.Connection):
            _outgoing = b""

        self.assertEqual(
            connectionProblems(ClassBuffer),
            ["test_private.ClassBuffer._outgoing looks like another send buffer"],
        )

    def test_writeQueuesElsewhere(self) -> None:
        self.assertEqual(
            connectionProblems(HiddenBuffer),
            ["test_private.HiddenBuffer.write does not queue into _tempDataBuffer"],
        )

    def test_drainedBufferNotEmpty(self) -> None:
        self.assertEqual(
            connectionProblems(LazyDrain),
            ["test_private.LazyDrain.doWrite leaves its buffers non-empty once all is sent"],
        )

    def test_checkRaising(self) -> None:
        self.assertEqual(
            connectionProblems(Broken),
            ["checking test_private.Broken raised TypeError('new signature')"],
        )

    def test_wrongType(self) -> None:
        class TextBuffer(tcp.Connection):
            dataBuffer = ""  # type: ignore[assignment]

        self.assertIn("test_private.TextBuffer.dataBuffer is a str, not bytes", connectionProblems(TextBuffer))


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
        self.patch(writethrough, "_connectionVerdict", None)
        events = captureLogEvents(self)
        connection = self.connection()
        write = writerFor(connection)
        self.assertNotEqual(write, connection.write)
        write(b"straight to the socket")
        self.assertEqual((connection.dataBuffer, connection._tempDataBuffer), (b"", []))
        self.assertEqual(warningsOf(events), [])

    def test_tlsNeverWritesThrough(self) -> None:
        connection = self.connection()
        connection.TLS = True
        self.assertEqual(writerFor(connection), connection.write)
