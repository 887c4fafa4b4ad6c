"""
L{udptunnel.tap}: the plugin's command line as twistd parses it: the options of C{server}, C{client} and C{run}, their exact names, help and usage text, the mistakes refused and how they are worded, C{--version}.
"""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stdout

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import captureLogEvents, makeRelay, scrape
from tests.support.options import Runner, parse
from udptunnel import __version__
from udptunnel.cli.addresses import HostPort, UDPPlan
from udptunnel.cli.values import reach
from udptunnel.tap import (
    EXAMPLE,
    Options,
    RunOptions,
    ServerOptions,
)


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


class UsageTextTests(SynchronousTestCase):
    """
    The synopsis reads as the command the user types, and a bad command line
    under a runner shows a few lines, not the whole help.
    """

    def underRunner(self, twistd: bool = True) -> Options:
        options = Options()
        options.parent = Runner(twistd)  # type: ignore[assignment]
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


class VersionOptionTests(SynchronousTestCase):
    def assertVersion(self, *argv: str) -> None:
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            Options().parseOptions(list(argv))
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"udptunnel {__version__}\n")

    def test_top(self) -> None:
        self.assertVersion("--version")

    def test_server(self) -> None:
        self.assertVersion("server", "--version")

    def test_client(self) -> None:
        """
        It wins over the missing required options, as --help does.
        """
        self.assertVersion("client", "--version")


class VersionReportedTests(SynchronousTestCase):
    def test_startupLine(self) -> None:
        events = captureLogEvents(self)
        relay = makeRelay(role="client")
        relay.privilegedStartService()
        relay.startService()
        self.addCleanup(relay.stopService)
        starting = [e for e in events if "starting" in e.get("log_format", "")
                    and e.get("version") == __version__]
        self.assertEqual(len(starting), 1)  # once, though both starts ran
        self.assertEqual(starting[0]["role"], "client")

    def test_buildInfoMetric(self) -> None:
        self.assertIn(f'udptunnel_build_info{{version="{__version__}"}} 1.0',
                      scrape(makeRelay()))
