"""
Both ends of the tunnel in one process, on real loopback sockets: each end
built the way twistd builds it (L{udptunnel.tap.Options} then
L{udptunnel.tap.makeService}) and driven by the real reactor; applications
are L{tests.support.net.Recorder} sockets.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.trial.unittest import TestCase

from tests.support.net import Echo, Recorder, freePort, pattern
from udptunnel import tap
from udptunnel.tunnel.single import Relay

#: The sizes every round trip carries: empty, tiny, a typical MTU-sized
#: datagram, one past Twisted's default read buffer (8192), and the largest
#: datagram IPv4 can carry.
SIZES = [0, 1, 1400, 8193, 65507]


class RawLink(Protocol):
    """
    A TCP connection to the server written to by hand, frames and all.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def sendFrame(self, data: bytes) -> None:
        assert self.transport is not None, "not connected"
        self.transport.write(len(data).to_bytes(2, "big") + data)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


def address(host: str, port: int) -> str:
    """
    C{HOST:PORT} as the command line takes it, IPv6 in brackets.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def udpPort(relay: Relay) -> int:
    """
    The port the UDP socket of a started end is bound to.
    """
    assert relay.udp is not None, "the UDP socket is not bound"
    return int(relay.udp.getHost().port)


class Tunnel(NamedTuple):
    """
    What L{TunnelTestCase.startTunnel} started.
    """

    server: Relay
    client: Relay
    app: Recorder
    echo: Echo
    serverUDP: tuple[str, int]
    tcpPort: int


class TunnelTestCase(TestCase):
    """
    Helpers to start ends and application sockets that are stopped and
    closed when the test ends.
    """

    def startEnd(self, *argv: str) -> Relay:
        """
        Parse C{argv} as twistd would (C{twistd udptunnel ARGV}), build the
        service and start it.
        """
        options = tap.Options()
        options.parseOptions(list(argv))
        service = tap.makeService(options, reactor)
        assert isinstance(service, Relay)
        service.privilegedStartService()
        service.startService()

        def stop() -> Any:
            if service.running:
                return service.stopService()
            return None

        self.addCleanup(stop)
        return service

    def startServer(self, tcpPort: int, udp: str = "127.0.0.1:0", *more: str) -> Relay:
        """
        A server listening on 127.0.0.1:C{tcpPort}.
        """
        return self.startEnd(
            "server", "--tcp", f"tcp:{tcpPort}:interface=127.0.0.1", "--udp", udp, *more
        )

    def startTunnel(
        self, serverOptions: tuple[str, ...] = (), clientOptions: tuple[str, ...] = ()
    ) -> Tunnel:
        """
        The seed arrangement on loopback: an echo as the client's --peer, a
        server in phantom mode, and an application socket.
        """
        echo = Echo()
        echoPort = self.listen(echo)
        tcpPort = freePort()
        server = self.startServer(tcpPort, "127.0.0.1:0", *serverOptions)
        client = self.startEnd(
            "client",
            "--tcp", f"127.0.0.1:{tcpPort}",
            "--udp", "127.0.0.1:0",
            "--peer", f"127.0.0.1:{echoPort}",
            *clientOptions,
        )
        app = Recorder()
        self.listen(app)
        return Tunnel(server, client, app, echo, ("127.0.0.1", udpPort(server)), tcpPort)

    def listen(self, protocol: DatagramProtocol, interface: str = "127.0.0.1") -> int:
        """
        Bind C{protocol} to an ephemeral UDP port, closed after the test.

        @return: the port number
        """
        port = reactor.listenUDP(  # type: ignore[attr-defined]
            0, protocol, interface=interface, maxPacketSize=65535
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def roundTrips(
        self, app: Recorder, destination: tuple[str, int], expectedSource: tuple[str, int]
    ) -> Any:
        """
        Send one datagram of each of L{SIZES} from C{app} to C{destination}
        in one go, and check each comes back intact, in order, from
        C{expectedSource}.
        """
        sent = [pattern(index, size) for index, size in enumerate(SIZES)]
        for data in sent:
            app.send(data, destination)
        yield app.waitFor(len(sent))
        received = [data for data, _ in app.received]
        self.assertEqual([len(data) for data in received], SIZES)
        self.assertEqual(received, sent)
        self.assertEqual({source for _, source in app.received}, {expectedSource})
