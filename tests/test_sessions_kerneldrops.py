"""
A server with sessions reads the kernel's drop counters of all its
sessions' sockets from one read of the kernel's tables, not one per socket.
"""

from __future__ import annotations

import builtins
import socket
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from udptunnel.kerneldrops import kernelDrops
from udptunnel.session import Session
from udptunnel.sessions import ServerSessions


class _Handle:
    """A session's socket as the relay sees it: only its handle matters here."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getHandle(self) -> socket.socket:
        return self._sock


class ServerSessionsDropsTests(SynchronousTestCase):
    def _sessions(self, count: int) -> tuple[ServerSessions, list[socket.socket]]:
        relay = ServerSessions(Clock(), ("127.0.0.1", 9), lambda protocol: None)
        sockets = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            session = Session(_Handle(sock), ("127.0.0.1", 9), relay._drop)  # type: ignore[arg-type]
            relay.sessions[object()] = session  # type: ignore[index]
        return relay, sockets

    def _countTableReads(self) -> list[str]:
        reads: list[str] = []
        realOpen = builtins.open

        def countingOpen(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, str) and "/net/udp" in file:
                reads.append(file)
            return realOpen(file, *args, **kwargs)

        self.patch(builtins, "open", countingOpen)
        return reads

    def test_oneReadPerTable(self) -> None:
        """
        A scrape (or a stats line) with many sessions reads each of the
        kernel's tables once: a read per socket made a scrape of a server
        with a thousand sessions take seconds, every session stalled
        meanwhile.
        """
        relay, sockets = self._sessions(8)
        if kernelDrops(sockets[0]) is None:
            raise self.skipTest("no /proc/net/udp here")
        reads = self._countTableReads()
        relay.summary()
        self.assertLessEqual(len(reads), 2, reads)  # udp and udp6, once each at most

    def test_dropsOfAllSessionsCounted(self) -> None:
        """
        The drops of an overflowed session socket, among others, are counted.
        """
        relay, sockets = self._sessions(4)
        if kernelDrops(sockets[0]) is None:
            raise self.skipTest("no /proc/net/udp here")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        for _ in range(200):
            sender.sendto(b"x" * 1000, sockets[2].getsockname())
        expected = sum(kernelDrops(s) or 0 for s in sockets)
        self.assertGreater(expected, 0)
        relay.summary()
        self.assertEqual(relay.stats.kernelDrops, expected)
