"""
Lanes: which UDP socket and TCP link of a process the compiled pump
(C{udptunnel._pump}, run by L{udptunnel._twisted.pumped}) may move bytes
between, and when.

The pump moves bytes only; every decision stays here and in the relays.
Before a wait, a lane arms its pair for what is plain at that moment: UDP to
TCP, datagrams from the one known peer into an established link that
Twisted holds nothing queued for; TCP to UDP, whole frames from a link whose
parser holds nothing, to a known peer.  After the wait, the counters the
pump kept go into the session's.  What the pump hands back (a datagram from
a stranger, a partial frame, a send the kernel refused, the end of the
stream...) takes the ordinary Python path, which counts, logs and decides
as it always does.

Two kinds: the single link's lane (L{SingleLane}), armed again before every
wait, as its link and peer change under it; and a session's
(L{SessionLane}: a server session's own socket and its link, or a client
session's link and the shared socket, whose datagrams the pump sorts by
source), whose socket and link are its own for life, armed again only when
something of it changed (the pump handed something back, Python handled an
event of its sockets, its link wrote or started closing), so that a
thousand sessions do not cost each wait a thousand checks.  What each
bought is in benchmarks/README.rst.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service

from udptunnel._twisted.pumped import transportIdle

if TYPE_CHECKING:
    from udptunnel.interfaces import IDatagramSocket, ILink
    from udptunnel.tunnel.session import Session
    from udptunnel.tunnel.single import Relay

_UNSET: Any = object()


class Lanes:
    """
    The lanes of a process, and the pump they arm (once attached).

    @ivar pump: the C{udptunnel._pump.Pump} while the compiled path runs,
        else C{None}: lanes then arm nothing, and sessions make none.
    """

    pump: Any = None
    pairType: Any = None

    def __init__(self) -> None:
        self._every: list[SingleLane] = []
        self._dirty: set[SessionLane] = set()
        self._shared: dict[IDatagramSocket, Any] = {}

    def attach(self, pump: Any, pairType: Any) -> None:
        self.pump, self.pairType = pump, pairType

    def detach(self) -> None:
        for lane in self._every:
            lane.release()
        self._dirty.clear()
        self._shared.clear()
        self.pump = self.pairType = None

    def add(self, lane: SingleLane) -> None:
        self._every.append(lane)

    def discard(self, lane: SingleLane) -> None:
        if lane in self._every:
            lane.release()
            self._every.remove(lane)

    def pairFor(self, udp: IDatagramSocket, transport: Any, owner: Any,
                source: tuple[str, int] | None = None, shared: bool = False) -> Any:
        """
        A pair of C{udp} and C{transport}'s sockets, known to the pump,
        disarmed.  C{shared}: C{udp} is a shared socket (a client's with
        sessions), whose datagrams from C{source} are this pair's.
        """
        pair = self.pairType(udp.fileno(), transport.fileno(), owner)
        pair.connected = udp.connected
        pair.withInfo = udp.localAddresses is not None
        if source is not None:
            pair.setSource(source)
            pair.setDestination(source)
        if shared:
            pair.shared = True
            sharedPair = self._shared.get(udp)
            if sharedPair is None:
                sharedPair = self._shared[udp] = self.pairType(udp.fileno(), -1,
                                                               Handed(udp, None, None))
                sharedPair.withInfo = pair.withInfo
                self.pump.addShared(sharedPair)
        self.pump.add(pair)
        return pair

    def letGo(self, pair: Any, lane: Any) -> None:
        """
        The pump forgets C{pair}: its counters are taken into C{lane}'s
        first, and what it hands back from now on is no lane's.
        """
        lane.collect(pair)
        pair.owner.lane = None
        if self.pump is not None:
            self.pump.remove(pair)

    def forgetShared(self, udp: IDatagramSocket) -> None:
        """
        The shared socket C{udp} closes: the pump forgets it (its sessions'
        lanes are released first).
        """
        sharedPair = self._shared.pop(udp, None)
        if sharedPair is not None and self.pump is not None:
            self.pump.remove(sharedPair)

    def mark(self, lane: SessionLane) -> None:
        """
        Something of C{lane} changed: arm it again before the next wait.
        """
        self._dirty.add(lane)

    def dirtied(self, pair: Any) -> None:
        """
        Python handled something of C{pair}'s (the fence says so).
        """
        lane = pair.owner.lane
        if lane is not None and type(lane) is SessionLane:
            self._dirty.add(lane)

    def prepare(self) -> None:
        for lane in self._every:
            lane.prepare()
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            for changed in dirty:
                changed.prepare()

    def collect(self) -> None:
        for pair in self.pump.takeTouched():
            lane = pair.owner.lane
            if lane is not None:
                lane.collect(pair)


def fastAddress(address: tuple[str, int] | None) -> bool:
    """
    Whether the pump can take C{address} (an IP literal and a port): not a
    scoped IPv6 address, whose scope only the Python path carries.
    """
    return address is not None and "%" not in address[0]


def followInfo(pair: Any, udp: IDatagramSocket, peer: Any, known: Any) -> Any:
    """
    On a wildcard-bound socket, have C{pair} expect the pktinfo C{peer}'s
    datagrams last came with, and reply with what the Python path would
    (L{udptunnel.udp.replies.LocalAddresses}); C{known} is what it was told
    last, and the new value is returned.
    """
    localAddresses = udp.localAddresses
    if localAddresses is None:
        return known
    info = localAddresses.known(peer)
    if info is not known:
        if info is None:
            pair.setInfo(None, 0, 0, None)
        else:
            received, ((level, kind, reply),) = info
            pair.setInfo(received, level, kind, reply)
    return info


def arm(pair: Any, plain: bool, link: ILink, transport: Any, udp: IDatagramSocket,
        congested: bool = False) -> None:
    """
    Arm each way of C{pair} for what is plain now, or disarm it; the UDP
    socket's segmentation state follows the Python path's.
    """
    segments = udp.segments
    pair.segments = segments.enabled
    pair.maxSegment = segments.maxSegment
    pair.up = plain and not congested and transportIdle(transport)
    pair.down = plain and link.framesOnly()


def collectInto(session: Session, pair: Any) -> float | None:
    """
    Take what the pump carried for C{pair} into C{session}'s counters; the
    time of the last frame it carried, or C{None}.
    """
    upDatagrams, upBytes, downDatagrams, downBytes, lastFrame = pair.take()
    traffic = session.traffic
    traffic.toTunnelDatagrams += upDatagrams
    traffic.toTunnelBytes += upBytes
    traffic.fromTunnelDatagrams += downDatagrams
    traffic.fromTunnelBytes += downBytes
    return lastFrame if downDatagrams else None


class SingleLane:
    """
    The single link's pair: its UDP socket and its link's TCP socket,
    whichever they are at each wait.
    """

    def __init__(self, relay: Relay, lanes: Lanes) -> None:
        self.relay = relay
        self._lanes = lanes
        self._pair: Any = None
        self._link: ILink | None = None
        self._udp: IDatagramSocket | None = None
        self._peer: Any = _UNSET
        self._info: Any = _UNSET

    def release(self) -> None:
        """
        Forget the pair (its counters taken first): the link or the socket
        changed, or the pump stops.
        """
        pair, self._pair = self._pair, None
        if pair is not None:
            self._lanes.letGo(pair, self)
            self._link = self._udp = None

    def prepare(self) -> None:
        if self._lanes.pump is None:
            return
        relay = self.relay
        link, udp = relay.link, relay.udp
        if link is None or udp is None:
            self.release()
            return
        transport = link.plainTransport()
        if transport is None or udp.fileno() == -1:
            self.release()
            return
        pair = self._pair
        if pair is None or link is not self._link or udp is not self._udp:
            self.release()
            pair = self._pair = self._lanes.pairFor(udp, transport, Handed(udp, link, self))
            self._link, self._udp = link, udp
            self._peer = self._info = _UNSET
        session = relay.session
        peer = session.peer
        if peer != self._peer:
            known = peer if fastAddress(peer) else None
            pair.setSource(known)
            pair.setDestination(known)
            self._peer, self._info = peer, _UNSET
        self._info = followInfo(pair, udp, peer, self._info)
        plain = fastAddress(peer) and relay.carriesPlainly(link)
        arm(pair, plain, link, transport, udp, session.congested)

    def collect(self, pair: Any) -> None:
        lastFrame = collectInto(self.relay.session, pair)
        if lastFrame is not None:
            self.relay.framesSeenAt(lastFrame)


class SessionLane:
    """
    A session's pair, for the session's life: a server session's own UDP
    socket (connected to the peer) and its link; or a client session's
    link and the shared UDP socket, whose datagrams from the session's
    source are its own (C{shared}).

    @ivar carried: called with the session when the pump carried anything
        of it (a client's sessions keep the most recently active last).
    """

    def __init__(self, lanes: Lanes, session: Session, link: ILink, transport: Any,
                 udp: IDatagramSocket, shared: bool = False,
                 carried: Callable[[Session], None] | None = None) -> None:
        self._lanes = lanes
        self.session = session
        self._link = link
        self._transport = transport
        self._udp = udp
        self._info: Any = _UNSET
        self.carried = carried
        self._pair = lanes.pairFor(udp, transport, Handed(udp, link, self),
                                   session.peer, shared)
        lanes.mark(self)

    def prepare(self) -> None:
        pair = self._pair
        if pair is None:
            return
        udp, link, session = self._udp, self._link, self.session
        self._info = followInfo(pair, udp, session.peer, self._info)
        plain = session.link is link and udp.fileno() != -1
        arm(pair, plain, link, self._transport, udp, session.congested)

    def collect(self, pair: Any) -> None:
        collectInto(self.session, pair)
        if self.carried is not None:
            self.carried(self.session)

    def release(self) -> None:
        """
        The session ends: the pump forgets its pair (its counters taken
        first), before its sockets close.
        """
        pair, self._pair = self._pair, None
        if pair is not None:
            self._lanes.letGo(pair, self)


def sessionLane(lanes: Lanes | None, session: Session, shared: bool = False,
                carried: Callable[[Session], None] | None = None) -> SessionLane | None:
    """
    A lane for a session whose link just came up, when the pump runs, the
    link is plain TCP and the peer an address the pump can take; the link
    tells the lane when it writes or starts closing.
    """
    if lanes is None or lanes.pump is None:
        return None
    link, udp = session.link, session.udp
    if link is None or udp is None or not fastAddress(session.peer):
        return None
    transport = link.plainTransport()
    if transport is None or udp.fileno() == -1:
        return None
    lane = SessionLane(lanes, session, link, transport, udp, shared, carried)
    link.laneChanged = lambda: lanes.mark(lane)
    return lane


class Handed:
    """
    A pair's owner: where what the pump hands back goes, through the Python
    path, as if the socket or the link had read it (the pair's own socket
    and link, whatever its lane has moved on to); and the lane that takes
    its counters, until it lets the pair go.
    """

    def __init__(self, udp: IDatagramSocket, link: ILink | None, lane: Any) -> None:
        self.udp = udp
        self.link = link
        self.lane = lane

    def datagramsHanded(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.udp.deliver(datagrams)

    def framesHanded(self, frames: list[bytes]) -> None:
        if self.link is not None:  # a shared socket's pair reads no frames
            self.link.deliverFrames(frames)

    def udpReadFailed(self, errno: int) -> None:
        self.udp.readFailed(OSError(errno, os.strerror(errno)))


class LaneService(Service):
    """
    A single link's lane, among the process's while the tunnel runs: a
    stopping tunnel's last frames (its drain) take the Python path.
    """

    def __init__(self, lanes: Lanes, lane: SingleLane) -> None:
        self._lanes = lanes
        self._lane = lane

    def startService(self) -> None:
        super().startService()
        self._lanes.add(self._lane)

    def stopService(self) -> Any:
        self._lanes.discard(self._lane)
        return super().stopService()
