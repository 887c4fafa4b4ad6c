"""
The service of the tunnel's UDP socket: it binds the socket when the tunnel
starts (in C{privilegedStartService} when the runner calls it, so low ports
work with C{--uid}), or adopts the one systemd passed, and closes it when
the tunnel stops.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol

from udptunnel.sockopts import Prepare
from udptunnel.udp.port import DatagramSocket, adoptUDP, bindUDP


class UDPService(Service):
    """
    Binds C{interface}:C{port} for C{protocol}, or with C{fd} adopts that
    socket (one systemd passed), at start; closes it at stop.

    @ivar port: the socket while the service runs.
    """

    def __init__(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str,
        reactor: Any,
        fd: int | None = None,
        reusePort: bool = False,
        prepare: Prepare | None = None,
    ) -> None:
        """
        @param reusePort: share the port with other processes
            (C{SO_REUSEPORT}, L{udptunnel.udp.reuseport}).
        @param prepare: called with the socket before it binds (or once
            adopted): its mark and device, for a socket towards C{--peer}.
        """
        self._where = (interface, port)
        self._protocol = protocol
        self._reactor = reactor
        self._fd = fd
        self.reusePort = reusePort
        self._prepare = prepare
        self.port: DatagramSocket | None = None

    def _listen(self) -> None:
        if self.port is None:
            if self._fd is not None:
                port = adoptUDP(self._fd, self._protocol, self._reactor, self._prepare)
            else:
                interface, number = self._where
                port = bindUDP(interface, number, self._protocol, self._reactor,
                               reusePort=self.reusePort, prepare=self._prepare)
            port.startListening()
            self.port = port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening()
