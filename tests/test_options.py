"""
The command line: every option, every error, and the services it wires.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile

from twisted.application.internet import (
    ClientService,
    StreamServerEndpointService,
)
from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from udptunnel import StartupError
from udptunnel.addresses import HostPort, UDPPlan
from udptunnel.datagram import UDPService
from udptunnel.logreopen import LogReopener
from udptunnel.relay import Relay
from udptunnel.sockopts import SocketSettings
from udptunnel.tap import EXAMPLE, Options, makeService

from .certs import Authority


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class ServerOptionsTests(SynchronousTestCase):
    def test_barePortNormalised(self) -> None:
        """
        A bare port is no endpoint description; it means all interfaces.
        """
        options = parse("server", "--tcp", "9999", "--udp", "5073")
        self.assertEqual(options.subCommand, "server")
        self.assertEqual(options.subOptions["tcp"], "tcp:9999")
        self.assertEqual(options.subOptions["plan"], UDPPlan("0.0.0.0", 5073, None))

    def test_endpointDescriptionKept(self) -> None:
        options = parse("server", "--tcp", "tcp:9999:interface=127.0.0.1", "--udp", "5073")
        self.assertEqual(options.subOptions["tcp"], "tcp:9999:interface=127.0.0.1")

    def test_udpWithHost(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "127.0.0.1:5073")
        self.assertEqual(options.subOptions["plan"], UDPPlan("127.0.0.1", 5073, None))

    def test_udpIPv6(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "[::1]:5073")
        self.assertEqual(options.subOptions["plan"], UDPPlan("::1", 5073, None))

    def test_peerGivesEphemeralUDP(self) -> None:
        options = parse("server", "--tcp", "9999", "--peer", "127.0.0.1:5072")
        self.assertEqual(
            options.subOptions["plan"], UDPPlan("0.0.0.0", 0, ("127.0.0.1", 5072))
        )

    def test_ipv6PeerBindsIPv6Wildcard(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "5073", "--peer", "[::1]:5072")
        self.assertEqual(options.subOptions["plan"], UDPPlan("::", 5073, ("::1", 5072)))

    def test_peerNameResolved(self) -> None:
        """
        UDP sockets take IP literals only: a name is resolved at start-up.
        """
        options = parse("server", "--tcp", "9999", "--udp", "127.0.0.1:5073", "--peer", "localhost:5072")
        self.assertEqual(options.subOptions["plan"].peer, ("127.0.0.1", 5072))


class ClientOptionsTests(SynchronousTestCase):
    def test_hostPort(self) -> None:
        options = parse("client", "--tcp", "natbox.example:9999", "--udp", "34559")
        self.assertEqual(options.subOptions["tcp"], HostPort("natbox.example", 9999))

    def test_ipv6HostPort(self) -> None:
        options = parse("client", "--tcp", "[2001:db8::1]:9999", "--udp", "34559")
        self.assertEqual(options.subOptions["tcp"], HostPort("2001:db8::1", 9999))

    def test_endpointDescription(self) -> None:
        for description in ("tcp:host=127.0.0.1:port=9999", "unix:/run/tunnel.sock"):
            options = parse("client", "--tcp", description, "--udp", "34559")
            self.assertEqual(options.subOptions["tcp"], description)

    def test_seedCommandLine(self) -> None:
        options = parse("client", "--tcp", "natbox:9999", "--udp", "34559", "--peer", "127.0.0.1:5072")
        self.assertEqual(options.subOptions["tcp"], HostPort("natbox", 9999))
        self.assertEqual(
            options.subOptions["plan"], UDPPlan("0.0.0.0", 34559, ("127.0.0.1", 5072))
        )


class ErrorTests(SynchronousTestCase):
    """
    Each mistake is a L{usage.UsageError}, which twistd shows with the usage
    text and exit status 1.
    """

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, *argv)
        self.assertIn(fragment, str(error))

    def test_noSubcommand(self) -> None:
        self.assertUsageError("server or client")

    def test_missingTCP(self) -> None:
        self.assertUsageError("--tcp is required", "server", "--udp", "5073")
        self.assertUsageError("--tcp is required", "client", "--udp", "5073")

    def test_missingUDPAndPeer(self) -> None:
        self.assertUsageError("--udp is required unless --peer", "server", "--tcp", "9999")

    def test_unknownOption(self) -> None:
        self.assertUsageError("--nope", "server", "--tcp", "9999", "--udp", "1", "--nope")

    def test_portOutOfRange(self) -> None:
        self.assertUsageError("--udp: port must be", "server", "--tcp", "9999", "--udp", "70000")
        self.assertUsageError("--peer: port must be", "server", "--tcp", "9999", "--peer", "127.0.0.1:0")
        self.assertUsageError("--tcp: port must be", "client", "--tcp", "host:65536", "--udp", "1")

    def test_malformedAddresses(self) -> None:
        self.assertUsageError("--udp", "server", "--tcp", "9999", "--udp", "x:y:z")
        self.assertUsageError("--peer", "server", "--tcp", "9999", "--peer", "nohost")
        self.assertUsageError("--peer: [bogus] is not an IPv6", "server", "--tcp", "9999", "--peer", "[bogus]:53")

    def test_unbracketedIPv6(self) -> None:
        self.assertUsageError("brackets", "server", "--tcp", "9999", "--peer", "::1:53")
        self.assertUsageError("brackets", "client", "--tcp", "::1:9999", "--udp", "1")

    def test_unresolvablePeer(self) -> None:
        self.assertUsageError(
            "cannot resolve", "server", "--tcp", "9999", "--peer", "nonexistent.invalid:53"
        )

    def test_peerFamilyMismatch(self) -> None:
        self.assertUsageError(
            "IPv6", "server", "--tcp", "9999", "--udp", "[::1]:5073", "--peer", "127.0.0.1:53"
        )

    def test_badServerEndpoint(self) -> None:
        self.assertUsageError("--tcp: bad server endpoint", "server", "--tcp", "bogus:1", "--udp", "1")

    def test_badClientEndpoint(self) -> None:
        self.assertUsageError("--tcp", "client", "--tcp", "tcp:onlyhost", "--udp", "1")


class HelpTests(SynchronousTestCase):
    def test_everyUsageShowsExample(self) -> None:
        for argv in ([], ["server", "--tcp", "9999"], ["client", "--tcp", "h:1"]):
            options = Options()
            if argv:
                options.parseOptions(argv + ["--udp", "1"])
                text = options.subOptions.getUsage()
            else:
                text = options.getUsage()
            self.assertIn(EXAMPLE, text)
            self.assertEqual(text.count(EXAMPLE), 1)

    def test_everyOptionDocumented(self) -> None:
        for name in ("server", "client"):
            options = parse(name, "--tcp", "9999" if name == "server" else "h:1", "--udp", "1")
            text = options.subOptions.getUsage()
            for flag in ("--tcp=", "--udp=", "--peer="):
                self.assertIn(flag, text)


class MakeServiceTests(SynchronousTestCase):
    def test_server(self) -> None:
        relay = makeService(parse("server", "--tcp", "9999", "--udp", "5073"), reactor)
        self.assertIsInstance(relay, Relay)
        udp, tcp = list(relay)
        self.assertIsInstance(udp, UDPService)
        self.assertIsInstance(tcp, StreamServerEndpointService)

    def test_client(self) -> None:
        relay = makeService(
            parse("client", "--tcp", "127.0.0.1:9999", "--peer", "127.0.0.1:5072"), reactor
        )
        udp, tcp = list(relay)
        self.assertIsInstance(udp, UDPService)
        self.assertIsInstance(tcp, ClientService)
        self.assertEqual(relay.udpPeer, ("127.0.0.1", 5072))

    def test_busyPortIsOneLineError(self) -> None:
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


class HardeningOptionsTests(SynchronousTestCase):
    BASE = ("server", "--tcp", "9999", "--udp", "5073")

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, *argv)
        self.assertIn(fragment, str(error))

    def test_defaults(self) -> None:
        end = parse(*self.BASE).subOptions
        self.assertEqual(end["settings"], SocketSettings())
        self.assertEqual(end["allow"], [])
        self.assertEqual(end["udp-allow"], [])
        self.assertEqual(end["idle-timeout"], 0)
        self.assertEqual(end["stats-interval"], 300)
        self.assertIsNone(end["metrics"])
        self.assertIsNone(end["credentials"])

    def test_socketSettings(self) -> None:
        end = parse(
            *self.BASE,
            "--udp-rcvbuf", "4194304", "--udp-sndbuf", "0",
            "--tcp-rcvbuf", "65536", "--tcp-sndbuf", "131072",
            "--keepalive-idle", "5", "--keepalive-interval", "2",
            "--keepalive-count", "3", "--user-timeout", "11.5",
        ).subOptions
        self.assertEqual(
            end["settings"],
            SocketSettings(4194304, 0, 65536, 131072, 5, 2, 3, 11.5),
        )

    def test_badNumbers(self) -> None:
        self.assertUsageError("whole number", *self.BASE, "--udp-rcvbuf", "-1")
        self.assertUsageError("whole number", *self.BASE, "--keepalive-count", "many")
        self.assertUsageError("seconds", *self.BASE, "--idle-timeout", "-5")
        self.assertUsageError("seconds", *self.BASE, "--stats-interval", "soon")

    def test_allowRepeatable(self) -> None:
        end = parse(*self.BASE, "--allow", "192.0.2.0/24", "--allow", "2001:db8::1").subOptions
        self.assertEqual([str(n) for n in end["allow"]], ["192.0.2.0/24", "2001:db8::1/128"])

    def test_badCIDR(self) -> None:
        self.assertUsageError("--allow: '10.0.0.0/33'", *self.BASE, "--allow", "10.0.0.0/33")
        self.assertUsageError("--udp-allow: 'nope'", *self.BASE, "--udp-allow", "nope")

    def test_allowIsServerOnly(self) -> None:
        self.assertUsageError("--allow", "client", "--tcp", "h:1", "--udp", "1", "--allow", "::/0")

    def test_udpAllowOnlyInPhantomMode(self) -> None:
        self.assertUsageError(
            "phantom", *self.BASE, "--peer", "127.0.0.1:1", "--udp-allow", "127.0.0.0/8"
        )

    def test_metricsEndpoint(self) -> None:
        end = parse(*self.BASE, "--metrics", "9100").subOptions
        self.assertEqual(end["metrics"], "tcp:9100")
        self.assertUsageError("--metrics: bad server endpoint", *self.BASE, "--metrics", "x:1")

    def test_tlsNeedsAllThree(self) -> None:
        self.assertUsageError("all three", *self.BASE, "--tls-cert", "a.pem")

    def test_tlsFilesChecked(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        cert, key = authority.issue("server")
        self.assertUsageError(
            "cannot read certificate",
            *self.BASE, "--tls-cert", cert + ".missing", "--tls-key", key,
            "--tls-ca", authority.path,
        )
        self.assertUsageError(
            "not a PEM certificate and its key",
            *self.BASE, "--tls-cert", authority.path, "--tls-key", authority.path,
            "--tls-ca", authority.path,
        )
        end = parse(
            *self.BASE, "--tls-cert", cert, "--tls-key", key, "--tls-ca", authority.path
        ).subOptions
        self.assertIsNotNone(end["credentials"])

    def test_clientTLSName(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        cert, key = authority.issue("client")
        tls = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", authority.path)
        end = parse("client", "--tcp", "natbox:9999", "--udp", "1", *tls).subOptions
        self.assertEqual(end["tls-name"], "natbox")
        self.assertUsageError(
            "--tls-name", "client", "--tcp", "tcp:host=natbox:port=9999", "--udp", "1", *tls
        )


class HardeningWiringTests(SynchronousTestCase):
    def test_metricsServiceAdded(self) -> None:
        relay = makeService(
            parse("server", "--tcp", "9999", "--udp", "1", "--metrics", "tcp:0"), reactor
        )
        self.assertEqual(len(list(relay)), 3)

    def test_logReopenerOnlyForDaemonLogFile(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "1")
        options.parent = {"nodaemon": False, "logfile": "twistd.log"}  # type: ignore[assignment]
        self.assertTrue(any(isinstance(s, LogReopener) for s in makeService(options, reactor)))
        options.parent = {"nodaemon": True, "logfile": "twistd.log"}  # type: ignore[assignment]
        self.assertFalse(any(isinstance(s, LogReopener) for s in makeService(options, reactor)))


class OptionalTLSTests(SynchronousTestCase):
    def test_missingPyOpenSSLIsAUsageError(self) -> None:
        """
        TLS is an optional extra: without it, TLS options say what to install.
        """
        import udptunnel.tls

        sys.modules["udptunnel.tls"] = None  # type: ignore[assignment]
        self.addCleanup(sys.modules.__setitem__, "udptunnel.tls", udptunnel.tls)
        error = self.assertRaises(
            usage.UsageError, parse, "server", "--tcp", "9999", "--udp", "1",
            "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a",
        )
        self.assertIn("pip install 'udptunnel[tls]'", str(error))
