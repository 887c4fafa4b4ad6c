"""
L{udptunnel.tap}: the plugin's command line as twistd parses it: the options
of C{server}, C{client} and C{run}, their exact names, help and usage text,
the mistakes refused and how they are worded, C{--version}.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from contextlib import redirect_stdout

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import captureLogEvents, makeRelay, scrape
from tests.support.options import Runner, ShortUsageAssertions, parse
from udptunnel import __version__
from udptunnel.cli.addresses import HostPort, UDPPlan
from udptunnel.cli.schema import optionsOf
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
        """
        A server's C{--tcp} endpoint description is kept as given.
        """
        options = parse("server", "--tcp", "tcp:9999:interface=127.0.0.1", "--udp", "5073")
        self.assertEqual(options.subOptions.config.tcp, "tcp:9999:interface=127.0.0.1")

    def test_udpWithHost(self) -> None:
        """
        C{--udp HOST:PORT} binds that address and port.
        """
        options = parse("server", "--tcp", "9999", "--udp", "127.0.0.1:5073")
        self.assertEqual(options.subOptions.config.udp, UDPPlan("127.0.0.1", 5073, None))

    def test_udpIPv6(self) -> None:
        """
        C{--udp [ADDRESS]:PORT} binds that IPv6 address, without its brackets.
        """
        options = parse("server", "--tcp", "9999", "--udp", "[::1]:5073")
        self.assertEqual(options.subOptions.config.udp, UDPPlan("::1", 5073, None))

    def test_peerGivesEphemeralUDP(self) -> None:
        """
        With C{--peer} and no C{--udp}, the UDP socket binds an ephemeral port
        on all IPv4 interfaces, and datagrams out of the tunnel go to the peer.
        """
        options = parse("server", "--tcp", "9999", "--peer", "127.0.0.1:5072")
        self.assertEqual(
            options.subOptions.config.udp, UDPPlan("0.0.0.0", 0, ("127.0.0.1", 5072))
        )

    def test_ipv6PeerBindsIPv6Wildcard(self) -> None:
        """
        With an IPv6 C{--peer}, a bare C{--udp} port binds the IPv6 wildcard,
        C{::}.
        """
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
        """
        A client's C{--tcp HOST:PORT} is a L{HostPort} to connect to.
        """
        options = parse("client", "--tcp", "natbox.example:9999", "--udp", "34559")
        self.assertEqual(options.subOptions.config.tcp, HostPort("natbox.example", 9999))

    def test_ipv6HostPort(self) -> None:
        """
        C{--tcp [ADDRESS]:PORT} is a L{HostPort} of the address without its
        brackets.
        """
        options = parse("client", "--tcp", "[2001:db8::1]:9999", "--udp", "34559")
        self.assertEqual(options.subOptions.config.tcp, HostPort("2001:db8::1", 9999))

    def test_endpointDescription(self) -> None:
        """
        A client endpoint description (TCP, Unix) is kept as given.
        """
        for description in ("tcp:host=127.0.0.1:port=9999", "unix:/run/tunnel.sock"):
            options = parse("client", "--tcp", description, "--udp", "34559")
            self.assertEqual(options.subOptions.config.tcp, description)

    def test_seedCommandLine(self) -> None:
        """
        The example's client: C{--tcp} the host to connect to, C{--udp} a port on
        all IPv4 interfaces, and datagrams out of the tunnel to C{--peer}.
        """
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
        """
        No subcommand: a usage error that says to choose C{server}, C{client}
        or C{run}.
        """
        self.assertUsageError("server, client or run")

    def test_missingTCP(self) -> None:
        """
        C{--tcp} is required, of a server and of a client.
        """
        self.assertUsageError("--tcp is required", "server", "--udp", "5073")
        self.assertUsageError("--tcp is required", "client", "--udp", "5073")

    def test_missingUDPAndPeer(self) -> None:
        """
        Without C{--udp} and C{--peer}, the error says that C{--udp} is required
        unless C{--peer} is given.
        """
        self.assertUsageError("--udp is required unless --peer", "server", "--tcp", "9999")

    def test_unknownOption(self) -> None:
        """
        An option that does not exist is a usage error that names it.
        """
        self.assertUsageError("--nope", "server", "--tcp", "9999", "--udp", "1", "--nope")

    def test_portOutOfRange(self) -> None:
        """
        A port outside 1 to 65535 in C{--udp}, C{--peer} or a client's C{--tcp}
        is a usage error naming the option.
        """
        self.assertUsageError("--udp: port must be", "server", "--tcp", "9999", "--udp", "70000")
        self.assertUsageError("--peer: port must be", "server", "--tcp", "9999", "--peer", "127.0.0.1:0")
        self.assertUsageError("--tcp: port must be", "client", "--tcp", "host:65536", "--udp", "1")

    def test_malformedAddresses(self) -> None:
        """
        An address that is not C{[HOST:]PORT} (C{HOST:PORT} for C{--peer}), or a
        bracketed host that is not an IPv6 address, is a usage error naming the
        option.
        """
        self.assertUsageError("--udp", "server", "--tcp", "9999", "--udp", "x:y:z")
        self.assertUsageError("--udp: 'x:y:z' is not [HOST:]PORT",
                              "server", "--tcp", "9999", "--udp", "x:y:z")
        self.assertUsageError("--peer", "server", "--tcp", "9999", "--peer", "nohost")
        self.assertUsageError("--peer: 'nohost' is not HOST:PORT",
                              "server", "--tcp", "9999", "--peer", "nohost")
        self.assertUsageError("--peer: [bogus] is not an IPv6", "server", "--tcp", "9999", "--peer", "[bogus]:53")

    def test_unbracketedIPv6(self) -> None:
        """
        An IPv6 address without brackets, in C{--peer} or a client's C{--tcp},
        is refused with a word to put it in brackets.
        """
        self.assertUsageError("brackets", "server", "--tcp", "9999", "--peer", "::1:53")
        self.assertUsageError("brackets", "client", "--tcp", "::1:9999", "--udp", "1")

    def test_unresolvablePeer(self) -> None:
        """
        A C{--peer} name that cannot be resolved is a usage error.
        """
        self.assertUsageError(
            "cannot resolve", "server", "--tcp", "9999", "--peer", "nonexistent.invalid:53"
        )

    def test_peerFamilyMismatch(self) -> None:
        """
        An IPv6 C{--udp} and an IPv4 C{--peer} are a usage error.
        """
        self.assertUsageError(
            "IPv6", "server", "--tcp", "9999", "--udp", "[::1]:5073", "--peer", "127.0.0.1:53"
        )

    def test_badServerEndpoint(self) -> None:
        """
        A server's C{--tcp} of an endpoint type that does not exist is a usage
        error naming C{--tcp}.
        """
        self.assertUsageError("--tcp: bad server endpoint", "server", "--tcp", "bogus:1", "--udp", "1")

    def test_badClientEndpoint(self) -> None:
        """
        A client endpoint description without its port is a usage error naming
        C{--tcp} and the description, saying to give the host and the port as
        C{tcp:HOST:PORT}.
        """
        self.assertUsageError("--tcp", "client", "--tcp", "tcp:onlyhost", "--udp", "1")
        self.assertUsageError("--tcp: 'tcp:onlyhost': give the host and the port, as "
                              "tcp:HOST:PORT", "client", "--tcp", "tcp:onlyhost", "--udp", "1")

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
        """
        An option given by its whole name is taken.
        """
        options = parse("server", "--tcp", "9999", "--udp", "5073", "--proxy-protocol")
        self.assertTrue(options.subOptions.config.proxyProtocol)


def helpEntries(role: str) -> dict[str, tuple[bool, str]]:
    """
    What C{udptunnel ROLE --help} prints in its option list: by option
    name, whether it is shown taking a value (C{--name=}) and its text,
    its lines joined by single spaces.
    """
    out = io.StringIO()
    with redirect_stdout(out), contextlib.suppress(SystemExit):
        Options().parseOptions([role, "--help"])
    entries: dict[str, tuple[bool, str]] = {}
    current: str | None = None
    for line in out.getvalue().splitlines():
        if line == "Options:":
            current = ""
            continue
        if current is None:
            continue
        if not line.strip():
            break  # the end of the option list
        # An option's first line is indented a little; its text's next
        # lines, which may begin with an option's name, up to the text's
        # column.
        entry = re.match(r" {1,8}(?:-\w, )?--([\w-]+)(=?)(?: +(.*))?$", line)
        if entry:
            current = entry.group(1)
            entries[current] = (entry.group(2) == "=", entry.group(3) or "")
        else:
            takesValue, text = entries[current]
            entries[current] = (takesValue, f"{text} {line.strip()}".strip())
    return entries


class HelpTests(SynchronousTestCase):
    def test_everyUsageShowsExample(self) -> None:
        """
        The top-level usage and each end's show the example, once.
        """
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
        """
        Each end's C{--help} lists every option of that end in
        L{udptunnel.cli.schema.OPTIONS} (with C{=} when it takes a value),
        each with its help text, and no other option but C{--help} and
        C{--version}; so C{--tcp}, C{--udp} and C{--peer} among them.
        """
        for role in ("server", "client"):
            listed = helpEntries(role)
            expected = optionsOf(role)
            self.assertEqual(set(listed), {o.name for o in expected} | {"help", "version"},
                             role)
            self.assertLessEqual({"tcp", "udp", "peer"}, set(listed))
            for option in expected:
                takesValue, text = listed[option.name]
                self.assertEqual(takesValue, not option.flag, (role, option.name))
                self.assertTrue(text.startswith(" ".join(option.help.split())),
                                (role, option.name, text))


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
        """
        Under twistd, the synopsis reads as what the user types: C{twistd
        [twistd options] udptunnel}, then the command and its arguments.
        """
        options = self.underRunner()
        options.parseOptions(["server", "--tcp", "9999", "--udp", "1"])
        self.assertEqual(
            options.subOptions.getSynopsis(),
            "Usage: twistd [twistd options] udptunnel server " + ServerOptions.synopsis,
        )
        self.assertEqual(options.getSynopsis(),
                         "Usage: twistd [twistd options] udptunnel server|client|run [options]")

    def test_synopsisUnderTwist(self) -> None:
        """
        Under twist, the synopsis names twist and its options.
        """
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
        """
        Under a runner, a command line without a command ends with the error,
        after the command typed, on the last line.
        """
        exit = self.assertRaises(SystemExit, self.underRunner().parseOptions, [])
        self.assertEqual(str(exit.code).splitlines()[-1], "twistd udptunnel: choose server, client or run")

    def test_helpMarksRequiredAndDefaultsAlike(self) -> None:
        """
        The help marks C{--tcp} as required, and shows whole-number defaults as
        whole numbers (C{[default: 0]}, never C{0.0}).
        """
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
        """
        C{--version} prints the version and exits with status 0.
        """
        self.assertVersion("--version")

    def test_server(self) -> None:
        """
        C{server --version} prints the version and exits with status 0.
        """
        self.assertVersion("server", "--version")

    def test_client(self) -> None:
        """
        It wins over the missing required options, as --help does.
        """
        self.assertVersion("client", "--version")


class VersionReportedTests(SynchronousTestCase):
    """
    The version that runs, in the log and in the metrics.
    """

    def test_startupLine(self) -> None:
        """
        The start-up line gives the version and the role, once, though both the
        privileged and the ordinary start ran.
        """
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
        """
        The metrics give the version as C{udptunnel_build_info}.
        """
        self.assertIn(f'udptunnel_build_info{{version="{__version__}"}} 1.0',
                      scrape(makeRelay()))


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
    ("--udp port out of range", ("server", "--tcp", TCP, "--udp", "70000"), ("--udp", "70000")),
    ("a peer whose name does not resolve",
     ("client", "--tcp", "127.0.0.1:9999", "--udp", UDP, "--peer", "nonexistent.invalid:53"),
     ("--peer", "nonexistent.invalid")),
    ("an IPv6 peer without brackets",
     ("client", "--tcp", "127.0.0.1:9999", "--udp", UDP, "--peer", "::1:53"),
     ("--peer", "brackets")),
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
    ("a mark past 32 bits", (*SERVER, "--fwmark", "0x100000000"), ("--fwmark", "0xffffffff")),
    ("a mark that is no number", (*SERVER, "--fwmark", "wg"), ("--fwmark", "'wg'")),
    ("a device that does not exist", (*SERVER, "--bind-device", "nosuchif0"),
     ("--bind-device", "nosuchif0", "no network interface has that name")),
    ("a device name no interface can have", (*SERVER, "--bind-device", "eth0/1"),
     ("--bind-device", "eth0/1")),
]


class ErrorTableTests(ShortUsageAssertions, SynchronousTestCase):
    """
    Every case of L{CASES}, parsed as the installed C{twistd} and C{twist}
    parse it, under their options: what the user sees is the message of a
    C{SystemExit}, which Python prints before exiting with status 1 (the
    same lines through the installed runners: tests/e2e/test_cli_errors.py).
    """

    def refusal(self, argv: tuple[str, ...], twistd: bool) -> str:
        """
        What C{ARGV} makes the plugin's options say under a runner (twistd's,
        or twist's without C{--nodaemon}).
        """
        options = Options()
        options.parent = Runner(twistd)  # type: ignore[assignment]
        exit = self.assertRaises(SystemExit, options.parseOptions, list(argv))
        self.assertIsInstance(exit.code, str, "a message, printed before status 1")
        return str(exit.code)

    def test_cases(self) -> None:
        """
        Each case of L{CASES}, under C{twistd} and under C{twist}: a few
        lines, the short synopsis, where the help is, and last the error,
        with what the case expects; never a traceback nor the whole help.
        """
        failures = []
        for program, twistd in (("twistd", True), ("twist", False)):
            for what, argv, expected in CASES:
                end = argv[0] if argv and argv[0] in ("server", "client", "run") else None
                try:
                    self.assertShortUsageError(1, self.refusal(argv, twistd), end, expected,
                                               program)
                except AssertionError as e:
                    failures.append(f"{program}: {what}: {e}")
        self.assertEqual(failures, [])
