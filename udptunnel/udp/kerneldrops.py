"""
The kernel's count of datagrams it dropped on one UDP socket.

While the tunnel pauses reading (its TCP link is full or dead), datagrams
pile up in the socket's receive buffer and, once it is full, the kernel
drops the rest: nothing in the process sees them.  Linux keeps a drop
counter per socket: C{getsockopt(SO_MEMINFO)} returns it (one system call),
and the last column of C{/proc/net/udp} and C{/proc/net/udp6} shows it too
(a table of every UDP socket of the host: the fallback).  Reading it when
the figures are reported (a stats line, a scrape) costs the traffic
nothing, where C{SO_RXQ_OVFL} would need a C{recvmsg} with ancillary data
for every datagram.
"""

from __future__ import annotations

import os
import socket
import struct

_TABLES = ("/proc/self/net/udp", "/proc/self/net/udp6")

#: Linux's C{SO_MEMINFO} (C{getsockopt}: the socket's memory counters, as
#: 32-bit words) and the index of the word that counts dropped datagrams.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SK_MEMINFO_DROPS = 8
_MEMINFO_SIZE = 4 * (SK_MEMINFO_DROPS + 1)


def socketDrops(sock: socket.socket) -> int | None:
    """
    The drop counter of C{sock} from C{SO_MEMINFO}, or C{None} where the
    platform has no such option.
    """
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_SIZE)
    except OSError:
        return None
    if len(info) < _MEMINFO_SIZE:
        return None
    return int(struct.unpack_from("=I", info, 4 * SK_MEMINFO_DROPS)[0])


def kernelDrops(sock: object, tables: tuple[str, ...] = _TABLES) -> int | None:
    """
    The drop counter of C{sock}: from L{socketDrops}, or else found by its
    inode in the kernel's tables; C{None} where the platform has neither
    (or C{sock} is not a socket).
    """
    if not isinstance(sock, socket.socket):
        return None
    drops = socketDrops(sock)
    if drops is not None:
        return drops
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except (OSError, ValueError):
        return None
    for path in tables:
        try:
            with open(path) as table:
                drops = dropsOf(table.read(), inode)
        except OSError:
            continue
        if drops is not None:
            return drops
    return None


def dropsOf(table: str, inode: str) -> int | None:
    """
    The C{drops} column of the row of C{table} (the text of a
    C{/proc/net/udp} file) whose C{inode} column is C{inode}.
    """
    lines = table.splitlines()
    if not lines:
        return None
    header = lines[0].split()
    # The header names "tx_queue rx_queue" and "tr tm->when" as one column
    # each where the rows have two: index from the end, where they agree.
    try:
        inodeFromEnd = len(header) - header.index("inode")
        dropsFromEnd = len(header) - header.index("drops")
    except ValueError:
        return None
    for line in lines[1:]:
        fields = line.split()
        if len(fields) >= inodeFromEnd and fields[-inodeFromEnd] == inode:
            try:
                return int(fields[-dropsFromEnd])
            except ValueError:
                return None
    return None
