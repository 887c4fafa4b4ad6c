"""
The service that binds the tunnel's UDP socket: a L{TunnelUDPPort}, whose
read loop is bounded by datagrams rather than bytes.  The port subclasses
Twisted's own, so it lives in L{udptunnel._twisted} with the other uses of
Twisted's private API.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol

from ._twisted import TunnelUDPPort

__all__ = ["TunnelUDPPort", "UDPService"]


class UDPService(Service):
    """
    Binds a L{TunnelUDPPort} at start (in C{privilegedStartService} when the
    runner calls it, so low ports work with C{--uid}) and closes it at stop.
    """

    def __init__(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str,
        maxPacketSize: int,
        reactor: Any,
    ) -> None:
        self._args = (port, protocol, interface, maxPacketSize, reactor)
        self.port: TunnelUDPPort | None = None

    def _listen(self) -> None:
        if self.port is None:
            port = TunnelUDPPort(*self._args)
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
