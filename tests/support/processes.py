"""
The installed C{twistd} and C{twist} run as a user would, in subprocesses
on loopback ports, and the test cases that start, watch and stop them.

Every subprocess runs in a fresh temporary directory, so the source tree is
not on its C{sys.path}: what is tested is the installed package (re-install
with C{pip install .} after changing it).  Tests use blocking sockets and
poll for readiness, bounded in time; every process started is stopped, by
its own PID, when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import (
    PROBE,
    PROBE_INTERVAL,
    TIMEOUT,
    receive,
    waitFor,
)

BIN = os.path.dirname(sys.executable)


TWISTD = os.path.join(BIN, "twistd")


TWIST = os.path.join(BIN, "twist")


#: The seed example every --help ends with.
EXAMPLE = "--peer pop.example.net:5072"


#: How long a command that should end by itself may take.
COMMAND_TIMEOUT = 60.0


#: How a process stopped by SIGTERM may end: after a clean shutdown, twistd
#: and twist re-raise the signal that stopped the reactor (see
#: C{twisted.application.app._exitWithSignal}), so the status is "killed by
#: SIGTERM" (-15 for subprocess) rather than 0.
STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)


def isAlive(pid: int) -> bool:
    """
    Whether process C{pid} is running.  A daemon is not our child, so once
    it exits it may linger as a zombie until init reaps it: that counts as
    dead.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def lastLine(text: str) -> str:
    """
    The last non-blank line of C{text}.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class TwistdTestCase(SynchronousTestCase):
    """
    Runs commands in a temporary directory and cleans up after them.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="udptunnel-test-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        #: The output file of each process spawned, by PID.
        self.outputs: dict[int, str] = {}

    def killDaemon(self, pid: int) -> None:
        """
        Stop the daemon we started, by the PID its pidfile gave, if it is
        still running.
        """
        if isAlive(pid):
            os.kill(pid, signal.SIGTERM)
            try:
                waitFor(lambda: not isAlive(pid), "the daemon to exit", 10)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)

    def path(self, name: str) -> str:
        """
        C{name} in this test's temporary directory.
        """
        return os.path.join(self.directory, name)

    def command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{argv} to completion (killed after L{COMMAND_TIMEOUT}).
        """
        return subprocess.run(
            list(argv),
            check=False,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        """
        Start C{argv} in the background, its stdout and stderr going to the
        file C{name}.out (read it with L{output}); it is stopped after the
        test if still running.
        """
        with open(self.path(name + ".out"), "wb") as out:
            process = subprocess.Popen(
                list(argv),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.outputs[process.pid] = self.path(name + ".out")
        self.addCleanup(self.reap, process)
        return process

    def output(self, process: subprocess.Popen[bytes]) -> str:
        """
        Everything C{process} has written so far.
        """
        with open(self.outputs[process.pid], errors="replace") as f:
            return f.read()

    def reap(self, process: subprocess.Popen[bytes]) -> None:
        """
        Stop C{process} if it still runs: SIGTERM, then SIGKILL.
        """
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        """
        Send SIGTERM to C{process} and return its exit status.
        """
        process.terminate()
        return process.wait(30)

    def udpSocket(self) -> socket.socket:
        """
        A UDP socket on an ephemeral port of 127.0.0.1, closed after the
        test.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        return sock

    def waitForOutput(
        self, process: subprocess.Popen[bytes], text: str, count: int = 1,
        timeout: float = TIMEOUT,
    ) -> None:
        """
        Wait until the output of C{process} contains C{text} C{count} times;
        fail at once if it exits meanwhile.
        """

        def seen() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{process.args!r} exited with {process.returncode}:\n"
                    + self.output(process)
                )
            return self.output(process).count(text) >= count

        waitFor(seen, f"{text!r} x{count} in the output of {process.args!r}", timeout)

    def startServer(self, udp: int, tcp: int, runner: str = TWISTD,
                    *more: str) -> subprocess.Popen[bytes]:
        """
        A foreground server in phantom mode, under C{twistd -n} or the
        C{runner} given, with options C{more}; returns once it logs that its
        UDP socket is bound (its TCP listener is bound in the same call,
        just after).
        """
        if runner == TWISTD:
            command = [TWISTD, "-n", "--pidfile="]
        else:
            command = [runner]
        server = self.spawn(
            "server",
            *command, "udptunnel", "server",
            "--udp", f"127.0.0.1:{udp}",
            "--tcp", f"tcp:{tcp}:interface=127.0.0.1", *more,
        )
        self.waitForOutput(server, "UDP bound on")
        return server

    def clientCommand(self, tcp: int, udp: int, peer: int) -> list[str]:
        """
        The plugin's arguments for a client of 127.0.0.1:C{tcp} with a fixed
        UDP port and a fixed peer, all on 127.0.0.1.
        """
        return [
            "udptunnel", "client",
            "--tcp", f"127.0.0.1:{tcp}",
            "--udp", f"127.0.0.1:{udp}",
            "--peer", f"127.0.0.1:{peer}",
        ]

    def assertRelays(
        self, app: socket.socket, pop: socket.socket, entry: int, exitPort: int,
        timeout: float = TIMEOUT,
    ) -> None:
        """
        Send probes from C{app} to 127.0.0.1:C{entry} until one reaches
        C{pop} (the tunnel is up), then check a request goes through and its
        reply comes back: the POP sees the tunnel's exit port C{exitPort}, the
        application gets the reply from C{entry}.
        """
        entryAddress, exitAddress = ("127.0.0.1", entry), ("127.0.0.1", exitPort)
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            app.sendto(PROBE + str(attempt).encode(), entryAddress)
            if receive(pop, PROBE_INTERVAL, skipProbes=False) is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no probe got through in {timeout} s")

        app.sendto(b"request", entryAddress)
        self.assertEqual(receive(pop, TIMEOUT), (b"request", exitAddress))
        pop.sendto(b"reply", exitAddress)
        self.assertEqual(receive(app, TIMEOUT), (b"reply", entryAddress))


#: Set to 1 (CI does, after installing the package) to make a missing
#: C{/usr/bin/udptunnel} a failure instead of a skip.
REQUIRE_VARIABLE = "UDPTUNNEL_REQUIRE_INTEROP"


def notifySocket(testCase: Any, name: str) -> tuple[socket.socket, str]:
    """
    An abstract Unix datagram socket for C{NOTIFY_SOCKET}, and its value.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    testCase.addCleanup(sock.close)
    label = f"udptunnel-test-{os.getpid()}-{name}"
    sock.bind(b"\0" + label.encode())
    return sock, "@" + label


def pendingNotices(sock: socket.socket, timeout: float) -> list[str]:
    """
    The notifications waiting on C{sock}, or the first within C{timeout}.
    """
    sock.settimeout(timeout)
    try:
        messages = [sock.recv(4096).decode()]
    except TimeoutError:
        return []
    sock.setblocking(False)
    for _ in range(100):
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    return messages


def waitForNotice(sock: socket.socket, text: str, timeout: float = TIMEOUT) -> list[str]:
    """
    The notifications received until one contains C{text}.
    """
    seen: list[str] = []
    for _ in range(50):
        got = pendingNotices(sock, timeout)
        if not got:
            break
        seen.extend(got)
        if any(text in message for message in got):
            return seen
    raise AssertionError(f"no notification with {text!r}; got {seen!r}")


