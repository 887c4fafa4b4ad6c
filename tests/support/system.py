"""
What C{/proc} says about a process, commands run to completion, and the
kernel features some tests need (network namespaces, C{ss -K}), each with a
function saying why it is missing.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SkipTest

from udptunnel.udp.gso import kernelSegments


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


#: The namespace type setns(2) is asked to join.
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


class Topology(Namespaces):
    """
    L{Namespaces} joined by veth pairs whose ends are named, so that commands
    can name them (C{lan0}).
    """

    def execute(self, name: str, *argv: str,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """
        Run C{argv} inside namespace C{name}.
        """
        return run("ip", "netns", "exec", name, *argv, check=check)

    def link(self, one: str, oneEnd: str, oneAddress: str | None,
             two: str, twoEnd: str, twoAddress: str | None) -> None:
        """
        A veth pair between C{one} (end C{oneEnd}) and C{two} (C{twoEnd}),
        with these addresses (CIDR; C{None} for none), up.  End names live
        in their namespaces, so they need not be unique across the host.
        """
        run("ip", "link", "add", oneEnd, "netns", one, "type", "veth",
            "peer", "name", twoEnd, "netns", two)
        for name, end, address in ((one, oneEnd, oneAddress), (two, twoEnd, twoAddress)):
            if address is not None:
                self.ip(name, "addr", "add", address, "dev", end)
            self.ip(name, "link", "set", end, "up")


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


def whyNoGSO() -> str | None:
    """
    Why this kernel cannot segment UDP sends (C{UDP_SEGMENT}), or C{None}.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return None if kernelSegments(sock) else "the kernel has no UDP_SEGMENT"
    finally:
        sock.close()


def whyNoMarks() -> str | None:
    """
    Why this process cannot mark its sockets (C{SO_MARK} needs
    C{CAP_NET_ADMIN}), or C{None} if it can (it tries).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), 1)
        except OSError as e:
            return f"cannot mark a socket (SO_MARK needs CAP_NET_ADMIN): {e}"
    return None


def whyNoIPv6() -> str | None:
    """
    Why this host cannot use the IPv6 loopback, or C{None} if it can.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        return f"this host has no IPv6 loopback: {e}"
    return None


def skipUnlessAble(reason: str | None) -> None:
    """
    Skip a test this machine cannot run (not root, no netns, no C{ss -K},
    no IPv6), saying why; but fail where it must run (CI sets
    C{UDPTUNNEL_REQUIRE_PRIVILEGED=1}), so a skip cannot hide there.
    """
    if reason is None:
        return
    if os.environ.get("UDPTUNNEL_REQUIRE_PRIVILEGED") == "1":
        raise AssertionError(f"required, but cannot run here: {reason}")
    raise SkipTest(reason)
