"""
C{--reuse-port}: several workers share a server's TCP port or a client's
UDP port, each with sessions of its own.

The unit tests bind real loopback sockets (the kernel is what admits a
socket into a C{SO_REUSEPORT} group); the end-to-end tests run two workers
of each end under the installed C{twistd}, as README.rst says, with many
applications at once.
"""

from __future__ import annotations

import select
import subprocess

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, ServerFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_faults import LOCAL
from tests.test_sessions_e2e import APPS, SessionsTestCase, exchange
from tests.test_twistd import TIMEOUT, TWISTD, freePort, lastLine, waitFor
from udptunnel import tap
from udptunnel._twisted import reuseport
from udptunnel.link.listening import ReusePortReactor
from udptunnel.udp.port import DatagramSocket
from udptunnel.udp.service import UDPService


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


SERVER = ("server", "--sessions", "--tcp", f"tcp:9999:interface={LOCAL}",
          "--peer", f"{LOCAL}:53")
CLIENT = ("client", "--sessions", "--tcp", f"{LOCAL}:9999", "--udp", f"{LOCAL}:5353")


class OptionsTests(SynchronousTestCase):
    """
    C{--reuse-port} is for sessions, on a port that can be shared, and wires
    the sharing sockets.
    """

    def test_singleLinkRefused(self) -> None:
        """
        One link cannot be shared by processes: without C{--sessions} the
        option is a usage error naming both.
        """
        for argv in (("server", "--tcp", "9999", "--udp", "5073"),
                     ("client", "--tcp", f"{LOCAL}:9999", "--udp", "5073",
                      "--peer", f"{LOCAL}:53")):
            error = self.assertRaises(tap.usage.UsageError, parse, *argv, "--reuse-port")
            self.assertIn("--reuse-port is for --sessions", str(error))

    def test_serverNeedsTCP(self) -> None:
        """
        A server's shared port is a TCP one: a Unix socket is refused.
        """
        argv = ("server", "--sessions", "--tcp", "unix:/tmp/u.sock", "--peer", f"{LOCAL}:53")
        error = self.assertRaises(tap.usage.UsageError, parse, *argv, "--reuse-port")
        self.assertIn("needs a TCP --tcp", str(error))

    def test_clientNeedsAPort(self) -> None:
        """
        A client shares its C{--udp} port: an ephemeral one is refused.
        """
        argv = ("client", "--sessions", "--tcp", f"{LOCAL}:9999", "--udp", f"{LOCAL}:0")
        error = self.assertRaises(tap.usage.UsageError, parse, *argv, "--reuse-port")
        self.assertIn("give it a port", str(error))

    def test_clientWiring(self) -> None:
        """
        A client with C{--reuse-port} binds its UDP socket as a member of
        the port's group; without, alone.
        """
        shared = [s for s in tap.makeService(parse(*CLIENT, "--reuse-port"), reactor)
                  if isinstance(s, UDPService)]
        self.assertEqual([s.reusePort for s in shared], [True])
        plain = [s for s in tap.makeService(parse(*CLIENT), reactor)
                 if isinstance(s, UDPService)]
        self.assertEqual([s.reusePort for s in plain], [False])

    def test_serverWiring(self) -> None:
        """
        A server with C{--reuse-port} listens through a L{ReusePortReactor};
        without, through the reactor itself.
        """
        def listenerReactor(options: tap.Options) -> object:
            listeners = [s for s in tap.makeService(options, reactor)
                         if isinstance(s, StreamServerEndpointService)]
            self.assertEqual(len(listeners), 1)
            return listeners[0].endpoint._endpoint._reactor  # type: ignore[attr-defined]

        self.assertIsInstance(listenerReactor(parse(*SERVER, "--reuse-port")), ReusePortReactor)
        self.assertIs(listenerReactor(parse(*SERVER)), reactor)


