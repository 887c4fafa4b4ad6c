"""
L{udptunnel.udp.gso}: segmented sends, which datagrams may leave in one, and
that they arrive as sent.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.net import TIMEOUT, Sink
from tests.support.streams import FRAMES, RUNS, bigBuffers
from tests.support.system import Namespaces, skipUnlessAble, whyNoGSO, whyNoNamespaces
from udptunnel.udp.gso import (
    MAX_PAYLOAD,
    MAX_SEGMENTS,
    SegmentSender,
    kernelSegments,
    runs,
    socketSegments,
)
from udptunnel.udp.port import DatagramSocket, bindUDP

POP = ("192.0.2.53", 5072)


def sizes(datagrams: Sequence[bytes], found: list[tuple[int, int]]) -> list[list[int]]:
    return [[len(d) for d in datagrams[start:stop]] for start, stop in found]


class RunsTests(SynchronousTestCase):
    """
    L{runs}: which datagrams may leave in one send.
    """

    def check(self, lengths: list[int], expected: list[list[int]], **kwargs: Any) -> None:
        datagrams = [b"x" * n for n in lengths]
        found = runs(datagrams, **kwargs)
        self.assertEqual(sizes(datagrams, found), expected)
        # In order, every datagram in exactly one run.
        self.assertEqual([i for start, stop in found for i in range(start, stop)],
                         list(range(len(lengths))))

    def test_sameSizeOneRun(self) -> None:
        """
        Datagrams of one size make one run.
        """
        self.check([100] * 5, [[100] * 5])

    def test_shorterLastEndsRun(self) -> None:
        """
        A shorter datagram joins the run before it as its last segment; the
        next datagram starts a new run.
        """
        self.check([100, 100, 60, 100, 100], [[100, 100, 60], [100, 100]])

    def test_longerStartsNewRun(self) -> None:
        """
        A longer datagram cannot be a segment of the run before it: it starts
        a new one.
        """
        self.check([100, 100, 200, 200, 50], [[100, 100], [200, 200, 50]])

    def test_emptyAlone(self) -> None:
        """
        A 0-byte datagram cannot be a segment: alone, even as a shorter last.
        """
        self.check([0, 0, 64, 64, 0, 64], [[0], [0], [64, 64], [0], [64]])

    def test_atMostMaxSegments(self) -> None:
        """
        A run has at most L{MAX_SEGMENTS} datagrams; those beyond start the
        next run.
        """
        self.check([64] * (MAX_SEGMENTS * 2 + 3),
                   [[64] * MAX_SEGMENTS, [64] * MAX_SEGMENTS, [64] * 3])

    def test_atMostMaxPayload(self) -> None:
        """
        1400-byte datagrams: 46 fit in the largest UDP payload, not 47.
        """
        self.assertEqual(MAX_PAYLOAD // 1400, 46)
        self.check([1400] * 50, [[1400] * 46, [1400] * 4])

    def test_shorterLastWithinPayload(self) -> None:
        """
        A run already holding as many datagrams of its size as
        L{MAX_PAYLOAD} takes gets no shorter last: that one goes alone.
        """
        self.check([1400] * 46 + [10], [[1400] * 46, [10]])

    def test_largeDatagramsAlone(self) -> None:
        """
        Datagrams of which two exceed L{MAX_PAYLOAD} go alone, one per run.
        """
        self.check([40000, 40000], [[40000], [40000]])

    def test_aboveMaxSegmentAlone(self) -> None:
        """
        Datagrams longer than C{maxSegment} go alone; smaller ones still make
        runs.
        """
        self.check([1500, 1500, 1000, 1000], [[1500], [1500], [1000, 1000]], maxSegment=1472)

    def test_none(self) -> None:
        """
        No datagrams, no runs.
        """
        self.check([], [])


class Recorder:
    """
    The send functions of a socket, recording each call; C{segmentErrors}
    and C{sendErrors} are raised, in turn, by the calls that come.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.segmentErrors: list[OSError] = []
        self.sendErrors: dict[bytes, OSError] = {}
        self.failures: list[tuple[int | None, int]] = []

    def sendTo(self, data: bytes, addr: Any) -> None:
        error = self.sendErrors.pop(data, None)
        if error is not None:
            raise error
        self.calls.append(("one", data))

    def sendSegments(self, buffers: Sequence[bytes], segmentSize: int, addr: Any) -> None:
        self.assertAddress(addr)
        if self.segmentErrors:
            raise self.segmentErrors.pop(0)
        self.calls.append(("run", (segmentSize, list(buffers))))

    def assertAddress(self, addr: Any) -> None:
        assert addr == POP, addr

    def failed(self, error: OSError, size: int, addr: Any) -> None:
        self.failures.append((error.errno, size))


class SegmentSenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sock = Recorder()
        self.sender = SegmentSender(self.sock.sendTo, self.sock.sendSegments)

    def send(self, datagrams: list[bytes]) -> tuple[int, int]:
        return self.sender.sendMany(datagrams, POP, self.sock.failed)

    def test_oneDatagramAlone(self) -> None:
        """
        A read of one frame (the latency path) is one plain send.
        """
        self.assertEqual(self.send([b"ping"]), (1, 4))
        self.assertEqual(self.sock.calls, [("one", b"ping")])

    def test_runsInOrder(self) -> None:
        """
        Datagrams leave in order, each run in one segmented send and the
        datagrams alone (an empty one, one between different sizes) in plain
        sends; all count as sent, with their bytes.
        """
        datagrams = [b"a" * 3, b"b" * 3, b"c", b"", b"dd", b"e" * 5, b"f" * 5]
        self.assertEqual(self.send(datagrams), (7, 19))
        self.assertEqual(self.sock.calls, [
            ("run", (3, [b"aaa", b"bbb", b"c"])),
            ("one", b""),
            ("one", b"dd"),
            ("run", (5, [b"eeeee", b"fffff"])),
        ])

    def test_disabled(self) -> None:
        """
        A sender made disabled sends every datagram alone, never in a run,
        and counts those sent and their bytes; one the kernel refuses is
        told to C{failed} and not counted.
        """
        sender = SegmentSender(self.sock.sendTo, self.sock.sendSegments, enabled=False)
        self.assertEqual(sender.sendMany([b"x", b"y"], POP, self.sock.failed), (2, 2))
        self.assertEqual(self.sock.calls, [("one", b"x"), ("one", b"y")])
        self.sock.sendErrors[b"bb"] = OSError(errno.EMSGSIZE, "fake")
        self.assertEqual(sender.sendMany([b"aaa", b"bb", b"c" * 5], POP, self.sock.failed),
                         (2, 8))
        self.assertEqual(self.sock.calls[2:], [("one", b"aaa"), ("one", b"ccccc")])
        self.assertEqual(self.sock.failures, [(errno.EMSGSIZE, 2)])

    def assertUnsupported(self, code: int) -> None:
        self.sock.segmentErrors.append(OSError(code, "fake"))
        self.assertEqual(self.send([b"1", b"2"]), (2, 2))
        self.assertEqual(self.sock.calls, [("one", b"1"), ("one", b"2")])
        self.assertFalse(self.sender.enabled)
        self.send([b"3", b"4"])  # one by one from now on, never tried again
        self.assertEqual(self.sock.calls[2:], [("one", b"3"), ("one", b"4")])
        self.assertEqual(self.sock.failures, [])

    def test_EIO(self) -> None:
        """
        EIO: the route's device cannot checksum segments (or xfrm): off.
        """
        self.assertUnsupported(errno.EIO)

    def test_ENOPROTOOPT(self) -> None:
        """
        ENOPROTOOPT: no segmentation on this socket: the run goes one by one,
        and segmentation is off for good.
        """
        self.assertUnsupported(errno.ENOPROTOOPT)

    def test_EINVALLowersSegmentSize(self) -> None:
        """
        EINVAL while each datagram goes alone: that size is too much for
        segmentation here (over the MTU); smaller runs still go in one send.
        """
        self.sock.segmentErrors.append(OSError(errno.EINVAL, "fake"))
        self.assertEqual(self.send([b"x" * 10] * 3), (3, 30))
        self.assertEqual(self.sender.maxSegment, 9)
        self.assertTrue(self.sender.enabled)
        del self.sock.calls[:]
        self.send([b"y" * 10] * 2 + [b"z" * 9] * 2)
        self.assertEqual(self.sock.calls, [
            ("one", b"y" * 10), ("one", b"y" * 10), ("run", (9, [b"z" * 9] * 2)),
        ])

    def test_EMSGSIZELowersSegmentSize(self) -> None:
        """
        Newer kernels say EMSGSIZE for a segment over the MTU: the same.
        """
        self.sock.segmentErrors.append(OSError(errno.EMSGSIZE, "fake"))
        self.assertEqual(self.send([b"x" * 10] * 2), (2, 20))
        self.assertEqual(self.sender.maxSegment, 9)
        self.assertEqual(self.sock.failures, [])

    def test_EINVALOfTheDatagramsThemselves(self) -> None:
        """
        When the datagrams fail alone too, their own errors are counted and
        the segment size is not blamed.
        """
        self.sock.segmentErrors.append(OSError(errno.EINVAL, "fake"))
        self.sock.sendErrors[b"a" * 4] = OSError(errno.EMSGSIZE, "fake")
        self.assertEqual(self.send([b"a" * 4, b"b" * 4]), (1, 4))
        self.assertEqual(self.sock.failures, [(errno.EMSGSIZE, 4)])
        self.assertEqual(self.sender.maxSegment, MAX_PAYLOAD)

    def test_noRoomDropsRun(self) -> None:
        """
        EAGAIN or ENOBUFS: each datagram of the run is dropped with it, none
        tried again at once; the next run is segmented again.
        """
        for code in (errno.EAGAIN, errno.ENOBUFS):
            self.sock.segmentErrors.append(OSError(code, "fake"))
            self.assertEqual(self.send([b"xx", b"yy", b"z", b"only"]), (1, 4))
        self.assertEqual(self.sock.failures, [(errno.EAGAIN, 2), (errno.EAGAIN, 2),
                                              (errno.EAGAIN, 1), (errno.ENOBUFS, 2),
                                              (errno.ENOBUFS, 2), (errno.ENOBUFS, 1)])
        self.assertEqual(self.sock.calls, [("one", b"only"), ("one", b"only")])
        self.assertTrue(self.sender.enabled)

    def test_otherErrorOneByOne(self) -> None:
        """
        Any other error (here the ICMP error of an earlier send, reported
        once): the run goes again one by one, each counted by its own fate.
        """
        self.sock.segmentErrors.append(OSError(errno.ECONNREFUSED, "fake"))
        self.sock.sendErrors[b"1"] = OSError(errno.ECONNREFUSED, "fake")
        self.assertEqual(self.send([b"1", b"2", b"3"]), (2, 2))
        self.assertEqual(self.sock.calls, [("one", b"2"), ("one", b"3")])
        self.assertEqual(self.sock.failures, [(errno.ECONNREFUSED, 1)])
        self.assertTrue(self.sender.enabled)


