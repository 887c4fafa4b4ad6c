"""
C{benchmarks/plot.py}: the chart of what a run measured.  The benchmark's
own smoke run with C{--plot} is CI's (C{.ci/run}), not the suite's.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
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
        """
        The blast, window and ping modes measured give four panels (the blast's
        CPU per datagram the fourth), two by two in a PNG of 1280 by 840.
        """
        plot = loadPlot()
        path = self.directory / "chart.png"
        drawn = plot.plotSummary(SUMMARY, [64, 512, 1400], ["blast", "window", "ping"],
                                 ["direct", "udptunnel", "1.1"], path, "test")
        self.assertEqual(len(drawn), 4)
        self.assertEqual(pngSize(path), (1280, 840))

    def test_onlyWhatWasMeasured(self) -> None:
        """
        Only the panels of the modes measured are drawn (ping alone: one panel,
        640 by 420); modes of which none can be drawn are refused.
        """
        plot = loadPlot()
        path = self.directory / "ping.png"
        drawn = plot.plotSummary(SUMMARY, [64], ["ping"], ["direct", "udptunnel"], path, "t")
        self.assertEqual(drawn, ["Ping-pong RTT p50, us"])
        self.assertEqual(pngSize(path), (640, 420))
        with self.assertRaises(ValueError):
            plot.plotSummary(SUMMARY, [64], ["sessions"], ["direct"], path, "t")
