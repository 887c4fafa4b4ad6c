"""
Connections and sources that are not the tunnel's own, against the
installed daemons: port scans and health checks that connect and close,
silent TLS peers that never finish a handshake, two applications flapping
one phantom end, and a flood the kernel has to drop.
"""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import threading
import time

from tests.support.certs import Authority
from tests.support.ends import FaultTestCase
from tests.support.net import LOCAL, TIMEOUT, UDP, freePort, metric, waitFor
from tests.support.streams import Stream, flood
from tests.support.system import openFiles


def connectTCP(port: int, timeout: float = 5.0) -> socket.socket | None:
    """
    A TCP connection to LOCAL:C{port}, or C{None} if none was made in time.
    """
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.connect((LOCAL, port))
    except OSError:
        sock.close()
        return None
    return sock


class ProbeTests(FaultTestCase):
    """
    What a port scanner or a load balancer's TCP health check does to the
    server: connect, and close (at once, or after a moment of silence).
    """

    PROBES = 10

    def runProbes(self, silentFor: float) -> None:
        serverUDP, tcp, clientUDP, metricsPort = (
            freePort(UDP), freePort(), freePort(UDP), freePort()
        )
        app, pop = self.udpSocket(), self.udpSocket()
        server = self.server(serverUDP, tcp, "--metrics", f"tcp:{metricsPort}:interface={LOCAL}")
        client = self.client(tcp, clientUDP, pop.getsockname()[1])
        stream = Stream(app, (LOCAL, serverUDP), pop, interval=0.01).start()
        self.addCleanup(stream.stop)
        self.assertFlows(stream, "before the probes")

        sentBefore, backBefore = stream.sent, stream.back.snapshot()[0]
        for _ in range(self.PROBES):
            started = time.monotonic()
            probe = connectTCP(tcp)
            self.assertIsNotNone(probe, "a probe could not connect")
            assert probe is not None
            time.sleep(silentFor)
            probe.close()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        sent = stream.sent - sentBefore
        time.sleep(1.0)  # the round trips in flight at the end
        back = stream.back.snapshot()[0] - backBefore

        # Every round trip of the window came back, but for scheduling noise.
        self.assertGreaterEqual(back, 0.95 * sent, f"{back} of {sent} round trips")
        text = self.metrics(metricsPort)
        self.assertEqual(metric(text, "udptunnel_links_total", 'event="replaced"'), 0.0, text)
        self.assertEqual(
            metric(text, "udptunnel_pending_closed_total", 'reason="peer-closed"'),
            float(self.PROBES), text,
        )
        self.assertEqual(self.output(client).count("link up"), 1, self.output(client))
        self.assertNotIn("link down", self.output(client))
        self.assertSurvived(server, client)
        self.assertIntact(stream)

    def test_connectAndClose(self) -> None:
        """
        One connect-and-close a second for 10 s: the link is never touched.
        """
        self.runProbes(0.0)

    def test_connectWaitAndClose(self) -> None:
        """
        A health check that holds its connection half a second, silent.
        """
        self.runProbes(0.5)


