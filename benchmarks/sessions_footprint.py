#!/usr/bin/env python3
"""
What many sessions cost: resident memory and descriptors of both ends with
1000 sessions open, and after they expire.

    .venv/bin/python benchmarks/sessions_footprint.py [--sessions 1000] [--rounds 2]

It starts the installed twistd's two ends with --sessions on loopback,

    N sockets --UDP--> client --sessions ==N TCP==> server --sessions --UDP--> echo
                       (phantom, --udp)             (--peer the echo, N sockets)

reads each end's VmRSS and descriptor count (/proc/PID/status, /proc/PID/fd)
before, then opens N sessions (N sockets of this script, each on its own
source port, each sends one datagram and waits for its echo), reads them
with the N open, closes its sockets and waits for both ends' metrics gauge
udptunnel_sessions_open to reach 0 (--session-idle, short), and reads them
after.  Several rounds show whether what one round leaves behind grows.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from run import LO, BenchError, freePort, isListening, logTail, memoryKiB, spawn, stop

#: Sessions opened at once: a wave of this many new sources, each answered
#: before the next wave.  (A burst of new TCP connections beyond the
#: server's listen backlog, 50, loses SYNs, and each costs a second.)
WAVE = 32
#: Seconds a scrape may take.  A server with many sessions once took
#: seconds per scrape (it read /proc/net/udp once per session).
SCRAPE_TIMEOUT = 60


class Echo:
    """
    A UDP socket that sends every datagram back to its source, in a thread,
    until stopped (or for at most C{limit} seconds).
    """

    def __init__(self, limit: float) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LO, 0))
        self.address = self.sock.getsockname()
        self.echoed = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            readable, _, _ = select.select([self.sock], [], [], 0.1)
            if not readable:
                continue
            data, source = self.sock.recvfrom(65535)
            self.sock.sendto(data, source)
            self.echoed += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int) -> list[str]:
    """The lines of an end's metrics."""
    try:
        with urllib.request.urlopen(f"http://{LO}:{port}/metrics",
                                    timeout=SCRAPE_TIMEOUT) as response:
            return response.read().decode().splitlines()
    except OSError as e:
        raise BenchError(f"cannot scrape the metrics on port {port}: {e}") from None


def gauge(port: int, name: str = "udptunnel_sessions_open") -> float:
    """One unlabelled series of an end's metrics."""
    for line in scrape(port):
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise BenchError(f"no {name} in the metrics on port {port}")


def counters(port: int, name: str = "udptunnel_sessions_total") -> dict[str, float]:
    """The series of a labelled counter, by label value."""
    found = {}
    for line in scrape(port):
        if line.startswith(name + "{"):
            label = line.split('"')[1]
            found[label] = float(line.rsplit(" ", 1)[1])
    return found


