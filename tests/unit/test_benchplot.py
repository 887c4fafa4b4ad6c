"""
C{benchmarks/run.py --plot}: the chart of what a run measured.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY

BENCHMARKS = Path(REPOSITORY) / "benchmarks"


def loadPlot() -> Any:
    spec = importlib.util.spec_from_file_location("benchplot", BENCHMARKS / "plot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pngSize(path: Path) -> tuple[int, int]:
    """
    The width and height a PNG file says it has; fails on anything else.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack("!II", data[16:24])


SUMMARY = {
    str(size): {
        "blast": {"direct": {"pps": 400000.0}, "udptunnel": {"pps": 150000.0,
                  "tunnel_cpu_us_per_op": 7.5}, "1.1": {"pps": 90000.0,
                  "tunnel_cpu_us_per_op": 10.0}},
        "window": {"direct": {"rtps": 200000.0}, "udptunnel": {"rtps": 60000.0},
                   "1.1": {"rtps": 10000.0}},
        "ping": {"direct": {"rtt_p50_us": 15.0}, "udptunnel": {"rtt_p50_us": 90.0},
                 "1.1": {"rtt_p50_us": 45.0}},
    }
    for size in (64, 512, 1400)
}


class PlotTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_fourPanels(self) -> None:
        plot = loadPlot()
        path = self.directory / "chart.png"
        drawn = plot.plotSummary(SUMMARY, [64, 512, 1400], ["blast", "window", "ping"],
                                 ["direct", "udptunnel", "1.1"], path, "test")
        self.assertEqual(len(drawn), 4)
        self.assertEqual(pngSize(path), (1280, 840))

    def test_onlyWhatWasMeasured(self) -> None:
        plot = loadPlot()
        path = self.directory / "ping.png"
        drawn = plot.plotSummary(SUMMARY, [64], ["ping"], ["direct", "udptunnel"], path, "t")
        self.assertEqual(drawn, ["Ping-pong RTT p50, us"])
        self.assertEqual(pngSize(path), (640, 420))
        with self.assertRaises(ValueError):
            plot.plotSummary(SUMMARY, [64], ["sessions"], ["direct"], path, "t")

    def test_smokeRunWritesChart(self) -> None:
        """
        The smoke benchmark (C{--quick}) with C{--plot}, as a user runs it:
        status 0, the chart written.
        """
        path = self.directory / "quick.png"
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--plot", str(path)],
            capture_output=True, text=True, timeout=300, check=False,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
        self.assertIn(f"written to {path}", done.stdout)
        width, height = pngSize(path)
        self.assertGreater(width * height, 0)
