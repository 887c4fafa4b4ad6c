"""
The relay's decisions, with a fake UDP socket and fake links.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import FakeLink, FakeUDPTransport, captureLogEvents
from udptunnel.tunnel.access import AddressFilter, parseNetwork
from udptunnel.tunnel.pending import DEFAULT_TIMEOUT
from udptunnel.tunnel.service import CLOSE_GRACE
from udptunnel.tunnel.single import CONFIRM_AFTER, LINK_SILENT, Relay
from udptunnel.udp.gso import (
    SegmentSender,
)

APP = ("127.0.0.1", 40001)
POP = ("192.0.2.53", 5072)


class RelayTestMixin:
    def makeRelay(self, peer: tuple[str, int] | None = None) -> Relay:
        self.clock = Clock()
        self.udp = FakeUDPTransport()
        relay = Relay(self.clock, udpPeer=peer)
        relay.udpStarted(self.udp)
        return relay

    def lose(self, relay: Relay, link: FakeLink) -> None:
        relay.linkLost(link, Failure(ConnectionDone()))

    def replace(self, relay: Relay, old: FakeLink, new: FakeLink) -> None:
        """
        Make C{old} the link, then let C{new} take over from it.
        """
        relay.linkMade(old)
        relay.linkMade(new)
        self.clock.advance(LINK_SILENT)
        assert relay.link is new


class PhantomTests(RelayTestMixin, SynchronousTestCase):
    """
    Without --peer, datagrams out of the tunnel go to the newest source.
    """

    def test_learnsSourceAndReplies(self) -> None:
        """
        A datagram goes into the tunnel and its source becomes the phantom
        peer, to which frames out of the tunnel are sent.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        relay.datagramsReceived([(b"hello", APP)])
        self.assertEqual(link.frames, [b"hello"])
        self.assertEqual(relay.learnedPeer, APP)
        relay.framesReceived(link, [b"reply"])
        self.assertEqual(self.udp.written, [(b"reply", APP)])

    def test_newestSourceWins(self) -> None:
        """
        A peer that restarts comes back from another port; replies follow it.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        relay.datagramsReceived([(b"a", APP)])
        moved = ("127.0.0.1", 40002)
        relay.datagramsReceived([(b"b", moved)])
        relay.framesReceived(link, [b"reply"])
        self.assertEqual(self.udp.written, [(b"reply", moved)])
        self.assertEqual(link.frames, [b"a", b"b"])

    def test_changeIsLogged(self) -> None:
        """
        The first source learned and each change of it are logged.
        """
        events = captureLogEvents(self)
        relay = self.makeRelay()
        relay.datagramsReceived([(b"a", APP)])
        relay.datagramsReceived([(b"b", ("127.0.0.1", 40002))])
        formats = [e.get("log_format") for e in events]
        self.assertIn("phantom peer learned: {peer}", formats)
        self.assertIn("phantom peer changed: {old} -> {peer}", formats)

    def test_nothingLearnedYet(self) -> None:
        """
        A frame before any datagram has no destination: dropped and counted.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        relay.framesReceived(link, [b"early"])
        self.assertEqual(self.udp.written, [])
        self.assertEqual(relay.stats.drops["no-address"], 1)

    def test_learnsEvenWithoutLink(self) -> None:
        """
        A datagram dropped for want of a link still teaches the reply address.
        """
        relay = self.makeRelay()
        relay.datagramsReceived([(b"lost", APP)])
        self.assertEqual(relay.stats.drops["no-link"], 1)
        self.assertEqual(relay.learnedPeer, APP)


class FixedPeerTests(RelayTestMixin, SynchronousTestCase):
    def test_repliesGoToPeer(self) -> None:
        """
        With a fixed peer, frames out of the tunnel are sent to it.
        """
        relay = self.makeRelay(peer=POP)
        link = FakeLink()
        relay.linkMade(link)
        relay.framesReceived(link, [b"to pop"])
        self.assertEqual(self.udp.written, [(b"to pop", POP)])

    def test_peerDatagramsForwarded(self) -> None:
        """
        Datagrams from the fixed peer go into the tunnel.
        """
        relay = self.makeRelay(peer=POP)
        link = FakeLink()
        relay.linkMade(link)
        relay.datagramsReceived([(b"from pop", POP)])
        self.assertEqual(link.frames, [b"from pop"])

    def test_foreignSourceDropped(self) -> None:
        """
        With a fixed peer, datagrams from any other source, another port of the
        peer's host included, are dropped as C{foreign-source}, and none is
        learned as a peer.
        """
        relay = self.makeRelay(peer=POP)
        link = FakeLink()
        relay.linkMade(link)
        relay.datagramsReceived([(b"intruder", ("192.0.2.99", 5072))])
        relay.datagramsReceived([(b"other port", ("192.0.2.53", 5073))])
        self.assertEqual(link.frames, [])
        self.assertEqual(relay.stats.drops["foreign-source"], 2)
        self.assertIsNone(relay.learnedPeer)


