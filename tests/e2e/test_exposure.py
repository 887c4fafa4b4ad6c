"""
The surfaces around the tunnel, attacked as a stranger would, against the
installed daemon: the metrics endpoint (a drip of half requests), the PROXY
header (a drip of half headers), and what reaches the log and the terminal.

Each test holds the daemon to its bounds with the process's descriptors
limited to 256 (C{RLIMIT_NOFILE}, set in the child before it becomes
twistd), so that a bound that does not hold shows as descriptors run out.
Everything runs on loopback; the attackers are sockets of the test, bound
to 127.0.0.2, each loop bounded in count and in time.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
import urllib.request

from tests.support.ends import FaultTestCase
from tests.support.net import LOCAL, TIMEOUT, UDP, frame, freePort, waitFor
from tests.support.processes import STOPPED_BY_SIGTERM, TWISTD
from tests.support.system import openFiles
from udptunnel.ops.limits import DEADLINE, MAX_PER_HOST

#: The descriptor limit the attacked daemon runs under.
NOFILE = 256
#: How a daemon is started under that limit: the child sets it, then
#: becomes twistd (same PID).
LIMITED = [sys.executable, "-c",
           ("import os, resource, sys; "
           f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
           "os.execv(sys.argv[1], sys.argv[1:])")]
ATTACKER = "127.0.0.2"
#: How long an attacker's connect may wait for the handshake before it gives
#: up and tries again from a new socket, and how many times it tries.  On
#: loopback a handshake takes microseconds, unless the daemon's listen queue
#: is full: the kernel then drops the SYN, and the connect would wait for its
#: retransmission, a second later (the attackers connect faster than the
#: daemon accepts).  Trying again sooner keeps the attack as fast as the
#: daemon can take it.
CONNECT_WAIT = 0.1
CONNECT_TRIES = 20


class Drip:
    """
    C{count} connections from L{ATTACKER} to LOCAL:C{port}, each sending
    C{first} and then one byte a second, from one thread, for at most
    C{seconds}; C{closedAfter} lists, for each connection the daemon
    closed, how long after the start it did.
    """

    def __init__(self, port: int, count: int, first: bytes, seconds: float) -> None:
        self.port, self.count, self.first, self.seconds = port, count, first, seconds
        self.closedAfter: list[float] = []
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Drip:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.seconds + 10)

    def _connect(self) -> socket.socket | None:
        """
        A connection to the daemon that has sent C{first}, or C{None} if it
        could not be made (L{CONNECT_TRIES} handshakes, each given
        L{CONNECT_WAIT}), or was closed before it took C{first}.
        """
        for _ in range(CONNECT_TRIES):
            sock = socket.socket()
            sock.bind((ATTACKER, 0))
            sock.settimeout(CONNECT_WAIT)
            try:
                sock.connect((LOCAL, self.port))
            except TimeoutError:
                sock.close()
                continue
            except OSError:
                sock.close()
                return None
            try:
                sock.settimeout(2)
                sock.sendall(self.first)
            except OSError:
                sock.close()
                return None
            return sock
        return None

    def _run(self) -> None:
        start = time.monotonic()
        sockets = []
        for _ in range(self.count):
            sock = self._connect()
            if sock is None:
                self.closedAfter.append(time.monotonic() - start)
                continue
            sock.setblocking(False)
            sockets.append(sock)
        self.opened = len(sockets)
        nextDrip = time.monotonic() + 1
        while sockets and time.monotonic() - start < self.seconds and not self._stop.is_set():
            readable, _, _ = select.select(sockets, [], [], 0.1)
            for sock in readable:
                try:
                    closed = sock.recv(65536) == b""
                except OSError:
                    closed = True
                if closed:
                    self.closedAfter.append(time.monotonic() - start)
                    sockets.remove(sock)
                    sock.close()
            if time.monotonic() >= nextDrip:
                nextDrip += 1
                for sock in sockets:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass
        for sock in sockets:
            sock.close()


class ExposureTestCase(FaultTestCase):
    def limitedServer(self, *more: str) -> tuple[object, int]:
        """
        A server on loopback, phantom mode, under L{NOFILE} descriptors,
        and a client joined to it with a stream flowing; returns the
        server's process and its TCP port.
        """
        self.serverUDP, self.tcp, self.clientUDP = freePort(UDP), freePort(), freePort(UDP)
        self.app, self.pop = self.udpSocket(), self.udpSocket()
        server = self.spawn("server", *LIMITED, TWISTD, "-n", "--pidfile=", "udptunnel",
                            "server", "--udp", f"{LOCAL}:{self.serverUDP}",
                            "--tcp", f"tcp:{self.tcp}:interface={LOCAL}", *more)
        self.waitForOutput(server, "UDP bound on")
        self.clientProcess = self.client(self.tcp, self.clientUDP, self.pop.getsockname()[1])
        self.flow = self.stream(self.app, (LOCAL, self.serverUDP), self.pop)
        self.assertFlows(self.flow, "before the attack")
        return server, self.tcp

    def restartClient(self) -> float:
        """
        Stop the client and start another (a new TCP connection to the
        server); how long until the stream flows through it again.
        """
        self.stop(self.clientProcess)
        started = time.monotonic()
        self.clientProcess = self.client(self.tcp, self.clientUDP, self.pop.getsockname()[1],
                                         name="client-again")
        self.assertFlows(self.flow, "after the client's restart", timeout=10)
        return time.monotonic() - started


class MetricsDripTests(ExposureTestCase):
    def test_dripCannotTakeTheTunnelsDescriptors(self) -> None:
        """
        300 connections send the start of a request and then a byte a
        second: at most 4 are held (one host's share), each for 10 s
        however it drips; the descriptors stay near where they were; a
        scrape from another address is answered; and a client that
        reconnects meanwhile gets its link.
        """
        metrics = freePort()
        server, _ = self.limitedServer("--metrics", f"tcp:{metrics}:interface={LOCAL}")
        before = openFiles(server.pid)  # type: ignore[attr-defined]
        drip = Drip(metrics, 300, b"GET /metrics HTTP/1.1\r\n", DEADLINE + 5).start()
        self.addCleanup(drip.stop)
        waitFor(lambda: drip.opened + len(drip.closedAfter) >= 300, "the attack's connections")
        most = max(openFiles(server.pid) for _ in range(5))  # type: ignore[attr-defined]
        with urllib.request.urlopen(f"http://{LOCAL}:{metrics}/metrics", timeout=TIMEOUT) as r:
            self.assertIn(b"udptunnel_links_total", r.read())
        took = self.restartClient()
        waitFor(lambda: len(drip.closedAfter) == 300, "every attacker closed",
                DEADLINE + 5)
        self.assertLessEqual(most, before + MAX_PER_HOST + 2, f"{most} descriptors")
        held = sorted(drip.closedAfter)[-MAX_PER_HOST:]
        for after in held:
            self.assertGreater(after, DEADLINE - 1)
            self.assertLess(after, DEADLINE + 4)
        self.assertLess(took, 10)
        self.assertSurvived(server)  # type: ignore[arg-type]


class ProxyHeaderTests(ExposureTestCase):
    def balancedServer(self, *more: str) -> tuple[object, int, socket.socket]:
        """
        A server with C{--proxy-protocol} under L{NOFILE} descriptors, its
        fixed peer a socket of the test; returns the process, its TCP port
        and that socket.
        """
        tcp, app = freePort(), self.udpSocket()
        server = self.spawn("server", *LIMITED, TWISTD, "-n", "--pidfile=", "udptunnel",
                            "server", "--proxy-protocol", "--udp", f"{LOCAL}:0",
                            "--peer", f"{LOCAL}:{app.getsockname()[1]}",
                            "--tcp", f"tcp:{tcp}:interface={LOCAL}", *more)
        self.waitForOutput(server, "listening for the TCP link on")
        return server, tcp, app

    def balancer(self, tcp: int, header: bytes) -> socket.socket:
        """
        What a balancer does for a client: connect, send the header.
        """
        sock = socket.create_connection((LOCAL, tcp), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(header)
        return sock

    def test_halfHeadersWithinMaxPending(self) -> None:
        """
        300 connections that send the start of a header and stop hold at
        most C{--max-pending} descriptors, and a real client behind the
        balancer gets through meanwhile.
        """
        server, tcp, app = self.balancedServer("--max-pending", "4")
        before = openFiles(server.pid)  # type: ignore[attr-defined]
        drip = Drip(tcp, 300, b"PROXY TCP4 10.", 8).start()
        self.addCleanup(drip.stop)
        waitFor(lambda: drip.opened + len(drip.closedAfter) >= 300, "the attack's connections")
        # What is held while the attackers keep their sockets open (a burst
        # of accepts passes the cap for one turn of the event loop: the
        # evicted are closed on the next).
        waitFor(lambda: openFiles(server.pid) <= before + 4 + 2,  # type: ignore[attr-defined]
                "the server's descriptors within --max-pending", 5)
        client = self.balancer(tcp, f"PROXY TCP4 198.51.100.7 127.0.0.1 40000 {tcp}\r\n".encode()
                               + frame(b"hello"))
        app.settimeout(TIMEOUT)
        self.assertEqual(app.recv(100), b"hello")
        client.sendall(frame(b"still here"))
        self.assertEqual(app.recv(100), b"still here")
        # The drip's thread notes the closes as it reads them: wait for it.
        waitFor(lambda: len(drip.closedAfter) >= 296 - 1,
                f"the server to close all but --max-pending of the 300 (closed: "
                f"{len(drip.closedAfter)})", 5)
        self.assertSurvived(server)  # type: ignore[arg-type]

    def test_controlBytesNeverReachTheLog(self) -> None:
        """
        A header whose address carries a scope id with escape sequences, or
        a newline and a forged line, is refused (it passed C{--allow ::1}
        before, the scope being dropped); nothing of it reaches the log
        raw.
        """
        metrics = freePort()
        server, tcp, app = self.balancedServer(
            "--allow", "::1/128", "--metrics", f"tcp:{metrics}:interface={LOCAL}")
        for scope in (b"\x1b[2J\x1b[31mESC", b"\nFORGED: link up"):
            sock = self.balancer(tcp, b"PROXY TCP6 ::1%" + scope + f" ::1 5555 {tcp}\r\n".encode()
                                 + frame(b"in"))
            sock.settimeout(TIMEOUT)
            try:
                self.assertEqual(sock.recv(1), b"")
            except ConnectionResetError:
                pass
        app.settimeout(0.5)
        self.assertRaises(TimeoutError, app.recv, 100)
        with urllib.request.urlopen(f"http://{LOCAL}:{metrics}/metrics", timeout=TIMEOUT) as r:
            text = r.read().decode()
        self.assertIn('udptunnel_pending_closed_total{reason="proxy-header"} 2.0', text)
        self.stop(server)  # type: ignore[arg-type]  # writes what the rate limit held
        output = self.output(server)
        self.assertEqual(output.count("scoped address"), 1, output)
        self.assertEqual(output.count("stray CR or LF"), 1, output)
        self.assertNotIn("\x1b", output)
        self.assertFalse([line for line in output.splitlines() if "FORGED" in line.split("]", 1)[0]
                          or line.lstrip().startswith("FORGED")], output)


class ReloadTests(ExposureTestCase):
    def fifoReader(self, path: str) -> int:
        """
        Wait until the daemon opens the FIFO at C{path} to read it; return
        the descriptor of a writer of ours, opened then, which writes
        nothing until the test says (the read blocks on it meanwhile).
        """
        opened: list[int] = []

        def writer() -> bool:
            try:
                # Without a reader at the other end this fails (ENXIO)
                # rather than blocking.
                opened.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                return False
            return True

        waitFor(writer, f"the daemon to open {path} to read it")
        return opened[0]

    def test_fifoDoesNotStopTheTunnels(self) -> None:
        """
        The config file replaced by a FIFO, and SIGUSR2: the read blocks in
        a thread of its own, on a FIFO whose writer writes nothing; the
        tunnels go on carrying round trips; once the FIFO is fed the config,
        the reload finds that nothing changed.  The daemon stops at once on
        SIGTERM while a reload's read is still blocked.

        That a read never fed is given up at the reload's deadline, with one
        line, changing nothing, is checked against a shorter deadline by
        L{tests.unit.cli.test_tunnelset}'s C{test_readOffTheLoop}: here it
        would cost the whole C{RELOAD_DEADLINE}.
        """
        udp, tcp = freePort(UDP), freePort()
        app, pop = self.udpSocket(), self.udpSocket()
        path = self.path("tunnels.toml")
        text = (f'[tunnel.natbox]\nrole = "server"\nudp = "{LOCAL}:{udp}"\n'
                f'tcp = "tcp:{tcp}:interface={LOCAL}"\n\n'
                f'[tunnel.relay]\nrole = "client"\ntcp = "{LOCAL}:{tcp}"\n'
                f'udp = "{LOCAL}:0"\npeer = "{LOCAL}:{pop.getsockname()[1]}"\n')
        with open(path, "w") as file:
            file.write(text)
        process = self.spawn("run", TWISTD, "-n", "--pidfile=", "udptunnel", "run",
                             "--config", path)
        self.waitForOutput(process, "reload with kill -USR2")
        flow = self.stream(app, (LOCAL, udp), pop)
        self.assertFlows(flow, "before the reload")
        os.remove(path)
        os.mkfifo(path)
        process.send_signal(signal.SIGUSR2)
        writer = self.fifoReader(path)
        try:
            # The read blocks all along (the FIFO's one writer writes
            # nothing yet): any round trip shows the event loop is free.
            self.assertFlows(flow, "while the reload waits for the FIFO")
            self.assertNotIn("reload:", self.output(process), "the read returned")
            os.write(writer, text.encode())
        finally:
            os.close(writer)
        self.waitForOutput(process, "reload: no tunnel changed")
        self.assertFlows(flow, "after the reload")

        # Again, and SIGTERM while the read blocks.
        process.send_signal(signal.SIGUSR2)
        writer = self.fifoReader(path)
        try:
            self.assertIn(self.stop(process), STOPPED_BY_SIGTERM)
        finally:
            os.close(writer)
        output = self.output(process)
        self.assertEqual(output.count("reload:"), 1, output)
        self.assertNotIn("Traceback", output)