class RealSocketTests(TestCase):
    """
    On loopback, a segmented send arrives as the datagrams it was made of,
    in order; and it was segmented (counted by a spy on the socket's
    C{sendSegments}).
    """

    skip = whyNoGSO()

    def receiver(self, address: str = "127.0.0.1") -> socket.socket:
        sock = bigBuffers(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.addCleanup(sock.close)
        sock.bind((address, 0))
        sock.settimeout(TIMEOUT)
        return sock

    def receiveAll(self, sock: socket.socket, count: int) -> list[tuple[bytes, Any]]:
        return [sock.recvfrom(65535) for _ in range(count)]

    def spy(self, sender: SegmentSender) -> list[int]:
        calls: list[int] = []
        real = sender.sendSegments

        def sendSegments(buffers: Sequence[bytes], segmentSize: int, addr: Any) -> Any:
            calls.append(len(buffers))
            return real(buffers, segmentSize, addr)

        sender.sendSegments = sendSegments
        return calls

    def port(self, interface: str) -> DatagramSocket:
        port = bindUDP(interface, 0, Sink(), reactor)
        port.startListening()
        port.stopReading()
        self.addCleanup(port.stopListening)
        return port

    def test_boundPort(self) -> None:
        """
        A port bound to an address sends frames in the expected runs, and they
        arrive as sent, in order, from the port's address.
        """
        port = self.port("127.0.0.1")
        self.assertTrue(port.segments.enabled)
        calls = self.spy(port.segments)
        sink = self.receiver()
        self.assertEqual(port.sendMany(FRAMES, sink.getsockname(), self.fail),
                         (len(FRAMES), sum(map(len, FRAMES))))
        self.assertEqual(calls, RUNS)
        got = self.receiveAll(sink, len(FRAMES))
        self.assertEqual([d for d, _ in got], FRAMES)
        self.assertEqual({a for _, a in got}, {port.socket.getsockname()})

    def test_wildcardPortAnswersFromDestination(self) -> None:
        """
        On a socket bound to 0.0.0.0, a run goes from the local address its
        destination sent to (pktinfo beside the segment size).
        """
        port = self.port("0.0.0.0")
        calls = self.spy(port.segments)
        peer = self.receiver("127.0.0.1")
        # The peer writes to 127.0.0.9: the answers must come from there.
        peer.sendto(b"hello", ("127.0.0.9", port.getHost().port))
        port.doRead()  # learns where the peer sent to
        assert port.localAddresses is not None
        self.assertEqual(port.localAddresses.localFor(peer.getsockname()), "127.0.0.9")
        port.sendMany(FRAMES, peer.getsockname(), self.fail)
        self.assertEqual(calls, RUNS)
        got = self.receiveAll(peer, len(FRAMES))
        self.assertEqual([d for d, _ in got], FRAMES)
        self.assertEqual({a for _, a in got}, {("127.0.0.9", port.getHost().port)})

    def test_sessionSocket(self) -> None:
        """
        A server session's connected socket segments too (no address).
        """
        peer = self.receiver()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        sock.connect(peer.getsockname())
        session = DatagramSocket(sock, Sink(), reactor)
        session.startListening()
        self.addCleanup(session.stopListening)
        session.stopReading()
        calls = self.spy(session.segments)
        session.sendMany(FRAMES, peer.getsockname(), self.fail)
        self.assertEqual(calls, RUNS)
        got = self.receiveAll(peer, len(FRAMES))
        self.assertEqual([d for d, _ in got], FRAMES)

    def test_tooLargeForSegmentsFallsBack(self) -> None:
        """
        The kernel's own refusal (more segments than it takes, bypassing
        L{runs}' bound) falls back to one datagram per send: all arrive.
        """
        port = self.port("127.0.0.1")
        sink = self.receiver()
        frames = [b"q" * 8] * 200
        real = port.segments.sendSegments
        outcomes: list[str] = []

        def sendSegments(buffers: Sequence[bytes], segmentSize: int, addr: Any) -> Any:
            try:
                result = real(list(buffers) * 4, segmentSize, addr)  # 4 x 64 > 64
            except OSError as e:
                outcomes.append(errno.errorcode[e.errno or 0])
                raise
            outcomes.append("sent")
            return result

        port.segments.sendSegments = sendSegments
        self.assertEqual(port.sendMany(frames, sink.getsockname(), self.fail)[0], 200)
        self.assertEqual(outcomes[0], "EINVAL")
        got = self.receiveAll(sink, 200)
        self.assertEqual([d for d, _ in got], frames)


class OverMTUTests(SynchronousTestCase):
    """
    Over a real veth of MTU 1500 between two network namespaces this test
    makes: a run of segments over the MTU is refused by the kernel, goes one
    datagram at a time (fragmented), and that size is not tried again; a
    run under the MTU still leaves in one send.
    """

    def test_overMTU(self) -> None:
        """
        Segments of 2000 bytes over an MTU of 1500 are refused in a run, all
        sent alone, and that size is never tried in a run again; the run of
        1400-byte datagrams leaves in one send; all arrive, in order.
        """
        skipUnlessAble(whyNoNamespaces())
        spaces = Namespaces()
        self.addCleanup(spaces.remove)
        one, two = spaces.add("gso1"), spaces.add("gso2")
        spaces.veth(one, two, "198.18.0.1/30", "198.18.0.2/30")
        sender = spaces.socket(one, bind=("198.18.0.1", 0))
        self.addCleanup(sender.close)
        receiver = bigBuffers(spaces.socket(two, bind=("198.18.0.2", 0)))
        self.addCleanup(receiver.close)
        receiver.settimeout(TIMEOUT)
        self.assertTrue(kernelSegments(sender))
        segments = SegmentSender(sender.sendto, socketSegments(sender))
        calls = RealSocketTests.spy(self, segments)  # type: ignore[arg-type]
        frames = [bytes([i]) * 2000 for i in range(3)] + [bytes([i]) * 1400 for i in range(3)]
        failures: list[Any] = []
        addr = receiver.getsockname()
        self.assertEqual(segments.sendMany(frames, addr, lambda *a: failures.append(a)),
                         (6, 10200))
        self.assertEqual(failures, [])
        self.assertEqual(segments.maxSegment, 1999)
        # The first run (3 x 2000 and the shorter 1400 after them) refused,
        # the second (the other two 1400s) sent.
        self.assertEqual(calls, [4, 2])
        got = [receiver.recv(65535) for _ in frames]
        self.assertEqual(got, frames)
        segments.sendMany(frames[:3], addr, self.fail)
        self.assertEqual(calls, [4, 2])  # not tried again at that size
        self.assertEqual([receiver.recv(65535) for _ in range(3)], frames[:3])
