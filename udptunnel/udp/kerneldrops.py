"""
The kernel's count of datagrams it dropped on one UDP socket.

While the tunnel pauses reading (its TCP link is full or dead), datagrams
pile up in the socket's receive buffer and, once it is full, the kernel
drops the rest: nothing in the process sees them.  Linux keeps a drop
counter per socket, which C{getsockopt(SO_MEMINFO)} returns (Linux 4.6 and
later): one system call, read when the figures are reported (a stats line,
a scrape), so it costs the traffic nothing, where C{SO_RXQ_OVFL} would need
a C{recvmsg} with ancillary data for every datagram.  (The host's
C{/proc/net/udp} table shows it too, but reading it for each of a server's
thousands of sessions took seconds of the event loop.)
"""

from __future__ import annotations

import socket
import struct

#: Linux's C{SO_MEMINFO} (C{getsockopt}: the socket's memory counters, as
#: 32-bit words) and the index of the word that counts dropped datagrams.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SK_MEMINFO_DROPS = 8
_MEMINFO_SIZE = 4 * (SK_MEMINFO_DROPS + 1)


def socketDrops(sock: socket.socket) -> int | None:
    """
    The drop counter of C{sock}, or C{None} where the platform has no
    C{SO_MEMINFO}.
    """
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_SIZE)
    except OSError:
        return None
    if len(info) < _MEMINFO_SIZE:
        return None
    return int(struct.unpack_from("=I", info, 4 * SK_MEMINFO_DROPS)[0])
