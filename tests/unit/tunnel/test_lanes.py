"""
L{udptunnel.tunnel.lanes}: when the compiled pump may carry a tunnel's
bytes, decided from the relay's state before each wait, and the counters it
kept taken back into the tunnel's; with a recording stand-in for the pump.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import (
    FakeLink,
    FakeUDPTransport,
    StandInPump,
    attachedLanes,
    plainConnection,
)
from udptunnel.tunnel.lanes import Handed, Lanes, SingleLane, sessionLane
from udptunnel.tunnel.session import Session
from udptunnel.tunnel.single import CONFIRM_AFTER, Relay

APP = ("127.0.0.1", 40001)
POP = ("192.0.2.53", 5072)


class LaneTestMixin:
    def newLanes(self) -> tuple[Lanes, StandInPump]:
        return attachedLanes()

    def link(self, testCase: SynchronousTestCase) -> FakeLink:
        link = FakeLink()
        link.transport = plainConnection(testCase)
        return link


class SingleLaneTests(LaneTestMixin, SynchronousTestCase):
    """
    The single link's lane, prepared before every wait.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.relay = Relay(self.clock, udpPeer=POP, role="server")
        self.udp = FakeUDPTransport()
        self.relay.udpStarted(self.udp)
        self.lanes, self.pump = self.newLanes()
        self.lane = SingleLane(self.relay, self.lanes)
        self.lanes.add(self.lane)

    def armed(self) -> tuple[bool, bool]:
        self.lanes.prepare()
        if not self.pump.pairs:
            return False, False
        (pair,) = self.pump.pairs
        return pair.up, pair.down

    def test_plainLinkArmed(self) -> None:
        """
        An established link on plain TCP with nothing queued, and a known
        peer: both ways armed, for the link's and the socket's descriptors,
        with the peer as source and destination.
        """
        link = self.link(self)
        self.relay.linkMade(link)
        self.assertEqual(self.armed(), (True, True))
        (pair,) = self.pump.pairs
        self.assertEqual((pair.udpFd, pair.tcpFd), (7, link.transport.fileno()))
        self.assertEqual((pair.source, pair.destination), (POP, POP))
        self.assertIs(pair.owner.lane, self.lane)

    def test_noLinkNoPair(self) -> None:
        """
        Without a link, or with one Twisted must write for (TLS,
        --plain-twisted), there is no pair.
        """
        self.assertEqual(self.armed(), (False, False))
        link = FakeLink()  # no plain transport
        self.relay.linkMade(link)
        self.assertEqual(self.armed(), (False, False))
        self.assertEqual(self.pump.pairs, [])

    def test_queuedDataDisarmsTheWayIn(self) -> None:
        """
        While Twisted holds bytes for the link, datagrams take the Python
        path (they must not overtake them); frames still come out.
        """
        link = self.link(self)
        self.relay.linkMade(link)
        link.transport.write(b"queued")
        self.assertEqual(self.armed(), (False, True))
        link.transport.doWrite()
        self.assertEqual(self.armed(), (True, True))

    def test_parserHoldingDisarmsTheWayOut(self) -> None:
        """
        While the link's parser holds a partial frame (or the link is not
        only frames yet), its bytes take the Python path.
        """
        link = self.link(self)
        self.relay.linkMade(link)
        link.onlyFrames = False
        self.assertEqual(self.armed(), (True, False))

    def test_unconfirmedClientLinkDisarmed(self) -> None:
        """
        A client's link is not the link for sure until it carried a frame
        or lasted: until then the relay sees every frame.
        """
        relay = Relay(self.clock, udpPeer=POP, role="client")
        relay.udpStarted(self.udp)
        lanes, pump = self.newLanes()
        lanes.add(SingleLane(relay, lanes))
        link = self.link(self)
        relay.linkMade(link)
        lanes.prepare()
        self.assertEqual((pump.pairs[0].up, pump.pairs[0].down), (False, False))
        self.clock.advance(CONFIRM_AFTER)
        lanes.prepare()
        self.assertEqual((pump.pairs[0].up, pump.pairs[0].down), (True, True))

    def test_unknownOrScopedPeerDisarmed(self) -> None:
        """
        A phantom end that has learned nobody, or a peer with an IPv6 scope
        (which only the Python path carries), arms nothing.
        """
        relay = Relay(self.clock, role="server")
        relay.udpStarted(self.udp)
        lanes, pump = self.newLanes()
        lanes.add(SingleLane(relay, lanes))
        relay.linkMade(self.link(self))
        lanes.prepare()
        self.assertEqual((pump.pairs[0].up, pump.pairs[0].down), (False, False))
        relay.datagramsReceived([(b"x", ("fe80::1%lo", 4000))])
        lanes.prepare()
        self.assertEqual((pump.pairs[0].up, pump.pairs[0].down), (False, False))
        self.assertIsNone(pump.pairs[0].source)
        relay.datagramsReceived([(b"x", APP)])
        lanes.prepare()
        self.assertEqual((pump.pairs[0].up, pump.pairs[0].down), (True, True))
        self.assertEqual(pump.pairs[0].source, APP)

    def test_newLinkNewPair(self) -> None:
        """
        When another connection becomes the link, the old pair is let go
        (its counters taken first) and a new one made.
        """
        old = self.link(self)
        self.relay.linkMade(old)
        self.lanes.prepare()
        (first,) = self.pump.pairs
        first.counters = (3, 30, 0, 0, 0.0)
        self.relay.linkLost(old, _lost())
        new = self.link(self)
        self.relay.linkMade(new)
        self.lanes.prepare()
        (second,) = self.pump.pairs
        self.assertIsNot(first, second)
        self.assertEqual(second.tcpFd, new.transport.fileno())
        self.assertEqual(self.relay.stats.toTunnelDatagrams, 3)
        self.assertIsNone(first.owner.lane)

    def test_countersCollected(self) -> None:
        """
        What the pump carried lands in the tunnel's counters, and frames it
        carried keep the link from looking silent.
        """
        self.relay.linkMade(self.link(self))
        self.lanes.prepare()
        (pair,) = self.pump.pairs
        pair.counters = (2, 100, 5, 700, 1234.5)
        self.pump.touched.append(pair)
        self.lanes.collect()
        stats = self.relay.stats
        self.assertEqual((stats.toTunnelDatagrams, stats.toTunnelBytes,
                          stats.fromTunnelDatagrams, stats.fromTunnelBytes), (2, 100, 5, 700))
        self.assertEqual(self.relay._lastFrameAt, 1234.5)

    def test_detachedArmsNothing(self) -> None:
        """
        Once the pump stops, the lanes let their pairs go and make none.
        """
        self.relay.linkMade(self.link(self))
        self.lanes.prepare()
        self.lanes.detach()
        self.assertEqual(self.pump.pairs, [])
        self.lanes.prepare()
        self.assertEqual(self.pump.pairs, [])


