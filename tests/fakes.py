"""
Fakes of the objects the relay talks to, for tests that need no reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from udptunnel.interfaces import IDatagramSocket, ILink
from udptunnel.udp.gso import sendEach


@implementer(ILink)
class FakeLink:
    """
    A TCP link that records the frames sent on it.
    """

    def __init__(self, remote: str = "192.0.2.1:40000") -> None:
        self.remote = remote
        self.remoteHost = remote.rsplit(":", 1)[0].strip("[]")
        self.frames: list[bytes] = []
        self.aborted = False
        self.closed = False
        self.producer: IPushProducer | None = None

    def sendFrames(self, datagrams: list[bytes]) -> None:
        self.frames.extend(datagrams)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def attachProducer(self, producer: IPushProducer) -> None:
        self.producer = producer


@implementer(IDatagramSocket)
class FakeUDPTransport:
    """
    A UDP port that records C{(data, addr)} writes, or raises C{error} on
    write when it is set, and remembers whether reading is paused.
    """

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.error: Exception | None = None
        self.reading = True
        self.port = 5073

    def sendTo(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((packet, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", self.port)

    def getHandle(self) -> None:
        return None

    def sendMany(self, datagrams: list[bytes], addr: tuple[str, int],
                 failed: Any) -> tuple[int, int]:
        return sendEach(self.sendTo, datagrams, addr, failed)

    #: What the kernel says it dropped on this socket.
    drops: int | None = None

    def kernelDrops(self) -> int | None:
        return self.drops

    stopped = False

    def stopListening(self) -> None:
        self.stopped = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def captureLogEvents(testCase: Any) -> list[dict[str, Any]]:
    """
    Collect every log event emitted until the test ends.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events
