"""
L{udptunnel._twisted.prepared}: TCP sockets handed to a function before
they connect or bind, on loopback.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import reactor
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
)
from twisted.internet.error import ConnectBindError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.support.net import LOCAL
from udptunnel._twisted.prepared import PreparedReactor, missingHooks


class Seen:
    """
    A C{prepare} that records, for each socket it is handed, whether it
    was connected and its local port then, and sets a receive buffer the
    test can read back.
    """

    def __init__(self) -> None:
        self.sockets: list[tuple[bool, int]] = []

    def __call__(self, sock: socket.socket) -> None:
        try:
            sock.getpeername()
            connected = True
        except OSError:
            connected = False
        self.sockets.append((connected, sock.getsockname()[1]))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 12345)


class PreparedTests(TestCase):
    def listen(self, reactor_: object = reactor) -> int:
        endpoint = TCP4ServerEndpoint(reactor_, 0, interface=LOCAL)
        d = endpoint.listen(Factory.forProtocol(Protocol))

        def listening(port: object) -> int:
            self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
            return port.getHost().port  # type: ignore[attr-defined]

        return d.addCallback(listening)  # type: ignore[return-value]

    async def test_connectPrepared(self) -> None:
        """
        A connection made through the reactor is prepared before it
        connects (and binds): the function sees an unconnected socket on no
        port, and what it set holds on the connected one.
        """
        port = await self.listen()
        seen = Seen()
        endpoint = TCP4ClientEndpoint(PreparedReactor(reactor, seen), LOCAL, port)
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.loseConnection)
        self.assertEqual(seen.sockets, [(False, 0)])
        handle = protocol.transport.getHandle()
        self.assertGreaterEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 12345)

    async def test_hostnameEndpoint(self) -> None:
        """
        C{HostnameEndpoint}, which resolves names through the reactor's
        resolver, works through it: the reactor's interfaces are its.
        """
        port = await self.listen()
        seen = Seen()
        endpoint = HostnameEndpoint(PreparedReactor(reactor, seen), "localhost", port)
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.loseConnection)
        self.assertEqual(seen.sockets[-1], (False, 0))

    async def test_listenPrepared(self) -> None:
        """
        A listening socket is prepared before it binds.
        """
        seen = Seen()
        await self.listen(PreparedReactor(reactor, seen))
        self.assertEqual(seen.sockets, [(False, 0)])

    async def test_refusedIsAFailedAttempt(self) -> None:
        """
        A socket the function refuses (the kernel would not mark it) is a
        failed connection attempt with the function's reason, not a
        connection without the mark.
        """
        port = await self.listen()

        def refuse(sock: socket.socket) -> None:
            raise OSError(errno.EPERM, "--fwmark: the kernel refuses SO_MARK=1")

        endpoint = TCP4ClientEndpoint(PreparedReactor(reactor, refuse), LOCAL, port)
        with self.assertRaises(ConnectBindError) as caught:
            await endpoint.connect(Factory.forProtocol(Protocol))
        self.assertIn("--fwmark: the kernel refuses SO_MARK=1", str(caught.exception))

    def test_hooksPresent(self) -> None:
        """
        The installed Twisted has the hooks the module uses.
        """
        self.assertIsNone(missingHooks())
