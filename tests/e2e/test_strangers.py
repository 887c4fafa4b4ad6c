"""
Connections and sources that are not the tunnel's own, against the
installed daemons: port scans and health checks that connect and close,
silent TLS peers that never finish a handshake, two applications flapping
one phantom end, and a flood the kernel has to drop.
"""

from __future__ import annotations

import itertools
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
    #: Seconds between the starts of two probes.
    PACE = 0.1

    def runProbes(self, silentFor: float) -> None:
        """
        L{PROBES} probes, one every L{PACE} seconds, each closing
        C{silentFor} seconds after it connected (so with C{silentFor}
        longer than L{PACE}, several wait at once), while a stream of round
        trips goes through the tunnel; then the checks.
        """
        serverUDP, tcp, clientUDP, metricsPort, clientMetrics = (
            freePort(UDP), freePort(), freePort(UDP), freePort(), freePort()
        )
        app, pop = self.udpSocket(), self.udpSocket()
        server = self.server(serverUDP, tcp, "--metrics", f"tcp:{metricsPort}:interface={LOCAL}")
        client = self.client(tcp, clientUDP, pop.getsockname()[1],
                             "--metrics", f"tcp:{clientMetrics}:interface={LOCAL}")
        stream = Stream(app, (LOCAL, serverUDP), pop, interval=0.01).start()
        self.addCleanup(stream.stop)
        self.assertFlows(stream, "before the probes")

        sentBefore, backBefore = stream.sent, stream.back.snapshot()[0]
        self.probe(tcp, silentFor)
        sentAfter = stream.sent
        sent = sentAfter - sentBefore
        # The round trips in flight at the end: until the echo of the last
        # one sent in the window is back (they come back in order).
        waitFor(lambda: stream.back.snapshot()[1] >= sentAfter - 1,
                "the echo of the last datagram sent while probing")
        back = stream.back.snapshot()[0] - backBefore

        # Every round trip of the window came back, but for scheduling noise.
        self.assertGreaterEqual(back, 0.95 * sent, f"{back} of {sent} round trips")
        text = self.waitForMetric(metricsPort, "udptunnel_pending_closed_total",
                                  'reason="peer-closed"', self.PROBES)
        self.assertEqual(metric(text, "udptunnel_links_total", 'event="replaced"'), 0.0, text)
        self.assertEqual(metric(text, "udptunnel_links_total", 'event="up"'), 1.0, text)
        self.assertEqual(
            metric(text, "udptunnel_pending_closed_total", 'reason="peer-closed"'),
            float(self.PROBES), text,
        )
        self.assertEqual(self.output(client).count("link up"), 1, self.output(client))
        self.assertNotIn("link down", self.output(client))
        # A second "link up" line could still be held back by the log's rate
        # limit (10 s): the client's counters tell at once.
        text = self.metrics(clientMetrics)
        self.assertEqual(metric(text, "udptunnel_links_total", 'event="up"'), 1.0, text)
        self.assertEqual(metric(text, "udptunnel_links_total", 'event="lost"'), 0.0, text)
        self.assertSurvived(server, client)
        self.assertIntact(stream)

    def probe(self, port: int, silentFor: float) -> None:
        """
        L{PROBES} connections to LOCAL:C{port}, one every L{PACE} seconds,
        each closed, silent, C{silentFor} seconds after it was made; return
        once the last is closed.
        """
        holding: list[tuple[float, socket.socket]] = []

        def closeAll() -> None:
            for _, sock in holding:
                sock.close()

        self.addCleanup(closeAll)
        start, made = time.monotonic(), 0
        for _ in range(10 * self.PROBES):
            now = time.monotonic()
            for entry in [entry for entry in holding if entry[0] <= now]:
                entry[1].close()
                holding.remove(entry)
            if made == self.PROBES and not holding:
                return
            if made < self.PROBES and now >= start + made * self.PACE:
                sock = connectTCP(port)
                self.assertIsNotNone(sock, "a probe could not connect")
                assert sock is not None
                holding.append((time.monotonic() + silentFor, sock))
                made += 1
                continue
            due = [when for when, _ in holding]
            if made < self.PROBES:
                due.append(start + made * self.PACE)
            time.sleep(max(0.0, min(due) - time.monotonic()))
        raise AssertionError(f"{made} probes made, {len(holding)} still open")

    def test_connectAndClose(self) -> None:
        """
        Ten connect-and-closes, a tenth of a second apart: the link is never
        touched (not replaced, never down at the client), the round trips
        come back (but for scheduling noise), and each probe is counted as
        closed by its peer.
        """
        self.runProbes(0.0)

    def test_connectWaitAndClose(self) -> None:
        """
        Health checks that each hold their connection half a second,
        silent, ten of them a tenth of a second apart (several waiting at
        once): the link is never touched, and each is counted as closed by
        its peer.
        """
        self.runProbes(0.5)


