"""
L{udptunnel.cli.settings}: the checks of a whole tunnel's configuration:
combinations refused, values the kernel takes, endpoint descriptions in the
user's terms.
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

from tests.support.certs import Authority
from tests.support.net import (
    LOCAL,
)
from tests.support.options import parse
from udptunnel import sockopts, tap
from udptunnel.cli.addresses import HostPort, splitDescription
from udptunnel.cli.build import _connectTimeout
from udptunnel.link.listening import ReusePortReactor
from udptunnel.sockopts import SocketSettings, checkSettings
from udptunnel.udp.service import UDPService


class HardeningOptionsTests(SynchronousTestCase):
    """
    The hardening options as parsed: socket tuning, C{--allow} and
    C{--udp-allow}, C{--metrics}, TLS.
    """

    BASE = ("server", "--tcp", "9999", "--udp", "5073")

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, *argv)
        self.assertIn(fragment, str(error))

    def test_defaults(self) -> None:
        """
        Left out, they take their defaults: the default L{SocketSettings}, no
        C{--allow} or C{--udp-allow}, no idle timeout, statistics every 300
        seconds, no metrics endpoint, no TLS.
        """
        end = parse(*self.BASE).subOptions
        self.assertEqual(end.config.settings, SocketSettings())
        self.assertEqual(end.config.allow, ())
        self.assertEqual(end.config.udpAllow, ())
        self.assertEqual(end.config.idleTimeout, 0)
        self.assertEqual(end.config.statsInterval, 300)
        self.assertIsNone(end.config.metrics)
        self.assertIsNone(end.config.credentials)

    def test_socketSettings(self) -> None:
        """
        The buffer, keepalive and user timeout options reach the tunnel's
        L{SocketSettings}, each as given.
        """
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
        """
        A negative or non-numeric count is refused as not a whole number; a
        negative or non-numeric duration as not a number of seconds.
        """
        self.assertUsageError("whole number", *self.BASE, "--udp-rcvbuf", "-1")
        self.assertUsageError("whole number", *self.BASE, "--keepalive-count", "many")
        self.assertUsageError("seconds", *self.BASE, "--idle-timeout", "-5")
        self.assertUsageError("seconds", *self.BASE, "--stats-interval", "soon")

    def test_allowRepeatable(self) -> None:
        """
        C{--allow} may be given more than once, each value kept, in order; a
        single address is the block of that address alone.
        """
        end = parse(*self.BASE, "--allow", "192.0.2.0/24", "--allow", "2001:db8::1").subOptions
        self.assertEqual([str(n) for n in end.config.allow], ["192.0.2.0/24", "2001:db8::1/128"])

    def test_badCIDR(self) -> None:
        """
        A bad network in C{--allow} or C{--udp-allow} is a usage error that
        names the option and the value.
        """
        self.assertUsageError("--allow: '10.0.0.0/33'", *self.BASE, "--allow", "10.0.0.0/33")
        self.assertUsageError("--udp-allow: 'nope'", *self.BASE, "--udp-allow", "nope")

    def test_allowIsServerOnly(self) -> None:
        """
        A client has no C{--allow}: a usage error that names it.
        """
        self.assertUsageError("--allow", "client", "--tcp", "h:1", "--udp", "1", "--allow", "::/0")

    def test_udpAllowOnlyInPhantomMode(self) -> None:
        """
        C{--udp-allow} with C{--peer} is refused: it is for phantom mode.
        """
        self.assertUsageError(
            "phantom", *self.BASE, "--peer", "127.0.0.1:1", "--udp-allow", "127.0.0.0/8"
        )

    def test_metricsEndpoint(self) -> None:
        """
        A bare C{--metrics} port listens on 127.0.0.1 only; a bad endpoint
        description, or a name as C{HOST}, is a usage error naming C{--metrics}.
        """
        end = parse(*self.BASE, "--metrics", "9100").subOptions
        self.assertEqual(end.config.metrics, "tcp:9100:interface=127.0.0.1")
        self.assertUsageError("--metrics: bad server endpoint", *self.BASE, "--metrics",
                              "tcp:9100:backlog=many")
        self.assertUsageError("--metrics: 'x:1': give an IP address", *self.BASE,
                              "--metrics", "x:1")

    def test_tlsNeedsAllThree(self) -> None:
        """
        One of C{--tls-cert}, C{--tls-key} and C{--tls-ca} without the others is
        refused: TLS needs all three.
        """
        self.assertUsageError("all three", *self.BASE, "--tls-cert", "a.pem")

    def test_tlsFilesChecked(self) -> None:
        """
        The TLS files are read at parse time: a certificate that cannot be read,
        or files that are no certificate and key, are usage errors; good files
        give the tunnel its credentials.
        """
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
        """
        A client's TLS name is C{--tcp}'s host unless given; with an endpoint
        description, which has no host to take, C{--tls-name} is required.
        """
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
        """
        Each numeric socket option takes the lowest and the highest value the
        kernel takes, and refuses -1 and ten times the highest, in an error
        that starts with the option's name.
        """
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
        """
        Unless given, the user timeout is C{idle + interval x count} of the
        keepalive: 55 seconds with the defaults.
        """
        self.assertEqual(SocketSettings().effectiveUserTimeout(), 15 + 10 * 4)
        settings = SocketSettings(keepaliveIdle=7, keepaliveInterval=3, keepaliveCount=2)
        self.assertEqual(settings.effectiveUserTimeout(), 7 + 3 * 2)

    def test_given(self) -> None:
        """
        A user timeout given is the one set, 0 (none) included.
        """
        self.assertEqual(SocketSettings(userTimeout=4).effectiveUserTimeout(), 4)
        self.assertEqual(SocketSettings(userTimeout=0).effectiveUserTimeout(), 0)

    def test_withoutKeepalive(self) -> None:
        """
        With keepalive off and none given, the user timeout is
        L{sockopts.FALLBACK_USER_TIMEOUT}.
        """
        self.assertEqual(SocketSettings(keepaliveIdle=0).effectiveUserTimeout(),
                         sockopts.FALLBACK_USER_TIMEOUT)

    def test_parsed(self) -> None:
        """
        Without C{--user-timeout} the settings have none, and the user timeout
        is derived from the keepalive options given: 2 + 1 x 2 seconds.
        """
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
        """
        A server's C{--tcp} port past 65535, bare or in a C{tcp:} or C{tcp6:}
        description (positional or C{port=}), is a usage error naming C{--tcp};
        the ports from 0 to 65535 are taken.
        """
        for tcp in ("70000", "tcp:70000", "tcp:port=70000", "tcp6:70000:interface=\\:\\:"):
            self.assertUsageError("--tcp: port must be", "server", "--tcp", tcp, "--udp", "1")
        for tcp in ("0", "65535", "tcp:0:interface=127.0.0.1", "tcp6:port=9999"):
            parse("server", "--tcp", tcp, "--udp", "1")

    def test_metricsPort(self) -> None:
        """
        A C{--metrics} port past 65535 is a usage error naming C{--metrics}.
        """
        self.assertUsageError("--metrics: port must be",
                              "server", "--tcp", "9999", "--udp", "1", "--metrics", "70000")

    def test_unixSocketDirectory(self) -> None:
        """
        A Unix socket in a directory that does not exist is refused, naming the
        socket; in one that exists it is taken, as a path or as C{address=}.
        """
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
        """
        A description splits at the colons that no backslash escapes, into its
        type, positional and keyword arguments, the backslashes removed.
        """
        self.assertEqual(
            splitDescription("tcp6:9999:interface=\\:\\:1:backlog=5"),
            ("tcp6", ["9999"], {"interface": "::1", "backlog": "5"}),
        )

    def test_connectTimeout(self) -> None:
        """
        How long one connection attempt may take: 30 seconds to C{HOST:PORT};
        a description's C{timeout=}, else Twisted's default for its own endpoint
        types; C{None} (unknown) for a type we do not know.
        """
        self.assertEqual(_connectTimeout(HostPort("natbox", 9999)), 30)
        self.assertEqual(_connectTimeout("tcp:host=natbox:port=9999:timeout=5"), 5)
        self.assertEqual(_connectTimeout("tls:natbox:9999"), 30)
        self.assertIsNone(_connectTimeout("tor:natbox:9999"))


class ProxyProtocolOptionsTests(SynchronousTestCase):
    """
    C{--proxy-protocol}: a server's flag, and not with TLS.
    """

    BASE = ("server", "--tcp", "tcp:9999:interface=127.0.0.1", "--peer", "127.0.0.1:53")

    def test_flag(self) -> None:
        """
        C{--proxy-protocol} is off unless given.
        """
        self.assertTrue(parse(*self.BASE, "--proxy-protocol").subOptions.config.proxyProtocol)
        self.assertFalse(parse(*self.BASE).subOptions.config.proxyProtocol)

    def test_notWithTLS(self) -> None:
        """
        The balancer's header would come before the TLS handshake, which
        the server reads first: refused on the command line.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        cert, key = authority.issue("server")
        error = self.assertRaises(
            usage.UsageError, parse, *self.BASE, "--proxy-protocol", "--tls-cert", cert,
            "--tls-key", key, "--tls-ca", authority.path)
        self.assertIn("--proxy-protocol is not for --tls-cert", str(error))

    def test_clientHasNone(self) -> None:
        """
        A client has no C{--proxy-protocol}: a usage error.
        """
        self.assertRaises(usage.UsageError, parse, "client", "--tcp", "127.0.0.1:9999",
                          "--udp", "1", "--proxy-protocol")


SERVER = ("server", "--sessions", "--tcp", f"tcp:9999:interface={LOCAL}",
          "--peer", f"{LOCAL}:53")


CLIENT = ("client", "--sessions", "--tcp", f"{LOCAL}:9999", "--udp", f"{LOCAL}:5353")


class ReusePortOptionsTests(SynchronousTestCase):
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
