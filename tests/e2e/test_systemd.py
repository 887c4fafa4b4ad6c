"""
The installed twistd under systemd's tools: socket activation with
C{systemd-socket-activate}, notifications, and the units of
C{contrib/systemd}.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from typing import Any

from tests.support import REPOSITORY
from tests.support.net import TIMEOUT, freePort, receive, udpSocket
from tests.support.processes import (
    STOPPED_BY_SIGTERM,
    TWISTD,
    TwistdTestCase,
    notifySocket,
    pendingNotices,
    waitForNotice,
)
from tests.support.system import skipUnlessAble

ACTIVATE = "systemd-socket-activate"


def whyNoSocketActivate() -> str | None:
    if shutil.which(ACTIVATE) is None:
        return f"{ACTIVATE} is not installed (Debian: apt-get install systemd)"
    return None


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
        self.assertEqual(pendingNotices(notices, 0.5), [])  # nothing before activation

        # The peer end of the tunnel, by hand: frames are 2-byte lengths.
        link = socket.create_connection(("127.0.0.1", tcp), timeout=TIMEOUT)
        self.addCleanup(link.close)
        seen = waitForNotice(notices, "READY=1")
        self.assertTrue(seen[0].startswith("READY=1\nSTATUS="), seen)
        self.assertIn(f"UDP bound on 127.0.0.1:{udp}", self.output(server))
        self.assertIn(f"listening for the TCP link on 127.0.0.1:{tcp}", self.output(server))

        app.sendto(b"request", ("127.0.0.1", udp))
        self.assertEqual(link.recv(100), struct.pack("!H", 7) + b"request")
        link.sendall(struct.pack("!H", 5) + b"reply")
        self.assertEqual(receive(app, TIMEOUT), (b"reply", ("127.0.0.1", udp)))
        waitForNotice(notices, f"peer 127.0.0.1:{app.getsockname()[1]} (phantom)")

        link.close()
        waitForNotice(notices, "STATUS=link down")

        self.assertIn(self.stop(server), STOPPED_BY_SIGTERM, self.output(server))
        self.assertIn("STOPPING=1\nSTATUS=stopping", waitForNotice(notices, "STOPPING=1"))

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
        waitForNotice(notices, "READY=1")
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
        self.assertEqual(pendingNotices(notices, 0.2), [])


CONTRIB = os.path.join(REPOSITORY,
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
        """
        The C{.socket} unit listens on 9999 (stream) and 5073 (datagram), the
        C{.service} is C{Type=notify} and runs twistd; that C{ExecStart}, given
        sockets on free ports as the units describe them, notifies READY=1,
        relays both ways, and notifies STOPPING=1 on SIGTERM.
        """
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
        waitForNotice(notices, "READY=1")
        app = udpSocket(self)
        app.sendto(b"request", ("127.0.0.1", udp))
        self.assertEqual(link.recv(100), struct.pack("!H", 7) + b"request")
        link.sendall(struct.pack("!H", 5) + b"reply")
        self.assertEqual(receive(app, TIMEOUT), (b"reply", ("127.0.0.1", udp)))
        self.assertIn(self.stop(server), STOPPED_BY_SIGTERM, self.output(server))
        waitForNotice(notices, "STOPPING=1")
