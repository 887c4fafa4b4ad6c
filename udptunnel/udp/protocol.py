"""
The UDP socket's protocol: a thin adapter that hands the relay each read's
datagrams, and tells it when the socket opens and closes.
"""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from udptunnel.interfaces import IDatagramRelay
from udptunnel.show import logPrefixOf
from udptunnel.sockopts import SocketSettings, socketOf, tuneUDP


class TunnelDatagramProtocol(DatagramProtocol):
    """
    The UDP socket's protocol: every datagram goes to the relay.
    """

    noisy = False  # the relay logs the bound address itself

    def __init__(self, relay: IDatagramRelay, settings: SocketSettings | None = None) -> None:
        self.relay = relay
        self.settings = settings or SocketSettings()

    def logPrefix(self) -> str:
        """
        The name Twisted's UDP port gives us in its own log lines (with
        the tunnel's, when it has one).
        """
        return logPrefixOf(self.relay, "UDP")

    def startProtocol(self) -> None:
        sock = socketOf(self.transport)
        if sock is not None:
            tuneUDP(sock, self.settings)
        self.relay.udpStarted(self.transport)

    def stopProtocol(self) -> None:
        self.relay.udpStopped()

    def datagramsReceived(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """
        Hand the relay one read's datagrams.  An exception of ours must not
        reach the port (Twisted would close the socket for good): it is the
        relay's to count and log, and the next read goes on.
        """
        try:
            self.relay.datagramsReceived(datagrams)
        except Exception:  # noqa: BLE001 (a bug of ours, whatever it raises)
            self.relay.internalError("datagrams", Failure())

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        # What a port other than TunnelUDPPort would call.
        self.datagramsReceived([(datagram, addr)])
