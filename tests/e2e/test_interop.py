"""
Interoperability with Debian's C C{udptunnel} 1.1 (Jonathan Lennox's tool,
package C{udptunnel}, binary C{/usr/bin/udptunnel}): the same wire format,
checked byte for byte in both directions and both pairings, through the
installed C{twistd} and the real C tool.

    - Debian's client (C{udptunnel -c}) connected to our server;
    - our client connected to Debian's server (C{udptunnel -s}).

Each test sends datagrams of several sizes, up to the largest the C tool
(and UDP over IPv4) carries, one way and back, with payloads derived from
a hash of their direction and size, and compares them byte for byte.

Without C{/usr/bin/udptunnel} the tests are skipped, unless the environment
has C{UDPTUNNEL_REQUIRE_INTEROP=1} (as CI does, after C{apt-get install
udptunnel}): then they fail.

Quirks of udptunnel 1.1 that shape these tests (each is worked around where
it matters, and said so there):

    1. It binds its UDP port on all addresses (C{0.0.0.0:PORT}, with
       C{SO_REUSEADDR} and C{SO_REUSEPORT}), and that port number is also
       the one it sends to: C{udptunnel ... HOST/PORT} receives on
       C{*:PORT} and sends to C{HOST:PORT}.  So the application next to it
       binds C{PORT} on another loopback address (127.0.0.2 or 127.0.0.3,
       with C{SO_REUSEADDR}: the more specific bind gets the datagrams sent
       to it), and sends to C{127.0.0.1:PORT}, which only the C tool's
       wildcard socket matches.  Our own end cannot share that port (it does
       not set C{SO_REUSEADDR}: "Address already in use"), so it uses ports
       of its own.
    2. It sends from a second, connected socket with an ephemeral port and
       never reads that socket: a reply sent to the source of what it
       delivered is lost.  Replies go to the fixed C{127.0.0.1:PORT}.
    3. It serves one TCP connection and exits (status 0) when that
       connection ends; the client exits (status 1) if its one connection
       attempt fails.  So the listening end is started first and checked to
       listen, and every test starts fresh processes.
    4. A zero-length datagram arriving on its UDP port makes it exit,
       silently, with status 0 (C{recvfrom} returning 0 is taken for an
       error).  The tests never send it one; it therefore cannot produce a
       zero-length frame either.  A zero-length I{frame} from the TCP side
       is fine: it sends an empty datagram, so our end's empty datagrams do
       cross into the C tool's side.
    5. It handles at most one frame per C{read()} of the TCP socket: frames
       that arrive together are sent one per later read, i.e. they stay
       stuck until more data arrives.  The tests therefore keep one
       datagram in flight at a time and wait for it before sending the next.
    6. Its TCP server listens on all interfaces (there is no option to
       choose one); the tests connect to it on 127.0.0.1 only.
    7. It is IPv4 only; the tests use 127.0.0.0/8.
    8. Datagrams that reach its UDP port before its server has accepted the
       TCP connection wait in the socket buffer and are forwarded once it
       has (its UDP socket is bound before it accepts).  Not relied on: the
       tests send only once both ends report the connection.
"""

from __future__ import annotations

import socket
import urllib.request

from tests.support.debian import (
    APP_NEXT_TO_DEBIAN_CLIENT,
    APP_NEXT_TO_DEBIAN_SERVER,
    LOOPBACK,
    UDPTUNNEL,
    InteropTestCase,
    isListening,
    payload,
    wildcardPort,
)
from tests.support.net import TIMEOUT, freePort, metric, receive, waitFor
from tests.support.processes import TWISTD
from tests.support.streams import EchoThread

#: Datagram sizes sent through each pairing.  65507 is the largest an IPv4
#: UDP datagram can carry; the C tool's buffers (65536 bytes of datagram,
#: 65538 of frame) hold it, so it is also the largest the C tool handles.
SIZES = (1, 64, 1400, 8000, 65507)


