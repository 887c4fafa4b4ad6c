"""
C{--version}, the version in the start-up line, and the build-info metric.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from udptunnel import __version__
from udptunnel.tap import Options

from .fakes import captureLogEvents
from .test_metrics import makeRelay, scrape
from .test_twistd import TWISTD, TwistdTestCase


class VersionOptionTests(SynchronousTestCase):
    def assertVersion(self, *argv: str) -> None:
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            Options().parseOptions(list(argv))
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"udptunnel {__version__}\n")

    def test_top(self) -> None:
        self.assertVersion("--version")

    def test_server(self) -> None:
        self.assertVersion("server", "--version")

    def test_client(self) -> None:
        """
        It wins over the missing required options, as --help does.
        """
        self.assertVersion("client", "--version")


class VersionReportedTests(SynchronousTestCase):
    def test_startupLine(self) -> None:
        events = captureLogEvents(self)
        relay = makeRelay(role="client")
        relay.privilegedStartService()
        relay.startService()
        self.addCleanup(relay.stopService)
        starting = [e for e in events if "starting" in e.get("log_format", "")
                    and e.get("version") == __version__]
        self.assertEqual(len(starting), 1)  # once, though both starts ran
        self.assertEqual(starting[0]["role"], "client")

    def test_buildInfoMetric(self) -> None:
        self.assertIn(f'udptunnel_build_info{{version="{__version__}"}} 1.0',
                      scrape(makeRelay()))


class TwistdVersionTests(TwistdTestCase):
    def test_installedTwistd(self) -> None:
        for argv in ([], ["server"], ["client"]):
            result = self.command(TWISTD, "udptunnel", *argv, "--version")
            self.assertEqual((result.returncode, result.stdout),
                             (0, f"udptunnel {__version__}\n"), argv)

