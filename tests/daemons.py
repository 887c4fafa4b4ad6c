"""
Helpers for the fault-injection tests (L{tests.test_faults}): a checksummed
datagram stream driven by threads, what C{/proc} says about a process, and
the kernel features some faults need (network namespaces, C{ss -K}).

Nothing here sends anywhere but to the addresses it is given, every loop is
bounded in count and in time, and nothing is left running: each object that
starts a thread stops and joins it in C{stop}, which the tests register as a
cleanup.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

#: Every datagram of a L{Stream} starts with this.
MAGIC = b"UTF1"
#: MAGIC, sequence number, CRC-32 of the sequence number and the body.
HEADER = struct.Struct("!4sQI")
#: Body sizes a stream cycles through: empty, tiny, typical, and larger than
#: one TCP segment and than Twisted's default UDP read buffer (8192).
SIZES = (0, 1, 200, 1000, 1400, 4000, 12000)
#: Receive buffer of the test's own sockets, so they do not drop bursts.
BUFFER = 4 << 20


def datagram(seq: int, size: int) -> bytes:
    """
    Datagram number C{seq}: a header with a checksum, then C{size} bytes
    that depend on C{seq}.
    """
    body = random.Random(seq).randbytes(size)
    crc = zlib.crc32(struct.pack("!Q", seq) + body)
    return HEADER.pack(MAGIC, seq, crc) + body


def check(data: bytes) -> int | None:
    """
    The sequence number of an intact L{datagram}, or C{None} if C{data} is
    not one or was damaged.
    """
    if len(data) < HEADER.size:
        return None
    magic, seq, crc = HEADER.unpack_from(data)
    if magic != MAGIC or zlib.crc32(data[4:12] + data[HEADER.size :]) != crc:
        return None
    return int(seq)


def bigBuffers(sock: socket.socket) -> socket.socket:
    """
    Give C{sock} a large receive buffer (capped by C{net.core.rmem_max}).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    return sock


