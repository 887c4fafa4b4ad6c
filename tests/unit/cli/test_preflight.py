"""
L{udptunnel.cli.preflight}: every socket tried before twistd forks.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from tests.support.options import Runner, parse
from udptunnel.tap import (
    makeService,
)


class PreflightTests(SynchronousTestCase):
    """
    Under a twistd that will fork, every socket is tried before it forks,
    so that a busy port is one line in the user's terminal.
    """

    def busyUDP(self) -> int:
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        return int(busy.getsockname()[1])

    def test_busyPortBeforeTheFork(self) -> None:
        """
        Under a twistd that will fork (no C{--nodaemon}), a UDP port that is
        taken ends L{makeService} with a L{SystemExit} of one line, which names
        the address and why it cannot be bound.
        """
        port = self.busyUDP()
        options = parse("server", "--tcp", "tcp:0:interface=127.0.0.1",
                        "--udp", f"127.0.0.1:{port}")
        options.parent = Runner()  # type: ignore[assignment]
        options.parent["nodaemon"] = False
        error = self.assertRaises(SystemExit, makeService, options, reactor)
        self.assertEqual(str(error.code), "udptunnel: cannot start: cannot listen on "
                                          f"127.0.0.1:{port}: Address already in use")

    def test_onlyWhenForking(self) -> None:
        """
        In the foreground the tunnel's own bind says it, at start; and
        nothing is tried where no runner runs (a test builds services).
        """
        port = self.busyUDP()
        options = parse("server", "--tcp", "tcp:0:interface=127.0.0.1",
                        "--udp", f"127.0.0.1:{port}")
        makeService(options, reactor)
        options.parent = Runner()  # type: ignore[assignment]
        makeService(options, reactor)
