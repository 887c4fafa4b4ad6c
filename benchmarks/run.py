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

The sessions modes run both ends with --sessions (the client in phantom
mode, the server's --peer the echo) and drive them with N flows at once,
each from its own source port, so each is a session of its own: echo
(sessions) or one way (sessions-blast), through one worker of each end or
several sharing the ports (--reuse-port, --workers).

Debian's udptunnel 1.1, when installed, is measured in the same run, with
the ratios to it beside those to direct UDP; --baseline TWISTD measures
another udptunnel (an older release) alternated with this one, and says
what speed the change gained or lost; --profile DIR samples each end
with py-spy while it is measured and prints where the time goes.
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
MODES = ("blast", "window", "ping", "ping1cpu", "sessions", "sessions-blast")
#: The ping-pong modes: unpinned, and with the generator and every end on
#: one CPU (every hop a wake-up on the same core, nothing else).
PING_MODES = ("ping", "ping1cpu")
SESSIONS_MODES = ("sessions", "sessions-blast")
TUNNEL = "udptunnel"
DIRECT = "direct"
#: Debian's udptunnel 1.1 (Jonathan Lennox's, in C), when installed.
LENNOX = "1.1"
LENNOX_PATH = "/usr/bin/udptunnel"
#: Another udptunnel (an older release's twistd, --baseline), measured in
#: the same run, alternated with the one under test.
BASELINE = "baseline"
#: Where the applications sit for 1.1, whose ends bind 0.0.0.0:PORT and
#: send out of the tunnel from a second, connected socket on an ephemeral
#: port: app A binds APP_A:PA and sends to LO:PA (end A's port), the sink
#: binds APP_B:PB (the more specific bind wins over end B's 0.0.0.0:PB) and
#: echoes to LO:PB, end B's port, not to the datagram's source.
APP_A = "127.0.0.2"
APP_B = "127.0.0.3"
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


def machineTicks() -> tuple[int, int]:
    """Idle and total CPU ticks of the machine, all CPUs (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def memoryKiB(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(line.split()[1])
    return found


def listeners(port: int) -> int:
    """
    How many sockets LISTEN on 127.0.0.1:port or 0.0.0.0:port (from
    /proc/net/tcp): several workers sharing a port are one each.
    """
    local = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] in local and fields[3] == "0A":
                count += 1
    return count


def isListening(port: int) -> bool:
    """Whether something LISTENs on 127.0.0.1:port (or 0.0.0.0:port)."""
    return listeners(port) > 0


def logSays(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
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

    #: udpload options for the applications of this tunnel (none here).
    generatorOptions: list[str] = []

    def __init__(self, twistd: Path, workdir: Path, tag: str, args: argparse.Namespace,
                 sessions: bool = False, workers: int = 1):
        self.twistd = twistd
        self.sessions = sessions
        # workers 0: one worker of each end, both ends on one CPU (the last
        # this script may use): the baseline of "one flow on one core".
        self.oneCPU = max(os.sched_getaffinity(0)) if workers == 0 else None
        self.workers = workers = max(1, workers)
        self.workdir = workdir
        self.tag = tag
        self.args = args
        taken: set[int] = set()
        self.tcpPort = freePort(socket.SOCK_STREAM, taken)
        self.serverUDP = freePort(socket.SOCK_DGRAM, taken)
        self.clientUDP = freePort(socket.SOCK_DGRAM, taken)
        self.sinkPort = freePort(socket.SOCK_DGRAM, taken)
        self.servers: list[subprocess.Popen[bytes]] = []
        self.clients: list[subprocess.Popen[bytes]] = []
        self.serverLogs = [workdir / f"{tag}-server{self._suffix(i)}.log" for i in range(workers)]
        self.clientLogs = [workdir / f"{tag}-client{self._suffix(i)}.log" for i in range(workers)]
        self.serverLog, self.clientLog = self.serverLogs[0], self.clientLogs[0]

    def _suffix(self, i: int) -> str:
        return f"-{i + 1}" if self.workers > 1 else ""

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
            if self.workers > 1:  # sharing the TCP port, and the UDP port
                serverUDP.append("--reuse-port")
                clientUDP.append("--reuse-port")
        else:
            serverUDP = ["--udp", self.target]
            clientUDP = ["--udp", f"{LO}:{self.clientUDP}", "--peer", self.sink]
        for log in self.serverLogs:
            self.servers.append(self._pinned(spawn(
                base + ["server", "--tcp", f"tcp:{self.tcpPort}:interface={LO}"] + serverUDP
                + self.args.server_arg, log, self.workdir)))
        self._await(lambda: listeners(self.tcpPort) >= self.workers, deadline,
                    f"the server did not listen on TCP {self.tcpPort} within {timeout:.0f} s",
                    self.serverLog)
        for log in self.clientLogs:
            self.clients.append(self._pinned(spawn(
                base + ["client", "--tcp", f"{LO}:{self.tcpPort}"] + clientUDP
                + self.args.client_arg, log, self.workdir)))
        if self.workers > 1:
            # Every worker in the UDP port's group before the first flow:
            # one joining later would move flows to itself.
            self._await(lambda: all(logSays(log, "UDP bound on") for log in self.clientLogs),
                        deadline, f"the clients did not bind within {timeout:.0f} s",
                        self.clientLog)
        remaining = max(1.0, deadline - time.monotonic())
        probe = runGenerator(
            generator,
            "probe",
            "--target",
            self.target,
            "--sink",
            self.sink,
            *self.generatorOptions,
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

    def _pinned(self, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        if self.oneCPU is not None:
            os.sched_setaffinity(process.pid, {self.oneCPU})
        return process

    def _await(self, ready: Callable[[], bool], deadline: float, what: str,
               log: Path) -> None:
        while not ready():
            self._checkAlive("while starting")
            if time.monotonic() > deadline:
                raise BenchError(f"{what}:\n{logTail(log)}")
            time.sleep(0.02)

    def ends(self) -> list[subprocess.Popen[bytes]]:
        return self.servers + self.clients

    def named(self) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
        """Each end's process, with a name (server, client-2...) and its log."""
        return ([("server" + self._suffix(i), p, log)
                 for i, (p, log) in enumerate(zip(self.servers, self.serverLogs))]
                + [("client" + self._suffix(i), p, log)
                   for i, (p, log) in enumerate(zip(self.clients, self.clientLogs))])

    def _checkAlive(self, when: str) -> None:
        for name, p, log in self.named():
            if p.poll() is not None:
                raise BenchError(
                    f"the {name} end exited (status {p.returncode}) {when}:\n{logTail(log)}"
                )

    def cpu(self) -> float:
        return sum(cpuSeconds(p.pid) for p in self.ends())

    def cpuByEnd(self) -> dict[str, float]:
        """CPU seconds of each end (its workers together)."""
        return {"server": sum(cpuSeconds(p.pid) for p in self.servers),
                "client": sum(cpuSeconds(p.pid) for p in self.clients)}

    def memory(self) -> dict[str, dict[str, int]]:
        """Per end, the largest figures of its workers."""
        out: dict[str, dict[str, int]] = {}
        for end, processes in (("server", self.servers), ("client", self.clients)):
            figures = [memoryKiB(p.pid) for p in processes]
            out[end] = {key: max(f.get(key, 0) for f in figures) for key in ("VmHWM", "VmRSS")}
        return out

    def stop(self) -> None:
        stop(self.ends())


class LennoxTunnel(Tunnel):
    """
    The two ends of Debian's udptunnel 1.1, on fresh ports, the applications
    on other loopback addresses (see L{APP_A}):

        app APP_A:PA --> LO:PA  udptunnel -s T APP_A/PA
                                  || TCP T (all interfaces)
        sink APP_B:PB <-- udptunnel -c LO/T APP_B/PB  (echo replies to LO:PB)
    """

    def __init__(self, program: str, workdir: Path, tag: str, args: argparse.Namespace):
        super().__init__(Path(program), workdir, tag, args)
        self.generatorOptions = ["--a-bind", f"{APP_A}:{self.serverUDP}",
                                 "--reply-to", f"{LO}:{self.clientUDP}"]

    @property
    def target(self) -> str:
        return f"{LO}:{self.serverUDP}"

    @property
    def sink(self) -> str:
        return f"{APP_B}:{self.clientUDP}"

    def start(self, generator: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.servers.append(spawn([str(self.twistd), "-s", str(self.tcpPort),
                                   f"{APP_A}/{self.serverUDP}"], self.serverLog, self.workdir))
        self._await(lambda: isListening(self.tcpPort), deadline,
                    f"1.1's server did not listen on TCP {self.tcpPort} within {timeout:.0f} s",
                    self.serverLog)
        self.clients.append(spawn([str(self.twistd), "-c", f"{LO}/{self.tcpPort}",
                                   f"{APP_B}/{self.clientUDP}"], self.clientLog, self.workdir))
        remaining = max(1.0, deadline - time.monotonic())
        probe = runGenerator(generator, "probe", "--target", self.target, "--sink", self.sink,
                             *self.generatorOptions, "--duration", f"{remaining:.1f}",
                             timeout=remaining + 10)
        self._checkAlive("while starting")
        if not probe.get("ok"):
            raise BenchError(
                f"no datagram came back through 1.1 within {timeout:.0f} s:\n"
                f"  server log:\n{logTail(self.serverLog)}\n  client log:\n{logTail(self.clientLog)}"
            )


# Profiles (--profile DIR)


class Profiler:
    """
    py-spy sampling each end of one measurement from outside (no change to
    the ends, little overhead: a sample is a read of the process's memory),
    written as collapsed stacks, one file per end.
    """

    RATE = 250  # samples/s

    def __init__(self, program: str, directory: Path) -> None:
        self.program = program
        self.directory = directory
        self.running: list[tuple[subprocess.Popen[bytes], Path, Path]] = []

    def start(self, tunnel: Tunnel, tag: str, limit: float) -> None:
        for name, process, _ in tunnel.named():
            out = self.directory / f"{tag}-{name}.txt"
            log = self.directory / f"{tag}-{name}.py-spy.log"
            with open(log, "wb") as errors:
                spy = subprocess.Popen(
                    [self.program, "record", "--pid", str(process.pid), "--format", "raw",
                     "--rate", str(self.RATE), "--nonblocking", "--duration",
                     str(int(limit) + 1), "--output", str(out)],
                    stdin=subprocess.DEVNULL, stdout=errors, stderr=subprocess.STDOUT)
            _running.append(spy)
            self.running.append((spy, out, log))

    def stop(self) -> None:
        """Stop the samplers (SIGINT: py-spy then writes what it has)."""
        for spy, _, _ in self.running:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        for spy, _, _ in self.running:
            try:
                spy.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        stop([spy for spy, _, _ in self.running])  # those that did not end
        for spy, out, log in self.running:
            if not out.exists():
                print(f"--profile: py-spy wrote no {out.name}:\n{logTail(log, 5)}",
                      file=sys.stderr)
        self.running = []


def readProfile(path: Path) -> dict[str, int]:
    """
    The samples of a py-spy raw profile ("frame;frame;...;leaf COUNT" per
    line) by leaf frame: the function and line where the end was when
    sampled (a line that calls into C, such as a socket's send, stands for
    the system call's time).
    """
    leaves: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
    return leaves


def profileReport(directory: Path, records: list[dict[str, Any]], top: int = 12) -> list[str]:
    """
    Per measurement (its repetitions together) and end (its workers
    together), the leaf frames with the most samples, with their share.
    """
    lines = ["", (f"== where the time goes (py-spy, {Profiler.RATE} samples/s while measured; "
                  f"profiles in {directory})")]
    groups: dict[tuple[str, str], dict[str, int]] = {}
    seconds: dict[tuple[str, str], float] = {}
    for r in records:
        config = workersConfig(r["workers"]) if "workers" in r else r["config"]
        for name, path in r.get("profiles", {}).items():
            end = name.split("-")[0]
            flows = f" {r['flows']} flow{'s' if r['flows'] > 1 else ''}" if "flows" in r else ""
            key = (f"{r['mode']}{flows} {r['size']} B, {config}", end)
            # A worker's share of the sampling time: samples / this = busy.
            seconds[key] = seconds.get(key, 0.0) + r.get("profiled_s", 0.0)
            merged = groups.setdefault(key, {})
            try:
                leaves = readProfile(Path(path))
            except OSError:
                continue
            for leaf, count in leaves.items():
                merged[leaf] = merged.get(leaf, 0) + count
    for (what, end), leaves in sorted(groups.items()):
        total = sum(leaves.values())
        if not total:
            continue
        busy = 100 * total / (Profiler.RATE * seconds[what, end]) if seconds.get((what, end)) else None
        lines.append(f"-- {what}, {end}: {total} samples"
                     + (f" (busy {busy:.0f}% of the time measured, per process)" if busy else ""))
        for leaf, count in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {100 * count / total:5.1f}%  {leaf}")
    return lines


def findPySpy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


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
    if mode == "sessions-blast":
        assert flows is not None
        extra = ["--flows", str(flows), "--setup-s", str(SETUP_SECONDS)]
        extra += ["--in-flight", str(args.in_flight)]
        extra += ["--count", str(args.blast_count), "--duration", str(args.duration)]
        extra += ["--drain-ms", str(args.drain_ms)]
        return common + extra, args.duration + SETUP_SECONDS + 10 + args.drain_ms / 1000
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


def measure(config: str, mode: str, *rest: Any, **more: Any) -> dict[str, Any]:
    """
    One measurement (L{measureOnce}); for C{ping1cpu}, with this script on
    one CPU while the ends and the generator start, so that they inherit it.
    """
    if mode != "ping1cpu":
        return measureOnce(config, mode, *rest, **more)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        return measureOnce(config, mode, *rest, **more)
    finally:
        os.sched_setaffinity(0, affinity)


def measureOnce(
    config: str,
    mode: str,
    size: int,
    rep: int,
    generator: Path,
    twistd: Path,
    workdir: Path,
    args: argparse.Namespace,
    flows: int | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    record: dict[str, Any] = {"config": config, "mode": mode, "size": size, "rep": rep}
    options, limit = generatorArgs(mode, size, args, flows)
    program = {"sessions": "flows", "sessions-blast": "blast", "ping1cpu": "ping"}.get(mode, mode)
    if flows is not None:
        record["flows"] = flows
    if mode in SESSIONS_MODES and config != DIRECT:
        record["workers"] = workers
    if config == DIRECT:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LO, 0))
            sink = f"{LO}:{s.getsockname()[1]}"
        result = runGenerator(generator, program, "--target", sink, "--sink", sink, *options,
                              timeout=limit)
        checkFlows(result)
        record.update(cleaned(result, mode))
        record["mode"] = mode  # udpload's mode is "flows" for the sessions mode
        return record
    tag = (f"{mode}-{size}-rep{rep}-{config.replace('.', '')}"
           + (f"-{flows}flows" if flows else "") + (f"-{workers}workers" if workers > 1 else "")
           + ("-1cpu" if workers == 0 else ""))
    tunnel: Tunnel
    if config == LENNOX:
        tunnel = LennoxTunnel(args.lennox, workdir, tag, args)
    else:
        tunnel = Tunnel(args.baseline if config == BASELINE else twistd, workdir, tag, args,
                        sessions=mode in SESSIONS_MODES, workers=workers)
    profiler = Profiler(args.py_spy, args.profile) if args.profile else None
    try:
        tunnel.start(generator, args.ready_timeout)
        start = [tunnel.cpuByEnd(), time.monotonic(), machineTicks()]

        def ready() -> None:  # the sessions are open: the measurement starts
            start[:] = [tunnel.cpuByEnd(), time.monotonic(), machineTicks()]
            if profiler is not None:
                profiler.start(tunnel, tag, limit)

        if profiler is not None and mode not in SESSIONS_MODES:
            profiler.start(tunnel, tag, limit)
        result = runGenerator(
            generator, program, "--target", tunnel.target, "--sink", tunnel.sink,
            *tunnel.generatorOptions, *options, timeout=limit, onReady=ready,
        )
        cpu0, t0, ticks0 = start
        checkFlows(result)
        cpu1, t1, ticks1 = tunnel.cpuByEnd(), time.monotonic(), machineTicks()
        tunnel._checkAlive("during the measurement")
        memory = tunnel.memory()
    except OSError as e:  # /proc of an end that vanished
        raise BenchError(f"cannot read an end's /proc entry: {e}") from None
    finally:
        if profiler is not None:
            profiler.stop()
        tunnel.stop()
    if profiler is not None:
        record["profiles"] = {name: str(args.profile / f"{tag}-{name}.txt")
                              for name, _, _ in tunnel.named()}
        record["profiled_s"] = round(t1 - t0, 3)
    record.update(cleaned(result, mode))
    record["mode"] = mode
    cpu = sum(cpu1.values()) - sum(cpu0.values())
    record["tunnel_cpu_s"] = round(cpu, 3)
    record["tunnel_cpu_pct"] = round(100 * cpu / (t1 - t0), 1) if t1 > t0 else None
    total = ticks1[1] - ticks0[1]
    # Whether the machine had a core to spare (the generator, the ends,
    # and anything else running, the other CPU included).
    record["machine_idle_pct"] = round(100 * (ticks1[0] - ticks0[0]) / total, 1) if total else None
    for end in ("server", "client"):  # which end is the busier one
        record[f"{end}_cpu_pct"] = (round(100 * (cpu1[end] - cpu0[end]) / (t1 - t0), 1)
                                    if t1 > t0 else None)
    if mode in ("blast", "sessions-blast"):
        done = result.get("received", 0)
    elif mode in ("window", "sessions"):
        done = result.get("completed", 0)
    else:
        done = result.get("replies", 0) + args.ping_warmup
    # Per datagram carried one way (blast), per round trip (window, ping:
    # two datagrams through the tunnel, one each way).
    record["tunnel_cpu_us_per_op"] = round(1e6 * cpu / done, 2) if done else None
    if done and result.get("self_cpu_s") is not None:  # the generator's own
        record["generator_cpu_us_per_op"] = round(1e6 * result["self_cpu_s"] / done, 2)
    record["server_peak_rss_kib"] = memory["server"].get("VmHWM")
    record["client_peak_rss_kib"] = memory["client"].get("VmHWM")
    record["server_rss_kib"] = memory["server"].get("VmRSS")
    record["client_rss_kib"] = memory["client"].get("VmRSS")
    return record


def cleaned(result: dict[str, Any], mode: str) -> dict[str, Any]:
    """udpload's result, without what says nothing outside a sessions mode."""
    if mode not in SESSIONS_MODES:
        result = {k: v for k, v in result.items() if k not in ("flows", "setup_s")}
    return result


def checkFlows(result: dict[str, Any]) -> None:
    """
    A flows run counts as failed when its sessions did not all open, or
    when a datagram came back to another flow's socket (sessions mixed up).
    """
    if result.get("ok") is None:
        return
    if not result["ok"]:
        raise BenchError(f"udpload flows: {result.get('error', 'failed')}")
    if result.get("misrouted"):
        raise BenchError(f"{result['misrouted']} datagrams came back to another flow's "
                         f"source: sessions mixed up")


# Summaries

#: Per mode: the headline metric (ratio to direct is taken on it) and
#: whether bigger is better.
HEADLINE = {"blast": "pps", "window": "rtps", "ping": "rtt_p50_us", "ping1cpu": "rtt_p50_us"}
SUMMARISED = {
    "blast": ["pps", "MBps", "loss_pct", "self_cpu_s"],
    "window": ["rtps", "MBps", "lost", "self_cpu_s"],
    "ping": ["rtt_p50_us", "rtt_p99_us", "lost", "self_cpu_s"],
    "ping1cpu": ["rtt_p50_us", "rtt_p99_us", "lost", "self_cpu_s"],
}
TUNNEL_ONLY = [
    "tunnel_cpu_us_per_op",
    "tunnel_cpu_pct",
    "server_cpu_pct",
    "client_cpu_pct",
    "machine_idle_pct",
    "server_peak_rss_kib",
    "client_peak_rss_kib",
    "server_rss_kib",
    "client_rss_kib",
]


def medians(rs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Median, min and max of each key over the good records."""
    good = [r for r in rs if "error" not in r]
    summary: dict[str, Any] = {"n": len(good), "failed": len(rs) - len(good)}
    for key in keys:
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            summary[key] = round(statistics.median(values), 3)
            summary[key + "_min"] = min(values)
            summary[key + "_max"] = max(values)
    return summary


def ratios(over: list[dict[str, Any]], under: list[dict[str, Any]],
           keys: list[str]) -> dict[str, float]:
    """
    For each key: the ratio of each repetition's figure in C{over} to the
    figure of the same repetition in C{under}, then the median of those.
    """
    out: dict[str, float] = {}
    for key in keys:
        perRep = []
        for t in over:
            d = [r for r in under if r["rep"] == t["rep"] and "error" not in r and r.get(key)]
            if d and t.get(key) and "error" not in t:
                perRep.append(t[key] / d[0][key])
        if perRep:
            out[key] = round(statistics.median(perRep), 4)
    return out


def summarise(records: list[dict[str, Any]], sizes: list[int], modes: list[str],
              configs: list[str]) -> dict:
    """
    Medians (and min, max) per size, mode and config; ratios of udptunnel to
    direct and to 1.1, and of 1.1 to direct.
    """
    out: dict[str, Any] = {}
    for size in sizes:
        for mode in modes:
            if mode in SESSIONS_MODES:
                continue  # summariseSessions
            cell: dict[str, Any] = {}
            byConfig = {
                config: [
                    r
                    for r in records
                    if r["size"] == size and r["mode"] == mode and r["config"] == config
                ]
                for config in configs
            }
            for config, rs in byConfig.items():
                cell[config] = medians(rs, SUMMARISED[mode]
                                       + (TUNNEL_ONLY if config != DIRECT else []))
            cell["ratio_to_direct"] = ratios(byConfig[TUNNEL], byConfig[DIRECT],
                                             SUMMARISED[mode][:2])
            if BASELINE in byConfig:
                cell["ratio_to_baseline"] = ratios(byConfig[TUNNEL], byConfig[BASELINE],
                                                   SUMMARISED[mode][:2] + ["tunnel_cpu_us_per_op"])
                cell["baseline_ratio_to_direct"] = ratios(byConfig[BASELINE], byConfig[DIRECT],
                                                          SUMMARISED[mode][:2])
            if LENNOX in byConfig:
                cell["ratio_to_lennox"] = ratios(byConfig[TUNNEL], byConfig[LENNOX],
                                                 SUMMARISED[mode][:2] + ["tunnel_cpu_us_per_op"])
                cell["lennox_ratio_to_direct"] = ratios(byConfig[LENNOX], byConfig[DIRECT],
                                                        SUMMARISED[mode][:2])
            out.setdefault(str(size), {})[mode] = cell
    return out


SESSIONS_SUMMARISED = {
    "sessions": ["rtps", "MBps", "lost", "rtt_p50_us", "rtt_p99_us", "flow_rtt_median_us",
                 "flow_rtt_max_us", "flow_rt_fewest", "flow_rt_most", "setup_s", "self_cpu_s"],
    "sessions-blast": ["pps", "MBps", "loss_pct", "setup_s", "self_cpu_s",
                       "generator_cpu_us_per_op"],
}
#: The headline figure of each sessions mode.
SESSIONS_HEADLINE = {"sessions": "rtps", "sessions-blast": "pps"}


def workersConfig(workers: int) -> str:
    """
    The name of udptunnel's rows with this many workers of each end (0: one
    of each, both on one CPU).
    """
    if workers == 0:
        return f"{TUNNEL} 1 CPU"
    return TUNNEL if workers == 1 else f"{TUNNEL} x{workers}"


def summariseSessions(records: list[dict[str, Any]], mode: str, sizes: list[int],
                      flowCounts: list[int], workerCounts: list[int]) -> dict:
    """
    Per size and number of flows: medians (and min, max) of direct UDP and
    of the tunnel with --sessions (with each number of workers), and the
    ratios to direct; for the one-way mode also the ratio to one flow
    through one worker of the same repetition.
    """
    headline = SESSIONS_HEADLINE[mode]
    out: dict[str, Any] = {}
    for size in sizes:
        base, oneCPU = ([r for r in records if r["mode"] == mode and r["size"] == size
                         and r.get("flows") == 1 and r["config"] == TUNNEL
                         and r.get("workers") == w] for w in (1, 0))
        for flows in flowCounts:
            rows = [r for r in records
                    if r["mode"] == mode and r["size"] == size and r.get("flows") == flows]
            direct = [r for r in rows if r["config"] == DIRECT]
            cell: dict[str, Any] = {DIRECT: medians(direct, SESSIONS_SUMMARISED[mode])}
            for workers in workerCounts:
                name = workersConfig(workers)
                rs = [r for r in rows if r["config"] == TUNNEL and r.get("workers") == workers]
                if not rs:
                    continue  # the one-CPU baseline has one flow only
                cell[name] = medians(rs, SESSIONS_SUMMARISED[mode] + TUNNEL_ONLY)
                cell[name]["ratio_to_direct"] = ratios(rs, direct, [headline, "rtt_p50_us"])
                cell[name]["ratio_to_one_flow"] = ratios(rs, base, [headline])
                cell[name]["ratio_to_one_cpu"] = ratios(rs, oneCPU, [headline])
            out.setdefault(str(size), {})[str(flows)] = cell
    return out


def sessionsTable(mode: str, sessions: dict, summary: dict, sizes: list[int],
                  flowCounts: list[int], workerCounts: list[int],
                  args: argparse.Namespace) -> str:
    """
    The rows of a sessions mode; for the echo, the single link's pipelined
    echo of the same run (C{summary}, when the window mode ran) beside them.
    """
    echo = mode == "sessions"
    headline = SESSIONS_HEADLINE[mode]
    if echo:
        lines = [
            "",
            ("== sessions: N flows at once, each from its own source port (a session each; "
             "both ends --sessions), echo"),
            "   in flight per flow: " + ", ".join(
                f"{flowWindow(n, args)} ({n} flow{'s' if n > 1 else ''})" for n in flowCounts)
            + "; x1link = rt/s / the single link's pipelined echo",
            ("   RTT = over all round trips; flow RTT = each flow's mean RTT, median and "
             "slowest flow; setup = s to open all sessions"),
        ]
    else:
        lines = [
            "",
            ("== sessions one way: N flows at once, each from its own source port, "
             "datagrams/s at the sink"),
            ("   x1flow = / one flow through one worker of each end (same repetition); "
             "xN workers: N processes of each end sharing the ports (--reuse-port);"),
            ("   1 CPU: one worker of each end, both pinned to one CPU (the generator "
             "not)"),
            (f"   at most {args.in_flight or 'unpaced'} datagrams sent and not yet at the sink; "
             "CPU% s/c = server / client end (all its workers); idle% = the machine's "
             "idle time (all CPUs)"),
        ]
    unit = "rt/s" if echo else "dgram/s"
    head = (f"{'size':>5} {'flows':>5} {'config':<16} {unit:>10} {'[min-max]':>21} {'xD':>6} "
            + (f"{'x1link':>6} {'RTT p50/p99 us':>15} {'flow RTT us':>13} " if echo
               else f"{'x1flow':>6} {'loss%':>6} ")
            + f"{'setup s':>7} {'CPU us/op':>9} {'CPU% s/c':>9} {'idle%':>5} {'RSS MiB':>11}")
    lines.append(head)
    for size in sizes:
        link = summary.get(str(size), {}).get("window", {}).get(TUNNEL, {}).get("rtps")
        for flows in flowCounts:
            cell = sessions[str(size)][str(flows)]
            for config in [DIRECT] + [workersConfig(w) for w in workerCounts]:
                if config not in cell:
                    continue
                c = cell[config]
                tunnel = config != DIRECT
                ratio = c.get("ratio_to_direct", {}).get(headline)
                value = c.get(headline)
                cols = (f"{size:>5} {flows:>5} {config:<16} {fmtInt(value):>10} "
                        f"{'[' + fmtInt(c.get(headline + '_min')) + '-' + fmtInt(c.get(headline + '_max')) + ']':>21} "
                        f"{fmtNum(ratio, 2) if tunnel else '-':>6} ")
                if echo:
                    toLink = value / link if tunnel and link and value else None
                    cols += (f"{fmtNum(toLink, 2) if toLink else '-':>6} "
                             f"{fmtNum(c.get('rtt_p50_us'), 0) + '/' + fmtNum(c.get('rtt_p99_us'), 0):>15} "
                             f"{fmtNum(c.get('flow_rtt_median_us'), 0) + '/' + fmtNum(c.get('flow_rtt_max_us'), 0):>13} ")
                else:
                    toOne = c.get("ratio_to_one_flow", {}).get(headline)
                    cols += (f"{fmtNum(toOne, 2) if tunnel and toOne else '-':>6} "
                             f"{fmtNum(c.get('loss_pct')):>6} ")
                split = f"{fmtInt(c.get('server_cpu_pct'))}/{fmtInt(c.get('client_cpu_pct'))}"
                rss = (f"{fmtMiB(c.get('server_peak_rss_kib'))}/"
                       f"{fmtMiB(c.get('client_peak_rss_kib'))}")
                cols += (f"{fmtNum(c.get('setup_s'), 2):>7} "
                         f"{fmtNum(c.get('tunnel_cpu_us_per_op'), 2) if tunnel else '-':>9} "
                         f"{split if tunnel else '-':>9} "
                         f"{fmtInt(c.get('machine_idle_pct')) if tunnel else '-':>5} "
                         f"{rss if tunnel else '-':>11}"
                         + (f"  ({c['failed']} failed)" if c.get("failed") else ""))
                lines.append(cols)
    if echo and 1 in flowCounts:
        for size in sizes:
            one = sessions[str(size)]["1"].get(workersConfig(1), {}).get(headline)
            for flows in flowCounts:
                c = sessions[str(size)][str(flows)].get(workersConfig(1), {})
                if flows == 1 or not one or not c.get(headline):
                    continue
                median, slowest = c.get("flow_rtt_median_us"), c.get("flow_rtt_max_us")
                spread = (f"; the slowest flow's mean RTT {100 * (slowest / median - 1):.1f}% "
                          "above the median flow's" if median and slowest else "")
                lines.append(f"   {size} B: {flows} flows carry {c[headline] / one:.2f}x one "
                             f"flow (medians){spread}")
    if not echo and 1 in flowCounts and max(flowCounts) > 1:
        most, workers = max(flowCounts), max(workerCounts)
        for size in sizes:
            c = sessions[str(size)][str(most)].get(workersConfig(workers), {})
            toOne = c.get("ratio_to_one_flow", {}).get(headline)
            toCPU = c.get("ratio_to_one_cpu", {}).get(headline)
            lines.append(
                f"   {size} B: {most} flows through {workers} worker(s) of each end carry "
                f"{fmtNum(toOne, 2)}x one flow through one"
                + (f", {fmtNum(toCPU, 2)}x one flow with both ends on one CPU" if toCPU else "")
                + " (medians of the per-repetition ratios)")
            one = sessions[str(size)].get("1", {}).get(workersConfig(1), {})
            perDatagram = (one.get("generator_cpu_us_per_op") or 0) + (
                one.get("tunnel_cpu_us_per_op") or 0)
            cpus = len(os.sched_getaffinity(0))
            if perDatagram and one.get(headline):
                ceiling = cpus * 1e6 / perDatagram
                lines.append(
                    f"   {size} B: with the generator on the same {cpus} CPUs "
                    f"({fmtNum(one['generator_cpu_us_per_op'], 2)} us a datagram, the tunnel "
                    f"{fmtNum(one['tunnel_cpu_us_per_op'], 2)}), they carry at most "
                    f"{fmtInt(ceiling)}/s: {ceiling / one[headline]:.2f}x one flow through "
                    f"one worker")
    return "\n".join(lines)


def fmtInt(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmtNum(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmtMiB(kib: Any) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def table(summary: dict, sizes: list[int], modes: list[str], repeat: int,
          configs: list[str]) -> str:
    lennox = LENNOX in configs
    lines = [
        (
            f"medians of {repeat} repetition(s) [min-max]; xD = / direct"
            + (", x1.1 = udptunnel / Debian's udptunnel 1.1 (C)" if lennox else "")
            + ": the median of the per-repetition ratios"
        ),
        "CPU = utime+stime of both tunnel ends; RSS = VmHWM (peak) of the server / client end",
    ]

    def cells(mode: str) -> list[tuple[int, str, dict, dict]]:
        rows = []
        for size in sizes:
            cell = summary[str(size)][mode]
            for config in configs:
                if config == TUNNEL:
                    ratio = {"xD": cell["ratio_to_direct"], "x1.1": cell.get("ratio_to_lennox", {})}
                elif config == LENNOX:
                    ratio = {"xD": cell.get("lennox_ratio_to_direct", {}), "x1.1": {}}
                elif config == BASELINE:
                    ratio = {"xD": cell.get("baseline_ratio_to_direct", {}), "x1.1": {}}
                else:
                    ratio = {"xD": {}, "x1.1": {}}
                rows.append((size, config, cell[config], ratio))
        return rows

    def failed(s: dict) -> str:
        return f"  ({s['failed']} failed)" if s.get("failed") else ""

    def rss(s: dict) -> str:
        return f"{fmtMiB(s.get('server_peak_rss_kib'))}/{fmtMiB(s.get('client_peak_rss_kib'))}"

    specs = {
        "blast": ("== one-way blast: datagrams delivered at the sink, unpaced sender",
                  "dgram/s", "pps", "loss%", "loss_pct", "CPU us/dgram"),
        "window": ("== pipelined echo: round trips/s with a window of datagrams in flight",
                   "rt/s", "rtps", "lost", "lost", "CPU us/rt"),
        "ping": ("== ping-pong: one datagram in flight, round-trip time",
                 "p50 us", "rtt_p50_us", "p99 us", "rtt_p99_us", "CPU us/rt"),
        "ping1cpu": ("== ping-pong on one CPU: the generator and every end pinned to one CPU",
                     "p50 us", "rtt_p50_us", "p99 us", "rtt_p99_us", "CPU us/rt"),
    }
    for mode in ("blast", "window", *PING_MODES):
        if mode not in modes:
            continue
        title, unit, key, secondName, second, cpuName = specs[mode]
        fmt = fmtNum if mode in PING_MODES else fmtInt
        lines += ["", title]
        lines.append(
            f"{'size':>5} {'config':<10} {unit:>10} {'[min-max]':>21} "
            + (f"{'MB/s':>7} " if mode not in PING_MODES else f"{secondName:>7} ")
            + (f"{secondName:>6} " if mode not in PING_MODES else f"{'lost':>6} ")
            + f"{'xD':>6} " + (f"{'x1.1':>6} " if lennox else "")
            + f"{cpuName:>13} " + (f"{'x1.1':>6} " if lennox else "")
            + f"{'CPU%':>5} {'RSS MiB':>11}"
        )
        for size, config, s, ratio in cells(mode):
            tunnel = config != DIRECT
            line = (f"{size:>5} {config:<10} {fmt(s.get(key)):>10} "
                    f"{'[' + fmt(s.get(key + '_min')) + '-' + fmt(s.get(key + '_max')) + ']':>21} ")
            if mode in PING_MODES:
                line += f"{fmtNum(s.get(second)):>7} {fmtInt(s.get('lost')):>6} "
            else:
                line += (f"{fmtNum(s.get('MBps')):>7} "
                         f"{(fmtNum if mode == 'blast' else fmtInt)(s.get(second)):>6} ")
            line += f"{fmtNum(ratio['xD'].get(key), 2) if tunnel else '-':>6} "
            if lennox:
                line += f"{fmtNum(ratio['x1.1'].get(key), 2) if config == TUNNEL else '-':>6} "
            line += f"{fmtNum(s.get('tunnel_cpu_us_per_op'), 2) if tunnel else '-':>13} "
            if lennox:
                cpuRatio = ratio["x1.1"].get("tunnel_cpu_us_per_op")
                line += f"{fmtNum(cpuRatio, 2) if config == TUNNEL else '-':>6} "
            line += (f"{fmtInt(s.get('tunnel_cpu_pct')) if tunnel else '-':>5} "
                     f"{rss(s) if tunnel else '-':>11}{failed(s)}")
            lines.append(line)
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


def sessionsCheck(mode: str, sessions: dict, sizes: list[int], flowCounts: list[int],
                  workerCounts: list[int]) -> list[str]:
    """The generator check of a sessions mode's rows (the fastest tunnel row)."""
    notes = []
    key = SESSIONS_HEADLINE[mode]
    for size in sizes:
        for flows in flowCounts:
            cell = sessions[str(size)][str(flows)]
            best = max((cell[workersConfig(w)] for w in workerCounts
                        if workersConfig(w) in cell),
                       key=lambda c: c.get(key) or 0)
            ratio = best.get("ratio_to_direct", {}).get(key)
            if ratio is None:
                continue
            verdict = "ok" if ratio < 0.67 else "WARNING: the generator may be the bottleneck"
            notes.append(
                f"generator check, {mode} {size} B {flows} flows: direct "
                f"{fmtInt(cell[DIRECT].get(key))}/s is {1 / ratio:.1f}x the tunnel's "
                f"{fmtInt(best.get(key))}/s: {verdict}"
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
                   help="blast,window,ping,sessions,sessions-blast (comma-separated) [all]")
    p.add_argument("--flows", default=None,
                   help="sessions mode: numbers of concurrent flows, comma-separated [1,10,100]")
    p.add_argument("--blast-flows", default=None,
                   help="sessions-blast mode: numbers of concurrent flows [1,8]")
    p.add_argument("--workers", default=None,
                   help="sessions modes: numbers of worker processes of each end, sharing "
                        "the ports with --reuse-port, comma-separated [1,2]")
    p.add_argument("--in-flight", type=int, default=1024,
                   help="sessions-blast mode: datagrams sent and not yet at the sink, at most "
                        "(0: unpaced, as blast) [%(default)s]")
    p.add_argument("--no-one-cpu", action="store_true",
                   help="sessions-blast mode: leave out the baseline of one flow through one "
                        "worker of each end, both ends on one CPU")
    p.add_argument("--lennox", default=LENNOX_PATH,
                   help="Debian's udptunnel 1.1, measured beside when it is there "
                        "[%(default)s]")
    p.add_argument("--no-lennox", action="store_true",
                   help="leave Debian's udptunnel 1.1 out")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="sample each udptunnel end with py-spy while measured, keep the "
                        "profiles in DIR and print where the time goes")
    p.add_argument("--flow-window", type=int, default=None,
                   help="sessions mode: datagrams in flight per flow [--window / flows, "
                        "at least 1]")
    p.add_argument("--repeat", type=int, default=None, help="repetitions, interleaved [3]")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of sending per blast and window measurement [1]")
    p.add_argument("--window", type=int, default=32, help="datagrams in flight [32]")
    p.add_argument("--ping-count", type=int, default=None, help="pings per measurement [3000]")
    p.add_argument("--json-out", type=Path, help="write the results as JSON to this file")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="draw the comparison as a chart (needs matplotlib: '.[bench]')")
    p.add_argument("--twistd", type=Path,
                   help="the twistd to run [the one next to this Python: %(default)s]",
                   default=Path(sys.executable).parent / "twistd")
    p.add_argument("--baseline", type=Path, default=None, metavar="TWISTD",
                   help="another udptunnel's twistd (an older release, in its own "
                        "virtualenv), measured beside the one under test in the same run, "
                        "alternated; the tables add its row and udptunnel / baseline")
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
    args.flows = [int(n) for n in (args.flows or ("1,100" if quick else "1,10,100,1000")).split(",")]
    if not all(1 <= n <= 1000 for n in args.flows):
        p.error("--flows must be 1..1000 each")
    args.blast_flows = [int(n) for n in (args.blast_flows or "1,8").split(",")]
    if not all(1 <= n <= 1000 for n in args.blast_flows):
        p.error("--blast-flows must be 1..1000 each")
    args.workers = [int(n) for n in (args.workers or "1,2").split(",")]
    if not all(1 <= n <= 16 for n in args.workers):
        p.error("--workers must be 1..16 each")
    # The one-CPU baseline: with one worker measured, and a CPU to pin to.
    args.one_cpu = 1 in args.workers and not args.no_one_cpu
    if not 0 <= args.in_flight <= 1_000_000:
        p.error("--in-flight must be 0..1000000")
    args.lennox = None if args.no_lennox or not (
        os.path.isfile(args.lennox) and os.access(args.lennox, os.X_OK)) else args.lennox
    args.py_spy = None
    if args.profile is not None:
        args.py_spy = findPySpy()
        if args.py_spy is None:
            p.error("--profile needs py-spy: .venv/bin/pip install py-spy")
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
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


