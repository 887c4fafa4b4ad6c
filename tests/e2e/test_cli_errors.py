"""
Bad command lines, tried with the installed C{twistd} (and C{twist}) as a
new user would type them: each ends with status 1 and a few lines, the
command's short synopsis, where the full help is, and last the error,
naming the option to fix; never a traceback, never the 60 lines of help.

Nothing here binds a port or sends a datagram, except the one daemon that
finds its port busy.
"""

from __future__ import annotations

import os
import socket
import subprocess

from tests.support.net import freePort
from tests.support.processes import (
    COMMAND_TIMEOUT,
    TWIST,
    TWISTD,
    TwistdTestCase,
    lastLine,
)

#: A UDP address and a TCP endpoint that parse, for the cases about another
#: option.  Parsing binds nothing.
UDP = "127.0.0.1:17073"
TCP = "tcp:9999:interface=127.0.0.1"
SERVER = ("server", "--tcp", TCP, "--udp", UDP)

#: (what is wrong, the arguments after "udptunnel", what the error line
#: must say).  The first fragment names the option.
CASES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("no end chosen", (), ("server, client or run",)),
    ("run without a file", ("run",), ("--config", "required")),
    ("no such end", ("relay",), ("relay",)),
    ("--tcp missing", ("server", "--udp", UDP), ("--tcp", "required")),
    ("unknown option", (*SERVER, "--frobnicate"), ("--frobnicate",)),
    ("an option's prefix", (*SERVER, "--proxy"), ("--proxy", "did you mean --proxy-protocol")),
    ("server port out of range", ("server", "--tcp", "70000", "--udp", UDP),
     ("--tcp", "70000", "65535")),
    ("endpoint port out of range", ("server", "--tcp", "tcp:port=70000", "--udp", UDP),
     ("--tcp", "70000")),
    ("metrics port out of range", (*SERVER, "--metrics", "70000"), ("--metrics", "70000")),
    ("unix socket without its directory",
     ("server", "--tcp", "unix:/nonexistent/dir/s.sock", "--udp", UDP),
     ("--tcp", "/nonexistent/dir")),
    ("client --tcp not HOST:PORT", ("client", "--tcp", "natbox", "--udp", UDP), ("--tcp",)),
    ("--udp that does not resolve",
     ("server", "--tcp", TCP, "--udp", "nosuchhost.invalid:17073"),
     ("--udp", "nosuchhost.invalid")),
    ("--udp IPv6, --peer IPv4",
     ("server", "--tcp", TCP, "--udp", "[::1]:17073", "--peer", "127.0.0.1:17074"),
     ("--udp is IPv6", "--peer IPv4")),
    ("--udp IPv4, --peer IPv6",
     ("server", "--tcp", TCP, "--udp", UDP, "--peer", "[::1]:17074"),
     ("--udp is IPv4", "--peer IPv6")),
    ("negative keepalive", (*SERVER, "--keepalive-idle", "-1"), ("--keepalive-idle", "-1")),
    ("keepalive idle past the kernel's limit", (*SERVER, "--keepalive-idle", "40000"),
     ("--keepalive-idle", "32767")),
    ("keepalive idle past a C int", (*SERVER, "--keepalive-idle", "99999999999"),
     ("--keepalive-idle",)),
    ("keepalive interval 0", (*SERVER, "--keepalive-interval", "0"),
     ("--keepalive-interval",)),
    ("keepalive count past the kernel's limit", (*SERVER, "--keepalive-count", "128"),
     ("--keepalive-count", "127")),
    ("user timeout past a C int of ms", (*SERVER, "--user-timeout", "3000000"),
     ("--user-timeout",)),
    ("buffer past a C int", (*SERVER, "--udp-rcvbuf", "3000000000"), ("--udp-rcvbuf",)),
    ("buffer not a number", (*SERVER, "--tcp-sndbuf", "lots"), ("--tcp-sndbuf", "lots")),
    ("idle timeout negative", (*SERVER, "--idle-timeout", "-5"), ("--idle-timeout",)),
    ("pending timeout 0", (*SERVER, "--pending-timeout", "0"), ("--pending-timeout",)),
    ("max pending negative", (*SERVER, "--max-pending", "-1"), ("--max-pending",)),
    ("server sessions in phantom mode", ("server", "--tcp", TCP, "--sessions"),
     ("server --sessions needs --peer", "client --sessions")),
    ("server sessions on a fixed UDP port",
     ("server", "--tcp", TCP, "--udp", UDP, "--peer", "127.0.0.1:17074", "--sessions"),
     ("--udp", "ephemeral", "HOST:0")),
    ("client sessions with a fixed peer",
     ("client", "--tcp", "127.0.0.1:9999", "--udp", UDP, "--peer", "127.0.0.1:17074",
      "--sessions"), ("client --sessions", "not with --peer")),
    ("sessions with the single link's idle timeout",
     ("client", "--tcp", "127.0.0.1:9999", "--udp", UDP, "--sessions", "--idle-timeout", "5"),
     ("--idle-timeout", "--session-idle")),
    ("max sessions 0", ("client", "--tcp", "127.0.0.1:9999", "--udp", UDP, "--sessions",
                        "--max-sessions", "0"), ("--max-sessions",)),
    ("a shared port for the single link", (*SERVER, "--reuse-port"),
     ("--reuse-port", "--sessions")),
    ("a shared port that is no TCP port",
     ("server", "--tcp", "unix:/tmp/udptunnel-test.sock", "--peer", "127.0.0.1:17074",
      "--sessions", "--reuse-port"), ("--reuse-port", "TCP --tcp", "ReusePort=yes")),
    ("a shared client port that is ephemeral",
     ("client", "--tcp", "127.0.0.1:9999", "--udp", "127.0.0.1:0", "--sessions",
      "--reuse-port"), ("--reuse-port", "--udp", "a port")),
]


