"""
The kernel's count of datagrams it dropped on one UDP socket.

While the tunnel pauses reading (its TCP link is full or dead), datagrams
pile up in the socket's receive buffer and, once it is full, the kernel
drops the rest: nothing in the process sees them.  Linux keeps a drop
counter per socket and shows it in the last column of C{/proc/net/udp} and
C{/proc/net/udp6}; reading it when the figures are reported (a stats line,
a scrape) costs the traffic nothing, where C{SO_RXQ_OVFL} would need a
C{recvmsg} with ancillary data for every datagram.
"""

from __future__ import annotations

import os
import socket

_TABLES = ("/proc/self/net/udp", "/proc/self/net/udp6")


def kernelDrops(sock: object, tables: tuple[str, ...] = _TABLES) -> int | None:
    """
    The drop counter of C{sock}, found by its inode, or C{None} where the
    platform has no such table (or C{sock} is not a socket).
    """
    if not isinstance(sock, socket.socket):
        return None
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
