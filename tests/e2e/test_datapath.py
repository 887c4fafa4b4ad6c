"""
Which data path the installed daemon runs, and that each carries: the
compiled pump where the install built it (what the other end-to-end tests
run), the pure-Python path where it was not built or is turned off.
"""

from __future__ import annotations

import os

from tests.support.ends import FaultTestCase
from tests.support.pump import requirePump
from udptunnel.cli.speedups import PURE_PYTHON


class DataPathTests(FaultTestCase):
    """
    A single link under the installed C{twistd}, a checksummed stream
    through it both ways, on each path.
    """

    def carry(self) -> None:
        server, client, stream = self.tunnel()
        self.assertFlows(stream, "after the tunnel came up", count=100)
        self.assertIntact(stream)
        self.assertSurvived(server, client)
        self.ends = (server, client)

    def assertPath(self, line: str) -> None:
        for end in self.ends:
            self.assertIn(f"data path: {line}", self.output(end))

    def test_compiled(self) -> None:
        """
        Where the install built the pump, both ends run it.
        """
        requirePump()
        self.carry()
        self.assertPath("compiled (udptunnel._pump)")

    def test_purePython(self) -> None:
        """
        With UDPTUNNEL_PURE_PYTHON set, both ends run the pure-Python path,
        and say why.
        """
        os.environ[PURE_PYTHON] = "1"
        self.addCleanup(os.environ.pop, PURE_PYTHON, None)
        self.carry()
        self.assertPath(f"pure Python ({PURE_PYTHON} is set)")