class DebianClientTests(InteropTestCase):
    """
    Debian's C{udptunnel -c} connects to our C{udptunnel server}.

    ::

        app A (127.0.0.1, ephemeral) --> our server 127.0.0.1:S  (phantom mode)
                                              || TCP 127.0.0.1:T
        app B 127.0.0.3:P  <-- (127.0.0.1, ephemeral) udptunnel -c 127.0.0.1/T 127.0.0.3/P
        app B --> 127.0.0.1:P (the C tool's wildcard socket) --> ... --> app A
    """

    def setUp(self) -> None:
        super().setUp()
        self.serverUDP, self.tcp = freePort(socket.SOCK_DGRAM), freePort()
        # Quirk 1: the C client receives on *:P and sends to 127.0.0.3:P,
        # so the application next to it binds 127.0.0.3:P.
        self.port = wildcardPort(socket.SOCK_DGRAM, avoid=(self.serverUDP,))
        self.appA = self.appSocket(LOOPBACK)
        self.appB = self.appSocket(APP_NEXT_TO_DEBIAN_CLIENT, self.port)

        self.server = self.startServer(self.serverUDP, self.tcp)
        # Quirk 3: the C client tries to connect once and exits if that
        # fails, so our server must listen before it starts.
        waitFor(lambda: isListening(self.tcp), f"our server to listen on TCP {self.tcp}")
        self.debian = self.spawn(
            "debian-client",
            UDPTUNNEL, "-c", f"{LOOPBACK}/{self.tcp}", "-v",
            f"{APP_NEXT_TO_DEBIAN_CLIENT}/{self.port}",
        )
        # Our server drops datagrams until it has accepted the link.
        self.waitForOutput(self.server, "link up")

    def sendThrough(self, data: bytes, what: str) -> None:
        """
        App A sends C{data} to our server; app B gets it from the C client.
        """
        self.appA.sendto(data, (LOOPBACK, self.serverUDP))
        self.assertDatagram(self.appB, data, what)

    def sendBack(self, data: bytes, what: str) -> None:
        """
        App B sends C{data} to the C client's port; app A gets it from our
        server's UDP address (phantom mode: app A's address was learned from
        what it sent).
        """
        # Quirk 2: the C client delivered from an ephemeral port it never
        # reads; its receiving socket is *:P, reached at 127.0.0.1:P (a
        # datagram to 127.0.0.3:P would come back to app B itself).
        self.appB.sendto(data, (LOOPBACK, self.port))
        self.assertDatagram(self.appA, data, what, source=(LOOPBACK, self.serverUDP))

    def test_sizesBothWays(self) -> None:
        """
        Datagrams of 1 to 65507 bytes cross from our server to Debian's
        client and back, intact.  When our server stops, the C client exits
        (quirk 3), as it does when any peer closes.
        """
        # Quirk 5: one datagram in flight at a time, each awaited.
        for size in SIZES:
            self.sendThrough(payload("to-debian-client", size), f"{size} bytes to the C client")
            self.sendBack(payload("from-debian-client", size), f"{size} bytes from the C client")

        self.stopOurEnd(self.server)
        self.assertEqual(self.assertExits(self.debian, "Debian's client"), 0)

    def test_emptyDatagramToDebian(self) -> None:
        """
        An empty datagram sent to our server crosses as a zero-length frame,
        which the C client turns back into an empty datagram; it keeps
        relaying after it.  (The other way is impossible: the C client exits
        on an empty datagram instead of framing it, quirk 4.)
        """
        self.sendThrough(b"", "an empty datagram to the C client")
        self.sendThrough(payload("after-empty", 64), "a datagram after the empty one")
        self.sendBack(payload("after-empty-back", 64), "a reply after the empty one")
        self.assertIsNone(self.debian.poll(), self.output(self.debian))


