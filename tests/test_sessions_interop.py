"""
Sessions and Debian's C{udptunnel} 1.1: three C{udptunnel -c} clients at
once against our C{server --sessions --peer ECHO}, each with its own
application.  Each C client's connection is a session with a UDP socket of
its own, so what the echo answers goes back to that client only.

    app i 127.0.0.3:P_i --> 127.0.0.1:P_i (C client i's wildcard socket)
        udptunnel -c 127.0.0.1/T 127.0.0.3/P_i  || TCP 127.0.0.1:T
    server --sessions --peer ECHO: socket i --> echo --> socket i
        --> C client i --> app i

The quirks of udptunnel 1.1 that shape this (see L{tests.test_interop}):
it receives on C{*:P} and sends to C{HOST:P} (quirk 1, so app i binds
127.0.0.3:P_i and sends to 127.0.0.1:P_i), it exits when its connection
attempt fails (quirk 3, so our server listens first), it takes an empty
datagram for an error (quirk 4, so none is sent), and it handles one frame
per read (quirk 5, so each application keeps one datagram in flight).
Skipped without the C tool, failed with C{UDPTUNNEL_REQUIRE_INTEROP=1}.
"""

from __future__ import annotations

import socket
import urllib.request

from tests.test_faults import metric
from tests.test_interop import (
    APP_NEXT_TO_DEBIAN_CLIENT,
    LOOPBACK,
    UDPTUNNEL,
    InteropTestCase,
    isListening,
    payload,
    wildcardPort,
)
from tests.test_sessions_e2e import Echo
from tests.test_twistd import TIMEOUT, TWISTD, freePort, receive, waitFor

#: Debian clients at once.
CLIENTS = 3
#: Datagram sizes each application sends, one at a time (quirk 5).
SIZES = (1, 64, 1400, 8000)


class DebianClientsTests(InteropTestCase):
    """
    Several C{udptunnel -c} against one C{server --sessions}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.echo = Echo()
        self.addCleanup(self.echo.stop)
        self.tcp, self.metricsPort = freePort(), freePort()
        self.server = self.spawn(
            "server", TWISTD, "-n", "--pidfile=", "udptunnel", "server", "--sessions",
            "--tcp", f"tcp:{self.tcp}:interface={LOOPBACK}",
            "--peer", f"{LOOPBACK}:{self.echo.port}",
            "--metrics", f"tcp:{self.metricsPort}:interface={LOOPBACK}")
        self.waitForOutput(self.server, "serving metrics on")
        # Quirk 3: each C client connects once, so our server listens first.
        waitFor(lambda: isListening(self.tcp), f"our server to listen on TCP {self.tcp}")

    def sessions(self) -> float | None:
        url = f"http://{LOOPBACK}:{self.metricsPort}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return metric(r.read().decode(), "udptunnel_sessions_open")

    def test_noCrossTalk(self) -> None:
        """
        Three C clients, each its own session: every application's
        datagrams come back to it, byte for byte, and to no other; the
        echo sees one socket per C client.
        """
        ports: list[int] = []
        apps: list[socket.socket] = []
        clients = []
        for i in range(CLIENTS):
            port = wildcardPort(socket.SOCK_DGRAM, avoid=(self.echo.port, *ports))
            ports.append(port)
            apps.append(self.appSocket(APP_NEXT_TO_DEBIAN_CLIENT, port))
            clients.append(self.spawn(
                f"debian-client-{i}", UDPTUNNEL, "-c", f"{LOOPBACK}/{self.tcp}", "-v",
                f"{APP_NEXT_TO_DEBIAN_CLIENT}/{port}"))
            waitFor(lambda count=i + 1: self.sessions() == count,
                    f"session {i + 1} on our server")

        # All three at once, one datagram in flight each (quirk 5).
        for size in SIZES:
            for i, (app, port) in enumerate(zip(apps, ports)):
                app.sendto(payload(f"debian client {i}", size), (LOOPBACK, port))
            for i, app in enumerate(apps):
                self.assertDatagram(app, payload(f"debian client {i}", size),
                                    f"{size} bytes back to application {i}")
        for i, app in enumerate(apps):
            self.assertIsNone(receive(app, 0.5), f"application {i} got more")
        self.assertEqual(len(self.echo.sources), CLIENTS, "one server socket per C client")
        self.assertEqual(self.sessions(), CLIENTS)
        for client in clients:
            self.assertIsNone(client.poll(), self.output(client))

        self.stopOurEnd(self.server)
        for i, client in enumerate(clients):
            self.assertEqual(self.assertExits(client, f"Debian's client {i}"), 0)