class SilentTLSTests(FaultTestCase):
    """
    Hundreds of connections that never start their TLS handshake, while the
    real client relays.
    """

    SILENT = 300
    #: The --pending-timeout: the strangers make their connections in a
    #: fraction of it (well under 0.1 s here).
    DEADLINE = 1.0
    CAP = 64

    def tlsArguments(self, authority: Authority, name: str) -> list[str]:
        cert, key = authority.issue(name)
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", authority.path]

    def test_silentPeersClosedAtDeadline(self) -> None:
        """
        With C{--pending-timeout} L{DEADLINE} and C{--max-pending} L{CAP},
        L{SILENT} connections that never start their handshake hold at most
        L{CAP} waiting connections (and few descriptors) at once; each is
        closed, evicted as the oldest or at the deadline (the last ones),
        and the server's open files come back to their baseline; the real
        client's link is never replaced and relays throughout, and the
        lines about the strangers are rate-limited.
        """
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
        self.assertEqual(metric(text, "udptunnel_links_total", 'event="up"'), 1.0, text)
        self.assertEqual(self.output(client).count("link up"), 1, self.output(client))
        self.assertNotIn("link down", self.output(client))
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
    Strangers that each connect, send one empty frame and close, L{RATE} a
    second for L{SECONDS} s: on a single-link server without --allow each
    takes the link for a moment (newest wins: that is how a roaming client
    gets it back), so the real client loses it every time it gets it back.
    """

    RATE = 100
    #: Long enough for a client whose delay grew at every replaced link
    #: (0.5, 1, 2, then 4 s, each +/- 20%) to have its third attempt (at
    #: 4.2 s at the latest) replaced too, and so to wait 3.2 s or more
    #: before the next: L{BACK_WITHIN} catches it, wherever the storm ends.
    SECONDS = 5.0
    #: The longest the client may go without trying again.
    BACK_WITHIN = 3.0

    def test_logBoundedAndClientBackAtOnce(self) -> None:
        """
        The server's lines about it are rate-limited, as a sessions
        server's are (not two a connection); and a link the server replaced
        is no failure of the client's, so its reconnect delay does not grow
        through the storm: it never goes L{BACK_WITHIN} seconds without an
        attempt, and relays again within seconds of the storm's end.
        """
        serverUDP, self.tcp, clientUDP, clientMetrics = (
            freePort(UDP), freePort(), freePort(UDP), freePort()
        )
        app, pop = self.udpSocket(), self.udpSocket()
        server = self.server(serverUDP, self.tcp)
        client = self.client(self.tcp, clientUDP, pop.getsockname()[1],
                             "--metrics", f"tcp:{clientMetrics}:interface={LOCAL}")
        stream = self.stream(app, (LOCAL, serverUDP), pop)
        self.assertFlows(stream, "through the new tunnel")

        def attempts() -> float:
            value = metric(self.metrics(clientMetrics), "udptunnel_connect_attempts_total")
            assert value is not None
            return value

        before = len(self.output(server).splitlines())
        clientBefore = len(self.output(client).splitlines())
        # When the client was last known to try: the storm's start (its
        # first stranger takes the link at once), then each new attempt.
        tries, last = [time.monotonic()], attempts()
        strangers = storm(self.tcp, self.RATE, self.SECONDS)
        for _ in range(int(30 / 0.05)):
            if not strangers.is_alive():
                break
            count = attempts()
            if count > last:
                tries.append(time.monotonic())
                last = count
            time.sleep(0.05)
        strangers.join(30)
        stormEnd = time.monotonic()
        during = self.output(server).splitlines()[before:]
        took = stream.waitForMore(stream.back, 20, 20.0, "back at the application after the storm")
        tries.append(stormEnd + took)  # relaying again
        self.assertGreaterEqual(strangers.made, self.RATE * self.SECONDS)  # type: ignore[attr-defined]
        self.assertLess(len(during), 40, "\n".join(during[:60]))
        self.assertLess(len(self.output(client).splitlines()) - clientBefore, 40)
        gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
        self.assertLess(max(gaps), self.BACK_WITHIN,
                        f"the client waited {max(gaps):.1f} s between attempts "
                        f"({len(tries) - 2} in the storm)")
        self.assertLess(took, self.BACK_WITHIN, f"relaying again {took:.1f} s after the storm")
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
        """
        1000 datagrams, from two sources in turn, to a server in phantom
        mode: each change of source is counted
        (C{udptunnel_phantom_changes_total}), but logged in three lines at
        most.
        """
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

    #: The flood comes in bursts of this many seconds, until the metrics
    #: show drops (a burst or two: the socket's 64 KiB fill at once), and
    #: for L{FLOOD_SECONDS} at most.
    BURST = 0.2
    FLOOD_SECONDS = 3.0

    def test_reportedAsAReason(self) -> None:
        """
        A flood into a server whose link is stalled (its peer never reads)
        overflows its small UDP receive buffer: the metrics count the
        kernel's drops as C{reason="kernel-overflow"}, and so does the
        summary the server logs when it stops (with the link still
        stalled).
        """
        serverUDP, tcp, metricsPort = freePort(UDP), freePort(), freePort()
        server = self.server(serverUDP, tcp, "--udp-rcvbuf", "65536",
                             "--metrics", f"tcp:{metricsPort}:interface={LOCAL}")
        stalled = socket.socket()
        self.addCleanup(stalled.close)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((LOCAL, tcp))
        self.waitForOutput(server, "link up")
        app = self.udpSocket()
        drops, text = 0.0, ""
        for _ in range(int(self.FLOOD_SECONDS / self.BURST)):
            sender = flood(app, (LOCAL, serverUDP), 8000, self.BURST)
            sender.join(15)
            text = self.metrics(metricsPort)
            counted = metric(text, "udptunnel_dropped_datagrams_total",
                             'reason="kernel-overflow"')
            assert counted is not None, text
            drops = counted
            if drops > 0:
                break
        self.assertGreater(drops, 0, text)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        summary = [line for line in self.output(server).splitlines() if "tunnel stopped" in line]
        self.assertEqual(len(summary), 1, self.output(server))
        self.assertIn("kernel-overflow=", summary[0])
