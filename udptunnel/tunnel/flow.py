"""
Flow control: what a link's full send buffer does to the datagrams that
would go into it, in each arrangement.  Each is the C{IPushProducer} the
relay registers on its link's transport: never the UDP port itself, as
Twisted calls C{stopProducing} on a producer when the connection is lost,
which would close the port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from udptunnel.interfaces import IDatagramSocket, ILink

if TYPE_CHECKING:
    from udptunnel.tunnel.session import Session
    from udptunnel.tunnel.single import Relay

@implementer(IPushProducer)
class PauseReading:
    """
    The single link's: its full send buffer pauses reading of the UDP
    socket, so the excess is dropped by the kernel instead of queued here.
    """

    def __init__(self, relay: Relay, link: ILink) -> None:
        self._relay = relay
        self._link = link

    def pauseProducing(self) -> None:
        self._relay.pauseReading(self._link)

    def resumeProducing(self) -> None:
        self._relay.resumeReading(self._link)

    def stopProducing(self) -> None:
        self._relay.resumeReading(self._link)


@implementer(IPushProducer)
class PauseSocket:
    """
    A server session's flow control: its link's full send buffer pauses
    reading of its own socket only; the other sessions go on.
    """

    def __init__(self, udp: IDatagramSocket) -> None:
        self._udp = udp

    def pauseProducing(self) -> None:
        self._udp.stopReading()

    def resumeProducing(self) -> None:
        self._udp.startReading()

    def stopProducing(self) -> None:
        pass  # the session's socket closes with its link


@implementer(IPushProducer)
class CongestionFlag:
    """
    A client session's flow control: its sessions share one socket, so a
    full link cannot pause reading without stalling the others; while its
    send buffer is full, that session's datagrams are dropped instead.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def pauseProducing(self) -> None:
        self._session.congested = True

    def resumeProducing(self) -> None:
        self._session.congested = False

    def stopProducing(self) -> None:
        self._session.congested = False