class SilentTLSTests(FaultTestCase):
    """
    Hundreds of connections that never start their TLS handshake, while the
    real client relays.
    """

    SILENT = 300
    DEADLINE = 3.0
    CAP = 64

    def tlsArguments(self, authority: Authority, name: str) -> list[str]:
        cert, key = authority.issue(name)
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", authority.path]

    def test_silentPeersClosedAtDeadline(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        authority = Authority(directory)
        serverUDP, tcp, clientUDP, metricsPort = (
            freePort(UDP), freePort(), freePort(UDP), freePort()
        )
        app, pop = self.udpSocket(), self.udpSocket()
        server = self.server(
            serverUDP, tcp, *self.tlsArguments(authority, "server"),
            "--pending-timeout", str(self.DEADLINE), "--max-pending", str(self.CAP),
            "--metrics", f"tcp:{metricsPort}:interface={LOCAL}",
        )
        client = self.client(tcp, clientUDP, pop.getsockname()[1],
                             *self.tlsArguments(authority, "client"))
        stream = self.stream(app, (LOCAL, serverUDP), pop)
        self.assertFlows(stream, "before the silent peers")
        baseline = openFiles(server.pid)

        silent: list[socket.socket] = []
        self.addCleanup(lambda: [sock.close() for sock in silent])
        highest = baseline
        waiting = 0.0
        for i in range(self.SILENT):
            sock = connectTCP(tcp)
            if sock is not None:
                silent.append(sock)
            highest = max(highest, openFiles(server.pid))
            if i % 50 == 49:
                waiting = max(waiting, metric(self.metrics(metricsPort),
                                              "udptunnel_pending_links") or 0.0)
        self.assertGreater(len(silent), 0.9 * self.SILENT)
        self.assertFlows(stream, "while silent peers hold connections", count=50)
        # The cap bounds what they hold at once: CAP waiting connections,
        # plus those of one accept loop whose evicted elders close on the
        # next reactor turn; far from one descriptor per silent peer.
        self.assertLessEqual(waiting, self.CAP)
        self.assertGreater(waiting, 0)
        self.assertLessEqual(highest, baseline + self.CAP + 50)

        waitFor(lambda: openFiles(server.pid) <= baseline + 2,
                f"the server's open files back to {baseline}", self.DEADLINE + TIMEOUT)
        self.assertFlows(stream, "after the silent peers were closed", count=50)
        text = self.metrics(metricsPort)
        closed = sum(
            metric(text, "udptunnel_pending_closed_total", f'reason="{why}"') or 0.0
            for why in ("timeout", "evicted")
        )
        self.assertGreaterEqual(closed, len(silent), text)
        self.assertGreater(metric(text, "udptunnel_pending_closed_total",
                                  'reason="timeout"') or 0.0, 0, text)
        self.assertEqual(metric(text, "udptunnel_links_total", 'event="replaced"'), 0.0, text)
        self.assertEqual(self.output(client).count("link up"), 1, self.output(client))
        # Rate-limited: not a line per connection.
        self.assertLess(self.output(server).count("never became the link"), 20)
        self.assertSurvived(server, client)
        self.assertIntact(stream)


def storm(port: int, rate: int, seconds: float) -> threading.Thread:
    """
    In a thread returned started: C{rate} connections a second to
    LOCAL:C{port} for C{seconds}, each sending one empty frame and closing
    (what it takes to become a single-link server's link); its C{made}
    attribute counts them once it is done.
    """

    def run() -> None:
        start = time.monotonic()
        made = 0
        while made < rate * seconds:
            due = start + made / rate
            time.sleep(max(0.0, due - time.monotonic()))
            sock = connectTCP(port, timeout=2.0)
            if sock is not None:
                try:
                    sock.sendall(b"\x00\x00")
                except OSError:
                    pass
                sock.close()
            made += 1
        thread.made = made  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class ConnectionStormTests(FaultTestCase):
    """
    Strangers that each connect, send one empty frame and close, 100 a
    second for 8 s: on a single-link server without --allow each takes the
    link for a moment (newest wins: that is how a roaming client gets it
    back), so the real client loses it 800 times.
    """

    def test_logBoundedAndClientBackAtOnce(self) -> None:
        """
        The server's lines about it are rate-limited, as a sessions
        server's are (not two a connection); and a link the server replaced
        is no failure of the client's, so its reconnect delay does not grow
        through the storm: it relays again within seconds of its end.
        """
        server, client, stream = self.tunnel()
        before = len(self.output(server).splitlines())
        clientBefore = len(self.output(client).splitlines())
        strangers = storm(self.tcp, 100, 8.0)
        strangers.join(30)
        during = self.output(server).splitlines()[before:]
        took = stream.waitForMore(stream.back, 20, 20.0, "back at the application after the storm")
        self.assertGreaterEqual(strangers.made, 800)  # type: ignore[attr-defined]
        self.assertLess(len(during), 40, "\n".join(during[:60]))
        self.assertLess(len(self.output(client).splitlines()) - clientBefore, 40)
        self.assertLess(took, 3.0, f"relaying again {took:.1f} s after the storm")
        self.assertSurvived(server, client)
        stream.stop()
        self.assertEqual(stream.forward.corrupt, [])
        # The strangers' empty frames came out of the tunnel, as the link's.
        self.assertEqual(set(stream.back.corrupt), {b""})


class FlappingPhantomTests(FaultTestCase):
    """
    Two applications send alternately to one phantom end.
    """

    def test_logLinesBounded(self) -> None:
        serverUDP, tcp, clientUDP, metricsPort = (
            freePort(UDP), freePort(), freePort(UDP), freePort()
        )
        one, two, pop = self.udpSocket(), self.udpSocket(), self.udpSocket()
        server = self.server(serverUDP, tcp, "--metrics", f"tcp:{metricsPort}:interface={LOCAL}")
        client = self.client(tcp, clientUDP, pop.getsockname()[1])
        pop.settimeout(TIMEOUT)
        waitFor(lambda: "link up" in self.output(server), "the link")
        for i in range(1000):
            (one if i % 2 == 0 else two).sendto(b"%d" % i, (LOCAL, serverUDP))
            time.sleep(0.001)
        text = ""

        def allCounted() -> bool:
            nonlocal text
            text = self.metrics(metricsPort)
            return (metric(text, "udptunnel_to_tunnel_datagrams_total") or 0) >= 990

        waitFor(allCounted, "the datagrams counted")
        changes = metric(text, "udptunnel_phantom_changes_total")
        assert changes is not None, text
        self.assertGreaterEqual(changes, 980)
        lines = self.output(server).count("phantom peer changed")
        self.assertGreaterEqual(lines, 1)
        self.assertLessEqual(lines, 3, self.output(server))
        self.assertSurvived(server, client)


class KernelDropTests(FaultTestCase):
    """
    The kernel's drops on the tunnel's UDP socket, while reading is paused.
    """

    def test_reportedAsAReason(self) -> None:
        serverUDP, tcp, metricsPort = freePort(UDP), freePort(), freePort()
        server = self.server(serverUDP, tcp, "--udp-rcvbuf", "65536",
                             "--metrics", f"tcp:{metricsPort}:interface={LOCAL}")
        stalled = socket.socket()
        self.addCleanup(stalled.close)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((LOCAL, tcp))
        self.waitForOutput(server, "link up")
        app = self.udpSocket()
        sender = flood(app, (LOCAL, serverUDP), 8000, 3.0)
        sender.join(15)
        text = self.metrics(metricsPort)
        drops = metric(text, "udptunnel_dropped_datagrams_total", 'reason="kernel-overflow"')
        assert drops is not None, text
        self.assertGreater(drops, 0, text)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        summary = [line for line in self.output(server).splitlines() if "tunnel stopped" in line]
        self.assertEqual(len(summary), 1, self.output(server))
        self.assertIn("kernel-overflow=", summary[0])
