"""
Replies from the address each datagram was sent to: on a socket bound to
all addresses (C{0.0.0.0}, C{::}) the kernel says each datagram's
destination (C{IP_PKTINFO}, C{IPV6_PKTINFO}), and the reply to its source
names it as the source address, as a well-behaved UDP server does.

Why: bound to a wildcard, a plain C{sendto} leaves with the address
routing picks, which need not be the one the peer sent to; after an
iptables C{REDIRECT} in C{OUTPUT} the peer sent to C{127.0.0.1}, and only
a reply from there matches the connection-tracking entry that rewrites it
back to the address the application believes it talks to (a connected
socket drops any other).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from errno import EADDRNOTAVAIL, EINVAL
from typing import Any

from udptunnel.udp.gso import segmentMessage

#: Linux's values, for Python builds whose socket module lacks them.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: int = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: int = getattr(socket, "IPV6_PKTINFO", 50)

#: C{struct in_pktinfo}: interface index, local address, header destination.
IN_PKTINFO = struct.Struct("=i4s4s")
#: C{struct in6_pktinfo}: address, interface index.
IN6_PKTINFO = struct.Struct("=16sI")

#: Room for a pktinfo message, and for one more the kernel might add.
ANCILLARY_SPACE = socket.CMSG_SPACE(IN6_PKTINFO.size) + socket.CMSG_SPACE(16)

_NO_ADDRESS = bytes(4)
#: Errors of a send from an address the host no longer has.
_ADDRESS_GONE = {EADDRNOTAVAIL, EINVAL}


def isWildcard(sock: socket.socket) -> bool:
    """
    Whether C{sock} is bound to all addresses (C{0.0.0.0}, C{::}).
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    return sock.getsockname()[0] in ("0.0.0.0", "::")


class LocalAddresses:
    """
    For the most recent L{size} sources of a wildcard-bound socket, the
    ancillary data that sends from the local address each last sent to; and
    L{sendTo}, which uses it.

    Bounded, as a flood from many sources must not grow it: when full, the
    source that appeared (or changed address) longest ago is forgotten, and
    learned again from its next datagram.  In a run of datagrams from one
    source, the read loop compares each one's pktinfo with the last and
    calls L{saw} only on a change; L{saw} itself costs a look-up.
    """

    size = 512

    def __init__(self, sock: socket.socket, size: int | None = None) -> None:
        if size is not None:
            self.size = size
        self._six = sock.family == socket.AF_INET6
        #: source -> (the pktinfo bytes received, the ancillary data to send)
        self._bySource: dict[Any, tuple[bytes, list[tuple[int, int, bytes]]]] = {}
        self.sendTo = self._sender(sock)
        self.sendSegments = self._segmentSender(sock)

    def saw(self, source: Any, ancillary: list[tuple[int, int, bytes]]) -> None:
        """
        A datagram from C{source} came with C{ancillary} data (from
        C{recvmsg}): remember where it was sent.
        """
        for level, kind, info in ancillary:
            if kind == IP_PKTINFO and level == socket.IPPROTO_IP:
                break
            if kind == IPV6_PKTINFO and level == socket.IPPROTO_IPV6:
                break
        else:
            return
        known = self._bySource.get(source)
        if known is not None and known[0] == info:
            return
        send = self._reply(info)
        if send is None:
            return
        bySource = self._bySource
        if known is not None:
            del bySource[source]  # so it counts as recent
        elif len(bySource) >= self.size:
            del bySource[next(iter(bySource))]
        bySource[source] = (info, send)

    def _reply(self, info: bytes) -> list[tuple[int, int, bytes]] | None:
        """
        The ancillary data that sends from the destination in C{info}, a
        received pktinfo; C{None} where no reply may come from it.
        """
        if not self._six:
            if len(info) < IN_PKTINFO.size:
                return None
            _, local, _ = IN_PKTINFO.unpack_from(info)
            # The kernel's own choice of a reply source: the destination of
            # a unicast datagram, an address of the interface for broadcast.
            return [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(0, local, _NO_ADDRESS))]
        if len(info) < IN6_PKTINFO.size:
            return None
        local, index = IN6_PKTINFO.unpack_from(info)
        if local[0] == 0xFF:
            return None  # multicast: not a source; let routing pick
        if not (local[0] == 0xFE and local[1] & 0xC0 == 0x80):
            index = 0  # only a link-local source needs its interface
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(local, index))]

    def known(self, source: Any) -> tuple[bytes, list[tuple[int, int, bytes]]] | None:
        """
        What is known of C{source}: the pktinfo data its datagrams last came
        with, and the ancillary data replies to it go with; C{None} when
        routing picks the reply's source.
        """
        return self._bySource.get(source)

    def localFor(self, source: Any) -> str | None:
        """
        The local address replies to C{source} go from, printable; C{None}
        when routing picks it.
        """
        known = self._bySource.get(source)
        if known is None:
            return None
        info = known[1][0][2]
        if self._six:
            return socket.inet_ntop(socket.AF_INET6, info[:16])
        return socket.inet_ntop(socket.AF_INET, info[4:8])

    def _sender(self, sock: socket.socket) -> Callable[[bytes, Any], int]:
        """
        The L{IDatagramSocket.sendTo} of a wildcard-bound socket: it sends
        C{data} to C{addr} from the local address C{addr} last sent to, if
        known; else as C{sendto} would.  A local address that is gone
        (removed from its interface) is forgotten, and the datagram sent
        from the one routing picks.  (A closure: the fast path is one
        dictionary look-up and one C{sendmsg}.)
        """
        sendto, sendmsg = sock.sendto, sock.sendmsg
        known = self._bySource.get
        bySource = self._bySource

        def sendTo(data: bytes, addr: Any) -> int:
            entry = known(addr)
            if entry is None:
                return sendto(data, addr)
            try:
                return sendmsg((data,), entry[1], 0, addr)
            except OSError as e:
                if e.errno not in _ADDRESS_GONE:
                    raise
            bySource.pop(addr, None)
            return sendto(data, addr)

        return sendTo

    def _segmentSender(self, sock: socket.socket) -> Callable[[Any, int, Any], Any]:
        """
        The C{sendSegments} of a wildcard-bound socket
        (L{udptunnel.udp.gso.SegmentSender}): a run of datagrams in one
        C{sendmsg}, from the local address C{addr} last sent to as
        L{sendTo} sends them, with the C{UDP_SEGMENT} message beside the
        pktinfo one.
        """
        sendmsg = sock.sendmsg
        known = self._bySource.get
        bySource = self._bySource

        def sendSegments(buffers: Any, segmentSize: int, addr: Any) -> Any:
            segment = segmentMessage(segmentSize)
            entry = known(addr)
            if entry is None:
                return sendmsg(buffers, [segment], 0, addr)
            try:
                return sendmsg(buffers, [*entry[1], segment], 0, addr)
            except OSError as e:
                if e.errno not in _ADDRESS_GONE:
                    raise
            bySource.pop(addr, None)
            return sendmsg(buffers, [segment], 0, addr)

        return sendSegments




def listenForDestinations(sock: socket.socket) -> None:
    """
    Have the kernel say each datagram's destination on C{sock}.

    @raise OSError: it cannot.
    """
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
