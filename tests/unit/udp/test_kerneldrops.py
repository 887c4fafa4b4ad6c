"""
The kernel's drop counter of one UDP socket (L{udptunnel.udp.kerneldrops}).
"""

from __future__ import annotations

import socket
import sys

from twisted.trial.unittest import SynchronousTestCase

from udptunnel.udp.kerneldrops import socketDrops


class SocketDropsTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            self.skipTest("SO_MEMINFO is Linux's")

    def test_overflowCounted(self) -> None:
        """
        A socket nobody reads, with a small buffer, overflows: the kernel's
        count of what it dropped grows, for that socket.
        """
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        self.assertEqual(socketDrops(receiver), 0)
        for _ in range(200):
            sender.sendto(b"x" * 1000, receiver.getsockname())
        drops = socketDrops(receiver)
        assert drops is not None
        self.assertGreater(drops, 0)

    def test_notAUDPSocket(self) -> None:
        """
        A socket whose counters the kernel keeps otherwise still answers
        (0): the option is the socket layer's.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        self.assertEqual(socketDrops(sock), 0)
