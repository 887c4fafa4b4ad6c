"""
L{udptunnel.tunnel.hold}: datagrams kept while the single link is down,
bounded by age, count and bytes, and sent in order on the next link.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import APP, FakeLink, FakeUDPTransport
from udptunnel.tunnel.hold import HoldQueue
from udptunnel.tunnel.single import Relay


class Drops:
    """
    A drop callback that records each reason and count.
    """

    def __init__(self) -> None:
        self.drops: list[tuple[str, int]] = []

    def __call__(self, reason: str, format: str, count: int = 1, **fields: Any) -> None:
        self.drops.append((reason, count))


class QueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.drops = Drops()

    def test_inOrder(self) -> None:
        """
        What is held comes out oldest first, once: the queue is empty after.
        """
        queue = HoldQueue(self.clock, self.drops)
        queue.hold([b"1", b"2"])
        self.clock.advance(0.5)
        queue.hold([b"3"])
        self.assertEqual(queue.release(), [b"1", b"2", b"3"])
        self.assertEqual((queue.release(), len(queue), self.drops.drops), ([], 0, []))

    def test_expired(self) -> None:
        """
        A datagram held longer than the age bound is dropped and counted as
        C{expired} rather than sent late; younger ones still go.
        """
        queue = HoldQueue(self.clock, self.drops, maxAge=2)
        queue.hold([b"old", b"old too"])
        self.clock.advance(1.5)
        queue.hold([b"young"])
        self.clock.advance(0.6)
        self.assertEqual(queue.release(), [b"young"])
        self.assertEqual(self.drops.drops, [("expired", 2)])

    def test_boundedByCount(self) -> None:
        """
        Past the count bound, new datagrams are dropped (C{hold-full}): the
        queue keeps the oldest, which are the next to be sent.
        """
        queue = HoldQueue(self.clock, self.drops, maxDatagrams=2)
        queue.hold([b"a", b"b", b"c", b"d"])
        self.assertEqual(self.drops.drops, [("hold-full", 2)])
        self.assertEqual(queue.release(), [b"a", b"b"])

    def test_boundedByBytes(self) -> None:
        """
        Past the byte bound, a datagram that does not fit is dropped, and
        a smaller one that fits is kept.
        """
        queue = HoldQueue(self.clock, self.drops, maxBytes=10)
        queue.hold([b"x" * 6, b"y" * 6, b"z" * 4])
        self.assertEqual(queue.release(), [b"x" * 6, b"z" * 4])
        self.assertEqual(self.drops.drops, [("hold-full", 1)])

    def test_expiryFreesRoom(self) -> None:
        """
        Expired datagrams leave the queue as new ones come: a long outage
        holds at most the bounds, and the newest datagrams, not the oldest.
        """
        queue = HoldQueue(self.clock, self.drops, maxAge=1, maxDatagrams=2)
        for second in range(100):
            queue.hold([b"%d" % second])
            self.clock.advance(1)
            self.assertLessEqual(len(queue), 2)
        self.assertEqual(queue.release(), [b"99"])
        self.assertEqual(sum(n for reason, n in self.drops.drops if reason == "expired"), 99)
        self.assertNotIn("hold-full", [reason for reason, _ in self.drops.drops])


class RelayTests(SynchronousTestCase):
    """
    A single-link relay with a hold queue.
    """

    def relay(self, role: str = "server") -> tuple[Relay, Clock]:
        clock = Clock()
        relay = Relay(clock, role=role, hold=(2, 1024, 1 << 20))
        relay.udpStarted(FakeUDPTransport())
        return relay, clock

    def test_heldUntilTheNextLink(self) -> None:
        """
        Datagrams that arrive while there is no link go, in order, into the
        next link when it comes, before anything newer; none is counted as
        dropped.
        """
        relay, clock = self.relay()
        old = FakeLink()
        relay.linkMade(old)
        relay.linkLost(old, Failure(ConnectionLost()))
        relay.datagramsReceived([(b"during", APP), (b"the restart", APP)])
        clock.advance(1)
        new = FakeLink()
        relay.linkMade(new)
        relay.datagramsReceived([(b"after", APP)])
        self.assertEqual(new.frames, [b"during", b"the restart", b"after"])
        self.assertEqual(sum(relay.stats.drops.values()), 0)
        self.assertEqual(relay.stats.toTunnelDatagrams, 3)

    def test_clientSendsHeldOnConnect(self) -> None:
        """
        A client sends what it held as soon as its new connection is the
        link, before the link is confirmed.
        """
        relay, _clock = self.relay("client")
        relay.datagramsReceived([(b"early", APP)])
        link = FakeLink()
        relay.linkMade(link)
        self.assertEqual(link.frames, [b"early"])

    def test_staleNotDelivered(self) -> None:
        """
        After an outage longer than the age bound, what was held is counted
        C{expired} and the new link carries only what is young.
        """
        relay, clock = self.relay()
        relay.datagramsReceived([(b"stale", APP)])
        clock.advance(5)
        link = FakeLink()
        relay.linkMade(link)
        self.assertEqual(link.frames, [])
        self.assertEqual(relay.stats.drops["expired"], 1)

    def test_withoutHold(self) -> None:
        """
        Without a hold queue (C{--hold 0}), a datagram without a link is
        dropped as C{no-link}, as before.
        """
        relay = Relay(Clock())
        relay.udpStarted(FakeUDPTransport())
        relay.datagramsReceived([(b"lost", APP)])
        link = FakeLink()
        relay.linkMade(link)
        self.assertEqual((link.frames, relay.stats.drops["no-link"]), ([], 1))
