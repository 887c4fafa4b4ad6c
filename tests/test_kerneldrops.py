"""
The kernel's drop counter of the tunnel's UDP socket.
"""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from udptunnel.udp.kerneldrops import _TABLES, dropsOf, kernelDrops, socketDrops

TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:13D1 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  124: 0100007F:13D2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
"""


class ParseTests(SynchronousTestCase):
    def test_findsRowByInode(self) -> None:
        self.assertEqual(dropsOf(TABLE, "4242"), 17)
        self.assertEqual(dropsOf(TABLE, "4243"), 0)

    def test_unknownInode(self) -> None:
        self.assertIsNone(dropsOf(TABLE, "99"))

    def test_notATable(self) -> None:
        self.assertIsNone(dropsOf("", "1"))
        self.assertIsNone(dropsOf("garbage here\n1 2 3\n", "1"))


class LiveSocketTests(SynchronousTestCase):
    def test_overflowCounted(self) -> None:
        """
        A socket nobody reads, with a small buffer, overflows: the kernel's
        count of what it dropped is found for that socket.
        """
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        before = kernelDrops(receiver)
        if before is None:
            raise self.skipTest("no /proc/net/udp here")
        for _ in range(200):
            sender.sendto(b"x" * 1000, receiver.getsockname())
        after = kernelDrops(receiver)
        assert after is not None
        self.assertGreater(after, before)

    def test_bothSourcesAgree(self) -> None:
        """
        C{SO_MEMINFO} and the kernel's table say the same for one socket.
        """
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        for _ in range(200):
            sender.sendto(b"x" * 1000, receiver.getsockname())
        fromOption = socketDrops(receiver)
        try:
            with open(_TABLES[0]) as table:
                fromTable = dropsOf(table.read(), str(os.fstat(receiver.fileno()).st_ino))
        except OSError:
            fromTable = None
        if fromOption is None or fromTable is None:
            raise self.skipTest("no SO_MEMINFO or no /proc/net/udp here")
        self.assertGreater(fromOption, 0)
        self.assertEqual(fromOption, fromTable)

    def test_notASocket(self) -> None:
        self.assertIsNone(kernelDrops(object()))
