"""
The tunnel's two ends under the installed C{twistd -n}, arranged as the
end-to-end tests need them: a server and a client on loopback with a
checksummed stream through them (L{FaultTestCase}), the same with
C{--sessions} and an echo peer (L{SessionsTestCase}), and one process
running four tunnels from a config file (L{FourTunnels}).
"""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
import urllib.request

from tests.support.net import LOCAL, TIMEOUT, UDP, freePort, metric, receive, waitFor
from tests.support.processes import TWISTD, TwistdTestCase
from tests.support.streams import EchoThread, Stream, appSockets, closeAll, request


class FaultTestCase(TwistdTestCase):
    """
    Starts the two ends under C{twistd -n}, and checks they survived.
    """

    def end(self, name: str, *argv: str, netns: str | None = None) -> subprocess.Popen[bytes]:
        """
        C{twistd -n --pidfile= ARGV} (ARGV starts with C{udptunnel}; inside
        network namespace C{netns}, if given), once it has bound its UDP
        socket.
        """
        prefix = ["ip", "netns", "exec", netns] if netns else []
        process = self.spawn(name, *prefix, TWISTD, "-n", "--pidfile=", *argv)
        self.waitForOutput(process, "UDP bound on")
        return process

    def server(self, udp: int, tcp: int, *more: str, name: str = "server") -> subprocess.Popen[bytes]:
        """
        A server on loopback in phantom mode.
        """
        return self.end(name, "udptunnel", "server", "--udp", f"{LOCAL}:{udp}",
                        "--tcp", f"tcp:{tcp}:interface={LOCAL}", *more)

    def client(self, tcp: int, udp: int, peer: int, *more: str,
               name: str = "client") -> subprocess.Popen[bytes]:
        """
        A client on loopback with a fixed UDP port and a fixed peer.
        """
        return self.end(name, *self.clientCommand(tcp, udp, peer), *more)

    def tunnel(self) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Stream]:
        """
        A server and a client on loopback, with a L{Stream} flowing through
        them (both ways: the POP echoes) once this returns.
        """
        self.serverUDP, self.tcp, self.clientUDP = freePort(UDP), freePort(), freePort(UDP)
        self.app, self.pop = self.udpSocket(), self.udpSocket()
        server = self.server(self.serverUDP, self.tcp)
        client = self.client(self.tcp, self.clientUDP, self.pop.getsockname()[1])
        stream = self.stream(self.app, (LOCAL, self.serverUDP), self.pop)
        self.assertFlows(stream, "through the new tunnel")
        return server, client, stream

    def stream(self, app: socket.socket, entry: tuple[str, int], pop: socket.socket) -> Stream:
        stream = Stream(app, entry, pop).start()
        self.addCleanup(stream.stop)
        return stream

    def assertFlows(self, stream: Stream, when: str, count: int = 20,
                    timeout: float = TIMEOUT) -> None:
        """
        C{count} more intact datagrams come out at the POP, and C{count} more
        echoes come back to the application, within C{timeout} seconds.
        """
        stream.waitForMore(stream.forward, count, timeout, f"at the POP {when}")
        stream.waitForMore(stream.back, count, timeout, f"back at the application {when}")

    def assertIntact(self, stream: Stream) -> None:
        """
        No datagram arrived damaged, either way.
        """
        stream.stop()
        self.assertEqual(stream.forward.corrupt, [], "damaged datagrams at the POP")
        self.assertEqual(stream.back.corrupt, [], "damaged echoes at the application")

    def assertSurvived(self, *processes: subprocess.Popen[bytes]) -> None:
        """
        Each process still runs, and has logged no traceback.
        """
        for process in processes:
            output = self.output(process)
            self.assertIsNone(process.poll(), f"{process.args!r} exited:\n{output}")
            self.assertNotIn("Traceback", output)
            self.assertNotIn("Unhandled", output)

    def metrics(self, port: int) -> str:
        with urllib.request.urlopen(f"http://{LOCAL}:{port}/metrics", timeout=TIMEOUT) as r:
            return r.read().decode()

    def waitForMetric(self, port: int, name: str, labels: str, value: float,
                      timeout: float = TIMEOUT) -> str:
        """
        Wait until sample C{name}{C{labels}} of the end whose metrics are
        on C{port} is at least C{value}; return the scrape that showed it.

        Counters change at once, where the log's lines about links are
        rate-limited (one per kind every 10 s): wait for a second link up
        here, not for a second "link up" line.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics(port)
            got = metric(text, name, labels)
            if got is not None and got >= value:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {name}"
                                     f"{{{labels}}} >= {value} on the end with metrics on "
                                     f"{port} (last: {got})")
            time.sleep(0.05)


#: Applications talking at once in the cross-talk tests.
APPS = 50


class SessionsTestCase(FaultTestCase):
    """
    An echo peer, a server and a client with C{--sessions}, each with its
    metrics on loopback.
    """

    def setUp(self) -> None:
        super().setUp()
        self.echo = EchoThread()
        self.addCleanup(self.echo.stop)
        self.tcp, self.clientUDP = freePort(), freePort(UDP)
        self.serverMetrics, self.clientMetrics = freePort(), freePort()
        self.entry = (LOCAL, self.clientUDP)

    def sessionServer(self, *more: str, sessions: bool = True,
                      name: str = "server") -> subprocess.Popen[bytes]:
        """
        C{server [--sessions] --peer ECHO}, once it listens.  Without
        sessions it needs a UDP port of its own.
        """
        udp = ["--sessions", "--udp", f"{LOCAL}:0"] if sessions else [
            "--udp", f"{LOCAL}:{freePort(UDP)}"]
        process = self.spawn(
            name, TWISTD, "-n", "--pidfile=", "udptunnel", "server", *udp,
            "--tcp", f"tcp:{self.tcp}:interface={LOCAL}",
            "--peer", f"{LOCAL}:{self.echo.port}",
            "--metrics", f"tcp:{self.serverMetrics}:interface={LOCAL}", *more)
        self.waitForOutput(process, "listening for the TCP link on")
        self.waitForOutput(process, "serving metrics on")
        return process

    def sessionClient(self, *more: str) -> subprocess.Popen[bytes]:
        """
        C{client --sessions}, once its UDP socket is bound.
        """
        process = self.end(
            "client", "udptunnel", "client", "--sessions",
            "--tcp", f"{LOCAL}:{self.tcp}", "--udp", f"{LOCAL}:{self.clientUDP}",
            "--metrics", f"tcp:{self.clientMetrics}:interface={LOCAL}", *more)
        self.waitForOutput(process, "serving metrics on")
        return process

    def apps(self, count: int, host: str = LOCAL) -> list[socket.socket]:
        sockets = appSockets(count, host)
        self.addCleanup(closeAll, sockets)
        return sockets

    def sessions(self, port: int) -> float | None:
        """
        The C{udptunnel_sessions_open} gauge of the end whose metrics are on
        C{port}.
        """
        return metric(self.metrics(port), "udptunnel_sessions_open")

    def waitForSessions(self, port: int, count: int, timeout: float = TIMEOUT) -> None:
        waitFor(lambda: self.sessions(port) == count,
                f"{count} sessions on the end with metrics on {port} "
                f"(last: {self.sessions(port)})", timeout)

    def assertOwnReplies(self, replies: list[list[bytes]], round: int, first: int = 0) -> None:
        """
        Every application got its own reply, and nothing else.
        """
        wrong = {first + i: got for i, got in enumerate(replies)
                 if got != [request(first + i, round)]}
        self.assertEqual(wrong, {}, f"{len(wrong)} of {len(replies)} applications got "
                         "no reply, or not only their own")


class FourTunnels(TwistdTestCase):
    """
    A config file for the installed twistd: the seed scenario's two ends
    and a DNS-like tunnel with sessions (both ends), in one process.
    """

    def writeConfig(self, text: str) -> str:
        path = self.path("tunnels.toml")
        with open(path, "w") as file:
            file.write(textwrap.dedent(text))
        return path

    def fourTunnels(self, dnsSessions: int = 1024) -> str:
        return f"""\
            metrics = "tcp:{self.metrics}:interface=127.0.0.1"

            [tunnel.natbox]
            role = "server"
            udp = "127.0.0.1:{self.seedUDP}"
            tcp = "tcp:{self.seedTCP}:interface=127.0.0.1"
            stats-interval = 1

            [tunnel.relay]
            role = "client"
            tcp = "127.0.0.1:{self.seedTCP}"
            udp = "127.0.0.1:{self.relayUDP}"
            peer = "127.0.0.1:{self.pop.getsockname()[1]}"

            [tunnel.dns-stub]
            role = "client"
            tcp = "127.0.0.1:{self.dnsTCP}"
            udp = "127.0.0.1:{self.dnsUDP}"
            sessions = true

            [tunnel.dns-relay]
            role = "server"
            tcp = "tcp:{self.dnsTCP}:interface=127.0.0.1"
            udp = "127.0.0.1:0"
            peer = "127.0.0.1:{self.resolver.getsockname()[1]}"
            sessions = true
            max-sessions = {dnsSessions}
            """

    def setUp(self) -> None:
        super().setUp()
        self.pop, self.resolver = self.udpSocket(), self.udpSocket()
        self.metrics, self.seedTCP, self.dnsTCP = freePort(), freePort(), freePort()
        self.seedUDP, self.relayUDP, self.dnsUDP = (freePort(kind=socket.SOCK_DGRAM)
                                                    for _ in range(3))

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics",
                                    timeout=TIMEOUT) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def startFourTunnels(self) -> tuple[str, subprocess.Popen[bytes], socket.socket]:
        """
        The installed twistd running L{fourTunnels}, once the seed tunnel
        relayed a round trip and the DNS tunnel three queries: the config
        file, the process, and the seed's application socket.
        """
        config = self.writeConfig(self.fourTunnels())
        process = self.spawn("run", TWISTD, "-n", "--pidfile=", "udptunnel", "run",
                             "--config", config)
        self.waitForOutput(process, "4 tunnel(s) from")
        app = self.udpSocket()
        self.assertRelays(app, self.pop, self.seedUDP, self.relayUDP)
        self.queries(3)
        return config, process, app

    def queries(self, count: int) -> None:
        """
        C{count} applications, each on its own port, ask the "resolver"
        through the DNS tunnel, which answers each; every one gets its own
        answer (one session each).
        """
        apps = [self.udpSocket() for _ in range(count)]
        for index, app in enumerate(apps):
            app.sendto(b"query %d" % index, ("127.0.0.1", self.dnsUDP))
        for _ in range(count):
            got = receive(self.resolver, TIMEOUT)
            assert got is not None, "a query never reached the resolver"
            self.resolver.sendto(b"answer to " + got[0], got[1])
        for index, app in enumerate(apps):
            self.assertEqual(receive(app, TIMEOUT),
                             (b"answer to query %d" % index, ("127.0.0.1", self.dnsUDP)))