class Tally:
    """
    What one end of a L{Stream} received: datagrams that passed their
    checksum, those that did not, and when the last intact one came.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intact = 0
        self.corrupt: list[bytes] = []
        self.lastSeq = -1
        self.lastArrival = 0.0

    def add(self, data: bytes) -> int | None:
        seq = check(data)
        with self.lock:
            if seq is None:
                self.corrupt.append(data[:64])
            else:
                self.intact += 1
                self.lastSeq = seq
                self.lastArrival = time.monotonic()
        return seq

    def snapshot(self) -> tuple[int, int]:
        """
        The count of intact datagrams and the highest sequence number seen.
        """
        with self.lock:
            return self.intact, self.lastSeq


class Stream:
    """
    An application socket C{app} sends checksummed, numbered datagrams to
    C{entry} (the tunnel's entry) from a thread, every C{interval} seconds;
    a second thread reads the POP socket C{pop} and checks each datagram,
    echoing it back to where it came from (the tunnel's exit) when C{echo}
    is true; a third reads and checks the echoes on C{app}.

    A refused send (the ICMP port-unreachable of a tunnel end that was
    killed) is counted and ignored, like any other error on these sockets.
    Every thread stops after C{limit} seconds or C{maxCount} datagrams, or
    at L{stop}.
    """

    def __init__(
        self,
        app: socket.socket,
        entry: tuple[str, int],
        pop: socket.socket,
        echo: bool = True,
        interval: float = 0.002,
        limit: float = 120.0,
        maxCount: int = 200_000,
    ) -> None:
        self.app, self.entry, self.pop = bigBuffers(app), entry, bigBuffers(pop)
        self.echo = echo
        self.interval = interval
        self.limit = limit
        self.maxCount = maxCount
        self.sent = 0
        self.sendErrors = 0
        self.forward = Tally()
        self.back = Tally()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Stream:
        deadline = time.monotonic() + self.limit
        for target in (self._send, self._serve, self._collect):
            thread = threading.Thread(target=target, args=(deadline,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)
        self._threads = []

    def _running(self, deadline: float) -> bool:
        return not self._stopping.is_set() and time.monotonic() < deadline

    def _send(self, deadline: float) -> None:
        while self._running(deadline) and self.sent < self.maxCount:
            try:
                self.app.sendto(datagram(self.sent, SIZES[self.sent % len(SIZES)]), self.entry)
            except OSError:
                self.sendErrors += 1
            self.sent += 1
            time.sleep(self.interval)

    def _serve(self, deadline: float) -> None:
        self._receive(self.pop, self.forward, deadline, self.echo)

    def _collect(self, deadline: float) -> None:
        self._receive(self.app, self.back, deadline, False)

    def _receive(self, sock: socket.socket, tally: Tally, deadline: float,
                 echo: bool) -> None:
        sock.settimeout(0.1)
        for _ in range(10 * self.maxCount):
            if not self._running(deadline):
                return
            try:
                data, source = sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            tally.add(data)
            if echo:
                try:
                    sock.sendto(data, source)
                except OSError:
                    pass

    def waitForMore(self, tally: Tally, count: int, timeout: float, what: str) -> float:
        """
        Wait until C{tally} has C{count} more intact datagrams than now;
        return how long that took, or fail after C{timeout} seconds.
        """
        start = time.monotonic()
        target = tally.snapshot()[0] + count
        while tally.snapshot()[0] < target:
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {count} more datagrams "
                    f"{what} (got {tally.snapshot()[0] - target + count}; sent "
                    f"{self.sent} in all, {self.sendErrors} send errors)"
                )
            time.sleep(0.02)
        return time.monotonic() - start


def roundTrip(
    app: socket.socket,
    entry: tuple[str, int],
    pop: socket.socket,
    exitAddress: tuple[str, int],
    token: bytes,
    timeout: float,
) -> None:
    """
    Send C{token} from C{app} to C{entry} every 0.2 s until it reaches C{pop}
    (other datagrams are skipped), then a reply from C{pop} to
    C{exitAddress} until it reaches C{app}; fail after C{timeout} seconds.
    """
    for sender, receiver, to, data in (
        (app, pop, entry, token),
        (pop, app, exitAddress, b"reply to " + token),
    ):
        deadline = time.monotonic() + timeout
        arrived = False
        while not arrived:
            if time.monotonic() > deadline:
                raise AssertionError(f"{data!r} did not get through in {timeout} s")
            try:
                sender.sendto(data, to)
            except OSError:
                pass
            arrived = _await(receiver, data, 0.2)


def _await(sock: socket.socket, data: bytes, timeout: float) -> bool:
    """
    Whether C{data} arrives on C{sock} within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            received, _ = sock.recvfrom(65535)
        except (TimeoutError, OSError):
            continue
        if received == data:
            return True
    return False


def flood(
    sock: socket.socket, destination: tuple[str, int], size: int, seconds: float,
    maxCount: int = 20_000_000,
) -> threading.Thread:
    """
    Send C{size}-byte datagrams from C{sock} to C{destination} as fast as
    possible for C{seconds} (at most C{maxCount}), in a thread returned
    started; its C{sent} attribute counts them once it is done.
    """
    payload = os.urandom(size)

    def run() -> None:
        deadline = time.monotonic() + seconds
        sent = 0
        while sent < maxCount:
            if sent % 256 == 0 and time.monotonic() > deadline:
                break
            try:
                sock.sendto(payload, destination)
            except OSError:
                pass
            sent += 1
        thread.sent = sent  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# What /proc says about a process


def rssKiB(pid: int) -> int:
    """
    The resident set size of process C{pid}, in KiB (C{VmRSS}).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def openFiles(pid: int) -> int:
    """
    How many file descriptors process C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


# Kernel features


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """
    Run a short system command (C{ip}, C{ss}) to completion, bounded in time.
    """
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30,
                            check=False, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv!r} failed ({result.returncode}): "
                             f"{result.stdout}{result.stderr}")
    return result


