"""
Fakes of the objects the relay talks to, for tests that need no reactor.
"""

from __future__ import annotations

import socket
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel._twisted.writethrough import _StandInReactor
from udptunnel.interfaces import IDatagramSocket, ILink, ILinkRelay, IRelay
from udptunnel.ops.metrics import RelayCollector
from udptunnel.tunnel.lanes import Lanes
from udptunnel.tunnel.single import Relay
from udptunnel.udp.gso import SegmentSender, sendEach


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

    def drain(self) -> None:
        self.drained = True

    def attachProducer(self, producer: IPushProducer) -> None:
        self.producer = producer

    #: What the compiled pump's lanes ask of a link.
    laneChanged = None
    transport: Any = None
    onlyFrames = True

    def framesOnly(self) -> bool:
        return self.onlyFrames

    def plainTransport(self) -> Any:
        return self.transport

    def deliverFrames(self, frames: list[bytes]) -> None:
        self.delivered = frames


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

    #: What the compiled pump's lanes ask of a UDP socket.
    connected = False
    localAddresses: Any = None
    descriptor = 7

    def fileno(self) -> int:
        return self.descriptor

    @property
    def segments(self) -> SegmentSender:
        return SegmentSender(self.sendTo, sendEach, enabled=False)  # type: ignore[arg-type]

    def deliver(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.delivered = datagrams

    def readFailed(self, error: OSError) -> None:
        self.readError = error


def captureLogEvents(testCase: Any) -> list[dict[str, Any]]:
    """
    Collect every log event emitted until the test ends.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


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


def scrape(relay: Relay) -> str:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RelayCollector(relay))
    return generate_latest(registry).decode()


def makeRelay(**options: object) -> Relay:
    relay = Relay(Clock(), **options)  # type: ignore[arg-type]
    relay.udpStarted(FakeUDPTransport())
    return relay
APP = ("127.0.0.1", 40001)


def phantomRelay() -> tuple[Relay, Clock, FakeLink]:
    clock = Clock()
    relay = Relay(clock)
    relay.udpStarted(FakeUDPTransport())
    link = FakeLink("192.0.2.1:40000")
    clock.advance(100)
    relay.linkMade(link)
    relay.datagramsReceived([(b"hello", APP), (b"again", APP)])
    relay.framesReceived(link, [b"reply"])
    clock.advance(61.5)
    return relay, clock, link


class Connections:
    """
    A fake endpoint: each connect is a Deferred the test fires, and the
    relay the session's connection reports to.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[ILinkRelay, Deferred[Any]]] = []

    def connect(self, relay: ILinkRelay) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append((relay, d))
        return d

    def succeed(self, index: int = -1, remote: str = "192.0.2.1:9999",
                link: FakeLink | None = None) -> FakeLink:
        relay, d = self.attempts[index]
        link = link or FakeLink(remote)
        relay.linkConnected(link)
        relay.linkMade(link)
        d.callback(None)
        return link

    def fail(self, index: int = -1) -> None:
        self.attempts[index][1].errback(Failure(ConnectionRefusedError("refused")))


class StandInPair:
    """
    What the C{Pair} of the compiled pump keeps, in Python.
    """

    def __init__(self, udpFd: int, tcpFd: int, owner: Any) -> None:
        self.udpFd, self.tcpFd, self.owner = udpFd, tcpFd, owner
        self.up = self.down = self.connected = self.withInfo = self.shared = False
        self.segments = False
        self.maxSegment = 65507
        self.source = self.destination = self.info = None
        self.counters = (0, 0, 0, 0, 0.0)

    def setSource(self, address: Any) -> None:
        self.source = address

    def setDestination(self, address: Any) -> None:
        self.destination = address

    def setInfo(self, *info: Any) -> None:
        self.info = info

    def take(self) -> tuple[int, int, int, int, float]:
        counters, self.counters = self.counters, (0, 0, 0, 0, 0.0)
        return counters


class StandInPump:
    """
    Records the pairs it is given, and hands back the touched ones.
    """

    def __init__(self) -> None:
        self.pairs: list[StandInPair] = []
        self.shared: list[StandInPair] = []
        self.touched: list[StandInPair] = []

    def add(self, pair: StandInPair) -> None:
        self.pairs.append(pair)

    def addShared(self, pair: StandInPair) -> None:
        self.shared.append(pair)

    def remove(self, pair: StandInPair) -> None:
        pair.up = pair.down = False
        for pairs in (self.pairs, self.shared):
            if pair in pairs:
                pairs.remove(pair)

    def takeTouched(self) -> list[StandInPair]:
        touched, self.touched = self.touched, []
        return touched


def attachedLanes() -> tuple[Lanes, StandInPump]:
    """
    Lanes attached to a L{StandInPump}, as if the compiled pump ran.
    """
    lanes = Lanes()
    pump = StandInPump()
    lanes.attach(pump, StandInPair)
    return lanes, pump


def plainConnection(testCase: Any) -> tcp.Connection:
    """
    A real Twisted TCP connection (over a socket pair, known to no
    reactor), connected, nothing queued: what a lane may write past.
    """
    mine, peer = socket.socketpair()
    testCase.addCleanup(mine.close)
    testCase.addCleanup(peer.close)
    connection = tcp.Connection(mine, Protocol(), reactor=_StandInReactor())
    connection.connected = 1
    return connection
