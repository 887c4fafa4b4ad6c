#!/usr/bin/env python3
"""
Benchmark the installed udptunnel against direct UDP, on loopback.

Run it with the Python of the environment udptunnel is installed in:

    .venv/bin/python benchmarks/run.py [--quick] [--json-out FILE]

For every measurement it starts the installed twistd's udptunnel server
(next to the sending application, phantom mode) and client (with --peer to
the sink or echo) on fresh loopback ports, waits until a datagram makes the
round trip, drives them with the C load generator udpload (compiled from
benchmarks/udpload.c with cc at first use), reads the ends' CPU time and
peak RSS from /proc, and stops them.  Direct UDP (the application sends
straight to the sink) is measured in the same run, interleaved, so every
figure has a ratio to it taken under the same conditions.  Linux only.

The sessions mode runs both ends with --sessions (the client in phantom
mode, the server's --peer the echo) and drives them with N flows at once,
each from its own source port, so each is a session of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GENERATOR_SOURCE = HERE / "udpload.c"
LO = "127.0.0.1"
MODES = ("blast", "window", "ping", "sessions")
TUNNEL = "udptunnel"
DIRECT = "direct"
#: Flows of a sessions measurement start at most this many per 32 (see
#: udpload.c) and must all be up within this many seconds.
SETUP_SECONDS = 30
#: udpload flows numbers each flow's datagrams in 22 bits.
FLOWS_MAX_COUNT = 1 << 22
CLOCK_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: Processes this script started and has not stopped yet.
_running: list[subprocess.Popen[bytes]] = []


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


# The load generator


def buildGenerator(cc: str) -> Path:
    """
    Compile udpload.c once per source version and compiler, into a cache
    directory (or a temporary one), and return the binary.
    """
    source = GENERATOR_SOURCE.read_bytes()
    digest = hashlib.sha256(source + cc.encode()).hexdigest()[:16]
    cacheHome = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    candidates = [
        Path(cacheHome) / "udptunnel-bench",
        Path(tempfile.gettempdir()) / f"udptunnel-bench-{os.getuid()}",
    ]
    for directory in candidates:
        binary = directory / f"udpload-{digest}"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            binary = directory / f"udpload-{digest}"
            break
    else:
        raise SystemExit("benchmarks/run.py: no writable cache or temporary directory")
    compiler = shutil.which(cc)
    if compiler is None:
        raise SystemExit(
            f"benchmarks/run.py: a C compiler is needed to build the load generator "
            f"{GENERATOR_SOURCE.name}, and {cc!r} was not found. Install one "
            f"(Debian/Ubuntu: apt-get install gcc; Fedora: dnf install gcc; "
            f"Alpine: apk add build-base) or name it with --cc."
        )
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    command = [compiler, "-O2", "-o", str(partial), str(GENERATOR_SOURCE), "-lpthread"]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"benchmarks/run.py: {' '.join(command)} took over 120 s") from None
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SystemExit(
            f"benchmarks/run.py: cannot compile the load generator:\n"
            f"$ {' '.join(command)}\n{done.stderr.strip()}"
        )
    os.replace(partial, binary)
    return binary


def runGenerator(generator: Path, mode: str, *args: str, timeout: float,
                 onReady: Callable[[], None] | None = None) -> dict[str, Any]:
    """
    Run one udpload measurement and return its JSON result (its last line).
    A line {"phase": "ready"} before it (udpload flows, once its sessions
    are open) calls C{onReady}: the measurement starts there.
    """
    command = [str(generator), mode, *args]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=errors)
        assert process.stdout is not None
        lines: list[str] = []
        try:
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode(errors="replace").strip()
                if line.startswith('{"phase":"ready"') and onReady is not None:
                    onReady()
                elif line:
                    lines.append(line)
                if time.monotonic() > deadline:
                    break
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()
                process.wait()
                raise BenchError(f"udpload {mode} did not finish within {timeout:.0f} s")
        errors.seek(0)
        stderr = errors.read().decode(errors="replace").strip()
    if not lines:
        raise BenchError(f"udpload {mode} failed: {stderr or process.returncode}")
    result: dict[str, Any] = json.loads(lines[-1])
    if process.returncode not in (0, 1):
        raise BenchError(f"udpload {mode} failed: {stderr}")
    return result


# Processes


def freePort(kind: int, taken: set[int]) -> int:
    """
    A port the kernel just handed out on loopback and this run has not used.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((LO, 0))
            port: int = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
    raise BenchError("no free port")


def spawn(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(command) + "\n").encode())
        out.flush()
        # A session of its own: Ctrl-C in the terminal reaches this script,
        # which then stops the ends itself (SIGTERM, then SIGKILL).
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _running.append(process)
    return process