class SessionLaneTests(LaneTestMixin, SynchronousTestCase):
    """
    A session's lane, prepared only when something of it changed.
    """

    def session(self, lanes: Lanes, shared: bool = False) -> tuple[Session, Any]:
        udp = FakeUDPTransport()
        link = self.link(self)
        session = Session(udp, APP, lambda *a, **k: None, link=link)
        return session, sessionLane(lanes, session, shared=shared)

    def test_preparedWhenChanged(self) -> None:
        """
        A new lane is armed at the next wait; after that only when the link
        says it wrote or closes, or the fence says Python handled something
        of its pair.
        """
        lanes, pump = self.newLanes()
        session, _ = self.session(lanes)
        (pair,) = pump.pairs
        lanes.prepare()
        self.assertEqual((pair.up, pair.down), (True, True))
        session.link.transport.write(b"queued")
        lanes.prepare()
        self.assertTrue(pair.up, "prepared again with nothing changed")
        session.link.laneChanged()
        lanes.prepare()
        self.assertFalse(pair.up)
        session.link.transport.doWrite()
        lanes.dirtied(pair)
        lanes.prepare()
        self.assertTrue(pair.up)

    def test_endedSessionDisarmed(self) -> None:
        """
        A session whose link is gone arms nothing; released, its pair is let
        go and its last counters taken.
        """
        lanes, pump = self.newLanes()
        session, lane = self.session(lanes)
        (pair,) = pump.pairs
        session.link = None
        lanes.prepare()
        self.assertEqual((pair.up, pair.down), (False, False))
        pair.counters = (1, 10, 2, 20, 0.0)
        lane.release()
        self.assertEqual(pump.pairs, [])
        self.assertEqual((session.traffic.toTunnelDatagrams, session.traffic.fromTunnelBytes),
                         (1, 20))

    def test_sharedSocketOnce(self) -> None:
        """
        The sessions of a shared socket each get a pair found by their
        source; the socket itself is given to the pump once, and forgotten
        when it closes.
        """
        lanes, pump = self.newLanes()
        session, _ = self.session(lanes, shared=True)
        udp = session.udp
        other = Session(udp, ("127.0.0.1", 40002), lambda *a, **k: None,
                        link=self.link(self))
        sessionLane(lanes, other, shared=True)
        self.assertEqual(len(pump.shared), 1)
        self.assertEqual([(p.shared, p.source) for p in pump.pairs],
                         [(True, APP), (True, ("127.0.0.1", 40002))])
        lanes.forgetShared(udp)
        self.assertEqual(pump.shared, [])

    def test_noLaneWithoutPump(self) -> None:
        """
        No pump running, no lane: the session takes the Python path.
        """
        self.assertIsNone(self.session(Lanes())[1])
        self.assertIsNone(self.session(None)[1])  # type: ignore[arg-type]


class HandedTests(SynchronousTestCase):
    """
    What the pump hands back reaches the socket and link it was read from.
    """

    def test_handedToTheirOwn(self) -> None:
        """
        Datagrams to the socket's delivery, frames to the link's, a read
        error to the socket's log as an L{OSError}.
        """
        udp, link = FakeUDPTransport(), FakeLink()
        handed = Handed(udp, link, None)
        handed.datagramsHanded([(b"d", APP)])
        handed.framesHanded([b"f"])
        handed.udpReadFailed(111)
        self.assertEqual(udp.delivered, [(b"d", APP)])
        self.assertEqual(link.delivered, [b"f"])
        self.assertEqual(udp.readError.errno, 111)


def _lost() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())
