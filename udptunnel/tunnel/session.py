"""
The session: one UDP peer and one TCP link, and the datagrams between them.

Every arrangement of the tunnel is made of sessions; what differs is who
owns them and how a datagram finds its own:

  - single link (the default): one session, whose link is whichever
    connection took it last and whose peer is the fixed C{--peer} or the
    learned phantom source (L{udptunnel.tunnel.single.Relay});
  - a client with C{--sessions}: one session per UDP source on the shared
    socket, each with its own outgoing connection
    (L{udptunnel.tunnel.clientsessions.ClientSessions});
  - a server with C{--sessions}: one session per TCP connection, each with
    its own UDP socket connected to C{--peer}
    (L{udptunnel.tunnel.serversessions.ServerSessions}).

A session only carries: its owner decides which datagrams and frames are
its, and what to do when it has no link.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from udptunnel.interfaces import IDatagramSocket, ILink
from udptunnel.show import showAddress
from udptunnel.tunnel.hold import HoldQueue


class Traffic:
    """
    What crossed a tunnel or a session, each way.  Plain attributes: they
    are bumped once per read.
    """

    def __init__(self) -> None:
        self.toTunnelDatagrams = 0
        self.toTunnelBytes = 0
        self.fromTunnelDatagrams = 0
        self.fromTunnelBytes = 0

    def add(self, other: Traffic) -> None:
        self.toTunnelDatagrams += other.toTunnelDatagrams
        self.toTunnelBytes += other.toTunnelBytes
        self.fromTunnelDatagrams += other.fromTunnelDatagrams
        self.fromTunnelBytes += other.fromTunnelBytes

    def datagrams(self) -> int:
        return self.toTunnelDatagrams + self.fromTunnelDatagrams


#: How a session reports a drop: C{drop(reason, format, count=1, **fields)}.
Drop = Callable[..., None]


class Session:
    """
    Carries datagrams from C{peer} into C{link} as frames, and frames from
    C{link} to C{peer} as datagrams, through C{udp}, counting them in
    C{traffic}.

    @ivar peer: C{(IP literal, port)} the datagrams out of the tunnel go
        to, or C{None} while a phantom end has learned nobody.
    @ivar link: the L{ILink} that carries the frames, or C{None}.
    @ivar since: when the session began (its owner's clock).
    @ivar congested: whether its link's send buffer is full, where the
        session cannot pause its socket (it shares it): its datagrams are
        then dropped.
    """

    since = 0.0
    congested = False
    #: Where datagrams wait while there is no link (the single link's
    #: L{udptunnel.tunnel.hold.HoldQueue}), or C{None}: dropped.
    hold: HoldQueue | None = None

    def __init__(
        self,
        udp: IDatagramSocket | None,
        peer: tuple[str, int] | None,
        drop: Drop,
        traffic: Traffic | None = None,
        link: ILink | None = None,
    ) -> None:
        self.udp = udp
        self.peer = peer
        self.link = link
        self.traffic = traffic if traffic is not None else Traffic()
        self._drop = drop

    def toTunnel(self, datagrams: list[bytes]) -> None:
        """
        Frame C{datagrams} into the link, in one write.
        """
        link = self.link
        if link is None:
            if self.hold is not None:
                self.hold.hold(datagrams)
            else:
                self._drop("no-link", "no TCP link", count=len(datagrams))
            return
        link.sendFrames(datagrams)
        traffic = self.traffic
        traffic.toTunnelDatagrams += len(datagrams)
        traffic.toTunnelBytes += sum(map(len, datagrams))

    def releaseHeld(self) -> None:
        """
        A link came: what waited for one goes into it first, in order.
        """
        if self.hold is not None and self.link is not None and len(self.hold):
            held = self.hold.release()
            if held:
                self.toTunnel(held)

    def fromTunnel(self, frames: list[bytes]) -> None:
        """
        Send each frame to the peer as a datagram.  The UDP side never
        blocks: a datagram the kernel refuses is dropped and counted by
        reason.
        """
        destination = self.peer
        if destination is None:
            self._drop("no-address", "no phantom peer learned yet", count=len(frames))
            return
        udp = self.udp
        if udp is None:
            self._drop("no-socket", "UDP socket closed", count=len(frames))
            return
        sent, size = udp.sendMany(frames, destination, self._sendFailed)
        traffic = self.traffic
        traffic.fromTunnelDatagrams += sent
        traffic.fromTunnelBytes += size

    def _sendFailed(self, error: OSError, size: int, destination: tuple[str, int]) -> None:
        if error.errno == errno.EMSGSIZE:
            self._drop("oversize", "{size}-byte datagram too big for {peer}",
                       size=size, peer=showAddress(destination))
        else:
            reason = errno.errorcode.get(error.errno or 0, "send-error")
            self._drop(reason, "sending to {peer}: {error}",
                       peer=showAddress(destination), error=error)

    def describe(self) -> dict[str, Any]:
        """
        The fields of a session's log lines: C{udp} is its socket and its
        peer, which tell sessions apart (a server's sessions share a peer,
        each with a socket of its own; a client's share a socket).
        """
        traffic = self.traffic
        return {
            "udp": f"{localAddress(self.udp) or '-'} <-> {showAddress(self.peer)}",
            "peer": showAddress(self.peer),
            "remote": self.link.remote if self.link is not None else "none",
            "toTunnel": traffic.toTunnelBytes,
            "fromTunnel": traffic.fromTunnelBytes,
        }


def localAddress(udp: IDatagramSocket | None) -> str | None:
    """
    Where C{udp} is bound, for logs and the status; C{None} when it is
    closed or cannot say.
    """
    if udp is None:
        return None
    try:
        host = udp.getHost()
    except Exception:  # noqa: BLE001 (a socket closing under us)
        return None
    return showAddress((host.host, host.port))
