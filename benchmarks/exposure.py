#!/usr/bin/env python3
"""
What a stranger can do to a running udptunnel: five attacks on loopback,
each printed as one block of figures to compare before and after a change.

    python3 benchmarks/exposure.py [--twistd VENV/bin/twistd] [--only NAME[,NAME]]
                                   [--json-out FILE] [--keep]

Each attack starts its own daemons (``twistd -n --pidfile= udptunnel ...``
of the venv of ``--twistd``) on free loopback ports, in a temporary folder
(their logs; ``--keep`` keeps it), waits for their ports in /proc/net, and
stops them (SIGTERM, then SIGKILL, by PID) whatever happens.  Servers marked
256 run under ``prlimit --nofile=256:256``.

metrics-slowloris       (256) 300 slow HTTP requests held on --metrics; a fresh
                        scrape and a client restart meanwhile.
proxy-header-slowloris  (256) 300 "PROXY TCP4 10." held on --proxy-protocol
                        --max-pending 4; a client behind a balancer meanwhile;
                        then 300 silent connections without --proxy-protocol.
log-escape              PROXY v1 headers with terminal escapes, then a newline,
                        in an IPv6 scope id: what reaches the log and status.
connection-storm        1000 connections in 10 s, each one empty frame, against
                        an echo stream: log volume, time until it flows again.
fifo-reload             ``run --config FILE``, FILE replaced by a FIFO, SIGUSR2:
                        do round trips go on while it reloads?

Python 3.11 standard library only; Linux (it reads /proc).  Traffic goes to
127.0.0.1 and ::1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

LO = "127.0.0.1"
NOFILE = 256
CROWD = 300
#: Connections a crowd opens every 50 ms (a burst of 300 overflows Twisted's
#: listen backlog of 50, and the kernel then drops or fakes handshakes).
BATCH = 25


class Skip(Exception):
    """An attack cannot go on (a missing tool, no IPv6, a daemon that did not start): why."""


class Report:
    """The figures of one attack, in order: a JSON key, a label and a value each."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[tuple[str, str, Any]] = []
        self.skipped: str | None = None

    def add(self, key: str, label: str, value: Any) -> Any:
        """Record one figure; returns it."""
        self.rows.append((key, label, value))
        return value

    def asDict(self) -> dict[str, Any]:
        """The figures, JSON-ready ("skipped" says why when the attack stopped early)."""
        result = {key: value for key, _, value in self.rows}
        return result | ({"skipped": self.skipped} if self.skipped else {})

    def show(self) -> None:
        """Print the block."""
        print(f"== {self.name} ==")
        for _, label, value in self.rows:
            if isinstance(value, list):
                print(f"  {label}:" + ("" if value else " none"))
                print("".join(f"      {item}\n" for item in value), end="")
                continue
            text = ("yes" if value else "no") if isinstance(value, bool) else "-" if value is None \
                else f"{value:.2f}" if isinstance(value, float) else value
            print(f"  {label:<60} {text}")
        if self.skipped:
            print(f"  skipped: {self.skipped}")
        print(flush=True)


class Daemon:
    """One started twistd, its output in a log file of its own."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name, self.process, self.log, self.pid = name, process, log, process.pid

    def text(self, start: int = 0) -> bytes:
        """The log from byte C{start} on."""
        with open(self.log, "rb") as file:
            file.seek(start)
            return file.read()

    def size(self) -> int:
        """Bytes written to the log so far."""
        return self.log.stat().st_size

    def tail(self, count: int = 3) -> str:
        """The last lines of the log, as one line of text."""
        lines = self.text().decode(errors="replace").strip().splitlines()[-count:]
        return " | ".join(line[:160] for line in lines)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, and SIGKILL after C{grace} s; waits (bounded) for the exit."""
        try:
            if self.process.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
                self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(5)
        except ProcessLookupError:
            pass


