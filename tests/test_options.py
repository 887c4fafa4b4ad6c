"""
The command line: every option, every error, and the services it wires.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from udptunnel import StartupError, sockopts, tap
from udptunnel.cli.addresses import HostPort, UDPPlan, splitDescription
from udptunnel.cli.build import _connectTimeout
from udptunnel.cli.schema import OPTIONS
from udptunnel.cli.settings import SESSIONS_BACKLOG
from udptunnel.cli.speedups import LeanDispatch
from udptunnel.cli.values import reach, secondsUpTo, wholeFrom
from udptunnel.link.protocol import TunnelFactory
from udptunnel.ops.logreopen import LogReopener
from udptunnel.sockopts import MAX_USER_TIMEOUT, SocketSettings, checkSettings
from udptunnel.tap import (
    EXAMPLE,
    Options,
    RunOptions,
    ServerOptions,
    makeService,
)
from udptunnel.tunnel.reconnect import Reconnector
from udptunnel.tunnel.single import Relay
from udptunnel.udp.service import UDPService

from .certs import Authority


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class ServerOptionsTests(SynchronousTestCase):
    def test_barePortNormalised(self) -> None:
        """
        A bare port is no endpoint description; it means all interfaces:
        IPv6 and IPv4 on C{::} where the host has IPv6, IPv4 where not.
        """
        from udptunnel.link import listening

        self.patch(listening, "hasIPv6", lambda: True)
        options = parse("server", "--tcp", "9999", "--udp", "5073")
        self.assertEqual(options.subCommand, "server")
        self.assertEqual(options.subOptions.config.tcp, "tcp6:9999:interface=\\:\\:")
        self.assertEqual(options.subOptions.config.udp, UDPPlan("0.0.0.0", 5073, None))
        self.patch(listening, "hasIPv6", lambda: False)
        options = parse("server", "--tcp", "9999", "--udp", "5073")
        self.assertEqual(options.subOptions.config.tcp, "tcp:9999")

    def test_endpointDescriptionKept(self) -> None:
        options = parse("server", "--tcp", "tcp:9999:interface=127.0.0.1", "--udp", "5073")
        self.assertEqual(options.subOptions.config.tcp, "tcp:9999:interface=127.0.0.1")

    def test_udpWithHost(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "127.0.0.1:5073")
        self.assertEqual(options.subOptions.config.udp, UDPPlan("127.0.0.1", 5073, None))

    def test_udpIPv6(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "[::1]:5073")
        self.assertEqual(options.subOptions.config.udp, UDPPlan("::1", 5073, None))

    def test_peerGivesEphemeralUDP(self) -> None:
        options = parse("server", "--tcp", "9999", "--peer", "127.0.0.1:5072")
        self.assertEqual(
            options.subOptions.config.udp, UDPPlan("0.0.0.0", 0, ("127.0.0.1", 5072))
        )

    def test_ipv6PeerBindsIPv6Wildcard(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "5073", "--peer", "[::1]:5072")
        self.assertEqual(options.subOptions.config.udp, UDPPlan("::", 5073, ("::1", 5072)))

    def test_peerNameResolved(self) -> None:
        """
        UDP sockets take IP literals only: a name is resolved at start-up.
        """
        options = parse("server", "--tcp", "9999", "--udp", "127.0.0.1:5073", "--peer", "localhost:5072")
        self.assertEqual(options.subOptions.config.udp.peer, ("127.0.0.1", 5072))


class ClientOptionsTests(SynchronousTestCase):
    def test_hostPort(self) -> None:
        options = parse("client", "--tcp", "natbox.example:9999", "--udp", "34559")
        self.assertEqual(options.subOptions.config.tcp, HostPort("natbox.example", 9999))

    def test_ipv6HostPort(self) -> None:
        options = parse("client", "--tcp", "[2001:db8::1]:9999", "--udp", "34559")
        self.assertEqual(options.subOptions.config.tcp, HostPort("2001:db8::1", 9999))

    def test_endpointDescription(self) -> None:
        for description in ("tcp:host=127.0.0.1:port=9999", "unix:/run/tunnel.sock"):
            options = parse("client", "--tcp", description, "--udp", "34559")
            self.assertEqual(options.subOptions.config.tcp, description)

    def test_seedCommandLine(self) -> None:
        options = parse("client", "--tcp", "natbox:9999", "--udp", "34559", "--peer", "127.0.0.1:5072")
        self.assertEqual(options.subOptions.config.tcp, HostPort("natbox", 9999))
        self.assertEqual(
            options.subOptions.config.udp, UDPPlan("0.0.0.0", 34559, ("127.0.0.1", 5072))
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
        self.assertUsageError("server, client or run")

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

    def test_endpointPortsInOurWords(self) -> None:
        """
        A port that is no number says so, not Python's C{invalid literal
        for int()}; a client endpoint without its port says how to write
        it, not which argument of a Twisted class is missing.
        """
        for argv, fragment in (
                (("server", "--tcp", "tcp:abc", "--udp", "1"), "--tcp: port must be a number"),
                (("server", "--tcp", "9999", "--udp", "1", "--metrics", "tcp:abc"),
                 "--metrics: port must be a number"),
                (("client", "--tcp", "tcp:host:abc", "--udp", "1"), "--tcp: port must be"),
                (("client", "--tcp", "tcp:abc", "--udp", "1"), "as tcp:HOST:PORT")):
            error = str(self.assertRaises(usage.UsageError, parse, *argv))
            self.assertIn(fragment, error)
            self.assertNotIn("invalid literal", error)
            self.assertNotIn("positional argument", error)

    def test_metricsOnLoopbackByDefault(self) -> None:
        """
        A bare C{--metrics} port is served on 127.0.0.1 only (the status
        lists every peer's address); an address given is served there.
        """
        base = ("server", "--tcp", "9999", "--udp", "1", "--metrics")
        for given, endpoint in (("9100", "tcp:9100:interface=127.0.0.1"),
                                ("0.0.0.0:9100", "tcp:9100:interface=0.0.0.0"),
                                ("[::]:9100", "tcp6:9100:interface=\\:\\:"),
                                ("tcp:9100", "tcp:9100")):
            self.assertEqual(parse(*base, given).subOptions.config.metrics, endpoint, given)
        self.assertUsageError("give an IP address", *base, "localhost:9100")
        self.assertUsageError("is not a port, HOST:PORT or an endpoint", *base, "nope:x")

    def test_metricsReachSaid(self) -> None:
        """
        The start-up line says who can reach the endpoint.
        """
        self.assertEqual(reach("tcp:9100:interface=127.0.0.1"), " (this host only)")
        self.assertEqual(reach("tcp6:9100:interface=\\:\\:1"), " (this host only)")
        for everyone in ("tcp:9100", "tcp:9100:interface=0.0.0.0", "tcp6:9100:interface=\\:\\:"):
            self.assertIn("every host", reach(everyone))
        self.assertEqual(reach("tcp:9100:interface=192.0.2.1"), "")
        self.assertEqual(reach("unix:/run/metrics.sock"), "")

    def test_allowWithHostBits(self) -> None:
        """
        C{10.0.0.1/8} is neither the address nor the block: refused, with
        both offered, rather than widened to the block in silence.
        """
        self.assertUsageError("give the block 10.0.0.0/8 or the address 10.0.0.1", "server",
                              "--tcp", "9999", "--udp", "1", "--allow", "10.0.0.1/8")
        self.assertUsageError("host bits", "server", "--tcp", "9999", "--udp", "1",
                              "--udp-allow", "2001:db8::1/32")
        options = parse("server", "--tcp", "9999", "--udp", "1", "--allow", "10.0.0.1",
                        "--allow", "10.0.0.0/8")
        self.assertEqual([str(n) for n in options.subOptions.config.allow],
                         ["10.0.0.1/32", "10.0.0.0/8"])


class ExactNamesTests(SynchronousTestCase):
    """
    An option is taken only under its whole name: getopt's unique prefixes
    made C{server --proxy} mean C{--proxy-protocol}.
    """

    def assertUsageError(self, fragments: tuple[str, ...], *argv: str) -> None:
        error = str(self.assertRaises(usage.UsageError, parse, *argv))
        for fragment in fragments:
            self.assertIn(fragment, error)

    def test_prefixRefused(self) -> None:
        """
        A prefix of one option is refused, naming the option it may stand
        for; and where a sibling command has an option of that name, that
        is said too.
        """
        self.assertUsageError(("unknown option --proxy", "an option of 'client'",
                               "did you mean --proxy-protocol?"),
                              "server", "--tcp", "9999", "--udp", "5073", "--proxy")
        self.assertUsageError(("unknown option --sess", "did you mean --sessions?"),
                              "client", "--tcp", "h:1", "--udp", "1", "--sess")
        self.assertUsageError(("unknown option --metric", "did you mean --metrics?"),
                              "server", "--tcp", "9999", "--udp", "5073", "--metric=9100")
        self.assertUsageError(("unknown option --conf",), "run", "--conf", "x.toml")

    def test_siblingOption(self) -> None:
        """
        An option of the other end says whose it is, not "Wrong number of
        arguments" (what getopt made of C{server --proxy URL}).
        """
        self.assertUsageError(("unknown option --proxy", "an option of 'client'"),
                              "server", "--proxy", "http://x:1", "--tcp", "9999",
                              "--udp", "5073")
        self.assertUsageError(("unknown option --allow", "an option of 'server'"),
                              "client", "--tcp", "h:1", "--udp", "1", "--allow", "10.0.0.0/8")

    def test_valuesAreNotOptions(self) -> None:
        """
        The value of an option is never taken for an option, even when it
        begins with dashes; C{--} ends the options.
        """
        from udptunnel.cli.optionnames import checkExactNames

        options = ServerOptions()
        checkExactNames(options, ["--tcp", "--prox", "--udp=1", "--", "--prox"])
        checkExactNames(options, ["--sessions", "positional", "--prox"])
        self.assertRaises(usage.UsageError, checkExactNames, options, ["--udp=1", "--prox"])

    def test_shortOptions(self) -> None:
        """
        A short option's value (the rest of its cluster, or the next
        argument) is skipped as getopt skips it.
        """
        from udptunnel.cli.optionnames import checkExactNames

        options = RunOptions()
        checkExactNames(options, ["-c", "--weird-file-name", "--check"])
        checkExactNames(options, ["-cfile.toml", "--check"])
        self.assertRaises(usage.UsageError, checkExactNames, options, ["-c", "f", "--chec"])

    def test_wholeNamesStillWork(self) -> None:
        options = parse("server", "--tcp", "9999", "--udp", "5073", "--proxy-protocol")
        self.assertTrue(options.subOptions.config.proxyProtocol)


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
        self.assertIsInstance(tcp, Reconnector)
        self.assertEqual(relay.onLinkEnded, tcp.linkEnded)
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
        self.assertEqual(end.config.settings, SocketSettings())
        self.assertEqual(end.config.allow, ())
        self.assertEqual(end.config.udpAllow, ())
        self.assertEqual(end.config.idleTimeout, 0)
        self.assertEqual(end.config.statsInterval, 300)
        self.assertIsNone(end.config.metrics)
        self.assertIsNone(end.config.credentials)

    def test_socketSettings(self) -> None:
        end = parse(
            *self.BASE,
            "--udp-rcvbuf", "4194304", "--udp-sndbuf", "0",
            "--tcp-rcvbuf", "65536", "--tcp-sndbuf", "131072",
            "--keepalive-idle", "5", "--keepalive-interval", "2",
            "--keepalive-count", "3", "--user-timeout", "11.5",
        ).subOptions
        self.assertEqual(
            end.config.settings,
            SocketSettings(4194304, 0, 65536, 131072, 5, 2, 3, 11.5),
        )

    def test_badNumbers(self) -> None:
        self.assertUsageError("whole number", *self.BASE, "--udp-rcvbuf", "-1")
        self.assertUsageError("whole number", *self.BASE, "--keepalive-count", "many")
        self.assertUsageError("seconds", *self.BASE, "--idle-timeout", "-5")
        self.assertUsageError("seconds", *self.BASE, "--stats-interval", "soon")

    def test_allowRepeatable(self) -> None:
        end = parse(*self.BASE, "--allow", "192.0.2.0/24", "--allow", "2001:db8::1").subOptions
        self.assertEqual([str(n) for n in end.config.allow], ["192.0.2.0/24", "2001:db8::1/128"])

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
        self.assertEqual(end.config.metrics, "tcp:9100:interface=127.0.0.1")
        self.assertUsageError("--metrics: bad server endpoint", *self.BASE, "--metrics",
                              "tcp:9100:backlog=many")
        self.assertUsageError("--metrics: 'x:1': give an IP address", *self.BASE,
                              "--metrics", "x:1")

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
        self.assertIsNotNone(end.config.credentials)

    def test_clientTLSName(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        cert, key = authority.issue("client")
        tls = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", authority.path)
        end = parse("client", "--tcp", "natbox:9999", "--udp", "1", *tls).subOptions
        self.assertEqual(end.config.tlsName, "natbox")
        self.assertUsageError(
            "--tls-name", "client", "--tcp", "tcp:host=natbox:port=9999", "--udp", "1", *tls
        )


class HardeningWiringTests(SynchronousTestCase):
    def test_metricsServiceAdded(self) -> None:
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
        options.parent = _Runner()  # type: ignore[assignment]
        top = makeService(options, reactor)
        listener = next(s for s in top if isinstance(s, StreamServerEndpointService))
        return list(top), listener.factory  # type: ignore[attr-defined]

    def test_speedupsByDefault(self) -> None:
        services, factory = self.services()
        self.assertTrue(any(isinstance(s, LeanDispatch) for s in services))
        self.assertTrue(factory.writeThrough)

    def test_plain(self) -> None:
        services, factory = self.services("--plain-twisted")
        self.assertFalse(any(isinstance(s, LeanDispatch) for s in services))
        self.assertFalse(factory.writeThrough)


class OptionalTLSTests(SynchronousTestCase):
    def test_missingPyOpenSSLIsAUsageError(self) -> None:
        """
        TLS is an optional extra: without it, TLS options say what to install.
        """
        import udptunnel.link.tls

        sys.modules["udptunnel.link.tls"] = None  # type: ignore[assignment]
        self.addCleanup(sys.modules.__setitem__, "udptunnel.link.tls", udptunnel.link.tls)
        error = self.assertRaises(
            usage.UsageError, parse, "server", "--tcp", "9999", "--udp", "1",
            "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a",
        )
        self.assertIn("pip install '.[tls]'", str(error))


class ValidatorTests(SynchronousTestCase):
    """
    The coercers of numeric options, alone.
    """

    def test_wholeFrom(self) -> None:
        coerce = wholeFrom(1, 127)
        self.assertEqual([coerce("1"), coerce("127")], [1, 127])
        for bad in ("0", "128", "-1", "1.5", "", "many", "99999999999"):
            error = self.assertRaises(ValueError, coerce, bad)
            self.assertIn("from 1 to 127", str(error))
            self.assertIn(repr(bad), str(error))

    def test_secondsUpTo(self) -> None:
        coerce = secondsUpTo(MAX_USER_TIMEOUT)
        self.assertEqual([coerce("0"), coerce("11.5"), coerce("2147483.647")],
                         [0, 11.5, 2147483.647])
        for bad in ("-1", "2147483.648", "3000000", "nan", "inf", "soon"):
            error = self.assertRaises(ValueError, coerce, bad)
            self.assertIn("2147483.647", str(error))

    def test_everyCheckedOptionNamed(self) -> None:
        """
        Every option whose value is checked names itself when the value is
        bad (Twisted's own coercion error says "Parameter type enforcement
        failed", naming none).
        """
        checked = []
        for end, tcp in (("server", "9999"), ("client", "h:1")):
            for option in OPTIONS:
                if end not in option.roles or option.flag or option.name in ("tcp", "udp"):
                    continue
                if option.parse is None or option.parse.__name__ == "_asIs":
                    continue
                argv = [end, "--tcp", tcp, "--udp", "1", f"--{option.name}", "-7"]
                error = self.assertRaises(usage.UsageError, parse, *argv)
                self.assertTrue(str(error).startswith(f"--{option.name}: "), str(error))
                checked.append(option.name)
        self.assertIn("keepalive-idle", checked)
        self.assertIn("stats-interval", checked)
        self.assertIn("allow", checked)


class KernelLimitTests(SynchronousTestCase):
    """
    Each numeric option takes what the kernel takes, and nothing else, at
    parse time: a value past it used to start a daemon whose every link
    failed ("Unhandled Error"), or that warned on every connection.
    """

    BASE = ("server", "--tcp", "9999", "--udp", "5073")

    def assertAccepted(self, option: str, value: str) -> None:
        parse(*self.BASE, option, value)

    def assertRefused(self, option: str, value: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, *self.BASE, option, value)
        self.assertTrue(str(error).startswith(f"{option}: "), str(error))

    def test_limits(self) -> None:
        for option, lowest, highest in [
            ("--keepalive-idle", "0", "32767"),
            ("--keepalive-interval", "1", "32767"),
            ("--keepalive-count", "1", "127"),
            ("--user-timeout", "0", "2147483.647"),
            ("--udp-rcvbuf", "0", "2147483647"),
            ("--udp-sndbuf", "0", "2147483647"),
            ("--tcp-rcvbuf", "0", "2147483647"),
            ("--tcp-sndbuf", "0", "2147483647"),
        ]:
            self.assertAccepted(option, lowest)
            self.assertAccepted(option, highest)
            self.assertRefused(option, "-1")
            self.assertRefused(option, str(float(highest) * 10))

    def test_checkedOnAScratchSocket(self) -> None:
        """
        What gets past the bounds is tried on real sockets: a value this
        kernel refuses names its option.
        """
        checkSettings(SocketSettings())
        error = self.assertRaises(ValueError, checkSettings, SocketSettings(keepaliveIdle=40000))
        self.assertIn("--keepalive-idle: the kernel refuses TCP_KEEPIDLE=40000", str(error))
        error = self.assertRaises(ValueError, checkSettings, SocketSettings(userTimeout=3e6))
        self.assertIn("--user-timeout", str(error))

    def test_refusedAtRunTimeLoggedOncePerOption(self) -> None:
        """
        Should a socket still refuse an option, the warning names it by its
        command-line name, once per process, not once per connection.
        """
        self.addCleanup(sockopts._warned.clear)
        settings = SocketSettings(keepaliveIdle=40000, keepaliveCount=500)
        with capturedLogs() as events:
            for _ in range(3):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sockopts.tuneTCP(sock, settings)
        lines = [formatEvent(event) for event in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("--keepalive-idle", lines[0])
        self.assertIn("--keepalive-count", lines[1])
        self.assertNotIn("option 4", " ".join(lines))


class UserTimeoutTests(SynchronousTestCase):
    """
    On Linux TCP_USER_TIMEOUT decides when keepalive gives up too, so unless
    given it is the keepalive's own figure.
    """

    def test_derivedFromKeepalive(self) -> None:
        self.assertEqual(SocketSettings().effectiveUserTimeout(), 15 + 10 * 4)
        settings = SocketSettings(keepaliveIdle=7, keepaliveInterval=3, keepaliveCount=2)
        self.assertEqual(settings.effectiveUserTimeout(), 7 + 3 * 2)

    def test_given(self) -> None:
        self.assertEqual(SocketSettings(userTimeout=4).effectiveUserTimeout(), 4)
        self.assertEqual(SocketSettings(userTimeout=0).effectiveUserTimeout(), 0)

    def test_withoutKeepalive(self) -> None:
        self.assertEqual(SocketSettings(keepaliveIdle=0).effectiveUserTimeout(),
                         sockopts.FALLBACK_USER_TIMEOUT)

    def test_parsed(self) -> None:
        base = ("server", "--tcp", "9999", "--udp", "5073")
        self.assertIsNone(parse(*base).subOptions.config.settings.userTimeout)
        end = parse(*base, "--keepalive-idle", "2", "--keepalive-interval", "1",
                    "--keepalive-count", "2").subOptions
        self.assertEqual(end.config.settings.effectiveUserTimeout(), 4)


class EndpointCheckTests(SynchronousTestCase):
    """
    Endpoint descriptions checked in the user's terms at parse time, not
    when Twisted binds them after the UDP socket.
    """

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, *argv)
        self.assertIn(fragment, str(error))

    def test_serverPort(self) -> None:
        for tcp in ("70000", "tcp:70000", "tcp:port=70000", "tcp6:70000:interface=\\:\\:"):
            self.assertUsageError("--tcp: port must be", "server", "--tcp", tcp, "--udp", "1")
        for tcp in ("0", "65535", "tcp:0:interface=127.0.0.1", "tcp6:port=9999"):
            parse("server", "--tcp", tcp, "--udp", "1")

    def test_metricsPort(self) -> None:
        self.assertUsageError("--metrics: port must be",
                              "server", "--tcp", "9999", "--udp", "1", "--metrics", "70000")

    def test_unixSocketDirectory(self) -> None:
        self.assertUsageError("--tcp: cannot make the socket /nonexistent/dir/s.sock",
                              "server", "--tcp", "unix:/nonexistent/dir/s.sock", "--udp", "1")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        parse("server", "--tcp", f"unix:{directory}/s.sock", "--udp", "1")
        parse("server", "--tcp", f"unix:address={directory}/s.sock:mode=600", "--udp", "1")

    def test_tlsEndpointWithoutPyOpenSSL(self) -> None:
        """
        Without pyOpenSSL, Twisted's tls: parser fails with a NameError.
        """
        for module in ("OpenSSL", "twisted.internet.ssl"):
            self.addCleanup(self.restoreModule, module, sys.modules.get(module))
            sys.modules[module] = None  # type: ignore[assignment]
        self.assertUsageError("--tcp: tls: endpoints need pyOpenSSL",
                              "client", "--tcp", "tls:natbox:9999", "--udp", "1")
        self.assertUsageError("--tcp: ssl: endpoints need pyOpenSSL",
                              "server", "--tcp", "ssl:9999", "--udp", "1")

    def restoreModule(self, name: str, module: object) -> None:
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module  # type: ignore[assignment]

    def test_splitDescription(self) -> None:
        self.assertEqual(
            splitDescription("tcp6:9999:interface=\\:\\:1:backlog=5"),
            ("tcp6", ["9999"], {"interface": "::1", "backlog": "5"}),
        )

    def test_connectTimeout(self) -> None:
        self.assertEqual(_connectTimeout(HostPort("natbox", 9999)), 30)
        self.assertEqual(_connectTimeout("tcp:host=natbox:port=9999:timeout=5"), 5)
        self.assertEqual(_connectTimeout("tls:natbox:9999"), 30)
        self.assertIsNone(_connectTimeout("tor:natbox:9999"))


class AddressFamilyTests(SynchronousTestCase):
    """
    --udp and --peer are resolved together; each error blames the option at
    fault.
    """

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, "server", "--tcp", "9999", *argv)
        self.assertIn(fragment, str(error))

    def test_udpUnresolvable(self) -> None:
        self.assertUsageError("--udp: cannot resolve", "--udp", "nosuchhost.invalid:17073")

    def test_literalsOfTwoFamilies(self) -> None:
        self.assertUsageError("--udp is IPv6 and --peer IPv4",
                              "--udp", "[::1]:1", "--peer", "127.0.0.1:2")
        self.assertUsageError("--udp is IPv4 and --peer IPv6",
                              "--udp", "127.0.0.1:1", "--peer", "[::1]:2")

    def test_nameOnlyInTheOtherFamily(self) -> None:
        """
        A peer name with IPv4 addresses only, and an IPv6 --udp.
        """
        real = socket.getaddrinfo

        def getaddrinfo(host: str, port: int, family: int = 0, *rest: object) -> object:
            if host == "v4only.example":
                if family == socket.AF_INET6:
                    raise socket.gaierror(socket.EAI_ADDRFAMILY, "no IPv6")
                return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("192.0.2.1", port))]
            return real(host, port, family, *rest)  # type: ignore[arg-type]

        self.patch(socket, "getaddrinfo", getaddrinfo)
        self.assertUsageError("--peer: 'v4only.example' has no IPv6 address, and --udp is IPv6",
                              "--udp", "[::1]:1", "--peer", "v4only.example:2")
        plan = parse("server", "--tcp", "9999", "--udp", "1",
                     "--peer", "v4only.example:2").subOptions.config.udp
        self.assertEqual(plan.peer, ("192.0.2.1", 2))


class _Runner(dict):  # type: ignore[type-arg]
    """
    Stands for twistd's options (which have C{--nodaemon}) or twist's (which
    have not): the parent of ours.
    """

    def __init__(self, twistd: bool = True) -> None:
        super().__init__(nodaemon=True) if twistd else super().__init__()
        self.subCommand = "udptunnel"


class UsageTextTests(SynchronousTestCase):
    """
    The synopsis reads as the command the user types, and a bad command line
    under a runner shows a few lines, not the whole help.
    """

    def underRunner(self, twistd: bool = True) -> Options:
        options = Options()
        options.parent = _Runner(twistd)  # type: ignore[assignment]
        return options

    def test_synopsis(self) -> None:
        options = self.underRunner()
        options.parseOptions(["server", "--tcp", "9999", "--udp", "1"])
        self.assertEqual(
            options.subOptions.getSynopsis(),
            "Usage: twistd [twistd options] udptunnel server " + ServerOptions.synopsis,
        )
        self.assertEqual(options.getSynopsis(),
                         "Usage: twistd [twistd options] udptunnel server|client|run [options]")

    def test_synopsisUnderTwist(self) -> None:
        options = self.underRunner(twistd=False)
        options.parseOptions(["client", "--tcp", "h:1", "--udp", "1"])
        self.assertTrue(options.subOptions.getSynopsis().startswith(
            "Usage: twist [twist options] udptunnel client --tcp HOST:PORT"))

    def test_usageErrorUnderRunner(self) -> None:
        """
        Status 1 (SystemExit with a message), the synopsis, where the help
        is, and the error last.
        """
        options = self.underRunner()
        exit = self.assertRaises(
            SystemExit, options.parseOptions, ["server", "--udp", "1", "--keepalive-count", "0"])
        lines = str(exit.code).splitlines()
        self.assertEqual(lines, [
            "Usage: twistd [twistd options] udptunnel server " + ServerOptions.synopsis,
            "Run 'twistd udptunnel server --help' for the options.",
            ("twistd udptunnel server: --keepalive-count: expected a whole number from 1 to "
             "127, not '0'"),
        ])

    def test_usageErrorWithoutEnd(self) -> None:
        exit = self.assertRaises(SystemExit, self.underRunner().parseOptions, [])
        self.assertEqual(str(exit.code).splitlines()[-1], "twistd udptunnel: choose server, client or run")

    def test_helpMarksRequiredAndDefaultsAlike(self) -> None:
        text = parse("server", "--tcp", "9999", "--udp", "1").subOptions.getUsage(width=200)
        self.assertRegex(text, r"--tcp=\s+Required\.")
        self.assertIn("[default: 0]", text)
        self.assertIn("[default: 300]", text)
        self.assertNotRegex(text, r"\[default: \d+\.\d+\]")


class PreflightTests(SynchronousTestCase):
    """
    Under a twistd that will fork, every socket is tried before it forks,
    so that a busy port is one line in the user's terminal.
    """

    def busyUDP(self) -> int:
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        return int(busy.getsockname()[1])

    def test_busyPortBeforeTheFork(self) -> None:
        port = self.busyUDP()
        options = parse("server", "--tcp", "tcp:0:interface=127.0.0.1",
                        "--udp", f"127.0.0.1:{port}")
        options.parent = _Runner()  # type: ignore[assignment]
        options.parent["nodaemon"] = False
        error = self.assertRaises(SystemExit, makeService, options, reactor)
        self.assertEqual(str(error.code), "udptunnel: cannot start: cannot listen on "
                                          f"127.0.0.1:{port}: Address already in use")

    def test_onlyWhenForking(self) -> None:
        """
        In the foreground the tunnel's own bind says it, at start; and
        nothing is tried where no runner runs (a test builds services).
        """
        port = self.busyUDP()
        options = parse("server", "--tcp", "tcp:0:interface=127.0.0.1",
                        "--udp", f"127.0.0.1:{port}")
        makeService(options, reactor)
        options.parent = _Runner()  # type: ignore[assignment]
        makeService(options, reactor)


class SessionsBacklogTests(SynchronousTestCase):
    """
    A server with sessions listens with a deep backlog, unless told.
    """

    def parse(self, tcp: str) -> str:
        options = tap.Options()
        options.parseOptions(["server", "--sessions", "--tcp", tcp, "--peer", "127.0.0.1:53"])
        return options.subOptions.config.tcp

    def test_barePort(self) -> None:
        from udptunnel.link import listening

        self.patch(listening, "hasIPv6", lambda: False)
        self.assertEqual(self.parse("9999"), f"tcp:9999:backlog={SESSIONS_BACKLOG}")
        self.patch(listening, "hasIPv6", lambda: True)
        self.assertEqual(self.parse("9999"),
                         f"tcp6:9999:interface=\\:\\::backlog={SESSIONS_BACKLOG}")

    def test_ownBacklogKept(self) -> None:
        self.assertEqual(self.parse("tcp:9999:backlog=10"), "tcp:9999:backlog=10")

    def test_unixUntouched(self) -> None:
        self.assertEqual(self.parse("unix:/tmp/u.sock"), "unix:/tmp/u.sock")