class DropTests(RelayTestMixin, SynchronousTestCase):
    def test_noLinkDropsAndCounts(self) -> None:
        """
        Without a link, each datagram is dropped as C{no-link}, and none counts
        as sent into the tunnel.
        """
        relay = self.makeRelay()
        for i in range(3):
            relay.datagramsReceived([(b"x" * i, APP)])
        self.assertEqual(relay.stats.drops["no-link"], 3)
        self.assertEqual(relay.stats.toTunnelDatagrams, 0)

    def test_oversizeDropped(self) -> None:
        """
        A frame the UDP socket refuses with C{EMSGSIZE} is dropped as
        C{oversize}.
        """
        relay = self.makeRelay(peer=POP)
        link = FakeLink()
        relay.linkMade(link)
        self.udp.error = OSError(errno.EMSGSIZE, "Message too long")
        relay.framesReceived(link, [b"x" * 65535])
        self.assertEqual(relay.stats.drops["oversize"], 1)

    def test_sendErrorsCountedByErrno(self) -> None:
        """
        EAGAIN, ENOBUFS, ECONNREFUSED: the datagram is lost, the relay goes on.
        """
        relay = self.makeRelay(peer=POP)
        link = FakeLink()
        relay.linkMade(link)
        for code in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EAGAIN):
            self.udp.error = OSError(code, "fake")
            relay.framesReceived(link, [b"x"])
        self.assertEqual(
            dict(relay.stats.drops), {"EAGAIN": 2, "ENOBUFS": 1, "ECONNREFUSED": 1}
        )
        self.udp.error = None
        relay.framesReceived(link, [b"fine"])
        self.assertEqual(self.udp.written, [(b"fine", POP)])

    def test_dropWarningsRateLimited(self) -> None:
        """
        A flood of drops logs one warning at once, then, at the end of the
        interval, the newest of those held back with the count of the
        others; no more than one per interval after that.
        """
        events = captureLogEvents(self)
        relay = self.makeRelay()
        for _ in range(1000):
            relay.datagramsReceived([(b"x", APP)])
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.clock.advance(11)
        relay.datagramsReceived([(b"x", APP)])
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertEqual(warnings[1]["held"], 998)
        self.assertIn("998 more since the last such message", formatEvent(warnings[1]))
        self.clock.advance(10)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 3)
        self.assertEqual(warnings[2]["held"], 0)
        self.assertEqual(relay.stats.drops["no-link"], 1001)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heldLinesWrittenAtStop(self) -> None:
        """
        What is held back when the tunnel stops is written then, and no
        timer outlives the stop.
        """
        events = captureLogEvents(self)
        relay = self.makeRelay()
        relay.startService()
        for _ in range(3):
            relay.datagramsReceived([(b"x", APP)])
        self.successResultOf(relay.stopService())
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([w["held"] for w in warnings], [0, 1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_countsCarriedTraffic(self) -> None:
        """
        Datagrams and bytes are counted both ways, and the stats line says
        them.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        relay.datagramsReceived([(b"abc", APP)])
        relay.framesReceived(link, [b"defgh"])
        stats = relay.stats
        self.assertEqual(
            (stats.toTunnelDatagrams, stats.toTunnelBytes), (1, 3)
        )
        self.assertEqual(
            (stats.fromTunnelDatagrams, stats.fromTunnelBytes), (1, 5)
        )
        self.assertIn("to tunnel 1 datagrams 3 bytes", stats.summary(server=True))


class AnnouncementTests(SynchronousTestCase):
    """
    The start-up lines say who may use the tunnel.
    """

    def test_allowListsLogged(self) -> None:
        """
        At start, C{--allow} and C{--udp-allow} are logged with the networks
        they let in.
        """
        events = captureLogEvents(self)
        relay = Relay(Clock(), allow=AddressFilter([parseNetwork("10.0.0.0/8"),
                                                    parseNetwork("2001:db8::/32")]),
                      udpAllow=AddressFilter([parseNetwork("127.0.0.1")]))
        relay.privilegedStartService()
        lines = [formatEvent(event) for event in events]
        self.assertIn("TCP connections only from 10.0.0.0/8, 2001:db8::/32 (--allow)", lines)
        self.assertIn("UDP datagrams only from 127.0.0.1/32 (--udp-allow)", lines)

    def test_nothingWithoutThem(self) -> None:
        """
        Without C{--allow} or C{--udp-allow}, no line says who may use the
        tunnel.
        """
        events = captureLogEvents(self)
        Relay(Clock()).privilegedStartService()
        self.assertFalse(any("only from" in formatEvent(event) for event in events))


class BatchTests(RelayTestMixin, SynchronousTestCase):
    """
    The datagrams of one read go into the tunnel as one write, the frames of
    one read out one by one; a bad one among them spoils none of the others.
    """

    def test_datagramsOfOneReadInOneWrite(self) -> None:
        """
        The datagrams of one read that may go into the tunnel, empty ones
        included, are one write on the link, in order; a foreign one among
        them is dropped alone.
        """
        relay = self.makeRelay(peer=POP)
        writes: list[list[bytes]] = []
        link = FakeLink()
        link.sendFrames = writes.append  # type: ignore[method-assign]
        relay.linkMade(link)
        relay.datagramsReceived(
            [(b"1", POP), (b"stranger", ("192.0.2.99", 1)), (b"", POP), (b"333", POP)]
        )
        self.assertEqual(writes, [[b"1", b"", b"333"]])
        self.assertEqual(relay.stats.drops["foreign-source"], 1)
        self.assertEqual((relay.stats.toTunnelDatagrams, relay.stats.toTunnelBytes), (3, 4))

    def test_noLinkCountsEachDatagram(self) -> None:
        """
        Without a link, every datagram of one read counts as one C{no-link}
        drop.
        """
        relay = self.makeRelay()
        relay.datagramsReceived([(b"a", APP), (b"b", APP), (b"c", APP)])
        self.assertEqual(relay.stats.drops["no-link"], 3)

    def test_failedSendSpoilsNoOther(self) -> None:
        """
        A frame of a read that the UDP socket refuses is dropped alone; the
        others are sent, and counted.
        """
        relay = self.makeRelay(peer=POP)
        link = FakeLink()
        relay.linkMade(link)
        sent: list[bytes] = []

        def sendTo(data: bytes, addr: tuple[str, int]) -> None:
            if data == b"too big":
                raise OSError(errno.EMSGSIZE, "Message too long")
            sent.append(data)

        self.udp.sendTo = sendTo  # type: ignore[method-assign]
        relay.framesReceived(link, [b"one", b"too big", b"three"])
        self.assertEqual(sent, [b"one", b"three"])
        self.assertEqual(relay.stats.drops["oversize"], 1)
        self.assertEqual(relay.stats.fromTunnelDatagrams, 2)


class LinkTests(RelayTestMixin, SynchronousTestCase):
    """
    Which connection is the link: a newcomer takes over when it sends its
    first frame, or when the link has been silent for LINK_SILENT seconds;
    one that stays silent beside a live link, or closes at once, never
    touches the link.
    """

    def test_firstLinkAtOnce(self) -> None:
        """
        With no link yet, the first connection admitted becomes the link as
        soon as it is made, and waits in no pending list.
        """
        relay = self.makeRelay()
        link = FakeLink()
        self.assertTrue(relay.linkConnected(link))
        relay.linkMade(link)
        self.assertIs(relay.link, link)
        self.assertEqual(relay.stats.linksUp, 1)
        self.assertEqual(relay.pendingCount(), 0)

    def test_newcomerThatSendsTakesOver(self) -> None:
        """
        A client that reconnected after a network change sends its first
        frame: it takes over at once, and the old connection is aborted.
        """
        relay = self.makeRelay(peer=POP)
        old, new = FakeLink("192.0.2.1:1"), FakeLink("192.0.2.1:2")
        relay.linkMade(old)
        relay.framesReceived(old, [b"alive"])
        relay.linkMade(new)
        self.assertIs(relay.link, old)
        relay.framesReceived(new, [b"first"])
        self.assertIs(relay.link, new)
        self.assertTrue(old.aborted)
        self.assertFalse(new.aborted)
        self.assertEqual(self.udp.written, [(b"alive", POP), (b"first", POP)])
        relay.datagramsReceived([(b"x", POP)])
        self.assertEqual((old.frames, new.frames), ([], [b"x"]))
        self.assertEqual(relay.stats.linksReplaced, 1)
        self.assertEqual(relay.stats.takeovers["first-frame"], 1)

    def test_silentNewcomerBesideLiveLink(self) -> None:
        """
        A connection that says nothing while the link carries frames (a port
        scan, a health check that stays connected) never takes the link and
        is closed at its deadline.
        """
        relay = self.makeRelay(peer=POP)
        link, silent = FakeLink(), FakeLink("198.51.100.7:1")
        relay.linkMade(link)
        relay.linkConnected(silent)
        relay.linkMade(silent)
        for _ in range(int(DEFAULT_TIMEOUT) - 1):
            self.clock.advance(1)
            relay.framesReceived(link, [b"busy"])
        self.assertIs(relay.link, link)
        self.assertFalse(silent.aborted)
        self.clock.advance(1)
        self.assertTrue(silent.aborted)
        self.lose(relay, silent)
        self.assertIs(relay.link, link)
        self.assertFalse(link.aborted)
        self.assertEqual(relay.stats.pendingClosed["timeout"], 1)
        self.assertEqual(relay.stats.linksReplaced, 0)
        self.assertEqual(relay.pendingCount(), 0)

    def test_silentNewcomerTakesOverSilentLink(self) -> None:
        """
        A reconnecting client whose application is quiet still gets the link
        when the old one has gone silent: within LINK_SILENT seconds.
        """
        relay = self.makeRelay()
        old, new = FakeLink(), FakeLink()
        relay.linkMade(old)
        self.clock.advance(1)
        relay.linkMade(new)
        self.clock.advance(LINK_SILENT - 1.5)
        self.assertIs(relay.link, old)
        self.clock.advance(0.5)
        self.assertIs(relay.link, new)
        self.assertTrue(old.aborted)
        self.assertEqual(relay.stats.takeovers["link-silent"], 1)

    def test_silentLinkTakenAtOnce(self) -> None:
        """
        A newcomer whose link has already been silent for L{LINK_SILENT}
        seconds takes over at once.
        """
        relay = self.makeRelay()
        old, new = FakeLink(), FakeLink()
        relay.linkMade(old)
        self.clock.advance(LINK_SILENT)
        relay.linkMade(new)
        self.assertIs(relay.link, new)

    def test_framesPostponeSilentTakeover(self) -> None:
        """
        A frame on the link restarts its silence: a silent newcomer takes over
        only L{LINK_SILENT} seconds after the link's last frame.
        """
        relay = self.makeRelay(peer=POP)
        old, new = FakeLink(), FakeLink()
        relay.linkMade(old)
        relay.linkMade(new)
        self.clock.advance(LINK_SILENT - 1)
        relay.framesReceived(old, [b"still here"])
        self.clock.advance(LINK_SILENT - 1)
        self.assertIs(relay.link, old)
        self.clock.advance(1)
        self.assertIs(relay.link, new)

    def test_takeoverStartsSilenceAnew(self) -> None:
        """
        Two silent newcomers do not hand the link on to each other at once.
        """
        relay = self.makeRelay()
        old, one, two = FakeLink(), FakeLink(), FakeLink()
        relay.linkMade(old)
        relay.linkMade(one)
        relay.linkMade(two)
        self.clock.advance(LINK_SILENT)
        self.assertIn(relay.link, (one, two))
        self.assertEqual(relay.stats.linksReplaced, 1)
        self.clock.advance(LINK_SILENT - 0.5)
        self.assertEqual(relay.stats.linksReplaced, 1)

    def test_closedAtOnceTouchesNothing(self) -> None:
        """
        Connect-and-close (a port scan, a TCP health check): the link stays.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        for i in range(10):
            probe = FakeLink(f"198.51.100.7:{i + 1}")
            relay.linkConnected(probe)
            relay.linkMade(probe)
            self.lose(relay, probe)
            self.clock.advance(1)
            relay.framesReceived(link, [b"busy"])
        self.assertIs(relay.link, link)
        self.assertFalse(link.aborted)
        self.assertEqual(relay.stats.pendingClosed["peer-closed"], 10)
        self.assertEqual((relay.stats.linksUp, relay.stats.linksReplaced), (1, 0))

    def test_lossPromotesWaitingNewcomer(self) -> None:
        """
        When the link is lost, the newcomer waiting beside it becomes the link
        at once; the loss counts as a lost link.
        """
        relay = self.makeRelay()
        old, new = FakeLink(), FakeLink()
        relay.linkMade(old)
        relay.linkMade(new)
        self.lose(relay, old)
        self.assertIs(relay.link, new)
        self.assertEqual(relay.stats.linksLost, 1)

    def test_handshakeNotDoneIsNotReady(self) -> None:
        """
        A TLS connection is admitted (linkConnected) but may become the link
        only after its handshake (linkMade), and is closed at the deadline
        if it never gets there.
        """
        relay = self.makeRelay()
        silent = FakeLink()
        relay.linkConnected(silent)
        self.assertIsNone(relay.link)
        self.clock.advance(DEFAULT_TIMEOUT)
        self.assertTrue(silent.aborted)
        self.assertIsNone(relay.link)
        self.assertEqual(relay.stats.pendingClosed["timeout"], 1)

    def test_failedHandshakeCountsAsFailed(self) -> None:
        """
        A connection lost before its handshake was done counts as a failed
        link, and leaves the pending list.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkConnected(link)
        relay.linkLost(link, Failure(ConnectionLost()))
        self.assertEqual(relay.stats.linksFailed, 1)
        self.assertEqual(relay.pendingCount(), 0)

    def test_probeClosedByPeer(self) -> None:
        """
        A server's connection that its peer closes cleanly before it was
        ready (a health check of a server behind a balancer, before its
        PROXY header) is a probe, as one that was ready: no failure.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkConnected(link)
        self.lose(relay, link)
        self.assertEqual(relay.stats.linksFailed, 0)
        self.assertEqual(relay.stats.pendingClosed["peer-closed"], 1)
        self.assertEqual(relay.pendingCount(), 0)

    def test_capClosesOldest(self) -> None:
        """
        Beyond C{maxPending} connections waiting, the oldest ones are aborted
        and counted as evicted.
        """
        self.clock = Clock()
        self.udp = FakeUDPTransport()
        relay = Relay(self.clock, maxPending=3)
        relay.udpStarted(self.udp)
        links = [FakeLink(f"198.51.100.7:{i + 1}") for i in range(5)]
        for link in links:
            relay.linkConnected(link)
        self.assertEqual([link.aborted for link in links], [True, True, False, False, False])
        self.assertEqual(relay.stats.pendingClosed["evicted"], 2)
        self.assertEqual(relay.pendingCount(), 3)

    def test_replacedLinkLossKeepsActive(self) -> None:
        """
        The loss of a link already replaced leaves the link that replaced it.
        """
        relay = self.makeRelay()
        old, new = FakeLink(), FakeLink()
        self.replace(relay, old, new)
        self.lose(relay, old)
        self.assertIs(relay.link, new)

    def test_framesFromReplacedLinkDropped(self) -> None:
        """
        Frames still arriving on a replaced link are dropped as
        C{replaced-link}, not sent.
        """
        relay = self.makeRelay(peer=POP)
        old, new = FakeLink(), FakeLink()
        self.replace(relay, old, new)
        relay.framesReceived(old, [b"stale"])
        self.assertEqual(self.udp.written, [])
        self.assertEqual(relay.stats.drops["replaced-link"], 1)

    def test_lossThenDrops(self) -> None:
        """
        Once the only link is lost there is none, and datagrams are dropped as
        C{no-link}.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        self.lose(relay, link)
        self.assertIsNone(relay.link)
        relay.datagramsReceived([(b"x", APP)])
        self.assertEqual(relay.stats.drops["no-link"], 1)

    def test_stopClosesCleanlyAndWaits(self) -> None:
        """
        Stopping closes the waiting connections cleanly and drains the link
        (half-closed: L{test_drainDeliversTheLastFrames}), none aborted, and
        is done only once all of them are gone; their ends then count as no
        lost link.
        """
        relay = self.makeRelay()
        relay.startService()
        link, waiting = FakeLink(), FakeLink()
        relay.linkMade(link)
        relay.linkConnected(waiting)
        stopped = relay.stopService()
        self.assertTrue(getattr(link, "drained", False) and waiting.closed)
        self.assertFalse(link.aborted)
        self.lose(relay, link)
        self.assertNoResult(stopped)
        self.lose(relay, waiting)
        self.successResultOf(stopped)
        self.assertEqual(relay.stats.linksLost, 0)

    def test_drainDeliversTheLastFrames(self) -> None:
        """
        While a stop drains the link, the UDP socket is no longer read, and
        the frames the peer sent before it saw the half-close still go out
        as datagrams; datagrams held for a link that will not come are
        counted as dropped.
        """
        relay = Relay(Clock(), udpPeer=POP, hold=(2, 1024, 1 << 20))
        udp = FakeUDPTransport()
        relay.udpStarted(udp)
        relay.startService()
        link = FakeLink()
        relay.linkMade(link)
        relay.stopService()
        self.assertTrue(link.drained)
        self.assertFalse(udp.reading)
        relay.framesReceived(link, [b"last", b"words"])
        self.assertEqual(udp.written, [(b"last", POP), (b"words", POP)])
        self.assertEqual(sum(relay.stats.drops.values()), 0)

    def test_stopAbortsWhatDoesNotClose(self) -> None:
        """
        A link still open L{CLOSE_GRACE} seconds after the stop began is
        aborted; the stop is done once it is gone.
        """
        relay = self.makeRelay()
        relay.startService()
        link = FakeLink()
        relay.linkMade(link)
        stopped = relay.stopService()
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(link.aborted)
        self.assertNoResult(stopped)
        self.lose(relay, link)
        self.successResultOf(stopped)


class ClientLinkTests(RelayTestMixin, SynchronousTestCase):
    """
    A client declares its link up once it proved itself, so a server that
    closes it at once is a refused attempt, not a link up and down.
    """

    def makeClientRelay(self) -> Relay:
        self.ended: list[str | None] = []
        self.clock = Clock()
        self.udp = FakeUDPTransport()
        relay = Relay(self.clock, udpPeer=POP, role="client",
                      onLinkEnded=lambda failure, closedByPeer=False:
                      self.ended.append(failure))
        relay.udpStarted(self.udp)
        return relay

    def test_closedAtOnceIsRefused(self) -> None:
        """
        A client's connection that the server closes before it carried a frame
        from it, even after sending into it, is a failed attempt, reported as
        such: no link up, no link lost, no C{link up} line.
        """
        events = captureLogEvents(self)
        relay = self.makeClientRelay()
        link = FakeLink()
        relay.linkConnected(link)
        relay.linkMade(link)
        relay.datagramsReceived([(b"sent at once", POP)])
        self.assertEqual(link.frames, [b"sent at once"])
        self.lose(relay, link)
        self.assertEqual((relay.stats.linksUp, relay.stats.linksLost), (0, 0))
        self.assertEqual(relay.stats.linksFailed, 1)
        (failure,) = self.ended
        assert failure is not None
        self.assertIn("before it carried anything", failure)
        text = " ".join(e.get("log_format", "") for e in events)
        self.assertNotIn("link up", text)

    def test_upOnFirstFrame(self) -> None:
        """
        A client's link is up when the server's first frame arrives, not
        before; its loss then counts as a lost link, not a failed one.
        """
        relay = self.makeClientRelay()
        link = FakeLink()
        relay.linkMade(link)
        self.assertEqual(relay.stats.linksUp, 0)
        relay.framesReceived(link, [b"hello"])
        self.assertEqual(relay.stats.linksUp, 1)
        self.lose(relay, link)
        self.assertEqual((relay.stats.linksLost, relay.stats.linksFailed), (1, 0))

    def test_upAfterAWhile(self) -> None:
        """
        A client's link that lasts L{CONFIRM_AFTER} seconds is up without any
        frame; its loss counts as lost, and is reported as no failure.
        """
        relay = self.makeClientRelay()
        link = FakeLink()
        relay.linkMade(link)
        self.clock.advance(CONFIRM_AFTER)
        self.assertEqual(relay.stats.linksUp, 1)
        self.clock.advance(10)
        self.lose(relay, link)
        self.assertEqual(relay.stats.linksLost, 1)
        self.assertEqual(self.ended, [None])

    def test_lossWordsSayWhoClosed(self) -> None:
        """
        The C{link down} line of a link closed cleanly by the server says
        C{closed by the peer}.
        """
        events = captureLogEvents(self)
        relay = self.makeClientRelay()
        link = FakeLink()
        relay.linkMade(link)
        self.clock.advance(CONFIRM_AFTER)
        self.lose(relay, link)
        downs = [e for e in events if e.get("log_format", "").startswith("link down")]
        self.assertEqual([e["why"] for e in downs], ["closed by the peer"])


class FlowControlTests(RelayTestMixin, SynchronousTestCase):
    """
    A full TCP send buffer pauses reading of the UDP socket, so the kernel
    drops the excess instead of this process buffering it.
    """

    def test_pauseAndResume(self) -> None:
        """
        When the link's transport pauses its producer, the UDP socket stops
        reading; when it resumes, reading starts again.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        assert link.producer is not None
        link.producer.pauseProducing()
        self.assertFalse(self.udp.reading)
        link.producer.resumeProducing()
        self.assertTrue(self.udp.reading)

    def test_stopProducingResumes(self) -> None:
        """
        A lost link must not leave the UDP socket deaf.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        assert link.producer is not None
        link.producer.pauseProducing()
        link.producer.stopProducing()
        self.assertTrue(self.udp.reading)

    def test_replacedLinkCannotPause(self) -> None:
        """
        A replaced link's transport pausing its producer does not stop the UDP
        socket's reading.
        """
        relay = self.makeRelay()
        old, new = FakeLink(), FakeLink()
        self.replace(relay, old, new)
        assert old.producer is not None
        old.producer.pauseProducing()
        self.assertTrue(self.udp.reading)

    def test_replacedLinkCannotResume(self) -> None:
        """
        The replaced link's transport calls stopProducing when it closes:
        that must not resume reads the new, congested link paused.
        """
        relay = self.makeRelay()
        old, new = FakeLink(), FakeLink()
        self.replace(relay, old, new)
        assert old.producer is not None and new.producer is not None
        new.producer.pauseProducing()
        old.producer.stopProducing()
        old.producer.resumeProducing()
        self.assertFalse(self.udp.reading)
        new.producer.resumeProducing()
        self.assertTrue(self.udp.reading)

    def test_newLinkResumes(self) -> None:
        """
        A newcomer taking over from a link that had paused the UDP socket
        resumes its reading.
        """
        relay = self.makeRelay()
        old, new = FakeLink(), FakeLink()
        relay.linkMade(old)
        assert old.producer is not None
        old.producer.pauseProducing()
        relay.linkMade(new)
        self.clock.advance(LINK_SILENT)
        self.assertTrue(self.udp.reading)

    def test_lossResumes(self) -> None:
        """
        The loss of a link that had paused the UDP socket resumes its reading.
        """
        relay = self.makeRelay()
        link = FakeLink()
        relay.linkMade(link)
        assert link.producer is not None
        link.producer.pauseProducing()
        self.lose(relay, link)
        self.assertTrue(self.udp.reading)


class AccessTests(RelayTestMixin, SynchronousTestCase):
    def test_allowListRefusesOthers(self) -> None:
        """
        With C{allow}, connections from its networks are admitted (an
        IPv4-mapped IPv6 address as its IPv4 one), and others refused and
        counted.
        """
        relay = self.makeRelay()
        relay.allow = AddressFilter([parseNetwork("192.0.2.0/24"), parseNetwork("2001:db8::/32")])
        self.assertTrue(relay.linkConnected(FakeLink("192.0.2.1:1")))
        self.assertTrue(relay.linkConnected(FakeLink("[2001:db8::5]:1")))
        self.assertTrue(relay.linkConnected(FakeLink("[::ffff:192.0.2.9]:1")))
        self.assertFalse(relay.linkConnected(FakeLink("198.51.100.1:1")))
        self.assertFalse(relay.linkConnected(FakeLink("[2001:db9::1]:1")))
        self.assertEqual(relay.stats.linksRefused, 2)

    def test_noAllowListAllowsAll(self) -> None:
        """
        Without C{allow}, any address is admitted, and none counted refused.
        """
        relay = self.makeRelay()
        self.assertTrue(relay.linkConnected(FakeLink("198.51.100.1:1")))
        self.assertEqual(relay.stats.linksRefused, 0)

    def test_unixPeerNotFiltered(self) -> None:
        """
        A Unix socket's peer has no address; file permissions guard it.
        """
        relay = self.makeRelay()
        relay.allow = AddressFilter([parseNetwork("192.0.2.0/24")])
        link = FakeLink("/run/udptunnel.sock")
        link.remoteHost = None
        self.assertTrue(relay.linkConnected(link))

    def test_udpAllowFiltersPhantomSources(self) -> None:
        """
        With C{udpAllow}, a datagram from outside it is dropped as
        C{udp-not-allowed} and does not become the phantom peer: replies still
        go to the allowed source.
        """
        relay = self.makeRelay()
        relay.udpAllow = AddressFilter([parseNetwork("127.0.0.0/8")])
        link = FakeLink()
        relay.linkMade(link)
        relay.datagramsReceived([(b"ok", APP)])
        relay.datagramsReceived([(b"intruder", ("192.0.2.66", 5000))])
        self.assertEqual(link.frames, [b"ok"])
        self.assertEqual(relay.learnedPeer, APP)
        self.assertEqual(relay.stats.drops["udp-not-allowed"], 1)
        relay.framesReceived(link, [b"reply"])
        self.assertEqual(self.udp.written, [(b"reply", APP)])


class LinkEndedTests(RelayTestMixin, SynchronousTestCase):
    """
    A client's relay tells its reconnector how each connection ended: a
    link that came up (however short: the server may have given it to a
    newcomer) is no failure; one the server closed before it carried
    anything, or that never became the link, is, with why.
    """

    def makeReportingRelay(self) -> Relay:
        self.ended: list[str | None] = []
        self.clock = Clock()
        self.udp = FakeUDPTransport()
        relay = Relay(self.clock, role="client", pendingTimeout=DEFAULT_TIMEOUT,
                      onLinkEnded=lambda failure, closedByPeer=False: self.ended.append(failure))
        relay.udpStarted(self.udp)
        return relay

    def test_linkThatCarried(self) -> None:
        """
        A link that carried a frame from the server is reported ended with no
        failure when lost, and counts as lost.
        """
        relay = self.makeReportingRelay()
        link = FakeLink()
        relay.linkMade(link)
        relay.framesReceived(link, [b"from the server"])
        self.lose(relay, link)
        self.assertEqual(self.ended, [None])
        self.assertEqual(relay.stats.linksLost, 1)

    def test_linkThatLasted(self) -> None:
        """
        A link that lasted L{CONFIRM_AFTER} seconds is reported ended with no
        failure when lost.
        """
        relay = self.makeReportingRelay()
        link = FakeLink()
        relay.linkMade(link)
        self.clock.advance(CONFIRM_AFTER)
        self.lose(relay, link)
        self.assertEqual(self.ended, [None])

    def test_closedAtOnce(self) -> None:
        """
        Closed by the server before it carried anything: refused, with the
        likely reasons; the relay leaves the line to the reconnector.
        """
        events = captureLogEvents(self)
        relay = self.makeReportingRelay()
        link = FakeLink()
        relay.linkMade(link)
        self.lose(relay, link)
        (failure,) = self.ended
        assert failure is not None
        self.assertIn("closed by the server before it carried anything", failure)
        self.assertIn("--handshake mismatch", failure)
        self.assertEqual(relay.stats.linksFailed, 1)
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])

    def test_neverEstablishedCountsAsFailed(self) -> None:
        """
        A connection that ended before becoming the link (a TLS handshake
        that failed) is a failure.
        """
        relay = self.makeReportingRelay()
        link = FakeLink()
        relay.linkConnected(link)
        relay.linkLost(link, Failure(ConnectionLost()))
        self.assertEqual(self.ended, ["connection lost (reset or aborted)"])
        self.assertEqual(relay.stats.linksFailed, 1)

    def test_expiredIsReportedToo(self) -> None:
        """
        A connection closed at the pending deadline is reported when it is
        gone, with the deadline as the reason: every connection's end is,
        or the client would wait for ever.
        """
        relay = self.makeReportingRelay()
        link = FakeLink()
        relay.linkConnected(link)
        self.clock.advance(DEFAULT_TIMEOUT)
        self.assertTrue(link.aborted)
        relay.linkLost(link, Failure(ConnectionLost()))
        self.assertEqual(self.ended, [f"not the link after {DEFAULT_TIMEOUT:g} s"])


class TimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.udp = FakeUDPTransport()

    def start(self, **options: float) -> Relay:
        relay = Relay(self.clock, **options)  # type: ignore[arg-type]
        relay.udpStarted(self.udp)
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay

    def test_idleLinkClosed(self) -> None:
        """
        With C{idleTimeout}, the link is closed after that many seconds
        without traffic; datagrams into the tunnel keep it open.
        """
        relay = self.start(idleTimeout=10)
        link = FakeLink()
        relay.linkMade(link)
        for _ in range(9):
            self.clock.advance(1)
            relay.datagramsReceived([(b"keep busy", APP)])
        self.clock.pump([1] * 9)
        self.assertFalse(link.closed)
        self.clock.pump([1] * 2)
        self.assertTrue(link.closed)

    def test_trafficEitherWayKeepsLinkOpen(self) -> None:
        """
        Frames out of the tunnel keep the link open past C{idleTimeout}, as
        datagrams into it do.
        """
        relay = self.start(idleTimeout=10)
        link = FakeLink()
        relay.linkMade(link)
        relay.datagramsReceived([(b"learn", APP)])
        for _ in range(30):
            self.clock.advance(1)
            relay.framesReceived(link, [b"from the tunnel"])
        self.assertFalse(link.closed)

    def test_noIdleTimeoutByDefault(self) -> None:
        """
        Without C{idleTimeout}, a link without traffic is never closed.
        """
        relay = self.start()
        link = FakeLink()
        relay.linkMade(link)
        self.clock.pump([1000] * 100)
        self.assertFalse(link.closed)

    def test_statsLoggedOnlyWhenChanged(self) -> None:
        """
        With C{statsInterval}, the stats line is logged at the interval only
        when the figures changed since the last one.
        """
        events = captureLogEvents(self)
        relay = self.start(statsInterval=60)

        def statsLines() -> int:
            return sum(1 for e in events if "{summary}; {state}" in e.get("log_format", ""))

        relay.datagramsReceived([(b"x", APP)])
        self.clock.advance(60)
        self.assertEqual(statsLines(), 1)
        self.clock.advance(60)
        self.clock.advance(60)
        self.assertEqual(statsLines(), 1)
        relay.datagramsReceived([(b"x", APP)])
        self.clock.advance(60)
        self.assertEqual(statsLines(), 2)


class FlappingPhantomTests(RelayTestMixin, SynchronousTestCase):
    """
    Two applications sending alternately to one phantom end change its peer
    at every datagram: counted each time, logged at a bounded rate.
    """

    def test_changesCountedLinesBounded(self) -> None:
        """
        Each change of the phantom peer is counted, and said in the stats
        line; the lines saying so are the first at once, then at most one per
        10 s with the count of those held back.
        """
        events = captureLogEvents(self)
        relay = self.makeRelay()
        relay.linkMade(FakeLink())
        one, two = ("127.0.0.1", 40001), ("127.0.0.1", 40002)
        for i in range(1000):
            relay.datagramsReceived([(b"x", one if i % 2 == 0 else two)])
            if i % 100 == 99:
                self.clock.advance(2)  # 1000 datagrams over 20 s
        changed = [e for e in events if "phantom peer changed" in e.get("log_format", "")]
        self.assertEqual(relay.stats.phantomChanges, 999)
        # The first at once, then at most one per 10 s.
        self.assertLessEqual(len(changed), 3)
        self.assertGreaterEqual(len(changed), 2)
        self.assertGreater(changed[-1]["held"], 0)
        self.assertIn("phantom changes 999", relay.summary())


class InternalErrorTests(RelayTestMixin, SynchronousTestCase):
    def test_tracebackOnceThenRateLimited(self) -> None:
        """
        Internal errors at one place are all counted, and said in the stats
        line; the first is logged with its traceback, the others in
        rate-limited lines without.
        """
        events = captureLogEvents(self)
        relay = self.makeRelay()
        for _ in range(50):
            try:
                raise ZeroDivisionError("a bug")
            except ZeroDivisionError:
                relay.internalError("frames", Failure())
        self.assertEqual(relay.stats.internalErrors["frames"], 50)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        later = [e for e in events if "internal error while {where}: {error}" in e.get(
            "log_format", "")]
        self.assertEqual(len(later), 1)
        self.assertIn("internal errors 50", relay.summary())
        self.flushLoggedErrors(ZeroDivisionError)


class AddressWordingTests(RelayTestMixin, SynchronousTestCase):
    """
    One way of writing addresses, in every log line.
    """

    def test_ipv6BoundAddressInBrackets(self) -> None:
        """
        The C{UDP bound on} line writes an IPv6 address in brackets, before
        its port.
        """
        events = captureLogEvents(self)
        relay = Relay(Clock())
        udp = FakeUDPTransport()
        udp.getHost = lambda: IPv6Address("UDP", "::", 5073)  # type: ignore[method-assign]
        relay.udpStarted(udp)
        bound = [e for e in events if e.get("log_format", "").startswith("UDP bound on")]
        self.assertEqual([e["address"] for e in bound], ["[::]:5073"])

    def test_mappedIPv4PeerAsIPv4(self) -> None:
        """
        A phantom peer with an IPv4-mapped IPv6 address is logged as its IPv4
        address.
        """
        events = captureLogEvents(self)
        relay = self.makeRelay()
        relay.datagramsReceived([(b"x", ("::ffff:127.0.0.1", 40000))])
        learned = [e for e in events if e.get("log_format", "").startswith("phantom peer")]
        self.assertEqual([e["peer"] for e in learned], ["127.0.0.1:40000"])


class SegmentingUDP(FakeUDPTransport):
    """
    A fake UDP socket with a L{SegmentSender}, as the tunnel's own have.
    """

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[list[bytes]] = []
        self.segmentError: OSError | None = None
        self.sendMany = SegmentSender(self.sendTo, self.sendSegments).sendMany

    def sendSegments(self, buffers: Sequence[bytes], segmentSize: int, addr: Any) -> None:
        if self.segmentError is not None:
            raise self.segmentError
        self.runs.append(list(buffers))
        self.written.extend((data, addr) for data in buffers)


class RelayCountingTests(SynchronousTestCase):
    """
    The relay's figures are the same whether a read's frames leave one by
    one or in runs.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.udp = SegmentingUDP()
        self.relay = Relay(Clock(), udpPeer=POP)
        self.relay.udpStarted(self.udp)
        self.link = FakeLink()
        self.relay.linkMade(self.link)

    def test_countedPerDatagram(self) -> None:
        """
        Frames sent in runs, and those sent alone (an empty one), count one
        datagram each, with their bytes.
        """
        frames = [b"x" * 100] * 10 + [b""] + [b"y" * 7] * 2
        self.relay.framesReceived(self.link, frames)
        self.assertEqual(self.udp.runs, [[b"x" * 100] * 10, [b"y" * 7] * 2])
        self.assertEqual(self.udp.written, [(f, POP) for f in frames])
        stats = self.relay.stats
        self.assertEqual((stats.fromTunnelDatagrams, stats.fromTunnelBytes), (13, 1014))

    def test_errorsCountedPerDatagramByErrno(self) -> None:
        """
        A run refused for want of room (C{ENOBUFS}) counts one drop per
        datagram, by its errno, and none sent.
        """
        self.udp.segmentError = OSError(errno.ENOBUFS, "fake")
        self.relay.framesReceived(self.link, [b"x" * 10] * 5)
        self.assertEqual(dict(self.relay.stats.drops), {"ENOBUFS": 5})
        self.assertEqual(self.relay.stats.fromTunnelDatagrams, 0)

    def test_oversizeAloneCounted(self) -> None:
        """
        Datagrams of a run refused with C{EINVAL} that are refused alone with
        C{EMSGSIZE} count as C{oversize} drops, one each.
        """
        self.udp.segmentError = OSError(errno.EINVAL, "fake")
        self.udp.error = OSError(errno.EMSGSIZE, "Message too long")
        self.relay.framesReceived(self.link, [b"x" * 3000] * 2)
        self.assertEqual(dict(self.relay.stats.drops), {"oversize": 2})



