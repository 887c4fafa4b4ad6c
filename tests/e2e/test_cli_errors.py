"""
Bad command lines, tried with the installed C{twistd} (and C{twist}) as a
new user would type them: each ends with status 1 and a few lines, the
command's short synopsis, where the full help is, and last the error,
naming the option to fix; never a traceback, never the 60 lines of help.

The table of mistakes is checked in-process (L{tests.unit.test_tap},
C{ErrorTableTests}); here a few of them go through the real runners, with
what only a real run shows: daemonising, C{twist}, a missing extra, a
port that is busy, the open-files limit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

from tests.support.net import freePort
from tests.support.options import ShortUsageAssertions
from tests.support.processes import (
    COMMAND_TIMEOUT,
    TWIST,
    TWISTD,
    TwistdTestCase,
    lastLine,
)
from tests.support.system import skipUnlessAble, whyNoMarks

#: A UDP address and a TCP endpoint that parse, for the cases about another
#: option.  Parsing binds nothing.
UDP = "127.0.0.1:17073"
TCP = "tcp:9999:interface=127.0.0.1"
SERVER = ("server", "--tcp", TCP, "--udp", UDP)


class BadCommandLineTests(ShortUsageAssertions, TwistdTestCase):
    """
    Mistakes through the installed runners, as a user meets them.
    """

    def runCommand(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        """
        Run C{argv} to completion; its status and its output (stdout and
        stderr together, as a terminal shows them).
        """
        result = subprocess.run(
            argv, check=False, cwd=self.directory, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=COMMAND_TIMEOUT, env=env,
        )
        return result.returncode, result.stdout

    def test_foreground(self) -> None:
        """
        Under C{twistd -n}, the lines the in-process table checks are what
        the user sees, with status 1: here for a missing C{--tcp}.
        """
        status, output = self.runCommand(
            [TWISTD, "-n", "--pidfile=", "udptunnel", "server", "--udp", UDP])
        self.assertShortUsageError(status, output, "server", ("--tcp", "required"))

    def test_markWithoutTheCapability(self) -> None:
        """
        C{--fwmark} from a process that may not mark its sockets (root with
        C{CAP_NET_ADMIN} and C{CAP_NET_RAW} dropped, as C{setpriv} runs it):
        the usage error names the capability and what to give a systemd
        unit, status 1, nothing started.
        """
        skipUnlessAble(whyNoMarks() or (None if shutil.which("setpriv") else
                                        "setpriv (util-linux) is not installed"))
        status, output = self.runCommand(
            ["setpriv", "--bounding-set=-net_admin,-net_raw", "--inh-caps=-net_admin,-net_raw",
             TWISTD, "-n", "--pidfile=", "udptunnel", "client", "--tcp", "127.0.0.1:9999",
             "--udp", UDP, "--fwmark", "51820"])
        self.assertShortUsageError(status, output, "client", (
            "--fwmark: the kernel refuses SO_MARK=51820: Operation not permitted",
            "CAP_NET_ADMIN", "AmbientCapabilities=CAP_NET_ADMIN"))
        self.assertNotIn("starting", output)

    def test_daemonisingTwistd(self) -> None:
        """
        Without C{-n} (twistd would daemonise), a usage error is the same.
        """
        status, output = self.runCommand(
            [TWISTD, f"--pidfile={self.path('p.pid')}", f"--logfile={self.path('l.log')}",
             "udptunnel", *SERVER, "--keepalive-count", "0"])
        self.assertShortUsageError(status, output, "server", ("--keepalive-count",))
        self.assertFalse(os.path.exists(self.path("p.pid")))

    def test_twist(self) -> None:
        """
        C{twist} shows the same lines and the same status (its own usage
        errors exit 64).
        """
        status, output = self.runCommand([TWIST, "udptunnel", *SERVER, "--keepalive-idle", "-1"])
        self.assertShortUsageError(status, output, "server", ("--keepalive-idle",), "twist")

    def test_tlsEndpointWithoutPyOpenSSL(self) -> None:
        """
        A C{tls:} or C{ssl:} endpoint without the C{tls} extra says what to
        install, not C{name 'optionsForClientTLS' is not defined}.  A stub
        C{OpenSSL} package that fails to import stands for a missing one.
        """
        stub = self.path("stub")
        os.makedirs(os.path.join(stub, "OpenSSL"))
        with open(os.path.join(stub, "OpenSSL", "__init__.py"), "w") as f:
            f.write('raise ImportError("pyOpenSSL is not installed (test stub)")\n')
        env = dict(os.environ, PYTHONPATH=stub)
        for end, tcp in (("client", "tls:natbox:9999"), ("server", "ssl:9999")):
            status, output = self.runCommand(
                [TWISTD, "-n", "--pidfile=", "udptunnel", end, "--tcp", tcp, "--udp", UDP], env)
            self.assertShortUsageError(
                status, output, end, ("--tcp", "pip install '.[tls]'"))

    def test_daemonPortBusy(self) -> None:
        """
        A daemon that cannot bind: its parent prints the reason itself,
        not twistd's C{An error has occurred: b'udptunnel.StartupError: ...'}.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        status, output = self.runCommand(
            [TWISTD, f"--pidfile={self.path('p.pid')}", f"--logfile={self.path('l.log')}",
             "udptunnel", "server", "--udp", f"127.0.0.1:{port}",
             "--tcp", f"tcp:{freePort()}:interface=127.0.0.1"])
        self.assertEqual(status, 1, output)
        self.assertEqual(
            output.strip(),
            f"udptunnel: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use",
        )