class DebianServerTests(InteropTestCase):
    """
    Our C{udptunnel client} connects to Debian's C{udptunnel -s}.

    ::

        app A 127.0.0.2:P --> 127.0.0.1:P  udptunnel -s T 127.0.0.2/P
                                              || TCP 127.0.0.1:T (listens on 0.0.0.0:T)
        app B 127.0.0.1:Q <-- our client 127.0.0.1:U --peer 127.0.0.1:Q
        app B --> 127.0.0.1:U --> ... --> app A (from the C server's ephemeral port)
    """

    def setUp(self) -> None:
        super().setUp()
        # Quirks 1 and 6: the C server binds UDP *:P and TCP *:T.
        self.clientUDP = freePort(socket.SOCK_DGRAM)
        self.port = wildcardPort(socket.SOCK_DGRAM, avoid=(self.clientUDP,))
        self.tcp = wildcardPort(socket.SOCK_STREAM)
        # Quirk 1: the C server sends to 127.0.0.2:P, so app A binds it.
        self.appA = self.appSocket(APP_NEXT_TO_DEBIAN_SERVER, self.port)
        self.appB = self.appSocket(LOOPBACK)

        # Quirk 3: one connection, so the C server starts first.
        self.debian = self.spawn(
            "debian-server",
            UDPTUNNEL, "-s", str(self.tcp), "-v", f"{APP_NEXT_TO_DEBIAN_SERVER}/{self.port}",
        )
        waitFor(lambda: isListening(self.tcp), f"Debian's server to listen on TCP {self.tcp}")
        self.client = self.spawn(
            "client",
            TWISTD, "-n", "--pidfile=",
            *self.clientCommand(self.tcp, self.clientUDP, self.appB.getsockname()[1]),
        )
        self.waitForOutput(self.client, "link up")
        # -v: printed once the C server accepted, after its UDP sockets are
        # set up (our client's connect completes before that accept).
        self.waitForOutput(self.debian, "TCP connection from")

    def sendThrough(self, data: bytes, what: str) -> None:
        """
        App A sends C{data} to the C server's port; app B (our client's
        --peer) gets it from our client's fixed UDP port.
        """
        # Quirk 2: 127.0.0.1:P reaches only the C server's wildcard socket
        # (app A's own 127.0.0.2:P does not match that destination).
        self.appA.sendto(data, (LOOPBACK, self.port))
        self.assertDatagram(self.appB, data, what, source=(LOOPBACK, self.clientUDP))

    def sendBack(self, data: bytes, what: str) -> None:
        """
        App B replies to our client's UDP port; app A gets it from the C
        server (from an ephemeral port: quirk 2, so its source is not
        checked).
        """
        self.appB.sendto(data, (LOOPBACK, self.clientUDP))
        self.assertDatagram(self.appA, data, what)

    def test_sizesBothWays(self) -> None:
        """
        Datagrams of 1 to 65507 bytes cross from Debian's server to our
        client and back, intact.  When our client stops, the C server exits
        (quirk 3).
        """
        # Quirk 5: one datagram in flight at a time, each awaited.
        for size in SIZES:
            self.sendThrough(payload("from-debian-server", size), f"{size} bytes from the C server")
            self.sendBack(payload("to-debian-server", size), f"{size} bytes to the C server")

        self.stopOurEnd(self.client)
        self.assertEqual(self.assertExits(self.debian, "Debian's server"), 0)

    def test_emptyDatagramToDebian(self) -> None:
        """
        An empty datagram sent to our client crosses as a zero-length frame,
        which the C server turns back into an empty datagram; it keeps
        relaying after it.
        """
        self.sendBack(b"", "an empty datagram to the C server")
        self.sendBack(payload("after-empty", 64), "a datagram after the empty one")
        self.sendThrough(payload("after-empty-back", 64), "a reply after the empty one")
        self.assertIsNone(self.debian.poll(), self.output(self.debian))


#: Debian clients at once.
CLIENTS = 3


#: Datagram sizes each application sends, one at a time (quirk 5).
SESSION_SIZES = (1, 64, 1400, 8000)


class DebianClientsTests(InteropTestCase):
    """
    Several C{udptunnel -c} against one C{server --sessions}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.echo = EchoThread()
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
        for size in SESSION_SIZES:
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



