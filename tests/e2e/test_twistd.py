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
import signal
import socket

from tests.support.net import TIMEOUT, freePort, waitFor
from tests.support.processes import (
    EXAMPLE,
    STOPPED_BY_SIGTERM,
    TWIST,
    TWISTD,
    TwistdTestCase,
    isAlive,
)
from udptunnel import __version__


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

        # Two failed attempts: the first, and a retry ~0.5 s later.
        self.waitForOutput(client, "cannot connect", count=2)
        self.assertIsNone(client.poll())
        self.startServer(serverUDP, tcp)

        # The next retry comes ~1 s (+/- 20%) after the second; or, if the
        # server was slow to start, ~2 s after a third.
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


class TwistdVersionTests(TwistdTestCase):
    def test_installedTwistd(self) -> None:
        """
        C{twistd udptunnel --version}, alone or after C{server} or C{client},
        prints only C{udptunnel} and the package's version, with status 0.
        """
        for argv in ([], ["server"], ["client"]):
            result = self.command(TWISTD, "udptunnel", *argv, "--version")
            self.assertEqual((result.returncode, result.stdout),
                             (0, f"udptunnel {__version__}\n"), argv)



