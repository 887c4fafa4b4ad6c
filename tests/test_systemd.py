"""
systemd: the UDP socket from socket activation (C{--udp systemd:...}) and
the notifications of a C{Type=notify} service (C{sd_notify}).

The end-to-end tests run the installed twistd under
C{systemd-socket-activate} (Debian's C{systemd} package), with a TCP and a
datagram socket as one C{.socket} unit passes them, and read the
notifications from a C{NOTIFY_SOCKET} the test binds.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from typing import Any

from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from udptunnel.cli.activation import systemdDatagramSocket
from udptunnel.cli.addresses import parseSystemdUDP
from udptunnel.ops.notify import (
    STATUS_INTERVAL,
    Notifier,
    NotifyService,
    notifyAddress,
    notifyService,
    watchdogInterval,
)
from udptunnel.tap import Options
from udptunnel.tunnel.service import TunnelService
from udptunnel.udp.port import DatagramSocket
from udptunnel.udp.service import UDPService

from .test_datagram import Counting
from .test_faults import skipUnlessAble
from .test_twistd import (
    STOPPED_BY_SIGTERM,
    TIMEOUT,
    TWISTD,
    TwistdTestCase,
    freePort,
    receive,
)

ACTIVATE = "systemd-socket-activate"


def whyNoSocketActivate() -> str | None:
    if shutil.which(ACTIVATE) is None:
        return f"{ACTIVATE} is not installed (Debian: apt-get install systemd)"
    return None


def udpSocket(testCase: Any, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    testCase.addCleanup(sock.close)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock


def notifySocket(testCase: Any, name: str) -> tuple[socket.socket, str]:
    """
    An abstract Unix datagram socket for C{NOTIFY_SOCKET}, and its value.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    testCase.addCleanup(sock.close)
    label = f"udptunnel-test-{os.getpid()}-{name}"
    sock.bind(b"\0" + label.encode())
    return sock, "@" + label


class ParseTests(SynchronousTestCase):
    """
    C{--udp systemd:N} and C{systemd:NAME}.
    """

    def test_forms(self) -> None:
        self.assertEqual(parseSystemdUDP("systemd:1"), 1)
        self.assertEqual(parseSystemdUDP("systemd:udptunnel.socket"), "udptunnel.socket")
        self.assertIsNone(parseSystemdUDP("127.0.0.1:5073"))
        self.assertIsNone(parseSystemdUDP("5073"))

    def test_bad(self) -> None:
        for bad in ("systemd:", "systemd:domain=INET:index=1"):
            with self.assertRaises(ValueError) as caught:
                parseSystemdUDP(bad)
            self.assertIn("systemd:N", str(caught.exception))


class LookupTests(SynchronousTestCase):
    """
    Which of the sockets systemd passed C{--udp systemd:...} takes.
    """

    def setUp(self) -> None:
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(self.tcp.close)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.udp = udpSocket(self)
        # As one .socket unit passes them: the same name for both.
        self.inherited: list[tuple[int, str | None]] = [
            (self.tcp.fileno(), "tun.socket"), (self.udp.fileno(), "tun.socket")]

    def test_byIndex(self) -> None:
        fd, host, port = systemdDatagramSocket(1, self.inherited)
        self.assertEqual((fd, host, port),
                         (self.udp.fileno(), "127.0.0.1", self.udp.getsockname()[1]))
        # A look only: the descriptor is still open.
        self.assertEqual(self.udp.getsockname()[1], port)

    def test_byNamePicksTheDatagramSocket(self) -> None:
        self.assertEqual(systemdDatagramSocket("tun.socket", self.inherited)[0],
                         self.udp.fileno())

    def test_streamRefused(self) -> None:
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket(0, self.inherited)
        self.assertIn("not a UDP socket", str(caught.exception))

    def test_outOfRange(self) -> None:
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket(2, self.inherited)
        self.assertIn("passed 2 socket(s)", str(caught.exception))

    def test_unknownName(self) -> None:
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket("other", self.inherited)
        self.assertIn("no socket of that name; systemd passed tun.socket",
                      str(caught.exception))

    def test_twoOfOneName(self) -> None:
        other = udpSocket(self)
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket("tun.socket", [*self.inherited, (other.fileno(), "tun.socket")])
        self.assertIn("give its index", str(caught.exception))

    def test_nothingPassed(self) -> None:
        """
        Not started by systemd: the error says so.  (The test process has
        no LISTEN_FDS, so the real look-up finds nothing.)
        """
        self.assertNotIn("LISTEN_FDS", os.environ)
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket(0)
        self.assertIn("systemd passed no sockets", str(caught.exception))

    def test_optionsRefuse(self) -> None:
        """
        On the command line, a usage error that names C{--udp}.
        """
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["server", "--tcp", "9999", "--udp", "systemd:0"])
        self.assertIn("--udp: systemd:0: systemd passed no sockets", str(caught.exception))


