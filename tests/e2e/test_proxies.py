"""
The installed twistd behind real proxies and load balancers, on loopback:
Debian's tinyproxy and microsocks in front of the client, HAProxy with the
PROXY protocol in front of servers.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.support.certs import Authority
from tests.support.net import (
    TIMEOUT,
    closedByPeer,
    frame,
    freePort,
    metric,
    readFrame,
    receive,
    waitFor,
)
from tests.support.processes import REQUIRE_VARIABLE, TWISTD, TwistdTestCase


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
    #: The password the wrong-credentials tests give instead.
    WRONG = "wr0ng-word"

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

    def assertFails(self, tcp: int, proxy: str, why: str, password: str | None = None) -> str:
        """
        The client says C{why} it cannot connect, twice (it retries), and
        keeps running; the password it was given (C{password}, or the
        proxy's) is nowhere in its log.
        """
        client = self.client(tcp, proxy)
        self.waitForOutput(client, why, count=2, timeout=TIMEOUT)
        output = self.output(client)
        self.assertIn(f"cannot connect to 127.0.0.1:{tcp} via ", output)
        self.assertNotIn(password or self.PASSWORD, output)
        return output

    def test_httpConnect(self) -> None:
        """
        Through tinyproxy's HTTP CONNECT, the client reaches its server and the
        tunnel relays both ways, with no failed attempt.
        """
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
        """
        With the user name and password of tinyproxy's C{BasicAuth} in the URL,
        the client gets through, and the tunnel relays.
        """
        port = self.tinyproxy(f"BasicAuth {self.USER} {self.PASSWORD}")
        _, client = self.assertThrough(f"http://{self.USER}:{self.PASSWORD}@127.0.0.1:{port}")
        self.assertNotIn(self.PASSWORD, self.output(client))

    def test_httpNeedsCredentials(self) -> None:
        """
        Without credentials, an authenticating tinyproxy's refusal is logged as
        "proxy needs authentication", with its status line, at each attempt.
        """
        port = self.tinyproxy(f"BasicAuth {self.USER} {self.PASSWORD}")
        self.assertFails(freePort(), f"http://127.0.0.1:{port}",
                         "proxy needs authentication: HTTP/1.")

    def test_httpWrongCredentials(self) -> None:
        """
        With a wrong password, tinyproxy's refusal is logged as "proxy refused
        the credentials", at each attempt.
        """
        port = self.tinyproxy(f"BasicAuth {self.USER} {self.PASSWORD}")
        self.assertFails(freePort(), f"http://{self.USER}:{self.WRONG}@127.0.0.1:{port}",
                         "proxy refused the credentials: HTTP/1.", self.WRONG)

    def test_httpRefused(self) -> None:
        """
        A proxy that allows CONNECT only to port 443 says no, and why.
        """
        port = self.tinyproxy("ConnectPort 443")
        self.assertFails(freePort(), f"http://127.0.0.1:{port}", "proxy refused: HTTP/1.")

    def test_proxyDown(self) -> None:
        """
        A proxy that does not listen: the client logs the refused connection at
        each attempt, and keeps trying.
        """
        proxy = freePort()
        self.assertFails(freePort(), f"http://127.0.0.1:{proxy}", "Connection refused")

    def test_socks5(self) -> None:
        """
        Through microsocks without authentication, the client reaches its
        server, and the tunnel relays both ways.
        """
        port = self.microsocks()
        self.assertThrough(f"socks5://127.0.0.1:{port}")

    def test_socks5Credentials(self) -> None:
        """
        Through microsocks with a user name and password (RFC 1929), the client
        reaches its server, and the tunnel relays both ways.
        """
        port = self.microsocks("-u", self.USER, "-P", self.PASSWORD)
        _, client = self.assertThrough(f"socks5://{self.USER}:{self.PASSWORD}@127.0.0.1:{port}")
        self.assertNotIn(self.PASSWORD, self.output(client))

    def test_socks5WrongCredentials(self) -> None:
        """
        With a wrong password, microsocks's refusal is logged as "SOCKS5:
        authentication failed", at each attempt.
        """
        port = self.microsocks("-u", self.USER, "-P", self.PASSWORD)
        self.assertFails(freePort(), f"socks5://{self.USER}:{self.WRONG}@127.0.0.1:{port}",
                         "SOCKS5: authentication failed", self.WRONG)

    def test_socks5NeedsCredentials(self) -> None:
        """
        Without credentials for a microsocks that wants them, the client logs
        that the proxy needs authentication, at each attempt.
        """
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


def haproxyProblem() -> str | None:
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (apt-get install haproxy)"
    return None


class HAProxyTests(TwistdTestCase):
    """
    Debian's HAProxy, on loopback, in front of two installed-twistd servers
    with C{--sessions --proxy-protocol}: one sent PROXY v1, the other v2.
    """

    def setUp(self) -> None:
        problem = haproxyProblem()
        if problem is not None:
            if os.environ.get(REQUIRE_VARIABLE) == "1":
                self.fail(f"{problem}, and {REQUIRE_VARIABLE}=1")
            self.skipTest(problem)
        super().setUp()

    def startServer(self, name: str) -> tuple[int, int, socket.socket]:
        tcp, metrics, peer = freePort(), freePort(), self.udpSocket()
        process = self.spawn(
            name, TWISTD, "-n", "--pidfile=", "udptunnel", "server", "--sessions",
            "--proxy-protocol", "--tcp", f"tcp:{tcp}:interface=127.0.0.1",
            "--udp", "127.0.0.1:0", "--peer", f"127.0.0.1:{peer.getsockname()[1]}",
            "--allow", "127.0.0.5/32", "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
            "--stats-interval", "0")
        self.waitForOutput(process, "serving metrics on")
        self.servers.append(process)
        return tcp, metrics, peer

    def metrics(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as r:
            return r.read().decode()

    def connectFrom(self, source: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return sock

    def test_realClientAddress(self) -> None:
        """
        Through HAProxy round robin, to one server sent PROXY v1 and one sent
        v2, clients from the allowed address relay both ways through each,
        and a client from outside C{--allow} is hung up on; both servers count
        those links up and refused, and log the clients' addresses, never
        HAProxy's.
        """
        self.servers: list = []
        (tcp1, metrics1, peer1), (tcp2, metrics2, peer2) = (
            self.startServer("s1"), self.startServer("s2"))
        front = freePort()
        config = self.path("haproxy.cfg")
        with open(config, "w") as f:
            f.write(f"""\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tunnel
    bind 127.0.0.1:{front}
    default_backend relays
backend relays
    balance roundrobin
    server s1 127.0.0.1:{tcp1} send-proxy
    server s2 127.0.0.1:{tcp2} send-proxy-v2
""")
        haproxy = self.spawn("haproxy", shutil.which("haproxy") or "haproxy",
                             "-f", config, "-db")
        self.addCleanup(self.stop, haproxy)

        def listening() -> bool:
            try:
                # From an allowed address: the servers' first refusal (the
                # one their rate-limited log shows) is then the test's own.
                self.connectFrom("127.0.0.5", front).close()
            except OSError:
                return False
            return True

        waitFor(listening, f"haproxy to listen on {front}")
        # Round robin alternates, but the probe above took a turn: each
        # datagram is looked for at both peers at once rather than at the
        # expected one.
        import select

        peers = [peer1, peer2]
        seen = set()
        for n in range(4):
            client = self.connectFrom("127.0.0.5", front)
            payload = f"hello {n}".encode()
            client.sendall(frame(payload))
            got, index = None, 0
            ready, _, _ = select.select(peers, [], [], TIMEOUT)
            if ready:
                index = peers.index(ready[0])
                got = receive(peers[index], TIMEOUT)
                seen.add(index)
            assert got is not None, (self.output(self.servers[0]), self.output(self.servers[1]),
                                     self.output(haproxy))
            self.assertEqual(got[0], payload)
            peers[index].sendto(b"reply " + payload, got[1])
            self.assertEqual(readFrame(client), b"reply " + payload)
        self.assertEqual(seen, {0, 1})  # through both backends (v1 and v2)
        for _ in range(4):
            refused = self.connectFrom("127.0.0.6", front)
            refused.sendall(frame(b"not allowed"))
            self.assertTrue(closedByPeer(refused))
        for n, port in enumerate((metrics1, metrics2)):
            text = self.metrics(port)
            self.assertGreaterEqual(metric(text, "udptunnel_links_total", 'event="up"'), 2)
            self.assertGreaterEqual(metric(text, "udptunnel_links_total", 'event="refused"'), 2)
        for process in self.servers:
            output = self.output(process)
            self.assertIn("TCP 127.0.0.5:", output)
            self.assertNotIn("TCP 127.0.0.1:", output)
            self.assertIn("refused TCP connection from 127.0.0.6:", output)
            self.assertNotIn("Traceback", output)
