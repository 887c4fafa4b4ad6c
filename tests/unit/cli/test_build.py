"""
L{udptunnel.cli.build}: configuration into services: what each option wires,
the lean dispatch or plain Twisted, the sessions server's backlog.
"""

from __future__ import annotations

import socket

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from tests.support.options import Runner, parse
from udptunnel import StartupError, tap
from udptunnel.cli.settings import SESSIONS_BACKLOG
from udptunnel.cli.speedups import LeanDispatch
from udptunnel.link.protocol import TunnelFactory
from udptunnel.ops.logreopen import LogReopener
from udptunnel.tap import (
    makeService,
)
from udptunnel.tunnel.reconnect import Reconnector
from udptunnel.tunnel.single import Relay
from udptunnel.udp.service import UDPService


class MakeServiceTests(SynchronousTestCase):
    """
    What L{makeService} builds of a command line, and how a busy port fails
    its start.
    """

    def test_server(self) -> None:
        """
        A server is a L{Relay} whose children are its UDP socket's service and
        its TCP listener's.
        """
        relay = makeService(parse("server", "--tcp", "9999", "--udp", "5073"), reactor)
        self.assertIsInstance(relay, Relay)
        udp, tcp = list(relay)
        self.assertIsInstance(udp, UDPService)
        self.assertIsInstance(tcp, StreamServerEndpointService)

    def test_client(self) -> None:
        """
        A client is a L{Relay} whose children are its UDP socket's service and a
        L{Reconnector}, which the relay tells when a link ends; datagrams out of
        the tunnel go to C{--peer}.
        """
        relay = makeService(
            parse("client", "--tcp", "127.0.0.1:9999", "--peer", "127.0.0.1:5072"), reactor
        )
        udp, tcp = list(relay)
        self.assertIsInstance(udp, UDPService)
        self.assertIsInstance(tcp, Reconnector)
        self.assertEqual(relay.onLinkEnded, tcp.linkEnded)
        self.assertEqual(relay.udpPeer, ("127.0.0.1", 5072))

    def test_busyPortIsOneLineError(self) -> None:
        """
        A UDP port that is taken fails the start with a L{StartupError} of one
        line, which names the address.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        options = parse("server", "--tcp", "tcp:0:interface=127.0.0.1", "--udp", f"127.0.0.1:{port}")
        error = self.assertRaises(StartupError, makeService(options, reactor).privilegedStartService)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", str(error))
        self.assertNotIn("\n", str(error))

    def test_busyPortInForegroundExits(self) -> None:
        """
        twistd -n and twist would print a traceback for an exception; a
        L{SystemExit} prints just the message.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        options = parse("server", "--tcp", "tcp:0:interface=127.0.0.1", "--udp", f"127.0.0.1:{port}")
        options.parent = {"nodaemon": True}  # type: ignore[assignment]
        error = self.assertRaises(SystemExit, makeService(options, reactor).startService)
        self.assertIn("udptunnel: cannot start", str(error))


class HardeningWiringTests(SynchronousTestCase):
    """
    What the hardening options add to a tunnel's services.
    """

    def test_metricsServiceAdded(self) -> None:
        """
        C{--metrics} gives the relay a third child: the metrics listener.
        """
        relay = makeService(
            parse("server", "--tcp", "9999", "--udp", "1", "--metrics", "tcp:0"), reactor
        )
        self.assertEqual(len(list(relay)), 3)

    def test_logReopenerUnderEveryRunner(self) -> None:
        """
        Under a runner, whatever it logs to (a log file given or its
        default, standard output), SIGHUP is handled; parsed on its own (as
        here), nothing takes the process's signal.
        """
        options = parse("server", "--tcp", "9999", "--udp", "1")
        self.assertFalse(any(isinstance(s, LogReopener) for s in makeService(options, reactor)))
        for parent in ({"nodaemon": False, "logfile": "twistd.log"},
                       {"nodaemon": False, "logfile": None},
                       {"nodaemon": True, "logfile": None}):
            options.parent = parent  # type: ignore[assignment]
            services = makeService(options, reactor)
            self.assertTrue(any(isinstance(s, LogReopener) for s in services), parent)


class PlainTwistedTests(SynchronousTestCase):
    """
    C{--plain-twisted}: the tunnel on Twisted's public API alone.
    """

    def services(self, *more: str) -> tuple[list[object], TunnelFactory]:
        """
        The top services under a runner (where the lean dispatch would be
        installed), and the factory of the server's connections.
        """
        options = parse("server", "--tcp", "9999", "--udp", "1", *more)
        options.parent = Runner()  # type: ignore[assignment]
        top = makeService(options, reactor)
        listener = next(s for s in top if isinstance(s, StreamServerEndpointService))
        return list(top), listener.factory  # type: ignore[attr-defined]

    def test_speedupsByDefault(self) -> None:
        """
        By default, under a runner, the lean event dispatch is installed and the
        links write through to the socket.
        """
        services, factory = self.services()
        self.assertTrue(any(isinstance(s, LeanDispatch) for s in services))
        self.assertTrue(factory.writeThrough)

    def test_plain(self) -> None:
        """
        With C{--plain-twisted}, neither: no L{LeanDispatch}, and the links
        write with C{transport.write}.
        """
        services, factory = self.services("--plain-twisted")
        self.assertFalse(any(isinstance(s, LeanDispatch) for s in services))
        self.assertFalse(factory.writeThrough)


class SessionsBacklogTests(SynchronousTestCase):
    """
    A server with sessions listens with a deep backlog, unless told.
    """

    def parse(self, tcp: str) -> str:
        options = tap.Options()
        options.parseOptions(["server", "--sessions", "--tcp", tcp, "--peer", "127.0.0.1:53"])
        return options.subOptions.config.tcp

    def test_barePort(self) -> None:
        """
        A bare port listens with a backlog of L{SESSIONS_BACKLOG}: on C{::} where
        the host has IPv6, on IPv4 where not.
        """
        from udptunnel.link import listening

        self.patch(listening, "hasIPv6", lambda: False)
        self.assertEqual(self.parse("9999"), f"tcp:9999:backlog={SESSIONS_BACKLOG}")
        self.patch(listening, "hasIPv6", lambda: True)
        self.assertEqual(self.parse("9999"),
                         f"tcp6:9999:interface=\\:\\::backlog={SESSIONS_BACKLOG}")

    def test_ownBacklogKept(self) -> None:
        """
        A description that gives a backlog of its own keeps it.
        """
        self.assertEqual(self.parse("tcp:9999:backlog=10"), "tcp:9999:backlog=10")

    def test_unixUntouched(self) -> None:
        """
        A Unix socket's description is left as given: no backlog added.
        """
        self.assertEqual(self.parse("unix:/tmp/u.sock"), "unix:/tmp/u.sock")