def dataPath(twistd: Path) -> str:
    """
    Which data path the udptunnel beside C{twistd} runs: "compiled" (its
    C{udptunnel._pump} was built, and C{UDPTUNNEL_PURE_PYTHON} is not set in
    this environment, which the ends inherit), else "pure Python" and why.
    Asked of that environment's Python, from outside the source tree.  An
    end given --plain-twisted (--server-arg, --client-arg) runs neither.
    """
    code = ("from udptunnel.cli.speedups import compiledPump; "
            "print(compiledPump()[1])")
    try:
        asked = subprocess.run([str(twistd.parent / "python"), "-c", code],
                               cwd=tempfile.gettempdir(), capture_output=True, text=True,
                               timeout=60, check=False)
    except OSError as e:
        return f"unknown ({e})"
    if asked.returncode != 0:
        return "pure Python (a release without the compiled path)"
    why = asked.stdout.strip()
    return "compiled" if why == "compiled" else f"pure Python ({why})"


def environment(twistd: Path, generator: Path, args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "twistd": str(twistd),
        "generator": str(generator),
        "data_path": dataPath(twistd),
    }
    if args.baseline is not None:
        info["baseline_data_path"] = dataPath(args.baseline)
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
    if args.plot is not None:
        from plot import missing

        why = missing()
        if why is not None:
            raise SystemExit(f"benchmarks/run.py: {why}")
    if args.pin:
        cpus = {int(c) for c in args.pin.split(",")}
        os.sched_setaffinity(0, cpus)  # inherited by everything started below
    generator = buildGenerator(args.cc)
    env = environment(twistd, generator, args)
    print(
        f"udptunnel {env.get('udptunnel')} via {twistd} (Python {env['python']}, "
        f"Twisted {env.get('twisted', '?')}), {env['cpus']} CPUs"
        + (f", pinned to {args.pin}" if args.pin else "")
        + f"; data path: {env['data_path']}"
        + (f"; baseline's: {env['baseline_data_path']}" if args.baseline else ""),
        flush=True,
    )
    if args.baseline is not None and not (args.baseline.is_file()
                                          and os.access(args.baseline, os.X_OK)):
        raise SystemExit(f"benchmarks/run.py: --baseline: no twistd at {args.baseline}")
    configs = ([DIRECT, TUNNEL] + ([BASELINE] if args.baseline else [])
               + ([LENNOX] if args.lennox else []))
    flowsOf = {"sessions": args.flows, "sessions-blast": args.blast_flows}
    plan = [
        (rep, mode, size, config, flows, workers)
        for rep in range(1, args.repeat + 1)
        for mode in args.modes
        for size in args.sizes
        for flows in flowsOf.get(mode, [None])
        for config, workers in (
            [(DIRECT, 1)] + [(TUNNEL, w) for w in args.workers]
            + ([(TUNNEL, 0)] if mode == "sessions-blast" and flows == 1 and args.one_cpu else [])
            if mode in SESSIONS_MODES else [(c, 1) for c in configs])
    ]
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="udptunnel-bench-"))
    try:
        for i, (rep, mode, size, config, flows, workers) in enumerate(plan, 1):
            try:
                try:
                    record = measure(config, mode, size, rep, generator, twistd, workdir,
                                     args, flows, workers)
                except BenchError as e:
                    # A free port taken by another process before an end or
                    # the sink bound it: once more, on fresh ports.
                    if "Address already in use" not in str(e):
                        raise
                    record = measure(config, mode, size, rep, generator, twistd, workdir,
                                     args, flows, workers)
            except BenchError as e:
                record = {"config": config, "mode": mode, "size": size, "rep": rep,
                          "error": str(e)}
                if flows is not None:
                    record["flows"] = flows
                if mode in SESSIONS_MODES and config != DIRECT:
                    record["workers"] = workers
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
    summary = summarise(records, args.sizes, args.modes, configs)
    workersOf = {"sessions": args.workers,
                 "sessions-blast": args.workers + ([0] if args.one_cpu else [])}
    sessions = {mode: summariseSessions(records, mode, args.sizes, flowsOf[mode],
                                        workersOf[mode])
                for mode in SESSIONS_MODES if mode in args.modes}
    print()
    print(table(summary, args.sizes, args.modes, args.repeat, configs))
    for mode, cells in sessions.items():
        print(sessionsTable(mode, cells, summary, args.sizes, flowsOf[mode], workersOf[mode],
                            args))
    if args.profile is not None:
        print("\n".join(profileReport(args.profile, records)))
    print()
    for note in generatorCheck(summary, args.sizes, args.modes):
        print(note)
    for mode, cells in sessions.items():
        for note in sessionsCheck(mode, cells, args.sizes, flowsOf[mode], workersOf[mode]):
            print(note)
    if not args.lennox:
        print("Debian's udptunnel 1.1 not measured"
              + (" (--no-lennox)" if args.no_lennox else f" (no {LENNOX_PATH})"))
    print(memoryLine(records))
    if args.baseline is not None:
        print(baselineLines(summary, args.sizes, args.modes, args.baseline))
    if args.plot is not None:
        from plot import plotSummary

        drawn = plotSummary(summary, args.sizes, args.modes, configs, args.plot,
                            f"udptunnel {env.get('udptunnel')}, {env['cpus']} CPUs, loopback; "
                            f"medians of {args.repeat}")
        print(f"chart of {len(drawn)} panels written to {args.plot}")
    failures = [r for r in records if "error" in r]
    for r in failures:
        flows = f" {r['flows']} flows" if "flows" in r else ""
        flows += f" {workersConfig(r['workers'])}" if r.get("workers", 1) != 1 else ""
        print(f"FAILED {r['config']} {r['mode']}{flows} {r['size']} B rep {r['rep']}: "
              f"{r['error']}")
    print(f"{len(records)} measurements in {elapsed:.0f} s")
    if args.json_out:
        document = {
            "tool": "udptunnel benchmarks/run.py",
            "version": 2,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_s": round(elapsed, 1),
            "environment": env,
            "parameters": {
                key: (str(getattr(args, key)) if isinstance(getattr(args, key), Path)
                      else getattr(args, key))
                for key in ("quick", "sizes", "modes", "repeat", "duration", "window",
                            "ping_count", "ping_warmup", "blast_count", "drain_ms",
                            "flows", "flow_window", "blast_flows", "workers", "lennox",
                            "server_arg", "client_arg", "pin", "baseline")
            },
            "units": {
                "pps": "datagrams/s delivered", "rtps": "round trips/s",
                "MBps": "10^6 bytes/s one way", "rtt_*_us": "microseconds",
                "tunnel_cpu_us_per_op": "CPU us of both ends per datagram (blast) "
                                        "or per round trip (window, ping)",
                "*_rss_kib": "KiB (VmHWM = peak, VmRSS = after the load)",
            },
            "results": summary,
            "sessions": sessions.get("sessions"),
            "sessions_blast": sessions.get("sessions-blast"),
            "runs": records,
        }
        args.json_out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"JSON written to {args.json_out}")
    return 1 if failures else 0