class BusyPortTests(TwistdTestCase):
    """
    A port already taken ends C{twistd -n} with status 1 and a one-line
    reason as the last line of output, "cannot start" and the port, never
    a traceback.
    """

    def assertRefused(self, expected: list[str], *argv: str) -> None:
        """
        C{twistd -n --pidfile= udptunnel ARGV} exits 1, without a traceback,
        and its last line of output contains every string in C{expected}.
        """
        result = self.command(TWISTD, "-n", "--pidfile=", "udptunnel", *argv)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        message = lastLine(output)
        for text in expected:
            self.assertIn(text, message, output)

    def test_tcpPortBusy(self) -> None:
        """
        A TCP port already listened on: "cannot start", naming the port.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        self.assertRefused(
            ["cannot start", str(port)],
            "server", "--tcp", f"tcp:{port}:interface=127.0.0.1", "--udp", "127.0.0.1:0",
        )

    def test_udpPortBusy(self) -> None:
        """
        A UDP port already bound: "cannot start", naming the port.
        """
        busy = self.udpSocket()
        port = busy.getsockname()[1]
        self.assertRefused(
            ["cannot start", str(port)],
            "server", "--tcp", f"tcp:{freePort()}:interface=127.0.0.1",
            "--udp", f"127.0.0.1:{port}",
        )


class DescriptorBudgetTests(TwistdTestCase):
    """
    C{--max-sessions} needs descriptors: the soft limit is raised to what
    the cap needs, or the start refused, saying what to change.
    """

    def start(self, soft: int, hard: int, sessions: int) -> subprocess.Popen[str]:
        # prlimit (util-linux) rather than a preexec_fn, which is unsafe in a
        # process with threads.
        return subprocess.Popen(
            ["prlimit", f"--nofile={soft}:{hard}",
             TWISTD, "-n", "--pidfile=", "udptunnel", "client", "--tcp", "127.0.0.1:9",
             "--udp", f"127.0.0.1:{freePort(socket.SOCK_DGRAM)}", "--sessions",
             "--max-sessions", str(sessions)],
            cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )

    def test_hardLimitTooLow(self) -> None:
        """
        A hard limit below what C{--max-sessions} needs: status 1, no
        traceback, a line naming the option, what it needs, and the limit.
        """
        process = self.start(256, 256, 1024)
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT)
        self.assertEqual(process.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertIn("--max-sessions 1024 needs", output)
        self.assertIn("hard limit is 256", output)

    def test_softLimitRaised(self) -> None:
        """
        A soft limit below what C{--max-sessions} needs, under a hard limit
        that allows it: the daemon raises the soft limit and says so.
        """
        process = self.start(256, 4096, 1024)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "raised the open-files limit" in line or "UDP bound on" in line:
                break
        process.terminate()
        process.communicate(timeout=COMMAND_TIMEOUT)
        self.assertIn("raised the open-files limit from 256 to", "".join(lines))
