"""
L{udptunnel.tunnel.clientsessions}: one TCP connection per UDP source.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import (
    Connections,
    FakeLink,
    FakeUDPTransport,
    attachedLanes,
    captureLogEvents,
    plainConnection,
)
from udptunnel.interfaces import IRelay
from udptunnel.tunnel.clientsessions import ClientSessions
from udptunnel.tunnel.sessions import QUEUE_BYTES, QUEUE_DATAGRAMS, QUEUE_TOTAL_BYTES

ONE, TWO, THREE = ("127.0.0.1", 40001), ("127.0.0.1", 40002), ("127.0.0.1", 40003)


class ClientTestMixin:
    def makeClient(self, **options: Any) -> ClientSessions:
        self.clock = Clock()
        self.udp = FakeUDPTransport()
        self.connections = Connections()
        client = ClientSessions(self.clock, self.connections.connect, random=lambda: 0.5,
                                **options)
        client.udpStarted(self.udp)
        return client


class ClientRoutingTests(ClientTestMixin, SynchronousTestCase):
    def test_connectionPerSource(self) -> None:
        """
        Each UDP source opens a session with a connection of its own, which
        carries that source's datagrams only, in order.
        """
        client = self.makeClient()
        client.datagramsReceived([(b"one", ONE), (b"two", TWO), (b"one again", ONE)])
        self.assertEqual(len(self.connections.attempts), 2)
        first, second = self.connections.succeed(0), self.connections.succeed(1)
        self.assertEqual(first.frames, [b"one", b"one again"])
        self.assertEqual(second.frames, [b"two"])
        self.assertEqual(client.sessionCount(), 2)

    def test_repliesGoToTheirSource(self) -> None:
        """
        Frames on a session's connection go out of the shared socket to that
        session's source.
        """
        client = self.makeClient()
        client.datagramsReceived([(b"q1", ONE), (b"q2", TWO)])
        first, second = self.connections.succeed(0), self.connections.succeed(1)
        relayOne, relayTwo = self.connections.attempts[0][0], self.connections.attempts[1][0]
        relayTwo.framesReceived(second, [b"a2"])
        relayOne.framesReceived(first, [b"a1"])
        self.assertEqual(self.udp.written, [(b"a2", TWO), (b"a1", ONE)])

    def test_upSessionCarriesAtOnce(self) -> None:
        """
        Once its connection is up, a session carries a new datagram of its
        source at once, with no new connection or session.
        """
        client = self.makeClient()
        client.datagramsReceived([(b"first", ONE)])
        link = self.connections.succeed()
        client.datagramsReceived([(b"second", ONE)])
        self.assertEqual(link.frames, [b"first", b"second"])
        self.assertEqual(len(self.connections.attempts), 1)
        self.assertEqual(client.stats.sessionsOpened, 1)

    def test_udpAllow(self) -> None:
        """
        A source outside C{udpAllow} opens no session: its datagram is dropped
        as C{udp-not-allowed}.
        """
        from udptunnel.tunnel.access import AddressFilter, parseNetwork

        client = self.makeClient(udpAllow=AddressFilter([parseNetwork("127.0.0.0/8")]))
        client.datagramsReceived([(b"stranger", ("192.0.2.9", 1)), (b"ok", ONE)])
        self.assertEqual(len(self.connections.attempts), 1)
        self.assertEqual(client.stats.drops["udp-not-allowed"], 1)

    def test_congestedSessionDropsAlone(self) -> None:
        """
        One session's full link drops its own datagrams; the others go on
        (the socket they share is never paused).
        """
        client = self.makeClient()
        client.datagramsReceived([(b"a", ONE), (b"b", TWO)])
        first, second = self.connections.succeed(0), self.connections.succeed(1)
        assert first.producer is not None
        first.producer.pauseProducing()
        client.datagramsReceived([(b"a2", ONE), (b"b2", TWO)])
        self.assertEqual(first.frames, [b"a"])
        self.assertEqual(second.frames, [b"b", b"b2"])
        self.assertEqual(client.stats.drops["congested"], 1)
        self.assertTrue(self.udp.reading)
        first.producer.resumeProducing()
        client.datagramsReceived([(b"a3", ONE)])
        self.assertEqual(first.frames, [b"a", b"a3"])


class ConnectQueueTests(ClientTestMixin, SynchronousTestCase):
    def test_queuedInOrder(self) -> None:
        """
        Datagrams that arrive while the session's connection is being made wait,
        and go out in order once it is up.
        """
        client = self.makeClient()
        for i in range(5):
            client.datagramsReceived([(b"%d" % i, ONE)])
        link = self.connections.succeed()
        self.assertEqual(link.frames, [b"0", b"1", b"2", b"3", b"4"])

    def test_queueBounded(self) -> None:
        """
        At most L{QUEUE_DATAGRAMS} datagrams wait for a connection: the first
        ones are kept, the later ones dropped as C{queue-full}.
        """
        client = self.makeClient()
        for i in range(QUEUE_DATAGRAMS + 10):
            client.datagramsReceived([(b"%d" % i, ONE)])
        link = self.connections.succeed()
        self.assertEqual(len(link.frames), QUEUE_DATAGRAMS)
        self.assertEqual(link.frames[0], b"0")
        self.assertEqual(client.stats.drops["queue-full"], 10)

    def test_queueBytesBounded(self) -> None:
        """
        The datagrams waiting for a session's connection are bounded in bytes
        too (256 KiB): those beyond are dropped as C{queue-full}.
        """
        client = self.makeClient()
        for _ in range(10):
            client.datagramsReceived([(b"x" * 60000, ONE)])
        link = self.connections.succeed()
        self.assertEqual(len(link.frames), 4)  # 256 KiB per session
        self.assertEqual(client.stats.drops["queue-full"], 6)


class FailedConnectionTests(ClientTestMixin, SynchronousTestCase):
    def test_retriedWhileTrafficFlows(self) -> None:
        """
        A failed connection attempt with a datagram waiting is logged, counted,
        and retried after the first delay; the retry carries the datagram.
        """
        events = captureLogEvents(self)
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        self.connections.fail()
        self.assertEqual(len(self.connections.attempts), 1)
        self.clock.advance(0.5)  # the first retry delay (random 0.5: no jitter)
        self.assertEqual(len(self.connections.attempts), 2)
        link = self.connections.succeed()
        self.assertEqual(link.frames, [b"query"])
        self.assertEqual(client.stats.connectFailures, 1)
        self.assertTrue([e for e in events if "cannot connect" in e.get("log_format", "")])

    def test_backsOff(self) -> None:
        """
        A session's failed attempts are retried after doubling delays: 0.5, 1,
        2, 4 s.
        """
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        times = []
        for _ in range(4):
            self.connections.fail()
            before = self.clock.seconds()
            attempts = len(self.connections.attempts)
            while len(self.connections.attempts) == attempts:
                self.clock.advance(0.25)
            times.append(self.clock.seconds() - before)
        self.assertEqual(times, [0.5, 1.0, 2.0, 4.0])

    def fillQueues(self, client: ClientSessions) -> None:
        """
        Fill what all sessions may queue together (L{QUEUE_TOTAL_BYTES}):
        sessions of other sources, each with L{QUEUE_BYTES} waiting for its
        connection, so that the next session's datagrams are dropped as
        C{queue-full} and nothing of it is queued.
        """
        datagram = b"x" * (QUEUE_BYTES // 4)
        for port in range(QUEUE_TOTAL_BYTES // QUEUE_BYTES):
            client.datagramsReceived([(datagram, ("127.0.0.2", 30000 + port))] * 4)
        self.assertEqual(client.stats.drops["queue-full"], 0)

    def test_endsWithoutTraffic(self) -> None:
        """
        A failed connection attempt with no datagram queued (the one that
        opened the session was dropped as C{queue-full}) and none arrived
        since ends the session at once, with no retry: it counts as a connect
        failure and a closed session (not an expired one), drops nothing
        more, and is logged as C{cannot connect}; the other sessions go on.
        """
        events = captureLogEvents(self)
        client = self.makeClient()
        self.fillQueues(client)
        client.datagramsReceived([(b"query", ONE)])
        self.assertEqual(client.stats.drops["queue-full"], 1)  # nothing of ONE queued
        self.assertIn(ONE, client.sessions)
        others = client.sessionCount() - 1
        attempts = len(self.connections.attempts)
        self.connections.fail()
        self.assertNotIn(ONE, client.sessions)
        self.assertEqual(client.sessionCount(), others)
        self.assertEqual(client.stats.connectFailures, 1)
        self.assertEqual(client.stats.sessionsClosed, 1)
        self.assertEqual(client.stats.sessionsExpired, 0)
        self.assertEqual(client.stats.drops["connect-failed"], 0)
        self.assertEqual([e["why"] for e in events
                          if e.get("log_format", "").startswith("session closed")],
                         ["cannot connect"])
        self.clock.advance(600)
        self.assertEqual(len(self.connections.attempts), attempts)

    def test_lostLinkThenRetriedWhileDatagramWaits(self) -> None:
        """
        A session whose link is lost ends; the source's next datagram opens a
        new one, whose failed attempts are retried, with backoff, while that
        datagram waits in its queue (even with no datagram arrived since).
        """
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        link = self.connections.succeed()
        relay = self.connections.attempts[0][0]
        relay.linkLost(link, Failure(ConnectionDone()))
        self.assertEqual(client.sessionCount(), 0)
        client.datagramsReceived([(b"again", ONE)])
        self.connections.fail()
        self.clock.advance(0.5)
        self.assertEqual(len(self.connections.attempts), 3)  # queued datagram: retried
        self.connections.fail()
        self.clock.advance(60)
        # Still queued ("again" waits): it keeps trying, with backoff.
        self.assertGreater(len(self.connections.attempts), 3)

    def test_queuedDatagramRetriedForSessionIdleOnly(self) -> None:
        """
        With its opening datagram queued and its source quiet, a session's
        failed connection is retried, with backoff, only while that datagram
        is younger than C{--session-idle}: then the session ends ("cannot
        connect, and no traffic since"), its datagram counted as a
        C{connect-failed} drop, and nothing more is tried.  With
        C{--session-idle 0} (sessions never idle out) it keeps trying.
        """
        events = captureLogEvents(self)
        client = self.makeClient(sessionIdle=10)
        client.datagramsReceived([(b"query", ONE)])
        for _ in range(100):
            if ONE not in client.sessions:
                break
            if self.connections.attempts[-1][1].called:
                self.clock.advance(0.5)
            else:
                self.connections.fail()
        self.assertNotIn(ONE, client.sessions)
        self.assertEqual(len(self.connections.attempts), 5)  # at 0, 0.5, 1.5, 3.5, 7.5 s
        self.assertLess(self.clock.seconds(), 20)
        self.assertEqual(client.stats.drops["connect-failed"], 1)
        self.assertEqual([e["why"] for e in events
                          if e.get("log_format", "").startswith("session closed")],
                         ["cannot connect, and no traffic since"])
        self.clock.advance(600)
        self.assertEqual(len(self.connections.attempts), 5)

        never = self.makeClient(sessionIdle=0)
        never.datagramsReceived([(b"query", ONE)])
        for _ in range(20):
            self.connections.fail()
            self.clock.advance(60)
        self.assertIn(ONE, never.sessions)
        self.assertEqual(len(self.connections.attempts), 21)

    def test_lostLinkEndsSession(self) -> None:
        """
        A session whose link is lost ends, and counts as closed.
        """
        client = self.makeClient()
        client.datagramsReceived([(b"query", ONE)])
        link = self.connections.succeed()
        self.assertEqual(link.frames, [b"query"])
        self.connections.attempts[0][0].linkLost(link, Failure(ConnectionDone()))
        self.assertEqual(client.sessionCount(), 0)
        self.assertEqual(client.stats.sessionsClosed, 1)

    def test_givesUpOnceQuiet(self) -> None:
        """
        With nothing queued (its datagrams dropped as C{queue-full}), a
        session retries each failed attempt, after the backoff delay, as long
        as a datagram of its source arrived since that attempt; once the
        source is quiet for a whole attempt, that attempt's failure ends the
        session and no attempt follows.
        """
        client = self.makeClient()
        self.fillQueues(client)
        client.datagramsReceived([(b"query", ONE)])
        attempts = len(self.connections.attempts)
        for delay in (0.5, 1.0, 2.0):
            client.datagramsReceived([(b"still there", ONE)])
            self.connections.fail()
            self.clock.advance(delay - 0.25)
            self.assertEqual(len(self.connections.attempts), attempts)
            self.clock.advance(0.25)
            attempts += 1
            self.assertEqual(len(self.connections.attempts), attempts)
            self.assertIn(ONE, client.sessions)
        self.assertEqual(client.stats.drops["queue-full"], 4)  # nothing ever queued
        # Quiet from now on: the attempt under way is the last one.
        self.connections.fail()
        self.assertNotIn(ONE, client.sessions)
        self.clock.advance(600)
        self.assertEqual(len(self.connections.attempts), attempts)
        self.assertEqual(client.stats.connectFailures, 4)
        self.assertEqual(client.stats.sessionsClosed, 1)


class EvictionTests(ClientTestMixin, SynchronousTestCase):
    def test_leastRecentlyActiveEvicted(self) -> None:
        """
        At C{maxSessions}, a new source evicts the session least recently
        active, not the oldest; the session kept keeps its link.
        """
        client = self.makeClient(maxSessions=2)
        client.datagramsReceived([(b"1", ONE)])
        one = self.connections.succeed()
        client.datagramsReceived([(b"2", TWO)])
        self.connections.succeed()
        client.datagramsReceived([(b"1 again", ONE)])  # TWO is now the least recent
        client.datagramsReceived([(b"3", THREE)])
        self.assertEqual(set(client.sessions), {ONE, THREE})
        self.assertEqual(client.stats.sessionsEvicted, 1)
        self.assertFalse(one.closed)

    def test_evictedLinkClosed(self) -> None:
        """
        The link of an evicted session is closed, and the newcomer's session
        takes its place.
        """
        client = self.makeClient(maxSessions=1)
        client.datagramsReceived([(b"1", ONE)])
        one = self.connections.succeed()
        client.datagramsReceived([(b"2", TWO)])
        self.assertTrue(one.closed)
        self.assertEqual(list(client.sessions), [TWO])

    def test_evictedWhileConnectingCancels(self) -> None:
        """
        A session evicted while its connection is being made cancels the
        attempt, which counts as no connect failure; its waiting datagram is
        dropped as C{connect-failed}.
        """
        client = self.makeClient(maxSessions=1)
        client.datagramsReceived([(b"1", ONE)])
        first = self.connections.attempts[0][1]
        client.datagramsReceived([(b"2", TWO)])
        # Cancelled, and the cancellation handled by the session (no
        # unhandled error left behind).
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(client.stats.connectFailures, 0)
        self.assertEqual(client.stats.drops["connect-failed"], 1)


class IdleTests(ClientTestMixin, SynchronousTestCase):
    def test_idleSessionEnds(self) -> None:
        """
        A session with no traffic for C{sessionIdle} seconds ends, closes its
        link, and counts as expired; not before.
        """
        client = self.makeClient(sessionIdle=20)
        client.startService()
        self.addCleanup(client.stopService)
        client.datagramsReceived([(b"1", ONE)])
        link = self.connections.succeed()
        self.clock.pump([1] * 19)
        self.assertEqual(client.sessionCount(), 1)
        self.clock.pump([1] * 10)
        self.assertEqual(client.sessionCount(), 0)
        self.assertTrue(link.closed)
        self.assertEqual(client.stats.sessionsExpired, 1)

    def test_trafficKeepsItOpen(self) -> None:
        """
        Replies from the tunnel keep a session active: it outlives
        C{sessionIdle} many times over.
        """
        client = self.makeClient(sessionIdle=20)
        client.startService()
        self.addCleanup(client.stopService)
        client.datagramsReceived([(b"1", ONE)])
        link = self.connections.succeed()
        relay = self.connections.attempts[0][0]
        for _ in range(60):
            self.clock.advance(1)
            relay.framesReceived(link, [b"reply"])
        self.assertEqual(client.sessionCount(), 1)


SOURCE = ("127.0.0.1", 5000)


class SlowConnectionTests(SynchronousTestCase):
    """
    A client session whose connection takes longer than C{--session-idle}
    to be made (a server whose listen queue overflowed answers a SYN on its
    retransmission, a second later) keeps the datagram that opened it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.attempts: list[tuple[IRelay, Deferred[Any]]] = []
        self.sessions = ClientSessions(self.clock, self.connect, sessionIdle=1)
        self.sessions.startService()
        self.addCleanup(self.sessions.stopService)
        self.sessions.udpStarted(FakeUDPTransport())

    def connect(self, relay: IRelay) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((relay, attempt))
        return attempt

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.05)):
            self.clock.advance(0.05)

    def test_notIdleWhileConnecting(self) -> None:
        """
        Three idle periods pass while the connection is being made: the
        session stays, its attempt is not cancelled, and its queued datagram
        goes out once the connection is up.  Idle from then on, it expires.
        """
        self.sessions.datagramsReceived([(b"query", SOURCE)])
        self.advance(3)
        self.assertEqual(self.sessions.sessionCount(), 1)
        self.assertEqual(self.sessions.stats.sessionsExpired, 0)
        [(relay, attempt)] = self.attempts
        self.assertNoResult(attempt)

        link = FakeLink("127.0.0.1:7000")
        self.assertTrue(relay.linkConnected(link))
        relay.linkMade(link)
        attempt.callback(None)
        self.assertEqual(link.frames, [b"query"])

        self.advance(3)
        self.assertEqual(self.sessions.sessionCount(), 0)
        self.assertEqual(self.sessions.stats.sessionsExpired, 1)
        self.assertTrue(link.closed)