def whyNoSocketKill() -> str | None:
    """
    Why C{ss -K} cannot kill sockets here (not root, no C{ss}, a kernel
    without C{CONFIG_INET_DIAG_DESTROY}), or C{None} if it can: it is tried
    on a loopback connection of our own.
    """
    if os.geteuid() != 0:
        return "ss -K needs root (CAP_NET_ADMIN)"
    if shutil.which("ss") is None:
        return "ss (iproute2) is not installed"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as near:
            accepted, _ = listener.accept()
            with accepted:
                result = run("ss", "-K", "-t", "state", "established",
                             f"( dport = :{port} )", check=False)
                accepted.settimeout(2)
                try:
                    killed = accepted.recv(1) == b""
                except ConnectionResetError:
                    killed = True
                except (TimeoutError, OSError):
                    killed = False
                near.close()
    if not killed:
        return ("ss -K did not kill a socket (kernel without CONFIG_INET_DIAG_DESTROY?): "
                + (result.stderr.strip() or "no error given"))
    return None


def killSockets(*filter: str) -> str:
    """
    Kill the TCP sockets that C{ss} filter C{filter} selects; return what
    C{ss -K} listed.
    """
    return run("ss", "-K", "-t", "state", "established", *filter).stdout


CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    setns: Callable[[int, int], None] | None = getattr(os, "setns", None)
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


class Namespaces:
    """
    Network namespaces made for one test, joined by veth pairs; L{remove}
    deletes them all (and so their veths).  Names carry our PID so that
    concurrent runs do not collide.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._tag = f"{os.getpid() % 100000}{random.randrange(100)}"

    def add(self, label: str) -> str:
        name = f"udpt-{label}-{self._tag}"
        run("ip", "netns", "add", name)
        self.names.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, one: str, two: str, oneAddress: str, twoAddress: str) -> tuple[str, str]:
        """
        A veth pair between namespaces C{one} and C{two}, with these
        addresses (CIDR), up; returns the names of its two ends.
        """
        a, b = f"va{self._tag}", f"vb{self._tag}"
        run("ip", "link", "add", a, "netns", one, "type", "veth", "peer", "name", b,
            "netns", two)
        for name, end, address in ((one, a, oneAddress), (two, b, twoAddress)):
            run("ip", "-n", name, "addr", "add", address, "dev", end)
            run("ip", "-n", name, "link", "set", end, "up")
        return a, b

    def ip(self, name: str, *argv: str) -> None:
        """
        Run C{ip ARGV} in namespace C{name}.
        """
        run("ip", "-n", name, *argv)

    def remove(self) -> None:
        for name in reversed(self.names):
            run("ip", "netns", "delete", name, check=False)
        self.names = []

    def socket(self, name: str, kind: socket.SocketKind = socket.SOCK_DGRAM,
               bind: tuple[str, int] | None = ("127.0.0.1", 0)) -> socket.socket:
        """
        A socket that lives in namespace C{name}: made by a thread that
        entered the namespace (a socket stays in the namespace it was made
        in), so this process's own namespace is untouched.
        """
        made: list[Any] = []

        def make() -> None:
            try:
                with open(f"/var/run/netns/{name}") as f:
                    _setns(f.fileno())
                sock = socket.socket(socket.AF_INET, kind)
                if bind is not None:
                    sock.bind(bind)
                made.append(sock)
            except BaseException as e:  # noqa: BLE001 (reported below)
                made.append(e)

        thread = threading.Thread(target=make, daemon=True)
        thread.start()
        thread.join(10)
        if not made or isinstance(made[0], BaseException):
            raise AssertionError(f"cannot make a socket in {name}: {made!r}")
        return made[0]


def whyNoNamespaces() -> str | None:
    """
    Why this process cannot make network namespaces joined by a veth pair,
    or C{None} if it can (it tries).
    """
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    spaces = Namespaces()
    try:
        one, two = spaces.add("probe1"), spaces.add("probe2")
        spaces.veth(one, two, "198.18.0.1/30", "198.18.0.2/30")
        spaces.socket(one).close()
    except (AssertionError, OSError, subprocess.SubprocessError) as e:
        return f"cannot make network namespaces with a veth pair: {e}"
    finally:
        spaces.remove()
    return None