class BadCommandLineTests(TwistdTestCase):
    """
    Every case of L{CASES}, and the few that need a setting of their own.
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

    def assertShortUsageError(self, status: int, output: str, end: str | None,
                              expected: tuple[str, ...], program: str = "twistd") -> None:
        """
        Status 1; the error on the last line, with every fragment of
        C{expected}; the short synopsis of C{end} ("server", "client",
        C{None} for the plugin itself) and a pointer to --help before it;
        no traceback and not the full help.
        """
        self.assertEqual(status, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Parameter type enforcement", output)
        error = lastLine(output)
        for fragment in expected:
            self.assertIn(fragment, error, output)
        command = f"{program} udptunnel" + (f" {end}" if end else "")
        self.assertTrue(error.startswith(f"{command}: "), output)
        self.assertIn(f"Usage: {program} [{program} options] {command.split(' ', 1)[1]} ", output)
        self.assertIn(f"'{command} --help'", output)
        # The full help lists every option; the short form none of them.
        self.assertNotIn("--keepalive-interval=", output)
        self.assertLessEqual(len(output.splitlines()), 4, output)

    def test_cases(self) -> None:
        """
        Each case of L{CASES} under C{twistd -n}.
        """
        failures = []
        for what, argv, expected in CASES:
            status, output = self.runCommand([TWISTD, "-n", "--pidfile=", "udptunnel", *argv])
            end = argv[0] if argv and argv[0] in ("server", "client", "run") else None
            try:
                self.assertShortUsageError(status, output, end, expected)
            except AssertionError as e:
                failures.append(f"{what}: {e}")
        self.assertEqual(failures, [])

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
        process = self.start(256, 256, 1024)
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT)
        self.assertEqual(process.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertIn("--max-sessions 1024 needs", output)
        self.assertIn("hard limit is 256", output)

    def test_softLimitRaised(self) -> None:
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
