"""
The client's link through a proxy (L{udptunnel.link.viaproxy}): each handshake
against fakes, then the installed twistd through real proxies from Debian
(C{tinyproxy} for HTTP CONNECT, C{microsocks} for SOCKS5), on loopback.

The real-proxy tests skip, saying why, where the proxy is not installed;
under C{UDPTUNNEL_REQUIRE_INTEROP=1} (CI installs them) they fail instead.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from udptunnel.cli.values import parseProxy
from udptunnel.link.viaproxy import (
    HANDSHAKE_TIMEOUT,
    Proxy,
    ProxyEndpoint,
    ProxyError,
)
from udptunnel.tap import Options

from .certs import Authority
from .test_interop import REQUIRE_VARIABLE
from .test_twistd import TIMEOUT, TWISTD, TwistdTestCase, freePort, waitFor


class ParseTests(SynchronousTestCase):
    """
    C{--proxy} URLs.
    """

    def test_http(self) -> None:
        self.assertEqual(parseProxy("http://proxy.example:3128"),
                         Proxy("http", "proxy.example", 3128))

    def test_credentials(self) -> None:
        """
        Credentials are percent-decoded, and never shown.
        """
        proxy = parseProxy("socks5://me:p%40ss:word@[::1]:1080")
        self.assertEqual(proxy, Proxy("socks5", "::1", 1080, "me", "p@ss:word"))
        self.assertEqual(str(proxy), "socks5://[::1]:1080")
        self.assertNotIn("word", repr(proxy))

    def test_bad(self) -> None:
        for text in ("ftp://h:1", "h:1", "http://h", "http://h:99999", "http://h:1/path",
                     "http://user@h:1", "https://h:1"):
            self.assertRaises(ValueError, parseProxy, text)

    def test_errorHidesPassword(self) -> None:
        with self.assertRaises(ValueError) as caught:
            parseProxy("http://me:secret@h")
        self.assertNotIn("secret", str(caught.exception))

    def test_usageError(self) -> None:
        """
        A bad --proxy is a usage error naming it; --proxy needs --tcp
        HOST:PORT, since the proxy is who connects to it.
        """
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["client", "--tcp", "h:1", "--udp", "1", "--proxy", "h:2"])
        self.assertIn("--proxy", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["client", "--tcp", "tcp:h:1", "--udp", "1",
                                    "--proxy", "http://h:2"])
        self.assertIn("--proxy", str(caught.exception))


class FakeProxyEndpoint:
    """
    Connects the handshake at once to a L{StringTransport} (the proxy).
    """

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class HandshakeTestCase(SynchronousTestCase):
    proxyURL = "http://127.0.0.1:3128"

    def connect(self, url: str, host: str = "relay.example", port: int = 9000
                ) -> tuple[FakeProxyEndpoint, Deferred[IProtocol], list[Recorder]]:
        self.clock = Clock()
        fake = FakeProxyEndpoint()
        built: list[Recorder] = []

        def build() -> Recorder:
            built.append(Recorder())
            return built[-1]

        endpoint = ProxyEndpoint(self.clock, fake, parseProxy(url), host, port)
        d = endpoint.connect(Factory.forProtocol(build))
        return fake, d, built

    def failure(self, d: Deferred[IProtocol]) -> str:
        failure: Failure = self.failureResultOf(d, ProxyError)
        return failure.getErrorMessage()


class ConnectTests(HandshakeTestCase):
    """
    HTTP CONNECT.
    """

    def test_connected(self) -> None:
        """
        The tunnel's protocol is built only once the proxy said 200, and
        gets what followed the proxy's answer.
        """
        fake, d, built = self.connect("http://127.0.0.1:3128")
        self.assertEqual(fake.transport.value(),
                         b"CONNECT relay.example:9000 HTTP/1.1\r\n"
                         b"Host: relay.example:9000\r\n\r\n")
        fake.protocol.dataReceived(b"HTTP/1.1 200 Connection est")
        self.assertEqual(built, [])
        self.assertNoResult(d)
        fake.protocol.dataReceived(b"ablished\r\nVia: x\r\n\r\nframes")
        self.assertIs(self.successResultOf(d), built[0])
        self.assertTrue(built[0].made)
        self.assertEqual(built[0].received, b"frames")
        fake.protocol.dataReceived(b" more")
        self.assertEqual(built[0].received, b"frames more")
        # What the tunnel writes goes straight to the connection.
        self.assertIs(built[0].transport, fake.transport)

    def test_ipv6AndCredentials(self) -> None:
        fake, _, _ = self.connect("http://me:pw@127.0.0.1:3128", host="::1")
        token = base64.b64encode(b"me:pw")
        self.assertEqual(fake.transport.value(),
                         b"CONNECT [::1]:9000 HTTP/1.1\r\nHost: [::1]:9000\r\n"
                         b"Proxy-Authorization: Basic " + token + b"\r\n\r\n")

    def test_refused(self) -> None:
        fake, d, built = self.connect("http://127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.assertEqual(self.failure(d), "proxy refused: HTTP/1.1 403 Forbidden")
        self.assertTrue(fake.transport.disconnecting or fake.transport.aborted)
        self.assertEqual(built, [])

    def test_needsAuthentication(self) -> None:
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
        self.assertEqual(self.failure(d),
                         "proxy needs authentication: HTTP/1.0 407 Proxy Authentication Required")

    def test_wrongCredentials(self) -> None:
        fake, d, _ = self.connect("http://me:secret@127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.1 407 Denied\r\n\r\n")
        why = self.failure(d)
        self.assertEqual(why, "proxy refused the credentials: HTTP/1.1 407 Denied")

    def test_notHTTP(self) -> None:
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        fake.protocol.dataReceived(b"\x05\x00")
        self.assertIn("does not speak HTTP", self.failure(d))

    def test_closedBeforeAnswer(self) -> None:
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        fake.protocol.connectionLost(Failure(ConnectionError()))
        self.assertIn("closed the connection", self.failure(d))

    def test_unauthorized(self) -> None:
        """
        tinyproxy answers CONNECT with wrong credentials by a 401.
        """
        fake, d, _ = self.connect("http://me:secret@127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.0 401 Unauthorized\r\n\r\n")
        self.assertEqual(self.failure(d),
                         "proxy refused the credentials: HTTP/1.0 401 Unauthorized")

    def test_silentProxy(self) -> None:
        """
        A proxy that accepts and never answers fails the attempt, so that
        the client retries.
        """
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertIn("did not answer", self.failure(d))
        self.assertTrue(fake.transport.aborted if hasattr(fake.transport, "aborted")
                        else fake.transport.disconnecting)

    def test_cancel(self) -> None:
        _, d, _ = self.connect("http://127.0.0.1:3128")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Socks5Tests(HandshakeTestCase):
    """
    SOCKS5, RFC 1928 and RFC 1929.
    """

    def test_noAuthName(self) -> None:
        """
        A host name goes to the proxy unresolved; a reply split anywhere is
        reassembled.
        """
        fake, d, built = self.connect("socks5://127.0.0.1:1080")
        self.assertEqual(fake.transport.value(), b"\x05\x01\x00")
        fake.transport.clear()
        fake.protocol.dataReceived(b"\x05\x00")
        self.assertEqual(fake.transport.value(),
                         b"\x05\x01\x00\x03\x0drelay.example\x23\x28")
        for byte in b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04":
            fake.protocol.dataReceived(bytes([byte]))
        self.assertNoResult(d)
        fake.protocol.dataReceived(b"\x38data")
        self.assertIs(self.successResultOf(d), built[0])
        self.assertEqual(built[0].received, b"data")

    def test_password(self) -> None:
        fake, d, built = self.connect("socks5://me:pw@127.0.0.1:1080", host="127.0.0.2")
        self.assertEqual(fake.transport.value(), b"\x05\x02\x02\x00")
        fake.transport.clear()
        fake.protocol.dataReceived(b"\x05\x02")
        self.assertEqual(fake.transport.value(), b"\x01\x02me\x02pw")
        fake.transport.clear()
        fake.protocol.dataReceived(b"\x01\x00")
        self.assertEqual(fake.transport.value(), b"\x05\x01\x00\x01\x7f\x00\x00\x02\x23\x28")
        fake.protocol.dataReceived(b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x01")
        self.assertIs(self.successResultOf(d), built[0])

    def test_authenticationFailed(self) -> None:
        fake, d, _ = self.connect("socks5://me:secret@127.0.0.1:1080")
        fake.protocol.dataReceived(b"\x05\x02\x01\x01")
        self.assertEqual(self.failure(d), "SOCKS5: authentication failed")

    def test_needsAuthentication(self) -> None:
        fake, d, _ = self.connect("socks5://127.0.0.1:1080")
        fake.protocol.dataReceived(b"\x05\xff")
        self.assertIn("SOCKS5: the proxy needs authentication", self.failure(d))

    def test_destinationRefused(self) -> None:
        fake, d, _ = self.connect("socks5://127.0.0.1:1080")
        fake.protocol.dataReceived(b"\x05\x00\x05\x05\x00\x01" + bytes(6))
        self.assertEqual(self.failure(d), "SOCKS5: connection refused by the destination")

    def test_notSocks(self) -> None:
        fake, d, _ = self.connect("socks5://127.0.0.1:1080")
        fake.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertIn("does not speak SOCKS5", self.failure(d))


def _installed(program: str) -> str:
    """
    The path of Debian's C{program}; skip without it (fail where required).
    """
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if path is None:
        problem = f"{program} is not installed (apt-get install {program})"
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            raise AssertionError(f"{REQUIRE_VARIABLE}=1 but {problem}")
        raise SkipTest(problem)
    return path


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class RealProxyTests(TwistdTestCase):
    """
    The installed twistd's client through Debian's proxies, on loopback.
    """

    #: User name and password the authenticating proxies want.
    USER, PASSWORD = "tunnel", "s3cret-word"

    def tinyproxy(self, *config: str) -> int:
        """
        Start tinyproxy on a free loopback port with C{config} lines added.
        """
        program = _installed("tinyproxy")
        port = freePort()
        path = self.path("tinyproxy.conf")
        with open(path, "w") as f:
            f.write("\n".join([f"Port {port}", "Listen 127.0.0.1", "Timeout 60",
                               "LogLevel Info", "MaxClients 20", *config]) + "\n")
        process = self.spawn("tinyproxy", program, "-d", "-c", path)
        waitFor(lambda: process.poll() is not None or _listening(port), "tinyproxy to listen")
        self.assertIsNone(process.poll(), self.output(process))
        return port

    def microsocks(self, *argv: str) -> int:
        program = _installed("microsocks")
        port = freePort()
        process = self.spawn("microsocks", program, "-i", "127.0.0.1", "-p", str(port), *argv)
        waitFor(lambda: process.poll() is not None or _listening(port), "microsocks to listen")
        self.assertIsNone(process.poll(), self.output(process))
        return port

    def client(self, tcp: int, proxy: str, udp: int = 0, peer: int = 9, *more: str) -> Any:
        return self.spawn("client", TWISTD, "-n", "--pidfile=",
                          *self.clientCommand(tcp, udp or freePort(socket.SOCK_DGRAM), peer),
                          "--proxy", proxy, *more)

    def assertThrough(self, proxy: str, tls: bool = False) -> Any:
        """
        A tunnel whose client goes through C{proxy} relays both ways (with
        mutual TLS between the ends, if C{tls}).
        """
        serverUDP, tcp, clientUDP = (
            freePort(socket.SOCK_DGRAM), freePort(), freePort(socket.SOCK_DGRAM)
        )
        pop, app = self.udpSocket(), self.udpSocket()
        serverTLS: list[str] = []
        clientTLS: list[str] = []
        if tls:
            authority = Authority(self.directory)
            for options, name in ((serverTLS, "server"), (clientTLS, "client")):
                cert, key = authority.issue(name)
                options += ["--tls-cert", cert, "--tls-key", key, "--tls-ca", authority.path]
        server = self.spawn("server", TWISTD, "-n", "--pidfile=", "udptunnel", "server",
                            "--udp", f"127.0.0.1:{serverUDP}",
                            "--tcp", f"tcp:{tcp}:interface=127.0.0.1", *serverTLS)
        self.waitForOutput(server, "UDP bound on")
        client = self.client(tcp, proxy, clientUDP, pop.getsockname()[1], *clientTLS)
        self.assertRelays(app, pop, serverUDP, clientUDP)
        self.assertNotIn("cannot connect", self.output(client))
        return server, client

    def assertFails(self, tcp: int, proxy: str, why: str) -> str:
        """
        The client says C{why} it cannot connect, twice (it retries), and
        keeps running; the password is nowhere in its log.
        """
        client = self.client(tcp, proxy)
        self.waitForOutput(client, why, count=2, timeout=TIMEOUT)
        output = self.output(client)
        self.assertIn(f"cannot connect to 127.0.0.1:{tcp} via ", output)
        self.assertNotIn(self.PASSWORD, output)
        return output

    def test_httpConnect(self) -> None:
        port = self.tinyproxy()
        self.assertThrough(f"http://127.0.0.1:{port}")

    def test_tlsThroughProxy(self) -> None:
        """
        TLS runs end to end inside the proxied connection: the server
        authenticates the client's certificate through tinyproxy.
        """
        port = self.tinyproxy()
        self.assertThrough(f"http://127.0.0.1:{port}", tls=True)

    def test_httpCredentials(self) -> None:
        port = self.tinyproxy(f"BasicAuth {self.USER} {self.PASSWORD}")
        self.assertThrough(f"http://{self.USER}:{self.PASSWORD}@127.0.0.1:{port}")

    def test_httpNeedsCredentials(self) -> None:
        port = self.tinyproxy(f"BasicAuth {self.USER} {self.PASSWORD}")
        self.assertFails(freePort(), f"http://127.0.0.1:{port}",
                         "proxy needs authentication: HTTP/1.")

    def test_httpWrongCredentials(self) -> None:
        port = self.tinyproxy(f"BasicAuth {self.USER} {self.PASSWORD}")
        self.assertFails(freePort(), f"http://{self.USER}:wrong@127.0.0.1:{port}",
                         "proxy refused the credentials: HTTP/1.")

    def test_httpRefused(self) -> None:
        """
        A proxy that allows CONNECT only to port 443 says no, and why.
        """
        port = self.tinyproxy("ConnectPort 443")
        self.assertFails(freePort(), f"http://127.0.0.1:{port}", "proxy refused: HTTP/1.")

    def test_proxyDown(self) -> None:
        proxy = freePort()
        self.assertFails(freePort(), f"http://127.0.0.1:{proxy}", "Connection refused")

    def test_socks5(self) -> None:
        port = self.microsocks()
        self.assertThrough(f"socks5://127.0.0.1:{port}")

    def test_socks5Credentials(self) -> None:
        port = self.microsocks("-u", self.USER, "-P", self.PASSWORD)
        self.assertThrough(f"socks5://{self.USER}:{self.PASSWORD}@127.0.0.1:{port}")

    def test_socks5WrongCredentials(self) -> None:
        port = self.microsocks("-u", self.USER, "-P", self.PASSWORD)
        self.assertFails(freePort(), f"socks5://{self.USER}:wrong@127.0.0.1:{port}",
                         "SOCKS5: authentication failed")

    def test_socks5NeedsCredentials(self) -> None:
        port = self.microsocks("-u", self.USER, "-P", self.PASSWORD)
        self.assertFails(freePort(), f"socks5://127.0.0.1:{port}",
                         "SOCKS5: the proxy needs authentication")

    def test_socks5DestinationDown(self) -> None:
        """
        The proxy is up but the server is not: the proxy's reply says so,
        and the client retries until the server is up.
        """
        port = self.microsocks()
        serverUDP, tcp, clientUDP = (
            freePort(socket.SOCK_DGRAM), freePort(), freePort(socket.SOCK_DGRAM)
        )
        pop, app = self.udpSocket(), self.udpSocket()
        client = self.client(tcp, f"socks5://127.0.0.1:{port}", clientUDP, pop.getsockname()[1])
        self.waitForOutput(client, "SOCKS5: connection refused by the destination", count=2)
        self.startServer(serverUDP, tcp)
        self.assertRelays(app, pop, serverUDP, clientUDP, timeout=TIMEOUT + 10)