class Ends:
    """The two ends with --sessions, and their metrics ports."""

    def __init__(self, twistd: Path, workdir: Path, args: argparse.Namespace, echo: Echo):
        taken: set[int] = set()
        self.tcpPort = freePort(socket.SOCK_STREAM, taken)
        self.udpPort = freePort(socket.SOCK_DGRAM, taken)
        self.metrics = {
            "server": freePort(socket.SOCK_STREAM, taken),
            "client": freePort(socket.SOCK_STREAM, taken),
        }
        self.logs = {end: workdir / f"footprint-{end}.log" for end in ("server", "client")}
        base = [str(twistd), "-n", "--pidfile=", "udptunnel"]
        common = ["--sessions", "--session-idle", f"{args.idle:g}",
                  "--max-sessions", str(args.max_sessions)]
        self.server = spawn(
            base + ["server", *common, "--tcp", f"tcp:{self.tcpPort}:interface={LO}",
                    "--peer", f"{echo.address[0]}:{echo.address[1]}",
                    "--metrics", f"tcp:{self.metrics['server']}:interface={LO}"],
            self.logs["server"], workdir)
        self.client = spawn(
            base + ["client", *common, "--tcp", f"{LO}:{self.tcpPort}",
                    "--udp", f"{LO}:{self.udpPort}",
                    "--metrics", f"tcp:{self.metrics['client']}:interface={LO}"],
            self.logs["client"], workdir)
        self.pids = {"server": self.server.pid, "client": self.client.pid}

    def waitReady(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for end, port in self.metrics.items():
            while not isListening(port) or not isListening(self.tcpPort):
                self.checkAlive("while starting")
                if time.monotonic() > deadline:
                    raise BenchError(f"the {end} end did not start within {timeout:.0f} s:\n"
                                     + logTail(self.logs[end]))
                time.sleep(0.05)

    def checkAlive(self, when: str) -> None:
        for end, process in (("server", self.server), ("client", self.client)):
            if process.poll() is not None:
                raise BenchError(f"the {end} end exited (status {process.returncode}) "
                                 f"{when}:\n{logTail(self.logs[end])}")

    def sample(self, label: str) -> dict[str, Any]:
        self.checkAlive(label)
        out: dict[str, Any] = {"when": label}
        # /proc first: a scrape allocates too.
        for end, pid in self.pids.items():
            memory = memoryKiB(pid)
            out[end] = {
                "rss_kib": memory["VmRSS"],
                "peak_rss_kib": memory["VmHWM"],
                "fds": descriptors(pid),
            }
        for end, port in self.metrics.items():
            started = time.monotonic()
            out[end]["sessions"] = gauge(port)
            out[end]["scrape_s"] = round(time.monotonic() - started, 3)
        return out

    def waitForSessions(self, count: int, timeout: float) -> float:
        """Seconds until both ends' gauge reads C{count}."""
        start = time.monotonic()
        while True:
            self.checkAlive(f"waiting for {count} sessions")
            values = {end: gauge(port) for end, port in self.metrics.items()}
            if all(v == count for v in values.values()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise BenchError(f"the sessions gauge did not reach {count} within "
                                 f"{timeout:.0f} s: {values}")
            time.sleep(0.2)

    def stop(self) -> None:
        stop([self.server, self.client])


def openSessions(target: tuple[str, int], count: int, timeout: float) -> tuple[
        list[socket.socket], int]:
    """
    C{count} sockets, each on its own source port, each of which sent a
    datagram to C{target} and got it back; and how many datagrams had to be
    sent again (a wave's datagram not back within 2 s is sent again).
    """
    deadline = time.monotonic() + timeout
    sockets: list[socket.socket] = []
    resent = 0
    try:
        while len(sockets) < count:
            wave = []
            for _ in range(min(WAVE, count - len(sockets))):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((LO, 0))
                s.connect(target)
                s.setblocking(False)
                sockets.append(s)
                wave.append(s)
            waiting = {s: f"session {i}".encode() for i, s in enumerate(wave, len(sockets))}
            for s, data in waiting.items():
                s.send(data)
            lastSent = time.monotonic()
            while waiting:
                now = time.monotonic()
                if now > deadline:
                    raise BenchError(f"{len(waiting)} of {count} datagrams did not come back "
                                     f"within {timeout:.0f} s")
                if now - lastSent > 2.0:
                    for s, data in waiting.items():
                        s.send(data)
                        resent += 1
                    lastSent = now
                readable, _, _ = select.select(list(waiting), [], [], 0.1)
                for s in readable:
                    try:
                        if s.recv(65535) == waiting[s]:
                            del waiting[s]
                    except (BlockingIOError, ConnectionRefusedError):
                        pass
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets, resent


def fmtMiB(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def report(samples: list[dict[str, Any]], count: int) -> str:
    lines = [f"{'':<28} {'server RSS':>11} {'fds':>6} {'client RSS':>11} {'fds':>6}"]
    for s in samples:
        lines.append(
            f"{s['when']:<28} {fmtMiB(s['server']['rss_kib']) + ' MiB':>11} "
            f"{s['server']['fds']:>6} {fmtMiB(s['client']['rss_kib']) + ' MiB':>11} "
            f"{s['client']['fds']:>6}"
        )
    before = samples[0]
    opened = [s for s in samples if s["when"].endswith("open")]
    if opened:
        # The first round: later ones reuse what the allocator kept.
        first = opened[0]
        for end in ("server", "client"):
            extra = first[end]["rss_kib"] - before[end]["rss_kib"]
            fds = first[end]["fds"] - before[end]["fds"]
            lines.append(f"{end}: {extra / count:.1f} KiB and {fds / count:.2f} descriptors "
                         f"per session (round 1)")
    return "\n".join(lines)


def parseArgs(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--sessions", type=int, default=1000, help="sessions to open [1000]")
    p.add_argument("--rounds", type=int, default=2,
                   help="times to open them and let them expire [2]")
    p.add_argument("--idle", type=float, default=5.0, help="--session-idle of both ends [5]")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="--max-sessions of both ends [--sessions + 24]")
    p.add_argument("--twistd", type=Path, default=Path(sys.executable).parent / "twistd",
                   help="the twistd to run [the one next to this Python]")
    p.add_argument("--json-out", type=Path, help="write the samples as JSON to this file")
    p.add_argument("--keep-logs", type=Path, help="keep the ends' logs in this directory")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= 5000:
        p.error("--sessions must be 1..5000")
    if not 1 <= args.rounds <= 10:
        p.error("--rounds must be 1..10")
    if not 1 <= args.idle <= 60:
        p.error("--idle must be 1..60 s")
    args.max_sessions = args.max_sessions or args.sessions + 24
    return args


def main(argv: list[str] | None = None) -> int:
    args = parseArgs(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("sessions_footprint.py: Linux only (it reads /proc)")
    if not (args.twistd.is_file() and os.access(args.twistd, os.X_OK)):
        raise SystemExit(f"sessions_footprint.py: no twistd at {args.twistd}; run it with the "
                         f"Python udptunnel is installed in, or give --twistd")
    # This script holds a socket per session too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.sessions + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"sessions_footprint.py: {needed} descriptors needed, the hard "
                             f"limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    workdir = Path(tempfile.mkdtemp(prefix="udptunnel-footprint-"))
    # Bounded: every round opens (at most 120 s) and waits for expiry.
    echo = Echo(limit=args.rounds * (180 + 4 * args.idle) + 60)
    ends = Ends(args.twistd, workdir, args, echo)
    samples: list[dict[str, Any]] = []
    timings: list[dict[str, float]] = []
    status = 0
    try:
        ends.waitReady(15)
        time.sleep(0.5)
        samples.append(ends.sample("before"))
        for n in range(1, args.rounds + 1):
            started = time.monotonic()
            sockets, resent = openSessions((LO, ends.udpPort), args.sessions, 120)
            opening = time.monotonic() - started
            try:
                ends.waitForSessions(args.sessions, 10)
                samples.append(ends.sample(f"round {n}: {args.sessions} open"))
            finally:
                for s in sockets:
                    s.close()
            closing = ends.waitForSessions(0, 4 * args.idle + 30)
            time.sleep(0.5)
            samples.append(ends.sample(f"round {n}: after"))
            timings.append({"open_s": round(opening, 2), "resent": resent,
                            "expired_after_s": round(closing, 2)})
            print(f"round {n}: {args.sessions} sessions open in {opening:.1f} s "
                  f"({resent} datagrams sent again), all closed {closing:.1f} s after the "
                  f"sockets", file=sys.stderr, flush=True)
        events = {end: counters(port) for end, port in ends.metrics.items()}
    except BenchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        status = 1
        events = {}
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
        events = {}
    finally:
        ends.stop()
        echo.close()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.iterdir():
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    if samples:
        print(report(samples, args.sessions))
    for end, counts in events.items():
        print(f"{end} udptunnel_sessions_total: "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items())))
    if args.json_out and samples:
        args.json_out.write_text(json.dumps({
            "tool": "udptunnel benchmarks/sessions_footprint.py",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "parameters": {"sessions": args.sessions, "rounds": args.rounds,
                           "idle": args.idle, "max_sessions": args.max_sessions},
            "samples": samples, "rounds": timings, "events": events,
        }, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