def stop(processes: list[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
    """
    SIGTERM each process, then SIGKILL those still alive after C{grace} s.
    """
    for p in processes:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                pass
        if p in _running:
            _running.remove(p)


def cpuSeconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def memoryKiB(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(line.split()[1])
    return found


def isListening(port: int) -> bool:
    """Whether something LISTENs on 127.0.0.1:port (from /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                return True
    return False


def logTail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


class Tunnel:
    """
    The two ends of one udptunnel, on fresh loopback ports:

        app --UDP--> server (phantom) ==TCP==> client --UDP--> sink/echo
    """

    def __init__(self, twistd: Path, workdir: Path, tag: str, args: argparse.Namespace,
                 sessions: bool = False):
        self.twistd = twistd
        self.sessions = sessions
        self.workdir = workdir
        self.tag = tag
        self.args = args
        taken: set[int] = set()
        self.tcpPort = freePort(socket.SOCK_STREAM, taken)
        self.serverUDP = freePort(socket.SOCK_DGRAM, taken)
        self.clientUDP = freePort(socket.SOCK_DGRAM, taken)
        self.sinkPort = freePort(socket.SOCK_DGRAM, taken)
        self.server: subprocess.Popen[bytes] | None = None
        self.client: subprocess.Popen[bytes] | None = None
        self.serverLog = workdir / f"{tag}-server.log"
        self.clientLog = workdir / f"{tag}-client.log"

    @property
    def target(self) -> str:
        # With sessions the connecting end (the client) is the phantom end.
        return f"{LO}:{self.clientUDP if self.sessions else self.serverUDP}"

    @property
    def sink(self) -> str:
        return f"{LO}:{self.sinkPort}"

    def start(self, generator: Path, timeout: float) -> None:
        base = [str(self.twistd), "-n", "--pidfile=", "udptunnel"]
        deadline = time.monotonic() + timeout
        if self.sessions:
            # The sessions: the client opens a connection per source on
            # its --udp, the server a UDP socket per connection to --peer.
            serverUDP = ["--sessions", "--peer", self.sink]
            clientUDP = ["--sessions", "--udp", self.target]
        else:
            serverUDP = ["--udp", self.target]
            clientUDP = ["--udp", f"{LO}:{self.clientUDP}", "--peer", self.sink]
        self.server = spawn(
            base
            + ["server", "--tcp", f"tcp:{self.tcpPort}:interface={LO}"]
            + serverUDP
            + self.args.server_arg,
            self.serverLog,
            self.workdir,
        )
        while not isListening(self.tcpPort):
            self._checkAlive("while starting")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the server did not listen on TCP {self.tcpPort} within {timeout:.0f} s:\n"
                    + logTail(self.serverLog)
                )
            time.sleep(0.02)
        self.client = spawn(
            base
            + ["client", "--tcp", f"{LO}:{self.tcpPort}"]
            + clientUDP
            + self.args.client_arg,
            self.clientLog,
            self.workdir,
        )
        remaining = max(1.0, deadline - time.monotonic())
        probe = runGenerator(
            generator,
            "probe",
            "--target",
            self.target,
            "--sink",
            self.sink,
            "--duration",
            f"{remaining:.1f}",
            timeout=remaining + 10,
        )
        self._checkAlive("while starting")
        if not probe.get("ok"):
            raise BenchError(
                f"no datagram came back through the tunnel within {timeout:.0f} s:\n"
                f"  server log:\n{logTail(self.serverLog)}\n  client log:\n{logTail(self.clientLog)}"
            )

    def ends(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.server, self.client) if p is not None]

    def _checkAlive(self, when: str) -> None:
        for name, p, log in (
            ("server", self.server, self.serverLog),
            ("client", self.client, self.clientLog),
        ):
            if p is not None and p.poll() is not None:
                raise BenchError(
                    f"the {name} end exited (status {p.returncode}) {when}:\n{logTail(log)}"
                )

    def cpu(self) -> float:
        return sum(cpuSeconds(p.pid) for p in self.ends())

    def memory(self) -> dict[str, dict[str, int]]:
        assert self.server is not None and self.client is not None
        return {"server": memoryKiB(self.server.pid), "client": memoryKiB(self.client.pid)}

    def stop(self) -> None:
        stop(self.ends())


# One measurement


def flowWindow(flows: int, args: argparse.Namespace) -> int:
    """
    Datagrams in flight per flow: --flow-window, or --window shared by the
    flows (at least one each), so that 1, 10 or 100 flows carry about the
    same load as the single link's pipelined echo.
    """
    return int(args.flow_window or max(1, args.window // flows))


def generatorArgs(mode: str, size: int, args: argparse.Namespace,
                  flows: int | None = None) -> tuple[list[str], float]:
    """The udpload options of one measurement, and a time limit for it."""
    common = ["--size", str(size)]
    if mode == "sessions":
        assert flows is not None
        extra = ["--flows", str(flows), "--window", str(flowWindow(flows, args))]
        extra += ["--count", str(min(args.window_count, FLOWS_MAX_COUNT))]
        extra += ["--duration", str(args.duration), "--setup-s", str(SETUP_SECONDS)]
        return common + extra, args.duration + SETUP_SECONDS + 10
    if mode == "blast":
        extra = ["--count", str(args.blast_count), "--duration", str(args.duration)]
        extra += ["--drain-ms", str(args.drain_ms)]
        limit = args.duration + 10 + args.drain_ms / 1000
    elif mode == "window":
        extra = ["--window", str(args.window), "--count", str(args.window_count)]
        extra += ["--duration", str(args.duration)]
        limit = args.duration + 10
    else:
        extra = ["--count", str(args.ping_count), "--warmup", str(args.ping_warmup)]
        extra += ["--duration", str(args.ping_duration)]
        limit = args.ping_duration + 10
    return common + extra, limit


def measure(
    config: str,
    mode: str,
    size: int,
    rep: int,
    generator: Path,
    twistd: Path,
    workdir: Path,
    args: argparse.Namespace,
    flows: int | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"config": config, "mode": mode, "size": size, "rep": rep}
    options, limit = generatorArgs(mode, size, args, flows)
    program = "flows" if mode == "sessions" else mode
    if flows is not None:
        record["flows"] = flows
    if config == DIRECT:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LO, 0))
            sink = f"{LO}:{s.getsockname()[1]}"
        result = runGenerator(generator, program, "--target", sink, "--sink", sink, *options,
                              timeout=limit)
        checkFlows(result)
        record.update(result)
        record["mode"] = mode  # udpload's mode is "flows" for the sessions mode
        return record
    tag = f"{mode}-{size}-rep{rep}" + (f"-{flows}flows" if flows else "")
    tunnel = Tunnel(twistd, workdir, tag, args, sessions=mode == "sessions")
    try:
        tunnel.start(generator, args.ready_timeout)
        start = [tunnel.cpu(), time.monotonic()]

        def ready() -> None:  # the sessions are open: the measurement starts
            start[:] = [tunnel.cpu(), time.monotonic()]

        result = runGenerator(
            generator, program, "--target", tunnel.target, "--sink", tunnel.sink, *options,
            timeout=limit, onReady=ready,
        )
        cpu0, t0 = start
        checkFlows(result)
        cpu1, t1 = tunnel.cpu(), time.monotonic()
        tunnel._checkAlive("during the measurement")
        memory = tunnel.memory()
    except OSError as e:  # /proc of an end that vanished
        raise BenchError(f"cannot read an end's /proc entry: {e}") from None
    finally:
        tunnel.stop()
    record.update(result)
    record["mode"] = mode
    cpu = cpu1 - cpu0
    record["tunnel_cpu_s"] = round(cpu, 3)
    record["tunnel_cpu_pct"] = round(100 * cpu / (t1 - t0), 1) if t1 > t0 else None
    if mode == "blast":
        done = result.get("received", 0)
    elif mode in ("window", "sessions"):
        done = result.get("completed", 0)
    else:
        done = result.get("replies", 0) + args.ping_warmup
    # Per datagram carried one way (blast), per round trip (window, ping:
    # two datagrams through the tunnel, one each way).
    record["tunnel_cpu_us_per_op"] = round(1e6 * cpu / done, 2) if done else None
    record["server_peak_rss_kib"] = memory["server"].get("VmHWM")
    record["client_peak_rss_kib"] = memory["client"].get("VmHWM")
    record["server_rss_kib"] = memory["server"].get("VmRSS")
    record["client_rss_kib"] = memory["client"].get("VmRSS")
    return record


def checkFlows(result: dict[str, Any]) -> None:
    """
    A flows run counts as failed when its sessions did not all open, or
    when a datagram came back to another flow's socket (sessions mixed up).
    """
    if result.get("mode") != "flows":
        return
    if not result.get("ok"):
        raise BenchError(f"udpload flows: {result.get('error', 'failed')}")
    if result.get("misrouted"):
        raise BenchError(f"{result['misrouted']} datagrams came back to another flow's "
                         f"source: sessions mixed up")


# Summaries

#: Per mode: the headline metric (ratio to direct is taken on it) and
#: whether bigger is better.
HEADLINE = {"blast": "pps", "window": "rtps", "ping": "rtt_p50_us"}
SUMMARISED = {
    "blast": ["pps", "MBps", "loss_pct", "self_cpu_s"],
    "window": ["rtps", "MBps", "lost", "self_cpu_s"],
    "ping": ["rtt_p50_us", "rtt_p99_us", "lost", "self_cpu_s"],
}
TUNNEL_ONLY = [
    "tunnel_cpu_us_per_op",
    "tunnel_cpu_pct",
    "server_peak_rss_kib",
    "client_peak_rss_kib",
    "server_rss_kib",
    "client_rss_kib",
]


def summarise(records: list[dict[str, Any]], sizes: list[int], modes: list[str]) -> dict:
    """Medians (and min, max) per size, mode and config; ratios to direct."""
    out: dict[str, Any] = {}
    for size in sizes:
        for mode in modes:
            if mode == "sessions":
                continue  # summariseSessions
            cell: dict[str, Any] = {}
            byConfig = {
                config: [
                    r
                    for r in records
                    if r["size"] == size and r["mode"] == mode and r["config"] == config
                ]
                for config in (DIRECT, TUNNEL)
            }
            for config, rs in byConfig.items():
                good = [r for r in rs if "error" not in r]
                keys = SUMMARISED[mode] + (TUNNEL_ONLY if config == TUNNEL else [])
                summary: dict[str, Any] = {"n": len(good), "failed": len(rs) - len(good)}
                for key in keys:
                    values = [r[key] for r in good if r.get(key) is not None]
                    if values:
                        summary[key] = round(statistics.median(values), 3)
                        summary[key + "_min"] = min(values)
                        summary[key + "_max"] = max(values)
                cell[config] = summary
            # The ratio of each repetition's tunnel figure to the direct
            # figure of the same repetition, then the median of those.
            ratios: dict[str, float] = {}
            for key in SUMMARISED[mode][:2]:
                perRep = []
                for t in byConfig[TUNNEL]:
                    d = [r for r in byConfig[DIRECT] if r["rep"] == t["rep"]]
                    if d and t.get(key) and d[0].get(key) and "error" not in t:
                        perRep.append(t[key] / d[0][key])
                if perRep:
                    ratios[key] = round(statistics.median(perRep), 4)
            cell["ratio_to_direct"] = ratios
            out.setdefault(str(size), {})[mode] = cell
    return out


SESSIONS_SUMMARISED = [
    "rtps", "MBps", "lost", "rtt_p50_us", "rtt_p99_us", "flow_rtt_median_us",
    "flow_rtt_max_us", "flow_rt_fewest", "flow_rt_most", "setup_s", "self_cpu_s",
]


def summariseSessions(records: list[dict[str, Any]], sizes: list[int],
                      flowCounts: list[int]) -> dict:
    """
    Per size and number of flows: medians (and min, max) of direct UDP and
    of the tunnel with --sessions, and the ratios to direct.
    """
    out: dict[str, Any] = {}
    for size in sizes:
        for flows in flowCounts:
            rows = [r for r in records
                    if r["mode"] == "sessions" and r["size"] == size and r.get("flows") == flows]
            cell: dict[str, Any] = {}
            for config in (DIRECT, TUNNEL):
                rs = [r for r in rows if r["config"] == config]
                good = [r for r in rs if "error" not in r]
                summary: dict[str, Any] = {"n": len(good), "failed": len(rs) - len(good)}
                for key in SESSIONS_SUMMARISED + (TUNNEL_ONLY if config == TUNNEL else []):
                    values = [r[key] for r in good if r.get(key) is not None]
                    if values:
                        summary[key] = round(statistics.median(values), 3)
                        summary[key + "_min"] = min(values)
                        summary[key + "_max"] = max(values)
                cell[config] = summary
            ratios: dict[str, float] = {}
            for key in ("rtps", "rtt_p50_us"):
                perRep = []
                for t in rows:
                    if t["config"] != TUNNEL or "error" in t or not t.get(key):
                        continue
                    d = [r for r in rows if r["config"] == DIRECT and r["rep"] == t["rep"]
                         and r.get(key)]
                    if d:
                        perRep.append(t[key] / d[0][key])
                if perRep:
                    ratios[key] = round(statistics.median(perRep), 4)
            cell["ratio_to_direct"] = ratios
            out.setdefault(str(size), {})[str(flows)] = cell
    return out


def sessionsTable(sessions: dict, summary: dict, sizes: list[int], flowCounts: list[int],
                  args: argparse.Namespace) -> str:
    """
    The sessions rows, with the single link's pipelined echo of the same
    run (C{summary}, when the window mode ran) beside them.
    """
    lines = [
        "",
        ("== sessions: N flows at once, each from its own source port (a session each; both "
        "ends --sessions), echo"),
        "   in flight per flow: " + ", ".join(
            f"{flowWindow(n, args)} ({n} flow{'s' if n > 1 else ''})" for n in flowCounts)
        + "; x1link = rt/s / the single link's pipelined echo",
        ("   RTT = over all round trips; flow RTT = each flow's mean RTT, median and "
        "slowest flow; setup = s to open all sessions"),
        (f"{'size':>5} {'flows':>5} {'config':<10} {'rt/s':>10} {'[min-max]':>21} {'xD':>6} "
        f"{'x1link':>6} {'RTT p50/p99 us':>15} {'flow RTT us':>13} {'setup s':>7} "
        f"{'CPU us/rt':>9} {'RSS MiB':>11}"),
    ]
    for size in sizes:
        link = summary.get(str(size), {}).get("window", {}).get(TUNNEL, {}).get("rtps")
        for flows in flowCounts:
            cell = sessions[str(size)][str(flows)]
            for config in (DIRECT, TUNNEL):
                c = cell[config]
                tunnel = config == TUNNEL
                ratio = cell["ratio_to_direct"].get("rtps")
                toLink = c.get("rtps") / link if tunnel and link and c.get("rtps") else None
                rss = (f"{fmtMiB(c.get('server_peak_rss_kib'))}/"
                       f"{fmtMiB(c.get('client_peak_rss_kib'))}")
                lines.append(
                    f"{size:>5} {flows:>5} {config:<10} {fmtInt(c.get('rtps')):>10} "
                    f"{'[' + fmtInt(c.get('rtps_min')) + '-' + fmtInt(c.get('rtps_max')) + ']':>21} "
                    f"{fmtNum(ratio, 2) if tunnel else '-':>6} "
                    f"{fmtNum(toLink, 2) if toLink else '-':>6} "
                    f"{fmtNum(c.get('rtt_p50_us'), 0) + '/' + fmtNum(c.get('rtt_p99_us'), 0):>15} "
                    f"{fmtNum(c.get('flow_rtt_median_us'), 0) + '/' + fmtNum(c.get('flow_rtt_max_us'), 0):>13} "
                    f"{fmtNum(c.get('setup_s'), 2):>7} "
                    f"{fmtNum(c.get('tunnel_cpu_us_per_op'), 2) if tunnel else '-':>9} "
                    f"{rss if tunnel else '-':>11}"
                    + (f"  ({c['failed']} failed)" if c.get("failed") else "")
                )
    return "\n".join(lines)


def fmtInt(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmtNum(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmtMiB(kib: Any) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def table(summary: dict, sizes: list[int], modes: list[str], repeat: int) -> str:
    lines = [
        (
            f"medians of {repeat} repetition(s) [min-max]; xD = udptunnel / direct, "
            f"median of the per-repetition ratios"
        ),
        "CPU = utime+stime of both tunnel ends; RSS = VmHWM (peak) of the server / client end",
    ]

    def cells(mode: str) -> list[tuple[int, str, dict, dict]]:
        rows = []
        for size in sizes:
            cell = summary[str(size)][mode]
            for config in (DIRECT, TUNNEL):
                rows.append((size, config, cell[config], cell["ratio_to_direct"]))
        return rows

    def failed(s: dict) -> str:
        return f"  ({s['failed']} failed)" if s.get("failed") else ""

    def rss(s: dict) -> str:
        return f"{fmtMiB(s.get('server_peak_rss_kib'))}/{fmtMiB(s.get('client_peak_rss_kib'))}"

    if "blast" in modes:
        lines += ["", "== one-way blast: datagrams delivered at the sink, unpaced sender"]
        lines.append(
            f"{'size':>5} {'config':<10} {'dgram/s':>10} {'[min-max]':>21} {'MB/s':>7} "
            f"{'loss%':>6} {'xD':>6} {'CPU us/dgram':>13} {'CPU%':>5} {'RSS MiB':>11}"
        )
        for size, config, s, ratio in cells("blast"):
            tunnel = config == TUNNEL
            lines.append(
                f"{size:>5} {config:<10} {fmtInt(s.get('pps')):>10} "
                f"{'[' + fmtInt(s.get('pps_min')) + '-' + fmtInt(s.get('pps_max')) + ']':>21} "
                f"{fmtNum(s.get('MBps')):>7} {fmtNum(s.get('loss_pct')):>6} "
                f"{fmtNum(ratio.get('pps'), 2) if tunnel else '-':>6} "
                f"{fmtNum(s.get('tunnel_cpu_us_per_op'), 2) if tunnel else '-':>13} "
                f"{fmtInt(s.get('tunnel_cpu_pct')) if tunnel else '-':>5} "
                f"{rss(s) if tunnel else '-':>11}{failed(s)}"
            )
    if "window" in modes:
        lines += ["", "== pipelined echo: round trips/s with a window of datagrams in flight"]
        lines.append(
            f"{'size':>5} {'config':<10} {'rt/s':>10} {'[min-max]':>21} {'MB/s':>7} "
            f"{'lost':>6} {'xD':>6} {'CPU us/rt':>13} {'CPU%':>5} {'RSS MiB':>11}"
        )
        for size, config, s, ratio in cells("window"):
            tunnel = config == TUNNEL
            lines.append(
                f"{size:>5} {config:<10} {fmtInt(s.get('rtps')):>10} "
                f"{'[' + fmtInt(s.get('rtps_min')) + '-' + fmtInt(s.get('rtps_max')) + ']':>21} "
                f"{fmtNum(s.get('MBps')):>7} {fmtInt(s.get('lost')):>6} "
                f"{fmtNum(ratio.get('rtps'), 2) if tunnel else '-':>6} "
                f"{fmtNum(s.get('tunnel_cpu_us_per_op'), 2) if tunnel else '-':>13} "
                f"{fmtInt(s.get('tunnel_cpu_pct')) if tunnel else '-':>5} "
                f"{rss(s) if tunnel else '-':>11}{failed(s)}"
            )
    if "ping" in modes:
        lines += ["", "== ping-pong: one datagram in flight, round-trip time"]
        lines.append(
            f"{'size':>5} {'config':<10} {'p50 us':>10} {'[min-max]':>21} {'p99 us':>7} "
            f"{'lost':>6} {'xD p50':>6} {'CPU us/rt':>13} {'CPU%':>5} {'RSS MiB':>11}"
        )
        for size, config, s, ratio in cells("ping"):
            tunnel = config == TUNNEL
            lines.append(
                f"{size:>5} {config:<10} {fmtNum(s.get('rtt_p50_us')):>10} "
                f"{'[' + fmtNum(s.get('rtt_p50_us_min')) + '-' + fmtNum(s.get('rtt_p50_us_max')) + ']':>21} "
                f"{fmtNum(s.get('rtt_p99_us')):>7} {fmtInt(s.get('lost')):>6} "
                f"{fmtNum(ratio.get('rtt_p50_us'), 2) if tunnel else '-':>6} "
                f"{fmtNum(s.get('tunnel_cpu_us_per_op'), 2) if tunnel else '-':>13} "
                f"{fmtInt(s.get('tunnel_cpu_pct')) if tunnel else '-':>5} "
                f"{rss(s) if tunnel else '-':>11}{failed(s)}"
            )
    return "\n".join(lines)


def generatorCheck(summary: dict, sizes: list[int], modes: list[str]) -> list[str]:
    """
    The proof that the generator is not the bottleneck: direct UDP, driven
    by the same generator, must go well beyond what the tunnel delivers.
    """
    notes = []
    for mode, key in (("blast", "pps"), ("window", "rtps")):
        if mode not in modes:
            continue
        for size in sizes:
            cell = summary[str(size)][mode]
            ratio = cell["ratio_to_direct"].get(key)
            if ratio is None:
                continue
            verdict = "ok" if ratio < 0.67 else "WARNING: the generator may be the bottleneck"
            notes.append(
                f"generator check, {mode} {size} B: direct {fmtInt(cell[DIRECT].get(key))}/s "
                f"is {1 / ratio:.1f}x the tunnel's {fmtInt(cell[TUNNEL].get(key))}/s: {verdict}"
            )
    return notes


def sessionsCheck(sessions: dict, sizes: list[int], flowCounts: list[int]) -> list[str]:
    """The generator check of the sessions rows."""
    notes = []
    for size in sizes:
        for flows in flowCounts:
            cell = sessions[str(size)][str(flows)]
            ratio = cell["ratio_to_direct"].get("rtps")
            if ratio is None:
                continue
            verdict = "ok" if ratio < 0.67 else "WARNING: the generator may be the bottleneck"
            notes.append(
                f"generator check, sessions {size} B {flows} flows: direct "
                f"{fmtInt(cell[DIRECT].get('rtps'))}/s is {1 / ratio:.1f}x the tunnel's "
                f"{fmtInt(cell[TUNNEL].get('rtps'))}/s: {verdict}"
            )
    return notes


def memoryLine(records: list[dict[str, Any]]) -> str:
    """The largest resident set of each end over the whole run."""
    parts = []
    for end in ("server", "client"):
        peak = [r[f"{end}_peak_rss_kib"] for r in records if r.get(f"{end}_peak_rss_kib")]
        after = [r[f"{end}_rss_kib"] for r in records if r.get(f"{end}_rss_kib")]
        if peak:
            parts.append(
                f"{end} peak {fmtMiB(max(peak))} MiB (after the load: up to "
                f"{fmtMiB(max(after))} MiB)"
            )
    return "RSS of the tunnel ends over the run: " + ("; ".join(parts) or "-")


# Main


def parseArgs(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog="Example: .venv/bin/python benchmarks/run.py --json-out bench.json",
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 B only, 1 repetition, tiny counts (a few seconds)")
    p.add_argument("--sizes", default=None, help="datagram sizes, comma-separated [64,512,1400]")
    p.add_argument("--modes", default=None,
                   help="blast,window,ping,sessions (comma-separated) [all]")
    p.add_argument("--flows", default=None,
                   help="sessions mode: numbers of concurrent flows, comma-separated [1,10,100]")
    p.add_argument("--flow-window", type=int, default=None,
                   help="sessions mode: datagrams in flight per flow [--window / flows, "
                        "at least 1]")
    p.add_argument("--repeat", type=int, default=None, help="repetitions, interleaved [3]")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of sending per blast and window measurement [1]")
    p.add_argument("--window", type=int, default=32, help="datagrams in flight [32]")
    p.add_argument("--ping-count", type=int, default=None, help="pings per measurement [3000]")
    p.add_argument("--json-out", type=Path, help="write the results as JSON to this file")
    p.add_argument("--twistd", type=Path,
                   help="the twistd to run [the one next to this Python: %(default)s]",
                   default=Path(sys.executable).parent / "twistd")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for the server end (repeatable)")
    p.add_argument("--client-arg", action="append", default=[],
                   help="extra argument for the client end (repeatable)")
    p.add_argument("--pin", help="CPU list (e.g. 0) for this script and all it starts")
    p.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler [cc]")
    p.add_argument("--keep-logs", type=Path, help="keep the ends' logs in this directory")
    p.add_argument("--ready-timeout", type=float, default=10.0,
                   help="seconds for a tunnel to start relaying [10]")
    args = p.parse_args(argv)
    quick = args.quick
    args.sizes = [int(s) for s in (args.sizes or ("64" if quick else "64,512,1400")).split(",")]
    args.modes = (args.modes or ",".join(MODES)).split(",")
    for mode in args.modes:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    args.flows = [int(n) for n in (args.flows or ("1,100" if quick else "1,10,100")).split(",")]
    if not all(1 <= n <= 1000 for n in args.flows):
        p.error("--flows must be 1..1000 each")
    if args.flow_window is not None and not 1 <= args.flow_window <= 64:
        p.error("--flow-window must be 1..64")
    if not 1 <= args.window <= 4096:
        p.error("--window must be 1..4096")
    for size in args.sizes:
        if not 16 <= size <= 65507:
            p.error("sizes must be 16..65507 (the generator's header takes 16 bytes)")
    args.repeat = args.repeat or (1 if quick else 3)
    args.duration = args.duration or (0.2 if quick else 1.0)
    args.ping_count = args.ping_count or (200 if quick else 3000)
    args.ping_warmup = 20 if quick else 100
    args.ping_duration = 2.0 if quick else 5.0
    args.blast_count = 20000 if quick else 5000000
    args.window_count = 20000 if quick else 5000000
    args.drain_ms = 100 if quick else 300
    if not 1 <= args.repeat <= 100 or not 0 < args.duration <= 60:
        p.error("--repeat must be 1..100 and --duration 0..60 s")
    return args


def environment(twistd: Path, generator: Path, args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "twistd": str(twistd),
        "generator": str(generator),
    }
    try:
        import twisted

        info["twisted"] = twisted.__version__
    except ImportError:
        pass
    try:
        import udptunnel

        info["udptunnel"] = getattr(udptunnel, "__version__", "?")
        info["udptunnel_path"] = str(Path(udptunnel.__file__).parent)
    except ImportError:
        info["udptunnel"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    args = parseArgs(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("benchmarks/run.py: Linux only (it reads /proc)")
    twistd = args.twistd
    if not (twistd.is_file() and os.access(twistd, os.X_OK)):
        raise SystemExit(
            f"benchmarks/run.py: no twistd at {twistd}. Run this script with the Python of "
            f"the environment udptunnel is installed in (e.g. .venv/bin/python "
            f"benchmarks/run.py), or give --twistd."
        )
    if args.pin:
        cpus = {int(c) for c in args.pin.split(",")}
        os.sched_setaffinity(0, cpus)  # inherited by everything started below
    generator = buildGenerator(args.cc)
    env = environment(twistd, generator, args)
    print(
        f"udptunnel {env.get('udptunnel')} via {twistd} (Python {env['python']}, "
        f"Twisted {env.get('twisted', '?')}), {env['cpus']} CPUs"
        + (f", pinned to {args.pin}" if args.pin else ""),
        flush=True,
    )
    plan = [
        (rep, mode, size, config, flows)
        for rep in range(1, args.repeat + 1)
        for mode in args.modes
        for size in args.sizes
        for flows in (args.flows if mode == "sessions" else [None])
        for config in (DIRECT, TUNNEL)
    ]
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="udptunnel-bench-"))
    try:
        for i, (rep, mode, size, config, flows) in enumerate(plan, 1):
            try:
                record = measure(config, mode, size, rep, generator, twistd, workdir, args,
                                 flows)
            except BenchError as e:
                record = {"config": config, "mode": mode, "size": size, "rep": rep,
                          "error": str(e)}
                if flows is not None:
                    record["flows"] = flows
            records.append(record)
            print(f"[{i}/{len(plan)}] {progress(record)}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop(list(_running))
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.iterdir():
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    summary = summarise(records, args.sizes, args.modes)
    sessions = (summariseSessions(records, args.sizes, args.flows)
                if "sessions" in args.modes else None)
    print()
    print(table(summary, args.sizes, args.modes, args.repeat))
    if sessions is not None:
        print(sessionsTable(sessions, summary, args.sizes, args.flows, args))
    print()
    for note in generatorCheck(summary, args.sizes, args.modes):
        print(note)
    if sessions is not None:
        for note in sessionsCheck(sessions, args.sizes, args.flows):
            print(note)
    print(memoryLine(records))
    failures = [r for r in records if "error" in r]
    for r in failures:
        flows = f" {r['flows']} flows" if "flows" in r else ""
        print(f"FAILED {r['config']} {r['mode']}{flows} {r['size']} B rep {r['rep']}: "
              f"{r['error']}")
    print(f"{len(records)} measurements in {elapsed:.0f} s")
    if args.json_out:
        document = {
            "tool": "udptunnel benchmarks/run.py",
            "version": 1,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_s": round(elapsed, 1),
            "environment": env,
            "parameters": {
                key: getattr(args, key)
                for key in ("quick", "sizes", "modes", "repeat", "duration", "window",
                            "ping_count", "ping_warmup", "blast_count", "drain_ms",
                            "flows", "flow_window", "server_arg", "client_arg", "pin")
            },
            "units": {
                "pps": "datagrams/s delivered", "rtps": "round trips/s",
                "MBps": "10^6 bytes/s one way", "rtt_*_us": "microseconds",
                "tunnel_cpu_us_per_op": "CPU us of both ends per datagram (blast) "
                                        "or per round trip (window, ping)",
                "*_rss_kib": "KiB (VmHWM = peak, VmRSS = after the load)",
            },
            "results": summary,
            "sessions": sessions,
            "runs": records,
        }
        args.json_out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"JSON written to {args.json_out}")
    return 1 if failures else 0


def progress(r: dict[str, Any]) -> str:
    flows = f" {r['flows']:>4} flows" if "flows" in r else ""
    head = f"rep {r['rep']} {r['mode']:<6} {r['size']:>5} B{flows} {r['config']:<10}"
    if "error" in r:
        return f"{head} FAILED: {r['error'].splitlines()[0]}"
    if r["mode"] == "blast":
        text = f"{r['pps']:>11,.0f} dgram/s loss {r['loss_pct']:.1f}%"
    elif r["mode"] == "window":
        text = f"{r['rtps']:>11,.0f} rt/s lost {r['lost']}"
    elif r["mode"] == "sessions":
        text = (f"{r['rtps']:>11,.0f} rt/s lost {r['lost']}, RTT p50 {r['rtt_p50_us']:.0f} us, "
                f"setup {r['setup_s']:.2f} s")
    else:
        text = f"p50 {r['rtt_p50_us']:.1f} us p99 {r['rtt_p99_us']:.1f} us"
    if "tunnel_cpu_us_per_op" in r:
        text += f", CPU {r['tunnel_cpu_us_per_op']} us/op"
    return f"{head} {text}"


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Ctrl-C and SIGTERM both end the run through the finally clauses that
    # stop the tunnel ends (even when started with SIGINT ignored, as by a
    # non-interactive shell's "&").
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(main())