class AdoptionTests(TestCase):
    """
    The adopted socket is a L{DatagramSocket}: the tunnel's own batched,
    bounded read.
    """

    def test_adoptedReadsInBatches(self) -> None:
        passed = udpSocket(self)
        passed.setblocking(True)  # as systemd passes it
        protocol = Counting()
        service = UDPService(0, protocol, "", reactor, fd=passed.fileno())
        service.startService()
        self.addCleanup(service.stopService)
        port = service.port
        assert port is not None
        self.assertIsInstance(port, DatagramSocket)
        self.assertEqual(port.getHost().port, passed.getsockname()[1])
        port.stopReading()  # the test reads itself
        port.maxDatagramsPerRead = 3
        sender = udpSocket(self)
        for n in range(5):
            sender.sendto(b"%d" % n, passed.getsockname())
        for _ in range(3):
            port.doRead()  # never blocks: the socket was made non-blocking
        self.assertEqual(protocol.reads, [3, 2])
        self.assertEqual([d for d, _ in protocol.datagrams], [b"0", b"1", b"2", b"3", b"4"])

    def test_stopKeepsThePassedDescriptor(self) -> Any:
        """
        The port works on a duplicate: stopping it leaves the descriptor
        systemd passed open, so a restart adopts it again.
        """
        passed = udpSocket(self)
        service = UDPService(0, Counting(), "", reactor, fd=passed.fileno())
        service.startService()

        def restart(_: object) -> None:
            os.fstat(passed.fileno())  # still open: raises if closed
            service.startService()
            self.addCleanup(service.stopService)
            assert service.port is not None
            self.assertEqual(service.port.getHost().port, passed.getsockname()[1])

        return service.stopService().addCallback(restart)


