"""
UDP generic segmentation offload (GSO) on the way out of the tunnel: the
datagrams of one TCP read that go to one address with one size leave in one
C{sendmsg} with a C{UDP_SEGMENT} control message, and the kernel cuts them
into datagrams.

Why: on the UDP-sending end, the kernel's work per C{sendto} dominated the
profile.  One C{sendmsg} of a run costs the kernel one trip through the UDP
and IP layers for the whole run instead of one per datagram.  What it saves,
and the alternatives measured and dropped (C{sendmmsg}, C{recvmmsg}, GRO,
C{recvfrom_into}, a vectored TCP write), are in benchmarks/README.rst,
"Design measurements".

Pure (no Twisted): the UDP sockets of L{udptunnel.udp.port} give a
L{SegmentSender} their socket's send functions.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from errno import (
    EAGAIN,
    EINVAL,
    EIO,
    EMSGSIZE,
    ENOBUFS,
    ENOPROTOOPT,
    EOPNOTSUPP,
    EWOULDBLOCK,
)
from typing import Any

#: Linux's C{SOL_UDP} and C{UDP_SEGMENT} (C{linux/udp.h}).
SOL_UDP = 17
UDP_SEGMENT = 103
#: The most segments one send may carry (C{UDP_MAX_SEGMENTS}; newer kernels
#: take more, older ones 64).
MAX_SEGMENTS = 64
#: The most bytes of datagrams one send may carry: the largest UDP payload
#: over IPv4.
MAX_PAYLOAD = 65507

#: Errors of a run that mean "no room now": every datagram of the run is
#: dropped with it, as trying each one again at once would meet it again.
_NO_ROOM = frozenset({EAGAIN, EWOULDBLOCK, ENOBUFS})
#: Errors that mean this kernel, socket or route cannot segment at all: the
#: sender goes on one datagram per call for good.
_UNSUPPORTED = frozenset({EIO, ENOPROTOOPT, EOPNOTSUPP})
#: Errors of a segment larger than the route's MTU (C{EINVAL} on some
#: kernels, C{EMSGSIZE} on others: Linux 6.18 over a veth of MTU 1500 says
#: C{EMSGSIZE}): alone, such datagrams go (fragmented).
_SEGMENT_TOO_BIG = frozenset({EINVAL, EMSGSIZE})

_SEGMENT = struct.Struct("=H")

#: C{sendSegments(buffers, segmentSize, addr)}: one send of C{buffers}, cut
#: into datagrams of C{segmentSize} bytes (the last may be shorter).
SendSegments = Callable[[Sequence[bytes], int, Any], Any]
#: C{failed(error, size, addr)}: a datagram of C{size} bytes was not sent.
Failed = Callable[[OSError, int, Any], None]


def segmentMessage(segmentSize: int) -> tuple[int, int, bytes]:
    """
    The control message that has the kernel cut one send into datagrams of
    C{segmentSize} bytes.
    """
    return (SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segmentSize))


def kernelSegments(sock: socket.socket) -> bool:
    """
    Whether the kernel knows C{UDP_SEGMENT} on C{sock} (Linux 4.18 and
    later): asked once per socket, when the tunnel starts using it.
    """
    if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET,
                                                             socket.AF_INET6):
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def runs(datagrams: Sequence[bytes], maxSegment: int = MAX_PAYLOAD) -> list[tuple[int, int]]:
    """
    Cut C{datagrams} into runs that may leave in one send each, in order, as
    C{(start, stop)} index pairs: the datagrams of a run have the size of
    its first one, but the last may be shorter; a run has at most
    L{MAX_SEGMENTS} datagrams and L{MAX_PAYLOAD} bytes.  A run of one is a
    datagram sent alone: an empty one (0 bytes cannot be a segment), one
    longer than C{maxSegment}, or one whose neighbours differ.
    """
    found = []
    count = len(datagrams)
    start = 0
    while start < count:
        size = len(datagrams[start])
        stop = start + 1
        if 0 < size <= maxSegment:
            limit = min(count, start + MAX_SEGMENTS, start + MAX_PAYLOAD // size)
            while stop < limit:
                length = len(datagrams[stop])
                if length != size:
                    if 0 < length < size:
                        stop += 1  # a shorter last segment ends the run
                    break
                stop += 1
        found.append((start, stop))
        start = stop
    return found


class SegmentSender:
    """
    Sends a list of datagrams to one address, in runs (L{runs}) of one
    C{sendmsg} each where the kernel can segment them, else one by one.

    The checks are made once and remembered, per socket: whether the kernel
    knows C{UDP_SEGMENT} at all (L{kernelSegments}, at start), whether a
    send of a run met C{EIO}, C{ENOPROTOOPT} or C{EOPNOTSUPP} (no
    segmentation on this socket or route: off for good), and the segment
    size above which the kernel said C{EINVAL} or C{EMSGSIZE} (a segment
    over the route's MTU) while each datagram alone went: no run of that
    size or more is tried again.

    A run that fails is sent again one datagram at a time, so that each
    datagram is counted sent or dropped by its own error exactly as without
    segmentation; except when the error says there is no room now
    (C{EAGAIN}, C{ENOBUFS}): the whole run is dropped with it.

    @ivar enabled: whether runs are sent in one call.
    @ivar maxSegment: the largest segment size still tried.
    """

    def __init__(
        self, sendTo: Callable[[bytes, Any], Any], sendSegments: SendSegments,
        enabled: bool = True,
    ) -> None:
        self.sendTo = sendTo
        self.sendSegments = sendSegments
        self.enabled = enabled
        self.maxSegment = MAX_PAYLOAD

    def sendMany(self, datagrams: Sequence[bytes], addr: Any, failed: Failed) -> tuple[int, int]:
        """
        Send each of C{datagrams} to C{addr}, at once (none waits for any
        other: this only groups what one read delivered); C{failed} is told
        of each one that the kernel refused.

        @return: how many datagrams were sent, and their bytes.
        """
        if len(datagrams) == 1:
            # The latency path (one frame per read): one call, no more.
            data = datagrams[0]
            try:
                self.sendTo(data, addr)
            except OSError as e:
                failed(e, len(data), addr)
                return 0, 0
            return 1, len(data)
        if not self.enabled:
            return self._oneByOne(datagrams, addr, failed)
        sent = size = 0
        sendSegments = self.sendSegments
        for start, stop in runs(datagrams, self.maxSegment):
            if stop - start == 1:
                n, b = self._oneByOne(datagrams[start:stop], addr, failed)
                sent += n
                size += b
                continue
            run = datagrams[start:stop]
            segmentSize = len(run[0])
            try:
                sendSegments(run, segmentSize, addr)
            except OSError as e:
                n, b = self._runFailed(e, run, segmentSize, addr, failed)
                sent += n
                size += b
            else:
                sent += stop - start
                size += segmentSize * (stop - start - 1) + len(run[-1])
        return sent, size

    def _runFailed(
        self, error: OSError, run: Sequence[bytes], segmentSize: int, addr: Any,
        failed: Failed,
    ) -> tuple[int, int]:
        if error.errno in _NO_ROOM:
            for data in run:
                failed(error, len(data), addr)
            return 0, 0
        if error.errno in _UNSUPPORTED:
            self.enabled = False
        sent, size = self._oneByOne(run, addr, failed)
        if error.errno in _SEGMENT_TOO_BIG and sent == len(run):
            # Each went alone, so the size was too much for segmentation
            # (over the route's MTU): stop trying it.
            self.maxSegment = min(self.maxSegment, segmentSize - 1)
        return sent, size

    def _oneByOne(self, datagrams: Sequence[bytes], addr: Any, failed: Failed) -> tuple[int, int]:
        return sendEach(self.sendTo, datagrams, addr, failed)


def sendEach(sendTo: Callable[[bytes, Any], Any], datagrams: Sequence[bytes], addr: Any,
             failed: Failed) -> tuple[int, int]:
    """
    Send C{datagrams} to C{addr} one C{sendTo} each, telling C{failed} of
    each one the kernel refused.

    @return: how many datagrams were sent, and their bytes.
    """
    sent = size = 0
    for data in datagrams:
        try:
            sendTo(data, addr)
        except OSError as e:
            failed(e, len(data), addr)
        else:
            sent += 1
            size += len(data)
    return sent, size


def socketSegments(sock: socket.socket, connected: bool = False) -> SendSegments:
    """
    The C{sendSegments} of C{sock}: one C{sendmsg} of the buffers with the
    C{UDP_SEGMENT} message; without an address when C{connected}.  The
    control messages are made once per segment size (a run of steady
    traffic repeats it).
    """
    sendmsg = sock.sendmsg
    messages: dict[int, list[tuple[int, int, bytes]]] = {}

    def sendSegments(buffers: Sequence[bytes], segmentSize: int, addr: Any) -> Any:
        ancillary = messages.get(segmentSize)
        if ancillary is None:
            if len(messages) > 64:
                messages.clear()
            ancillary = messages[segmentSize] = [segmentMessage(segmentSize)]
        if connected:
            return sendmsg(buffers, ancillary)
        return sendmsg(buffers, ancillary, 0, addr)

    return sendSegments
