"""
Thin protocol adapters: they parse and forward to an L{IRelay}, nothing else.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import ILink, IRelay

#: Read buffer of the UDP socket: the largest datagram IPv4 or IPv6 can carry
#: (Twisted's default of 8192 would truncate larger datagrams silently).
MAX_DATAGRAM = 65535


class TunnelDatagramProtocol(DatagramProtocol):
    """
    The UDP socket's protocol: every datagram goes to the relay.
    """

    noisy = False  # the relay logs the bound address itself

    def __init__(self, relay: IRelay) -> None:
        self.relay = relay

    def startProtocol(self) -> None:
        self.relay.udpStarted(self.transport)

    def stopProtocol(self) -> None:
        self.relay.udpStopped()

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.relay.datagramReceived(datagram, addr)


@implementer(ILink)
class TunnelStreamProtocol(Int16StringReceiver):
    """
    One TCP connection of the tunnel: a 2-byte big-endian length, then that
    many bytes of datagram, back to back, both ways.
    """

    # Every length a 16-bit prefix can express is a valid frame; one too big
    # for the UDP path is the relay's to drop and count, not a framing error.
    MAX_LENGTH = 65535

    peer = "?"
    factory: TunnelFactory

    def connectionMade(self) -> None:
        assert self.transport is not None
        address = self.transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if host is None:
            self.peer = str(address)
        else:
            self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # Each frame is written as soon as the reactor turn ends; Nagle
        # would hold small frames back for the peer's delayed ACK.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.factory.relay.linkMade(self)

    def stringReceived(self, string: bytes) -> None:
        self.factory.relay.frameReceived(self, string)

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.factory.relay.linkLost(self, reason)

    # ILink

    def sendFrame(self, data: bytes) -> None:
        self.sendString(data)

    def abort(self) -> None:
        cast(ITCPTransport, self.transport).abortConnection()

    def attachProducer(self, producer: IPushProducer) -> None:
        cast(IConsumer, self.transport).registerProducer(producer, True)


class TunnelFactory(Factory[TunnelStreamProtocol]):
    """
    Builds L{TunnelStreamProtocol}s that report to C{relay}.
    """

    protocol = TunnelStreamProtocol
    noisy = False

    def __init__(self, relay: IRelay) -> None:
        self.relay = relay