class _Tunnel(TunnelService):
    """
    A relay whose state the test sets.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.now = "link down"

    def state(self) -> str:
        return self.now


class _Recording(Service):
    def __init__(self, notices: socket.socket, log: list[str]) -> None:
        self._notices, self._log = notices, log

    def startService(self) -> None:
        super().startService()
        # Nothing was sent before this sibling started.
        self._notices.setblocking(False)
        try:
            self._log.append(self._notices.recv(1000).decode())
        except BlockingIOError:
            self._log.append("nothing yet")


class NotifyTests(SynchronousTestCase):
    """
    The messages, on a real abstract Unix socket, with a fake clock.
    """

    def setUp(self) -> None:
        self.notices, self.address = notifySocket(self, self.id().rsplit(".", 1)[-1])
        self.clock = Clock()
        self.relay = _Tunnel(self.clock)

    def received(self) -> list[str]:
        self.notices.setblocking(False)
        messages = []
        for _ in range(100):
            try:
                messages.append(self.notices.recv(1000).decode())
            except BlockingIOError:
                break
        return messages

    def service(self, environ: dict[str, str] | None = None) -> NotifyService:
        environ = {"NOTIFY_SOCKET": self.address} if environ is None else environ
        service = notifyService(self.relay, self.clock, environ)
        assert service is not None
        return service

    def test_addresses(self) -> None:
        self.assertEqual(notifyAddress({"NOTIFY_SOCKET": "@x"}), b"\0x")
        self.assertEqual(notifyAddress({"NOTIFY_SOCKET": "/run/n"}), "/run/n")
        self.assertIsNone(notifyAddress({}))
        self.assertIsNone(notifyAddress({"NOTIFY_SOCKET": "vsock:2:1"}))
        self.assertIsNone(notifyService(self.relay, self.clock, {}))

    def test_watchdogInterval(self) -> None:
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "10000000"}, 5), 5.0)
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "10000000",
                                           "WATCHDOG_PID": "5"}, 5), 5.0)
        self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": "10000000",
                                            "WATCHDOG_PID": "6"}, 5))
        self.assertIsNone(watchdogInterval({}, 5))
        self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": "0"}, 5))

    def test_readyAfterTheOtherChildren(self) -> None:
        """
        READY=1 (with the state) comes once the children before it started,
        not before.
        """
        before: list[str] = []
        _Recording(self.notices, before).setServiceParent(self.relay)
        self.service().setServiceParent(self.relay)
        self.relay.startService()
        self.assertEqual(before, ["nothing yet"])
        self.assertEqual(self.received(), ["READY=1\nSTATUS=link down"])

    def test_statusOnChanges(self) -> None:
        """
        A change is sent on the next turn; changes within
        L{STATUS_INTERVAL} of the last send go together, after it; no change,
        nothing sent.
        """
        self.service().setServiceParent(self.relay)
        self.relay.startService()
        self.received()
        self.clock.advance(STATUS_INTERVAL)
        self.relay.now = "link up 127.0.0.1:4000, peer nobody (phantom)"
        self.relay.stateChanged()
        self.clock.advance(0)
        self.assertEqual(self.received(), ["STATUS=link up 127.0.0.1:4000, peer nobody (phantom)"])
        self.relay.now = "link down"
        self.relay.stateChanged()
        self.relay.now = "link up 127.0.0.1:4001, peer nobody (phantom)"
        self.relay.stateChanged()
        self.clock.advance(STATUS_INTERVAL / 2)
        self.assertEqual(self.received(), [])
        self.clock.advance(STATUS_INTERVAL / 2)
        self.assertEqual(self.received(), ["STATUS=link up 127.0.0.1:4001, peer nobody (phantom)"])
        self.relay.stateChanged()
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(self.received(), [])

    def test_watchdogAndStopping(self) -> None:
        self.service({"NOTIFY_SOCKET": self.address,
                      "WATCHDOG_USEC": "4000000"}).setServiceParent(self.relay)
        self.relay.startService()
        self.assertEqual(self.received(), ["READY=1\nSTATUS=link down", "WATCHDOG=1"])
        self.clock.advance(2)
        self.assertEqual(self.received(), ["WATCHDOG=1"])
        self.relay.stopService()
        self.assertEqual(self.received(), ["STOPPING=1\nSTATUS=stopping"])
        self.clock.advance(10)
        self.assertEqual(self.received(), [])
        self.assertEqual(self.relay.stateObservers, [])

    def test_relayHooks(self) -> None:
        """
        The single-link relay tells its observers when the link comes up
        and goes down.
        """
        from twisted.python.failure import Failure

        from udptunnel.tunnel.single import Relay

        from .fakes import FakeLink

        relay = Relay(self.clock)
        calls: list[str] = []
        relay.stateObservers.append(lambda: calls.append(relay.state()))
        link = FakeLink()
        relay.linkConnected(link)
        relay.linkMade(link)
        relay.linkLost(link, Failure(ConnectionError("gone")))
        self.assertEqual(calls, [f"link up {link.remote}, peer nobody (phantom)",
                                 "link down, peer nobody (phantom)"])

    def test_noSocketThere(self) -> None:
        """
        A notify socket that is gone: a warning, the tunnel goes on.
        """
        from twisted.logger import formatEvent

        from .fakes import captureLogEvents

        events = captureLogEvents(self)
        notifier = Notifier(b"\0udptunnel-test-nobody-listens")
        self.addCleanup(notifier.close)
        notifier.send("READY=1")
        notifier.send("WATCHDOG=1")
        warnings = [formatEvent(e) for e in events if "cannot notify" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("'READY=1'", warnings[0])


def _notices(sock: socket.socket, timeout: float) -> list[str]:
    """
    The notifications waiting on C{sock}, or the first within C{timeout}.
    """
    sock.settimeout(timeout)
    try:
        messages = [sock.recv(4096).decode()]
    except TimeoutError:
        return []
    sock.setblocking(False)
    for _ in range(100):
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    return messages


def _waitForNotice(sock: socket.socket, text: str, timeout: float = TIMEOUT) -> list[str]:
    """
    The notifications received until one contains C{text}.
    """
    seen: list[str] = []
    for _ in range(50):
        got = _notices(sock, timeout)
        if not got:
            break
        seen.extend(got)
        if any(text in message for message in got):
            return seen
    raise AssertionError(f"no notification with {text!r}; got {seen!r}")


class SocketActivationTests(TwistdTestCase):
    """
    The installed twistd, started by C{systemd-socket-activate} with a TCP
    and a UDP socket (as one C{.socket} unit with a C{ListenStream=} and a
    C{ListenDatagram=} passes them), notifying a C{NOTIFY_SOCKET}.
    """

    def activated(self, tcp: int, udp: int, notify: str, *udpOption: str,
                  peer: int | None = None) -> Any:
        """
        The server under two nested C{systemd-socket-activate}s: the outer
        binds the TCP socket (descriptor 3, index 0) and waits for a
        connection; the inner adds the datagram socket (descriptor 4, index
        1), both named C{tun.socket}, and runs twistd.
        """
        skipUnlessAble(whyNoSocketActivate())
        udpOption = udpOption or ("systemd:tun.socket",)
        extra = ["--peer", f"127.0.0.1:{peer}"] if peer is not None else []
        env = dict(os.environ, NOTIFY_SOCKET=notify)
        with open(self.path("server.out"), "wb") as out:
            process = subprocess.Popen(
                [ACTIVATE, "-E", "NOTIFY_SOCKET", "-l", f"127.0.0.1:{tcp}",
                 ACTIVATE, "-E", "NOTIFY_SOCKET", "--datagram", "-l", f"127.0.0.1:{udp}",
                 "--fdname=tun.socket:tun.socket",
                 TWISTD, "-n", "--pidfile=", "udptunnel", "server",
                 "--tcp", "systemd:domain=INET:index=0", "--udp", *udpOption, *extra],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env,
            )
        self.outputs[process.pid] = self.path("server.out")
        self.addCleanup(self.reap, process)
        self.waitForOutput(process, "Listening on", timeout=TIMEOUT)
        return process

    def test_relaysEndToEnd(self) -> None:
        """
        The connection that activates the service is accepted by the
        tunnel; the UDP socket systemd bound carries datagrams both ways;
        READY=1 comes only once both sockets are the tunnel's; STATUS
        follows the link; SIGTERM sends STOPPING=1.
        """
        notices, notify = notifySocket(self, "e2e")
        tcp, udp = freePort(), freePort(socket.SOCK_DGRAM)
        app = udpSocket(self)
        server = self.activated(tcp, udp, notify)
        self.assertEqual(_notices(notices, 0.5), [])  # nothing before activation

        # The peer end of the tunnel, by hand: frames are 2-byte lengths.
        link = socket.create_connection(("127.0.0.1", tcp), timeout=TIMEOUT)
        self.addCleanup(link.close)
        seen = _waitForNotice(notices, "READY=1")
        self.assertTrue(seen[0].startswith("READY=1\nSTATUS="), seen)
        self.assertIn(f"UDP bound on 127.0.0.1:{udp}", self.output(server))
        self.assertIn(f"listening for the TCP link on 127.0.0.1:{tcp}", self.output(server))

        app.sendto(b"request", ("127.0.0.1", udp))
        self.assertEqual(link.recv(100), struct.pack("!H", 7) + b"request")
        link.sendall(struct.pack("!H", 5) + b"reply")
        self.assertEqual(receive(app, TIMEOUT), (b"reply", ("127.0.0.1", udp)))
        _waitForNotice(notices, f"peer 127.0.0.1:{app.getsockname()[1]} (phantom)")

        link.close()
        _waitForNotice(notices, "STATUS=link down")

        self.assertIn(self.stop(server), STOPPED_BY_SIGTERM, self.output(server))
        self.assertIn("STOPPING=1\nSTATUS=stopping", _waitForNotice(notices, "STOPPING=1"))

    def test_relaysWithATunnelClient(self) -> None:
        """
        The activated server and an ordinary client, by index
        (C{systemd:1}), with a fixed peer: application to POP and back.
        """
        notices, notify = notifySocket(self, "client")
        tcp, udp, clientUDP = freePort(), freePort(socket.SOCK_DGRAM), freePort(socket.SOCK_DGRAM)
        pop, app = udpSocket(self), udpSocket(self)
        server = self.activated(tcp, udp, notify, "systemd:1", peer=app.getsockname()[1])
        client = self.spawn("client", TWISTD, "-n", "--pidfile=",
                            *self.clientCommand(tcp, clientUDP, pop.getsockname()[1]))
        _waitForNotice(notices, "READY=1")
        self.waitForOutput(client, "link up")
        # From the POP to the application, through the client, then the
        # activated server's UDP socket.
        pop.sendto(b"hello", ("127.0.0.1", clientUDP))
        self.assertEqual(receive(app, TIMEOUT), (b"hello", ("127.0.0.1", udp)))
        app.sendto(b"back", ("127.0.0.1", udp))
        self.assertEqual(receive(pop, TIMEOUT), (b"back", ("127.0.0.1", clientUDP)))
        self.assertIn(self.stop(server), STOPPED_BY_SIGTERM, self.output(server))

    def test_streamSocketAsUDP(self) -> None:
        """
        C{--udp} naming the TCP socket: a one-line usage error, exit 1.
        """
        notices, notify = notifySocket(self, "bad")
        tcp, udp = freePort(), freePort(socket.SOCK_DGRAM)
        server = self.activated(tcp, udp, notify, "systemd:0")
        link = socket.create_connection(("127.0.0.1", tcp), timeout=TIMEOUT)
        self.addCleanup(link.close)
        self.assertEqual(server.wait(TIMEOUT * 2), 1)
        output = self.output(server)
        self.assertIn("--udp: systemd:0: not a UDP socket", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(_notices(notices, 0.2), [])


CONTRIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "contrib", "systemd")


def _unitValues(path: str, key: str) -> list[str]:
    """
    The values of C{key} in the unit file C{path}, continuation lines joined.
    """
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    return [line.split("=", 1)[1].strip() for line in text.splitlines()
            if line.startswith(key + "=")]


class ContribUnitTests(TwistdTestCase):
    """
    The units of C{contrib/systemd}, as systemd would run them: the
    C{.socket}'s listeners (on free ports) and the C{.service}'s
    C{ExecStart} (with the installed twistd) relay end to end.
    """

    def test_contribUnitsRelay(self) -> None:
        skipUnlessAble(whyNoSocketActivate())
        socketUnit = os.path.join(CONTRIB, "udptunnel.socket")
        self.assertEqual(_unitValues(socketUnit, "ListenStream"), ["9999"])
        self.assertEqual(_unitValues(socketUnit, "ListenDatagram"), ["5073"])
        service = os.path.join(CONTRIB, "udptunnel.service")
        self.assertEqual(_unitValues(service, "Type"), ["notify"])
        (execStart,) = _unitValues(service, "ExecStart")
        argv = execStart.split()
        self.assertTrue(argv[0].endswith("/twistd"), argv)
        notices, notify = notifySocket(self, "contrib")
        tcp, udp = freePort(), freePort(socket.SOCK_DGRAM)
        env = dict(os.environ, NOTIFY_SOCKET=notify)
        with open(self.path("server.out"), "wb") as out:
            # Bare ports, as in the unit: [::] with IPv4 mapped in.
            server = subprocess.Popen(
                [ACTIVATE, "-E", "NOTIFY_SOCKET", "-l", str(tcp),
                 ACTIVATE, "-E", "NOTIFY_SOCKET", "--datagram", "-l", str(udp),
                 "--fdname=udptunnel.socket:udptunnel.socket", TWISTD, *argv[1:]],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env,
            )
        self.outputs[server.pid] = self.path("server.out")
        self.addCleanup(self.reap, server)
        self.waitForOutput(server, "Listening on")
        link = socket.create_connection(("127.0.0.1", tcp), timeout=TIMEOUT)
        self.addCleanup(link.close)
        _waitForNotice(notices, "READY=1")
        app = udpSocket(self)
        app.sendto(b"request", ("127.0.0.1", udp))
        self.assertEqual(link.recv(100), struct.pack("!H", 7) + b"request")
        link.sendall(struct.pack("!H", 5) + b"reply")
        self.assertEqual(receive(app, TIMEOUT), (b"reply", ("127.0.0.1", udp)))
        self.assertIn(self.stop(server), STOPPED_BY_SIGTERM, self.output(server))
        _waitForNotice(notices, "STOPPING=1")