class SharedPortTests(TestCase):
    """
    The ports themselves, on loopback: the kernel lets members of a group
    bind one port, and nobody else.
    """

    def udpPort(self, port: int, shared: bool) -> DatagramSocket:
        service = UDPService(port, DatagramProtocol(), LOCAL, reactor, reusePort=shared)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.port is not None
        return service.port

    def test_udpShared(self) -> None:
        """
        Two L{UDPService}s with C{reusePort} bind the same UDP port; a
        plain one cannot join them, and says why as Twisted would.
        """
        first = self.udpPort(0, shared=True)
        port = first.getHost().port
        second = self.udpPort(port, shared=True)
        self.assertEqual(second.getHost().port, port)
        self.assertRaises(CannotListenError, self.udpPort, port, False)

    def test_udpPlainNotShared(self) -> None:
        """
        Without the option the kernel refuses a second bind: what makes the
        test above mean something.
        """
        port = self.udpPort(0, shared=False).getHost().port
        self.assertRaises(CannotListenError, self.udpPort, port, True)

    def test_tcpShared(self) -> None:
        """
        L{ReusePortReactor.listenTCP} makes ports that listen on one TCP
        port together; the reactor's own cannot.  Both ways: through
        Twisted's public C{makeBinding}, and through the fallback for a
        Twisted without it.
        """
        for public in (True, False):
            if not public:
                self.patch(reuseport, "_makeBinding", None)
            shared = ReusePortReactor(reactor)
            first = shared.listenTCP(0, ServerFactory(), interface=LOCAL)
            self.addCleanup(first.stopListening)
            port = first.getHost().port
            second = shared.listenTCP(port, ServerFactory(), interface=LOCAL)
            self.addCleanup(second.stopListening)
            self.assertEqual(second.getHost().port, port)
            self.assertEqual(isinstance(second, reuseport._ReusePortTCPPort), not public)
            self.assertRaises(CannotListenError, reactor.listenTCP, port, ServerFactory(),
                              interface=LOCAL)

    def test_reactorDelegates(self) -> None:
        """
        Everything but C{listenTCP} is the reactor's.
        """
        self.assertEqual(ReusePortReactor(reactor).callLater, reactor.callLater)


class WorkersTests(SessionsTestCase):
    """
    Two workers of each end, as README.rst shows: servers sharing the TCP
    port, clients sharing the UDP port the applications send to.
    """

    def worker(self, end: str, index: int, metricsPort: int) -> subprocess.Popen[bytes]:
        if end == "server":
            argv = ["server", "--sessions", "--reuse-port",
                    "--tcp", f"tcp:{self.tcp}:interface={LOCAL}",
                    "--peer", f"{LOCAL}:{self.echo.port}"]
            ready = "listening for the TCP link on"
        else:
            argv = ["client", "--sessions", "--reuse-port", "--tcp", f"{LOCAL}:{self.tcp}",
                    "--udp", f"{LOCAL}:{self.clientUDP}"]
            ready = "UDP bound on"
        process = self.spawn(f"{end}{index}", TWISTD, "-n", "--pidfile=", "udptunnel", *argv,
                             "--metrics", f"tcp:{metricsPort}:interface={LOCAL}")
        self.waitForOutput(process, ready)
        self.waitForOutput(process, "serving metrics on")
        return process

    def test_eachReplyToItsApplication(self) -> None:
        """
        L{APPS} applications, each from its own port, do three rounds of
        request and reply at once through two client workers and two server
        workers: every one gets its own reply each round, and nothing else.
        Each end's sessions add up to one per application, and each worker
        has some (the kernel spread them: with 50 sources, all on one worker
        has a chance of 2 in 2**50).
        """
        metrics = {(end, i): freePort() for end in ("server", "client") for i in (1, 2)}
        processes = [self.worker(end, i, port) for (end, i), port in metrics.items()]
        apps = self.apps(APPS)
        for round in range(3):
            self.assertOwnReplies(exchange(apps, self.entry, round, TIMEOUT), round)
        # Each worker answers from the shared address and port, the one
        # each application sent to (a connected application accepts no other).
        sources = set()
        for app in apps:
            app.sendto(b"from where?", self.entry)
            ready, _, _ = select.select([app], [], [], TIMEOUT)
            self.assertTrue(ready, "no reply")
            sources.add(app.recvfrom(65535)[1])
        self.assertEqual(sources, {self.entry})
        for end in ("server", "client"):
            def counts(end: str = end) -> list[float | None]:
                return [self.sessions(metrics[end, i]) for i in (1, 2)]

            waitFor(lambda: sum(c or 0 for c in counts()) == APPS,
                    f"{APPS} {end} sessions in all (last: {counts()})")
            self.assertTrue(all(counts()), f"a {end} worker with no session: {counts()}")
        self.assertSurvived(*processes)

    def test_workerWithoutTheOption(self) -> None:
        """
        A client started without C{--reuse-port} on a worker's port cannot
        bind it: status 1 and one line saying so, no traceback.
        """
        self.worker("client", 1, freePort())
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "udptunnel", "client", "--sessions",
             "--tcp", f"{LOCAL}:{self.tcp}", "--udp", f"{LOCAL}:{self.clientUDP}"],
            check=False, cwd=self.directory, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertNotIn("Traceback", result.stdout)
        self.assertIn(str(self.clientUDP), lastLine(result.stdout))