def baselineLines(summary: dict, sizes: list[int], modes: list[str], baseline: Path) -> str:
    """
    The run's answer to "was speed lost?": per mode and size, the median of
    the per-repetition ratios of udptunnel to the baseline (above 1 is
    better for rates, below 1 for times and CPU).
    """
    keys = {"blast": ("pps", "dgram/s"), "window": ("rtps", "rt/s"),
            "ping": ("rtt_p50_us", "RTT p50"), "ping1cpu": ("rtt_p50_us", "RTT p50")}
    lines = [f"udptunnel / baseline ({baseline}), medians of per-repetition ratios:"]
    for mode in modes:
        if mode not in keys:
            continue
        key, name = keys[mode]
        for size in sizes:
            ratio = summary[str(size)][mode].get("ratio_to_baseline", {})
            cpu = ratio.get("tunnel_cpu_us_per_op")
            lines.append(f"  {mode:<8} {size:>5} B  {name} x{fmtNum(ratio.get(key), 3)}"
                         f"  CPU/op x{fmtNum(cpu, 3)}")
    return "\n".join(lines)


def progress(r: dict[str, Any]) -> str:
    flows = f" {r['flows']:>4} flows" if "flows" in r else ""
    config = workersConfig(r["workers"]) if "workers" in r else r["config"]
    head = f"rep {r['rep']} {r['mode']:<6} {r['size']:>5} B{flows} {config:<12}"
    if "error" in r:
        return f"{head} FAILED: {r['error'].splitlines()[0]}"
    if r["mode"] in ("blast", "sessions-blast"):
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