class ImmediateFailureTests(SynchronousTestCase):
    """
    An endpoint that fails at once (synchronously) must find the datagram
    that opened the session queued, and retry for it.
    """

    def test_openingDatagramKept(self) -> None:
        """
        A connection that fails at once keeps the session and its opening
        datagram, which is not dropped, and is retried after the first delay.
        """
        from twisted.internet.defer import fail

        from udptunnel.tunnel.clientsessions import ClientSessions

        clock = Clock()
        attempts: list[object] = []

        def connect(relay: object) -> object:
            attempts.append(relay)
            return fail(ConnectionRefusedError("refused"))

        client = ClientSessions(clock, connect, random=lambda: 0.5)  # type: ignore[arg-type]
        client.udpStarted(FakeUDPTransport())
        client.datagramsReceived([(b"query", ("127.0.0.1", 40001))])
        self.assertEqual(client.sessionCount(), 1)
        self.assertEqual(client.stats.drops["no-link"], 0)
        clock.advance(0.5)
        self.assertEqual(len(attempts), 2)


class LaneTests(ClientTestMixin, SynchronousTestCase):
    def test_sessionsFoundBySourceOnTheSharedSocket(self) -> None:
        """
        With the compiled pump running, a session whose connection is up gets
        a pair found by its source on the shared socket (which the pump is
        given once); what the pump carried makes that session the most
        recently active; the socket's stop lets every pair go.
        """
        lanes, pump = attachedLanes()
        client = self.makeClient(lanes=lanes)
        client.datagramsReceived([(b"one", ONE), (b"two", TWO)])
        for index in (0, 1):
            link = FakeLink()
            link.transport = plainConnection(self)
            self.connections.succeed(index, link=link)
        self.assertEqual([(p.shared, p.source) for p in pump.pairs], [(True, ONE), (True, TWO)])
        self.assertEqual(len(pump.shared), 1)
        self.assertEqual(list(client.sessions), [ONE, TWO])
        pump.pairs[0].counters = (1, 3, 0, 0, 0.0)
        pump.touched.append(pump.pairs[0])
        lanes.collect()
        self.assertEqual(list(client.sessions), [TWO, ONE])
        self.assertEqual(client.sessions[ONE].traffic.toTunnelDatagrams, 2)
        client.udpStopped()
        self.assertEqual((pump.pairs, pump.shared), ([], []))
