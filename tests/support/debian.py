"""
Debian's C{udptunnel} 1.1 (Lennox's C tool) as a peer: where it is, whether
it can run here, and a test case that runs it beside the installed
C{twistd}, skipped without it (failed with C{UDPTUNNEL_REQUIRE_INTEROP=1}).
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import subprocess

from twisted.trial.unittest import SkipTest

from tests.support.net import TIMEOUT, receive
from tests.support.processes import REQUIRE_VARIABLE, TwistdTestCase

#: Debian's udptunnel 1.1, as installed by C{apt-get install udptunnel}.
UDPTUNNEL = "/usr/bin/udptunnel"


#: The usage text that tells Lennox's udptunnel from other tools of that name.
USAGE_MARK = "UDP-addr/UDP-port"


#: The loopback addresses of the applications next to the C tool (quirk 1).
APP_NEXT_TO_DEBIAN_SERVER = "127.0.0.2"


APP_NEXT_TO_DEBIAN_CLIENT = "127.0.0.3"


LOOPBACK = "127.0.0.1"


def payload(label: str, size: int) -> bytes:
    """
    C{size} bytes that depend on C{label} and C{size}: SHAKE-256 of both,
    so every datagram differs from every other and a stale, truncated or
    shifted one cannot match.
    """
    return hashlib.shake_256(f"udptunnel interop {label} {size}".encode()).digest(size)


def wildcardPort(kind: socket.SocketKind, avoid: tuple[int, ...] = ()) -> int:
    """
    A port that was free on every IPv4 address a moment ago, other than
    those in C{avoid} (our end's ports: the C tool could not bind one of
    those): it binds its ports on C{0.0.0.0} (quirks 1 and 6), so a port
    free on 127.0.0.1 alone is not enough.  Nothing is sent.
    """
    for _ in range(20):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise AssertionError(f"no free port outside {avoid} in 20 tries")


def isListening(port: int) -> bool:
    """
    Whether some socket listens on TCP C{port} (any IPv4 or IPv6 address),
    read from C{/proc/net/tcp*}: this asks the kernel without connecting,
    as a probe connection would become a server's link.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":
                return True
    return False


@functools.cache
def debianProblem() -> str | None:
    """
    Why Debian's udptunnel 1.1 cannot be used here, or C{None} if it can:
    the binary exists and its usage text is Lennox's.  Asked once.
    """
    if not os.access(UDPTUNNEL, os.X_OK):
        return (
            f"{UDPTUNNEL} not found: install Debian's udptunnel 1.1 "
            "(apt-get install udptunnel) to run the interoperability tests"
        )
    # -h prints the usage on stderr and exits with status 2.
    result = subprocess.run(
        [UDPTUNNEL, "-h"], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=30, check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if USAGE_MARK not in output:
        return (
            f"{UDPTUNNEL} is not Lennox's udptunnel 1.1 (its usage text lacks "
            f"{USAGE_MARK!r}): {output[:200]!r}"
        )
    return None


class InteropTestCase(TwistdTestCase):
    """
    Runs Debian's udptunnel beside the installed C{twistd}; skipped (or
    failed, with C{UDPTUNNEL_REQUIRE_INTEROP=1}) without it.
    """

    def setUp(self) -> None:
        problem = debianProblem()
        if problem is not None:
            if os.environ.get(REQUIRE_VARIABLE) == "1":
                self.fail(f"{REQUIRE_VARIABLE}=1 but {problem}")
            raise SkipTest(problem)
        super().setUp()

    def appSocket(self, host: str, port: int = 0) -> socket.socket:
        """
        A blocking UDP socket bound to C{host}:C{port}, closed after the
        test.  C{SO_REUSEADDR} lets it share a port with the C tool's
        wildcard socket (quirk 1); on a port of its own it changes nothing.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return sock

    def assertDatagram(
        self, sock: socket.socket, expected: bytes, what: str,
        source: tuple[str, int] | None = None,
    ) -> None:
        """
        The next datagram on C{sock} (waiting up to L{TIMEOUT}) is
        C{expected}, byte for byte, and comes from C{source} if given.
        A mismatch names the lengths, the digests and the first differing
        offset rather than printing up to 64 KiB.
        """
        received = receive(sock, TIMEOUT)
        if received is None:
            self.fail(f"{what}: nothing arrived within {TIMEOUT} s")
        data, sender = received
        if data != expected:
            offset = next(
                (i for i, (a, b) in enumerate(zip(data, expected)) if a != b),
                min(len(data), len(expected)),
            )
            self.fail(
                f"{what}: got {len(data)} bytes (sha256 "
                f"{hashlib.sha256(data).hexdigest()[:16]}), expected {len(expected)} "
                f"(sha256 {hashlib.sha256(expected).hexdigest()[:16]}); "
                f"first difference at byte {offset}"
            )
        if source is not None:
            self.assertEqual(sender, source, f"{what}: source address")

    def assertExits(self, process: subprocess.Popen[bytes], what: str) -> int:
        """
        Wait up to L{TIMEOUT} for C{process} to exit by itself; return its
        status.
        """
        try:
            return process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"{what} still running {TIMEOUT} s later:\n" + self.output(process))

    def stopOurEnd(self, end: subprocess.Popen[bytes]) -> None:
        """
        Stop our end with SIGTERM; it logs its summary line.
        """
        self.stop(end)
        self.assertIn("tunnel stopped", self.output(end))
