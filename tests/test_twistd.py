"""
End to end: the installed C{twistd} and C{twist} run the plugin as a user
would, in subprocesses on loopback ports.

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
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
TWIST = os.path.join(BIN, "twist")

#: The seed example every --help ends with.
EXAMPLE = "--peer pop.example.net:5072"

#: Generous bounds for anything asynchronous: the machine is shared and slow.
TIMEOUT = 15.0
#: How long a command that should end by itself may take.
COMMAND_TIMEOUT = 60.0
#: How often a readiness probe is resent.
PROBE_INTERVAL = 0.2
#: Readiness probes start with this; the other datagrams never do.
PROBE = b"udptunnel-probe "

#: How a process stopped by SIGTERM may end: after a clean shutdown, twistd
#: and twist re-raise the signal that stopped the reactor (see
#: C{twisted.application.app._exitWithSignal}), so the status is "killed by
#: SIGTERM" (-15 for subprocess) rather than 0.
STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)


def freePort(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """
    A port on 127.0.0.1 that was free a moment ago: bind port 0, note the
    number, close.
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waitFor(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """
    Poll C{predicate} every 50 ms until it is true; fail after C{timeout}
    seconds, saying what was awaited.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def receive(
    sock: socket.socket, timeout: float, skipProbes: bool = True
) -> tuple[bytes, tuple[str, int]] | None:
    """
    The next datagram on C{sock} and its source, or C{None} after
    C{timeout} seconds; late readiness probes are skipped unless
    C{skipProbes} is false.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            return None
        if not (skipProbes and data.startswith(PROBE)):
            return data, source


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


class HelpTests(TwistdTestCase):
    """
    The plugin is found by an installed twistd and documents itself.
    """

    def test_pluginListed(self) -> None:
        """
        C{twistd --help}, run outside the source tree, lists the plugin: the
        installed package carries C{twisted/plugins/udptunnel_plugin.py}.
        """
        result = self.command(TWISTD, "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^\s+udptunnel\s")

    def assertHelpShowsExample(self, *argv: str) -> None:
        """
        C{twistd udptunnel ARGV --help} exits 0 and shows the seed example.
        """
        result = self.command(TWISTD, "udptunnel", *argv, "--help")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(EXAMPLE, result.stdout)

    def test_pluginHelp(self) -> None:
        """
        C{twistd udptunnel --help} succeeds and shows the example.
        """
        self.assertHelpShowsExample()

    def test_serverHelp(self) -> None:
        """
        C{twistd udptunnel server --help} succeeds and shows the example.
        """
        self.assertHelpShowsExample("server")

    def test_clientHelp(self) -> None:
        """
        C{twistd udptunnel client --help} succeeds and shows the example.
        """
        self.assertHelpShowsExample("client")


class ForegroundTests(TwistdTestCase):
    """
    The seed scenario, both ends under C{twistd -n}.
    """

    def test_seedScenario(self) -> None:
        """
        An application sends to the server's UDP port; the POP gets the
        datagram from the client's fixed UDP port and its reply reaches the
        application from the server's UDP port.  SIGTERM stops both ends
        cleanly, each logging its summary line.
        """
        self.seedScenario()

    def test_seedScenarioPlainTwisted(self) -> None:
        """
        The same with C{--plain-twisted} on both ends: the tunnel also runs
        on Twisted's public API alone (no write-through, no lean dispatch).
        """
        self.seedScenario("--plain-twisted")

    def seedScenario(self, *more: str) -> None:
        serverUDP, tcp, clientUDP = (
            freePort(socket.SOCK_DGRAM), freePort(), freePort(socket.SOCK_DGRAM)
        )
        pop, app = self.udpSocket(), self.udpSocket()
        server = self.startServer(serverUDP, tcp, TWISTD, *more)
        client = self.spawn(
            "client",
            TWISTD, "-n", "--pidfile=",
            *self.clientCommand(tcp, clientUDP, pop.getsockname()[1]), *more,
        )

        self.assertRelays(app, pop, serverUDP, clientUDP)
        self.assertIn(f"listening for the TCP link on 127.0.0.1:{tcp}", self.output(server))
        self.assertNotIn("TunnelFactory", self.output(server))

        self.assertIn(self.stop(server), STOPPED_BY_SIGTERM, self.output(server))
        self.assertIn("tunnel stopped", self.output(server))
        # The server closed the link cleanly: the client says so.
        self.waitForOutput(client, "link down")
        self.assertIn("(closed by the peer)", self.output(client))
        self.assertNotIn("non-clean", self.output(client))
        self.assertIn(self.stop(client), STOPPED_BY_SIGTERM, self.output(client))
        self.assertIn("tunnel stopped", self.output(client))


class DaemonTests(TwistdTestCase):
    """
    C{twistd} without C{-n}: the usual way to run the client.
    """

    def test_daemonisedClient(self) -> None:
        """
        The command returns 0 once the client is daemonised, with its PID in
        the pidfile; the daemon relays; on SIGTERM it exits, removes its
        pidfile and logs its summary line in the logfile.
        """
        serverUDP, tcp, clientUDP = (
            freePort(socket.SOCK_DGRAM), freePort(), freePort(socket.SOCK_DGRAM)
        )
        pop, app = self.udpSocket(), self.udpSocket()
        pidfile, logfile = self.path("client.pid"), self.path("client.log")
        self.startServer(serverUDP, tcp)

        result = self.command(
            TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}",
            *self.clientCommand(tcp, clientUDP, pop.getsockname()[1]),
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        with open(pidfile) as f:
            pid = int(f.read().strip())
        self.addCleanup(self.killDaemon, pid)
        self.assertTrue(isAlive(pid))

        self.assertRelays(app, pop, serverUDP, clientUDP)

        os.kill(pid, signal.SIGTERM)
        waitFor(lambda: not isAlive(pid), "the daemon to exit", 10)
        waitFor(lambda: not os.path.exists(pidfile), "the pidfile to go", 10)
        with open(logfile) as f:
            self.assertIn("tunnel stopped", f.read())

    def test_busyPort(self) -> None:
        """
        A daemon that cannot bind its port makes the command fail with
        status 1 and the reason (twistd passes the parent the first 100
        bytes of the exception), not a traceback, and leaves no pidfile.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        pidfile = self.path("server.pid")

        result = self.command(
            TWISTD, f"--pidfile={pidfile}", f"--logfile={self.path('server.log')}",
            "udptunnel", "server",
            "--udp", f"127.0.0.1:{port}",
            "--tcp", f"tcp:{freePort()}:interface=127.0.0.1",
        )

        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", output)
        self.assertNotIn("Traceback", output)
        # twistd's child reports the error to the parent before it removes
        # the pidfile: the parent may exit first.
        waitFor(lambda: not os.path.exists(pidfile), "the daemon to remove its pidfile", 10)


class ReconnectTests(TwistdTestCase):
    """
    The client waits for its server as long as it takes.
    """

    def test_clientWaitsForServer(self) -> None:
        """
        A client started before its server keeps running and says why it
        cannot connect, retrying; once the server is up, traffic flows.
        """
        serverUDP, tcp, clientUDP = (
            freePort(socket.SOCK_DGRAM), freePort(), freePort(socket.SOCK_DGRAM)
        )
        pop, app = self.udpSocket(), self.udpSocket()
        client = self.spawn(
            "client",
            TWISTD, "-n", "--pidfile=",
            *self.clientCommand(tcp, clientUDP, pop.getsockname()[1]),
        )

        # Three failed attempts: the first, and retries after ~0.5 s and ~1 s.
        self.waitForOutput(client, "cannot connect", count=3)
        self.assertIsNone(client.poll())
        self.startServer(serverUDP, tcp)

        # The next retry comes up to ~5 s (4 s + 20%) after the third.
        self.assertRelays(app, pop, serverUDP, clientUDP, timeout=TIMEOUT + 10)


class TwistTests(TwistdTestCase):
    """
    The plugin runs under the newer C{twist} runner as well.
    """

    def test_twistServer(self) -> None:
        """
        C{twist udptunnel server} (which never calls
        C{privilegedStartService}) binds and relays like C{twistd}, and
        stops cleanly on SIGTERM.
        """
        serverUDP, tcp, clientUDP = (
            freePort(socket.SOCK_DGRAM), freePort(), freePort(socket.SOCK_DGRAM)
        )
        pop, app = self.udpSocket(), self.udpSocket()
        server = self.startServer(serverUDP, tcp, runner=TWIST)
        self.spawn(
            "client",
            TWISTD, "-n", "--pidfile=",
            *self.clientCommand(tcp, clientUDP, pop.getsockname()[1]),
        )

        self.assertRelays(app, pop, serverUDP, clientUDP)

        self.assertIn(self.stop(server), STOPPED_BY_SIGTERM, self.output(server))
        self.assertIn("tunnel stopped", self.output(server))


class BadCommandLineTests(TwistdTestCase):
    """
    Mistakes on the command line end C{twistd -n} with status 1 and a
    one-line reason as the last line of output, never a traceback.
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

    def test_missingTCP(self) -> None:
        """
        Each end needs --tcp.
        """
        self.assertRefused(["--tcp is required"], "server", "--udp", "127.0.0.1:0")

    def test_unknownOption(self) -> None:
        """
        An unknown option is named.
        """
        self.assertRefused(
            ["--frobnicate"],
            "server", "--tcp", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0",
            "--frobnicate",
        )

    def test_udpPortOutOfRange(self) -> None:
        """
        A port past 65535 is refused before anything is bound.
        """
        self.assertRefused(
            ["--udp", "70000"],
            "server", "--tcp", "tcp:0:interface=127.0.0.1", "--udp", "70000",
        )

    def test_unresolvablePeer(self) -> None:
        """
        A peer whose name does not resolve is a usage error at start-up,
        not a silent drop of every datagram later.
        """
        self.assertRefused(
            ["--peer", "nonexistent.invalid"],
            "client", "--tcp", f"127.0.0.1:{freePort()}", "--udp", "127.0.0.1:0",
            "--peer", "nonexistent.invalid:53",
        )

    def test_unbracketedIPv6Peer(self) -> None:
        """
        C{::1:53} is ambiguous; the message says to use brackets.
        """
        self.assertRefused(
            ["--peer", "brackets"],
            "client", "--tcp", f"127.0.0.1:{freePort()}", "--udp", "127.0.0.1:0",
            "--peer", "::1:53",
        )

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