class Context:
    """Where one attack runs: its folder, the twistd and python it uses, the daemons it started."""

    def __init__(self, twistd: Path, python: Path, directory: Path) -> None:
        self.twistd, self.python, self.directory = twistd, python, directory
        self.daemons: list[Daemon] = []

    def spawn(self, name: str, args: list[str], nofile: int | None = None) -> Daemon:
        """Start C{twistd -n --pidfile= udptunnel ARGS} here, with at most C{nofile} descriptors if given."""
        command = [str(self.twistd), "-n", "--pidfile=", "udptunnel", *args]
        if nofile and shutil.which("prlimit"):  # prlimit execs: the PID stays twistd's
            command = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *command]
        elif nofile:  # the same without prlimit
            setLimit = ("import os, resource, sys; n = int(sys.argv[1]); "
                        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])")
            command = [sys.executable, "-c", setLimit, str(nofile), *command]
        log = self.directory / f"{name}-{len(self.daemons)}.log"
        with open(log, "wb") as out:  # cwd: a folder without udptunnel/, as twistd puts cwd on sys.path
            process = subprocess.Popen(command, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.daemons.append(Daemon(name, process, log))
        return self.daemons[-1]

    def stopAll(self) -> None:
        """Stop every daemon this attack started, newest first."""
        for daemon in reversed(self.daemons):
            daemon.stop()


def boundPorts(kind: str) -> set[int]:
    """Local ports in /proc/net/KIND and KIND6: listening ones for tcp, all for udp."""
    ports = set()
    for name in (kind, kind + "6"):
        try:
            rows = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        ports |= {int(f[1].rsplit(":", 1)[1], 16) for f in map(str.split, rows) if kind == "udp" or f[3] == "0A"}
    return ports


def waitReady(daemon: Daemon, tcp: Iterable[int] = (), udp: Iterable[int] = (), timeout: float = 15.0) -> None:
    """Poll until the ports are bound; Skip if the daemon exits or C{timeout} s pass."""
    deadline = time.monotonic() + timeout
    while not (set(tcp) <= boundPorts("tcp") and set(udp) <= boundPorts("udp")):
        if daemon.process.poll() is not None:
            raise Skip(f"{daemon.name} exited ({daemon.process.returncode}): {daemon.tail()}")
        if time.monotonic() > deadline:
            raise Skip(f"{daemon.name} not ready after {timeout:.0f} s: {daemon.tail()}")
        time.sleep(0.05)


def freePorts(count: int) -> list[int]:
    """C{count} distinct loopback ports, free right now for TCP and UDP alike."""
    ports: list[int] = []
    for _ in range(100 * count):
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind((LO, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((LO, port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise Skip("cannot find free loopback ports")


def fdCount(pid: int) -> int | None:
    """Open descriptors of process C{pid}, or None when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def frame(data: bytes) -> bytes:
    """One datagram on the wire: 2-byte big-endian length, then the datagram."""
    return struct.pack("!H", len(data)) + data


class Background:
    """A loop (C{run}) in a daemon thread, until C{stop()} or its own time limit; subclasses set up first."""

    def __init__(self, limit: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + limit
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()

    def running(self) -> bool:
        """Whether the loop should go on."""
        return not self.stopped.is_set() and time.monotonic() < self.deadline

    def stop(self) -> None:
        """Stop the loop and wait for it (bounded)."""
        self.stopped.set()
        self._thread.join(5)


class FdSampler(Background):
    """A process's descriptor count, sampled every 0.1 s for at most 2 min, the most seen kept."""

    def __init__(self, pid: int) -> None:
        self.pid, self.most = pid, fdCount(pid) or 0
        super().__init__(120)

    def run(self) -> None:
        while self.running():
            self.most = max(self.most, fdCount(self.pid) or 0)
            self.stopped.wait(0.1)


class Echo(Background):
    """The POP: a loopback UDP socket that sends every datagram back, for C{limit} s at most."""

    def __init__(self, limit: float = 120) -> None:
        self.sock = socket.socket(type=socket.SOCK_DGRAM)
        self.sock.bind((LO, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        super().__init__(limit)

    def run(self) -> None:
        while self.running():
            try:
                data, source = self.sock.recvfrom(65535)
                self.sock.sendto(data, source)
            except OSError:
                continue

    def stop(self) -> None:
        super().stop()
        self.sock.close()


class App:
    """The application's UDP socket; each probe's token tells its answers from stale ones."""

    def __init__(self) -> None:
        self.sock = socket.socket(type=socket.SOCK_DGRAM)
        self.sock.bind((LO, 0))
        self.port = self.sock.getsockname()[1]

    def receive(self, prefix: bytes, timeout: float) -> bool:
        """Whether a datagram starting with C{prefix} arrives within C{timeout} s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if self.sock.recv(65535).startswith(prefix):
                    return True
            except TimeoutError:
                return False
            except OSError:  # ECONNREFUSED from an ICMP
                time.sleep(0.01)
        return False

    def roundTrip(self, dest: tuple[str, int], timeout: float, every: float = 0.5) -> float | None:
        """Send a token every C{every} s until one comes back: seconds from the first send, or None."""
        tag, start = os.urandom(4).hex().encode(), time.monotonic()
        while (left := timeout - (time.monotonic() - start)) > 0:
            try:
                self.sock.sendto(tag, dest)
            except OSError:
                pass
            if self.receive(tag, min(every, left)):
                return time.monotonic() - start
        return None

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class Flow(Background):
    """From a socket of its own, a datagram every C{every} s for C{sendFor} s; the arrival time of each echo."""

    def __init__(self, dest: tuple[str, int], every: float, sendFor: float, grace: float = 0.3) -> None:
        self.sock = socket.socket(type=socket.SOCK_DGRAM)
        self.sock.bind((LO, 0))
        self.dest, self.every, self.sendFor = dest, every, sendFor
        self.sent, self.echoes, self.tag = 0, [], os.urandom(4).hex().encode()
        super().__init__(sendFor + grace)

    def run(self) -> None:
        nextSend = self.started
        while self.running():
            if time.monotonic() >= nextSend and nextSend < self.started + self.sendFor:
                try:
                    self.sock.sendto(b"%s-%d" % (self.tag, self.sent), self.dest)
                except OSError:
                    pass
                self.sent, nextSend = self.sent + 1, nextSend + self.every
            self.sock.settimeout(max(0.0005, min(nextSend, self.deadline) - time.monotonic()))
            try:
                if self.sock.recv(65535).startswith(self.tag):
                    self.echoes.append(time.monotonic())
            except OSError:  # the timeout, or ECONNREFUSED from an ICMP
                pass

    def echoesBetween(self, start: float, end: float) -> int:
        """Echoes that arrived in [start, end)."""
        return sum(1 for moment in list(self.echoes) if start <= moment < end)

    def stop(self) -> None:
        super().stop()
        self.sock.close()


class Crowd(Background):
    """
    C{count} TCP connections held from one thread (a selector loop): each
    sends C{first} once connected, then C{drip} every C{dripEvery} s; when
    the server closes one, the seconds since the start are recorded.
    """

    def __init__(self, address: tuple[str, int], count: int, first: bytes, drip: bytes = b"",
                 dripEvery: float = 0.0, limit: float = 60.0) -> None:
        self.address, self.count, self.first, self.drip, self.dripEvery = address, count, first, drip, dripEvery
        self.connected, self.closedAt = 0, []
        self.selector = selectors.DefaultSelector()
        super().__init__(limit)

    def elapsed(self) -> float:
        """Seconds since the crowd started."""
        return time.monotonic() - self.started

    def holdUntil(self, seconds: float) -> None:
        """Sleep until the crowd is C{seconds} old."""
        time.sleep(max(0.0, seconds - self.elapsed()))

    def _drop(self, sock: socket.socket, byPeer: bool) -> None:
        self.selector.unregister(sock)
        sock.close()
        if byPeer:
            self.closedAt.append(self.elapsed())

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except BlockingIOError:
            pass
        except OSError:
            self._drop(sock, True)

    def run(self) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        nextDrip, opened = self.started + (self.dripEvery or 3600), 0
        while self.running():
            for _ in range(min(BATCH, self.count - opened)):  # BATCH every 50 ms: no listen backlog overflow
                opened += 1
                sock = socket.socket(family)
                sock.setblocking(False)
                if sock.connect_ex(self.address) in (0, errno.EINPROGRESS):
                    self.selector.register(sock, selectors.EVENT_WRITE)
                else:
                    sock.close()
            wait = 0.05 if opened < self.count else 0.1
            for key, _ in self.selector.select(timeout=max(0.0, min(wait, nextDrip - time.monotonic()))):
                sock = key.fileobj
                if key.events == selectors.EVENT_WRITE:  # connecting
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self._drop(sock, False)
                        continue
                    self.connected += 1
                    self.selector.modify(sock, selectors.EVENT_READ)
                    self._send(sock, self.first)
                    continue
                try:
                    if not sock.recv(4096):
                        self._drop(sock, True)
                except BlockingIOError:
                    pass
                except OSError:
                    self._drop(sock, True)
            if time.monotonic() >= nextDrip:
                nextDrip += self.dripEvery
                for key in list(self.selector.get_map().values()):
                    if key.events == selectors.EVENT_READ:
                        self._send(key.fileobj, self.drip)

    def closedWithin(self, seconds: float) -> int:
        """Connections the server closed within C{seconds} of the start."""
        return sum(1 for moment in self.closedAt if moment <= seconds)

    def closingTimes(self) -> str:
        """First, median and last closing time, as text."""
        times = sorted(self.closedAt)
        return f"{times[0]:.1f} / {statistics.median(times):.1f} / {times[-1]:.1f} s" if times else "none closed"

    def stop(self) -> None:
        """Stop the loop and close every connection still open."""
        super().stop()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def httpGet(port: int, path: str, timeout: float) -> tuple[str | None, str, float]:
    """C{GET path} on 127.0.0.1:PORT within C{timeout} s: (status line or None, what happened, seconds)."""
    start = time.monotonic()
    answer, outcome = b"", "timed out"
    try:
        with socket.create_connection((LO, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {LO}\r\nConnection: close\r\n\r\n".encode())
            while b"\r\n" not in answer and (left := timeout - (time.monotonic() - start)) > 0:
                sock.settimeout(left)
                chunk = sock.recv(4096)
                if not chunk:
                    outcome = "closed by the server"
                    break
                answer += chunk
    except TimeoutError:
        pass
    except OSError as e:
        outcome = e.strerror or str(e)
    status = answer.split(b"\r\n")[0].decode(errors="replace") if b"\r\n" in answer else None
    return status, status or f"no answer ({outcome})", round(time.monotonic() - start, 2)


def attackMetricsSlowloris(ctx: Context, report: Report) -> None:
    """300 slow HTTP requests on --metrics; a fresh scrape and a client restart while they are held."""
    udp, tcp, metrics, clientUdp = freePorts(4)
    pop, app = Echo(), App()
    try:
        server = ctx.spawn("server", ["server", "--udp", f"{LO}:{udp}", "--tcp", f"tcp:{tcp}:interface={LO}",
                                      "--metrics", f"tcp:{metrics}:interface={LO}"], nofile=NOFILE)
        waitReady(server, tcp=[tcp, metrics], udp=[udp])
        clientArgs = ["client", "--tcp", f"{LO}:{tcp}", "--udp", f"{LO}:{clientUdp}", "--peer", f"{LO}:{pop.port}"]
        client = ctx.spawn("client", clientArgs)
        waitReady(client, udp=[clientUdp])
        if not report.add("baseline_round_trip", "round trip before the attack", app.roundTrip((LO, udp), 10) is not None):
            raise Skip("no round trip through the tunnel before the attack")
        report.add("fds_before", "server descriptors before", fdCount(server.pid))
        logStart = server.size()
        sampler = FdSampler(server.pid)
        crowd = Crowd((LO, metrics), CROWD, b"GET /metrics HTTP/1.1\r\n", b"X", 2.0)
        try:
            crowd.holdUntil(3)
            status, outcome, seconds = httpGet(metrics, "/metrics", 5)
            report.add("fresh_scrape_answered", "fresh GET /metrics at 3 s answered within 5 s", status is not None)
            report.add("fresh_scrape_outcome", "  ... what came back", outcome)
            report.add("fresh_scrape_seconds", "  ... after seconds", seconds)
            client.stop()
            restarted, restartAt = time.monotonic(), crowd.elapsed()
            client = ctx.spawn("client", clientArgs)
            waitReady(client, udp=[clientUdp], timeout=10)
            rtt = app.roundTrip((LO, udp), max(0.5, 10 - (time.monotonic() - restarted)))
            report.add("client_restart_at", "client restarted, seconds into the attack", round(restartAt, 1))
            report.add("tunnel_after_client_restart", "  ... round trip within 10 s of the restart", rtt is not None)
            report.add("seconds_to_round_trip", "  ... seconds from the restart",
                       None if rtt is None else round(time.monotonic() - restarted, 2))
            crowd.holdUntil(12)
            report.add("attackers_connected", f"attackers connected, client side (of {CROWD})", crowd.connected)
            report.add("attackers_still_open", f"attackers still open at {crowd.elapsed():.0f} s",
                       crowd.connected - len(crowd.closedAt))
            report.add("attackers_closed_by_server", "attackers closed by the server", len(crowd.closedAt))
            report.add("attackers_closing_times", "  ... first / median / last closing", crowd.closingTimes())
        finally:
            crowd.stop()
            sampler.stop()
        report.add("fds_max", f"server descriptors, most seen (limit {NOFILE})", sampler.most)
        report.add("server_log_bytes", "server log bytes during the attack", server.size() - logStart)
        report.add("server_log_lines", "server log lines during the attack", server.text(logStart).count(b"\n"))
    finally:
        app.close()
        pop.stop()


def balancerProbe(port: int, header: bytes, app: App) -> tuple[bool, str]:
    """Connect as a balancer would, send C{header} and one frame: (it reached the app, the connection then)."""
    token = b"balancer-" + os.urandom(4).hex().encode()
    try:
        sock = socket.create_connection((LO, port), timeout=3)
    except OSError as e:
        return False, f"connect failed: {e.strerror or e}"
    with sock:
        try:
            sock.sendall(header + frame(token))
        except OSError as e:
            return False, f"send failed: {e.strerror or e}"
        reached = app.receive(token, 5)
        sock.settimeout(0.3)
        try:
            state = "closed by the server" if sock.recv(1) == b"" else "open (data came back)"
        except TimeoutError:
            state = "open"
        except ConnectionResetError:
            state = "reset"
        except OSError as e:
            state = f"error: {e.strerror or e}"
    return reached, state


def heldCrowd(ctx: Context, report: Report, key: str, first: bytes, proxy: bool) -> None:
    """A --max-pending 4 server under nofile 256; 300 connections that send C{first} and stop, held 12 s."""
    udp, tcp = freePorts(2)
    app = App()
    tag = "[proxy]" if proxy else "[plain]"
    try:
        args = ["server", "--udp", f"{LO}:{udp}", "--peer", f"{LO}:{app.port}",
                "--tcp", f"tcp:{tcp}:interface={LO}", "--max-pending", "4"] + (["--proxy-protocol"] if proxy else [])
        server = ctx.spawn(key, args, nofile=NOFILE)
        waitReady(server, tcp=[tcp], udp=[udp])
        report.add(f"{key}_fds_before", f"{tag} server descriptors before", fdCount(server.pid))
        sampler = FdSampler(server.pid)
        crowd = Crowd((LO, tcp), CROWD, first)
        try:
            crowd.holdUntil(3)
            header = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 %d\r\n" % tcp if proxy else b""
            reached, state = balancerProbe(tcp, header, app)
            who = "via a balancer (v1 header)" if proxy else "of a real client"
            report.add(f"{key}_real_client_through", f"{tag} a frame at 3 s {who} reached app", reached)
            report.add(f"{key}_real_client_state", "  ... its connection afterwards", state)
            crowd.holdUntil(12)
        finally:
            crowd.stop()
            sampler.stop()
        report.add(f"{key}_fds_max", f"{tag} server descriptors, most seen (limit {NOFILE})", sampler.most)
        report.add(f"{key}_connected", f"{tag} attackers connected (client side, of {CROWD})", crowd.connected)
        for seconds in (2, 8, 12):
            report.add(f"{key}_closed_within_{seconds}s", f"{tag} attackers closed by the server within {seconds:2d} s",
                       crowd.closedWithin(seconds))
        report.add(f"{key}_closing_times", "  ... first / median / last closing", crowd.closingTimes())
    finally:
        app.close()


def attackProxyHeaderSlowloris(ctx: Context, report: Report) -> None:
    """300 half PROXY headers on --proxy-protocol --max-pending 4; then the same crowd, silent, without the flag."""
    heldCrowd(ctx, report, "proxy", b"PROXY TCP4 10.", proxy=True)
    ctx.stopAll()
    heldCrowd(ctx, report, "plain", b"", proxy=False)


def statusOutput(ctx: Context, metrics: int) -> bytes:
    """What C{PYTHON -m udptunnel status URL} prints (stdout and stderr)."""
    try:
        done = subprocess.run([str(ctx.python), "-m", "udptunnel", "status", f"http://{LO}:{metrics}/"],
                              cwd=ctx.directory, capture_output=True, timeout=15, check=False)
        return done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"status failed: {e}".encode()


def attackLogEscape(ctx: Context, report: Report) -> None:
    """PROXY v1 headers with escapes, then a newline, in an IPv6 scope id: accepted? what reaches log and status?"""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError as e:
        raise Skip(f"no IPv6 loopback (::1): {e}") from None
    udp, tcp, metrics = freePorts(3)
    app, held = App(), []
    try:
        server = ctx.spawn("server", [
            "server", "--proxy-protocol", "--allow", "::1/128", "--udp", f"{LO}:{udp}", "--peer", f"{LO}:{app.port}",
            "--tcp", f"tcp6:{tcp}:interface=\\:\\:1", "--metrics", f"tcp:{metrics}:interface={LO}"])
        waitReady(server, tcp=[tcp, metrics], udp=[udp])
        headers = {"escape": b"PROXY TCP6 ::1%%\x1b[2J\x1b[31mESC ::1 5555 %d\r\n" % tcp,
                   "newline": b"PROXY TCP6 ::1%%\nFORGED-log-line-from-a-stranger ::1 5556 %d\r\n" % tcp}
        statuses = {}
        for name, header in headers.items():
            token = b"%s-%s" % (name.encode(), os.urandom(4).hex().encode())
            held.append(socket.socket(socket.AF_INET6))
            held[-1].settimeout(3)
            try:
                held[-1].connect(("::1", tcp))
                held[-1].sendall(header + frame(token))
                accepted = app.receive(token, 3)
            except OSError:
                accepted = False
            report.add(f"{name}_header_accepted", f"{name} header: accepted (its frame reached the app)", accepted)
            time.sleep(0.3)
            statuses[name] = statusOutput(ctx, metrics)  # while this connection is the link
        time.sleep(0.3)
        server.stop()
        lines = server.text().split(b"\n")
        report.add("log_esc_bytes", "raw ESC (0x1b) bytes in the server's log", server.text().count(b"\x1b"))
        report.add("log_forged_line", "a log line starting with FORGED", any(line.startswith(b"FORGED") for line in lines))
        report.add("log_forged_line_indented", "  ... after whitespace (Twisted indents continued lines)",
                   any(line.lstrip().startswith(b"FORGED") for line in lines))
        report.add("status_esc_bytes", "raw ESC bytes from `udptunnel status` (escape link)",
                   statuses["escape"].count(b"\x1b"))
        report.add("status_forged_line", "`udptunnel status` line starting with FORGED (newline link)",
                   any(line.lstrip().startswith(b"FORGED") for line in statuses["newline"].split(b"\n")))
    finally:
        for sock in held:
            sock.close()
        app.close()


def storm(port: int, count: int, perSecond: float, cap: float) -> tuple[int, int]:
    """C{count} connections at C{perSecond}, each one empty frame and a close, for C{cap} s at most: (made, failed)."""
    start, made, failed = time.monotonic(), 0, 0
    for index in range(count):
        time.sleep(max(0.0, start + index / perSecond - time.monotonic()))
        if time.monotonic() - start > cap:
            break
        try:
            with socket.create_connection((LO, port), timeout=0.5) as sock:
                sock.sendall(b"\x00\x00")
            made += 1
        except OSError:
            failed += 1
    return made, failed


def attackConnectionStorm(ctx: Context, report: Report) -> None:
    """1000 one-frame connections in 10 s against a tunnel carrying an echo stream: log volume and recovery."""
    udp, tcp, clientUdp = freePorts(3)
    pop, flow = Echo(), None
    try:
        server = ctx.spawn("server", ["server", "--udp", f"{LO}:{udp}", "--tcp", f"tcp:{tcp}:interface={LO}"])
        waitReady(server, tcp=[tcp], udp=[udp])
        client = ctx.spawn("client", ["client", "--tcp", f"{LO}:{tcp}", "--udp", f"{LO}:{clientUdp}",
                                      "--peer", f"{LO}:{pop.port}"])
        waitReady(client, udp=[clientUdp])
        flow = Flow((LO, udp), every=0.005, sendFor=70)
        for _ in range(200):  # 10 s
            if flow.echoes:
                break
            time.sleep(0.05)
        else:
            raise Skip("no echo through the tunnel within 10 s")
        flowing = time.monotonic()
        time.sleep(3)
        stormStart = time.monotonic()
        report.add("echoes_per_s_before", "echoes/s before the storm (200 sent/s)",
                   round(flow.echoesBetween(flowing, stormStart) / (stormStart - flowing), 1))
        serverStart, clientStart = server.size(), client.size()
        made, failed = storm(tcp, 1000, 100, cap=15)
        stormEnd = time.monotonic()
        report.add("storm_connections", "storm connections made / failed", f"{made} / {failed}")
        report.add("storm_seconds", "storm duration, s", round(stormEnd - stormStart, 2))
        report.add("server_log_lines", "server log lines during the storm", server.text(serverStart).count(b"\n"))
        report.add("server_log_bytes", "server log bytes during the storm", server.size() - serverStart)
        report.add("client_log_lines", "client log lines during the storm", client.text(clientStart).count(b"\n"))
        buckets = int((stormEnd - stormStart) / 0.1)
        live = sum(1 for b in range(buckets) if flow.echoesBetween(stormStart + b * 0.1, stormStart + b * 0.1 + 0.1))
        report.add("storm_buckets_with_echoes", "100-ms buckets with echoes during the storm", f"{live} / {buckets}")
        first = None
        while first is None and time.monotonic() < stormEnd + 40:
            first = next((t for t in list(flow.echoes) if t >= stormEnd), None)
            time.sleep(0.05)
        report.add("recovery_seconds", "seconds from the storm's end to the first echo",
                   ">40 s" if first is None else round(first - stormEnd, 2))
    finally:
        if flow:
            flow.stop()
        pop.stop()


def releaseFifo(path: Path, content: bytes, seconds: float) -> int:
    """For C{seconds}, hand C{content} to every reader blocked on the FIFO C{path}: how many were."""
    released, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:  # ENXIO: nobody is reading
            if e.errno != errno.ENXIO:
                break
        else:
            try:
                os.write(fd, content)
            except OSError:
                pass
            os.close(fd)
            released += 1
        time.sleep(0.1)
    return released


def attackFifoReload(ctx: Context, report: Report) -> None:
    """SIGUSR2 to `run --config FILE` while FILE is a FIFO nobody writes: does the traffic go on?"""
    udp, tcp, clientUdp = freePorts(3)
    pop, app = Echo(), App()
    config = ctx.directory / "tunnels.toml"
    content = (f'[tunnel.natbox]\nrole = "server"\nudp = "{LO}:{udp}"\ntcp = "tcp:{tcp}:interface={LO}"\n\n'
               f'[tunnel.relay]\nrole = "client"\ntcp = "{LO}:{tcp}"\nudp = "{LO}:{clientUdp}"\n'
               f'peer = "{LO}:{pop.port}"\n').encode()
    config.write_bytes(content)
    try:
        daemon = ctx.spawn("run", ["run", "--config", str(config)])
        waitReady(daemon, tcp=[tcp], udp=[udp, clientUdp])
        if not report.add("baseline_round_trip", "round trip before the reload", app.roundTrip((LO, udp), 10) is not None):
            raise Skip("no round trip through the tunnels before the reload")
        logStart = daemon.size()
        os.remove(config)
        os.mkfifo(config)
        os.kill(daemon.pid, signal.SIGUSR2)
        flow = Flow((LO, udp), every=0.05, sendFor=5)
        time.sleep(5.4)
        flow.stop()
        report.add("round_trips_during_reload", "round trips in the 5 s after SIGUSR2 (returned / sent)",
                   f"{len(flow.echoes)} / {flow.sent}")
        report.add("reader_blocked_on_fifo", "a reader was blocked on the FIFO (we then fed it)",
                   releaseFifo(config, content, 1.5) > 0)
        os.remove(config)
        config.write_bytes(content)
        report.add("round_trip_after_release", "round trip within 5 s after that", app.roundTrip((LO, udp), 5) is not None)
        time.sleep(0.5)
        report.add("reload_log_lines", "the daemon's log lines about the reload",
                   [line.decode(errors="replace")[:200] for line in daemon.text(logStart).splitlines()
                    if b"reload" in line.lower()][:6])
    finally:
        if config.is_fifo():
            releaseFifo(config, content, 0.5)
            config.unlink()
        app.close()
        pop.stop()


ATTACKS: dict[str, Callable[[Context, Report], None]] = {
    "metrics-slowloris": attackMetricsSlowloris,
    "proxy-header-slowloris": attackProxyHeaderSlowloris,
    "log-escape": attackLogEscape,
    "connection-storm": attackConnectionStorm,
    "fifo-reload": attackFifoReload,
}


def parseArgs(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--twistd", default=str(Path(sys.executable).parent / "twistd"),
                        help="the twistd of the venv whose udptunnel is measured (default: next to this python)")
    parser.add_argument("--only", default=",".join(ATTACKS), help="NAME[,NAME]: " + ", ".join(ATTACKS))
    parser.add_argument("--json-out", metavar="FILE", help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (the daemons' logs)")
    args = parser.parse_args(argv)
    args.names = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := [name for name in args.names if name not in ATTACKS]:
        parser.error(f"unknown attack {', '.join(unknown)}; the attacks: {', '.join(ATTACKS)}")
    return args


def udptunnelVersion(python: Path) -> str | None:
    """The version of udptunnel installed beside C{python}, or None."""
    try:
        done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('udptunnel'))"],
                              cwd=tempfile.gettempdir(), capture_output=True, timeout=30, text=True,
                              check=False)
        return done.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM: unwind like Ctrl-C, so that every finally stops what it started."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the chosen attacks one after the other, print each block, write the JSON."""
    args = parseArgs(argv)
    twistd = Path(args.twistd)
    if not (twistd.is_file() and os.access(twistd, os.X_OK)):
        print(f"skipped: no executable twistd at {twistd}", file=sys.stderr)
        return 2
    python = next((p for p in (twistd.parent / "python", twistd.parent / "python3") if p.exists()),
                  Path(sys.executable))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:  # the crowds and the storm need a few hundred
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096 if hard == resource.RLIM_INFINITY else min(4096, hard), hard))
    signal.signal(signal.SIGTERM, _terminated)
    meta = {"twistd": str(twistd), "udptunnel_version": udptunnelVersion(python),
            "prlimit": shutil.which("prlimit"), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"udptunnel {meta['udptunnel_version']} via {twistd}\n", flush=True)
    results: dict[str, Any] = {"meta": meta}
    status = 0
    for name in args.names:
        report, began = Report(name), time.monotonic()
        ctx = Context(twistd, python, Path(tempfile.mkdtemp(prefix=f"exposure-{name}-")))
        try:
            ATTACKS[name](ctx, report)
        except Skip as e:
            report.skipped = str(e)
        except KeyboardInterrupt:
            report.skipped, status = "interrupted", 130
        except Exception as e:  # noqa: BLE001 -- one attack's bug must neither leave daemons behind nor stop the others
            report.skipped = f"error: {type(e).__name__}: {e}"
        finally:
            ctx.stopAll()
            if args.keep:
                print(f"(logs of {name} kept in {ctx.directory})")
            else:
                shutil.rmtree(ctx.directory, ignore_errors=True)
        report.add("run_seconds", "attack run time, s", round(time.monotonic() - began, 1))
        report.show()
        results[name] = report.asDict()
        if status:
            break
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
