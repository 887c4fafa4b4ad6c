"""
The client's reconnection (L{udptunnel.tunnel.reconnect}), with a fake
endpoint and a fake clock: no sleeps.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.support.fakes import FakeUDPTransport, captureLogEvents
from udptunnel.link.protocol import TunnelFactory
from udptunnel.tunnel.reconnect import (
    MAX_DELAY,
    Backoff,
    Reconnector,
    retryDelay,
)
from udptunnel.tunnel.single import CONFIRM_AFTER, Relay
from udptunnel.tunnel.stats import TunnelStats


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    """
    Fails while C{up} is false; otherwise connects a L{StringTransport}.
    """

    def __init__(self) -> None:
        self.up = False
        self.attempts = 0
        self.protocols: list = []

    def connect(self, factory):
        self.attempts += 1
        if not self.up:
            return fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)


@implementer(IStreamClientEndpoint)
class Hanging:
    """
    An attempt that never ends, until it is cancelled.
    """

    def __init__(self) -> None:
        self.pending: Deferred = Deferred()

    def connect(self, factory):
        return self.pending


@implementer(IStreamClientEndpoint)
class TimingOut:
    def connect(self, factory):
        return fail(TimeoutError())


class RetryDelayTests(SynchronousTestCase):
    def test_firstRetryWithinASecond(self) -> None:
        """
        The first retry comes after 0.5 s, give or take 20%, whatever the
        jitter drawn.
        """
        for jitter in (0.0, 0.5, 1.0):
            delay = retryDelay(1, lambda jitter=jitter: jitter)
            self.assertLessEqual(delay, 0.6)
            self.assertGreaterEqual(delay, 0.4)

    def test_doublesThenCaps(self) -> None:
        """
        Without jitter, the delay doubles from 0.5 s at each attempt up to
        L{MAX_DELAY}, and stays there.
        """
        delays = [retryDelay(n, lambda: 0.5) for n in range(1, 10)]
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])

    def test_jitterBounds(self) -> None:
        """
        The jitter scales the delay by 0.8 at least and 1.2 at most.
        """
        self.assertAlmostEqual(retryDelay(100, lambda: 0.0), MAX_DELAY * 0.8)
        self.assertAlmostEqual(retryDelay(100, lambda: 1.0), MAX_DELAY * 1.2)

    def test_policyRoundsForTheLog(self) -> None:
        """
        L{Backoff} gives L{retryDelay} rounded to the hundredth, as the log
        says it.
        """
        delay = Backoff(lambda: 0.123456789).failed()
        self.assertEqual(delay, round(delay, 2))
        self.assertAlmostEqual(delay, retryDelay(1, lambda: 0.123456789), places=2)

    def test_hugeAttemptDoesNotOverflow(self) -> None:
        """
        A huge attempt number gives L{MAX_DELAY}, not an overflow.
        """
        self.assertAlmostEqual(retryDelay(10**6, lambda: 0.5), MAX_DELAY)


class ReconnectorTestMixin:
    def makeClient(self, endpoint: IStreamClientEndpoint | None = None,
                   timeout: float | None = 30.0) -> Reconnector:
        self.clock = Clock()
        self.relay = Relay(self.clock, role="client")
        self.udp = FakeUDPTransport()
        self.relay.udpStarted(self.udp)
        self.endpoint = ScriptedEndpoint()
        reconnector = Reconnector(endpoint or self.endpoint, TunnelFactory(self.relay),
                                  self.clock, "test:server", self.relay.stats, timeout=timeout,
                                  backoff=Backoff(lambda: 0.5))
        self.relay.onLinkEnded = reconnector.linkEnded
        return reconnector


class ReconnectTests(ReconnectorTestMixin, SynchronousTestCase):
    def test_retriesForeverWithBackoff(self) -> None:
        """
        While the server cannot be reached, attempts follow at the backoff's
        delays, each counted as an attempt and a failure, and the service keeps
        running.
        """
        service = self.makeClient()
        service.startService()
        self.assertEqual(self.endpoint.attempts, 1)
        for delay in [0.5, 1, 2, 4, 8, 16, 30, 30, 30]:
            self.clock.advance(delay - 0.01)
            attempts = self.endpoint.attempts
            self.clock.advance(0.01)
            self.assertEqual(self.endpoint.attempts, attempts + 1)
        self.assertEqual(self.relay.stats.connectFailures, 10)
        self.assertEqual(self.relay.stats.connectAttempts, 10)
        self.assertTrue(service.running)

    def test_serverComesBack(self) -> None:
        """
        Once the server is reachable, the next scheduled attempt connects, and
        the connection becomes the relay's link.
        """
        service = self.makeClient()
        service.startService()
        self.clock.advance(0.5 + 1 + 2)
        self.endpoint.up = True
        self.clock.advance(4)
        self.assertEqual(len(self.endpoint.protocols), 1)
        self.clock.advance(CONFIRM_AFTER)
        self.assertEqual(self.relay.stats.linksUp, 1)
        self.assertIsNotNone(self.relay.link)

    def test_reconnectsAfterLoss(self) -> None:
        """
        A dropped link is retried after the first delay, and the relay keeps
        its UDP socket and learned address throughout.
        """
        service = self.makeClient()
        self.endpoint.up = True
        service.startService()
        first = self.endpoint.protocols[0]
        self.relay.datagramsReceived([(b"x", ("127.0.0.1", 40000))])
        self.clock.advance(CONFIRM_AFTER)
        first.connectionLost(Failure(ConnectionLost()))
        self.assertIsNone(self.relay.link)
        self.clock.advance(0)
        self.assertEqual(len(self.endpoint.protocols), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.clock.advance(CONFIRM_AFTER)
        self.assertEqual(self.relay.stats.linksUp, 2)
        self.assertIsNotNone(self.relay.link)
        self.assertIs(self.relay.udp, self.udp)
        self.assertEqual(self.relay.learnedPeer, ("127.0.0.1", 40000))

    def test_cleanCloseReconnectsAtOnce(self) -> None:
        """
        A link the server closed cleanly (a planned stop or restart: its
        FIN) is followed by a new attempt at once, not after a delay; the
        schedule is reset, so failures after it start from the first delay.
        """
        service = self.makeClient()
        self.endpoint.up = True
        service.startService()
        self.clock.advance(CONFIRM_AFTER)
        self.endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
        self.clock.advance(0)
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.assertEqual(service.backoff.failures, 0)

    def test_replacedLinksDoNotBackOff(self) -> None:
        """
        A link the server gives to a newcomer (a stranger that sent one
        frame) ends young, but it was a link: however many times it
        happens, the client is back after the first delay, so it relays
        again within a second of the newcomers' leaving.
        """
        service = self.makeClient()
        self.endpoint.up = True
        service.startService()
        for round in range(20):
            link = self.endpoint.protocols[-1]
            link.dataReceived(b"\x00\x01x")  # the server sent a frame: a link
            link.connectionLost(Failure(ConnectionDone()))
            self.clock.advance(0.5)
            self.assertEqual(len(self.endpoint.protocols), round + 2)
        self.assertEqual(self.relay.stats.linksFailed, 0)

    def test_refusedAtOnceBacksOff(self) -> None:
        """
        A server that accepts and closes at once (its --allow, its TLS, a
        proxy with nothing behind) is tried less and less often.
        """
        service = self.makeClient()
        self.endpoint.up = True
        service.startService()
        delays = []
        for _ in range(8):
            self.endpoint.protocols[-1].connectionLost(Failure(ConnectionDone()))
            before = self.clock.seconds()
            attempts = self.endpoint.attempts
            while self.endpoint.attempts == attempts:
                self.clock.advance(0.25)
            delays.append(self.clock.seconds() - before)
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30])
        self.assertEqual(self.relay.stats.linksFailed, 8)

    def test_oneLinePerFailedAttempt(self) -> None:
        """
        Each failed attempt is one line, in our words: why, when the next
        comes, and how many failed in a row (no "Scheduling retry 1").
        """
        events = captureLogEvents(self)
        service = self.makeClient()
        service.startService()
        self.clock.pump([0.5, 1])
        lines = [formatEvent(event) for event in events if "UDP bound" not in formatEvent(event)]
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[0].startswith("cannot connect to test:server: "), lines)
        self.assertIn("refused", lines[0])
        self.assertIn("; next attempt in 0.5 s (1 failed in a row)", lines[0])
        self.assertIn("; next attempt in 1.0 s (2 failed in a row)", lines[1])
        self.assertIn("; next attempt in 2.0 s (3 failed in a row)", lines[2])
        self.assertFalse([line for line in lines if "Scheduling" in line])

    def test_refusedAfterConnectOneLine(self) -> None:
        """
        A connection the server closes before it carried anything is one
        line too, with the likely reasons.
        """
        events = captureLogEvents(self)
        service = self.makeClient()
        self.endpoint.up = True
        service.startService()
        self.endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
        lines = [formatEvent(event) for event in events if "UDP bound" not in formatEvent(event)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("closed by the server before it carried anything", lines[0])
        self.assertIn("next attempt in 0.5 s (1 failed in a row)", lines[0])

    def test_timeoutSaysSo(self) -> None:
        """
        A connection attempt that times out says "connect timed out after
        N s", not Twisted's "User timeout caused connection failure", which
        reads as if --user-timeout had fired.
        """
        events = captureLogEvents(self)
        for timeout, expected in ((7, "connect timed out after 7 s"), (None, "connect timed out")):
            self.makeClient(TimingOut(), timeout=timeout).startService()
            self.assertEqual(events[-1]["why"], expected)
            self.assertNotIn("User timeout", formatEvent(events[-1]))

    def test_stopCallsOffTheAttempt(self) -> None:
        """
        Stopping while a connection attempt hangs does not hang the stop;
        the attempt called off is neither logged nor counted as failed, and
        nothing is left scheduled.
        """
        events = captureLogEvents(self)
        hanging = Hanging()
        service = self.makeClient(hanging)
        service.startService()
        service.stopService()
        self.assertTrue(hanging.pending.called)  # cancelled
        self.assertEqual(self.relay.stats.connectFailures, 0)
        self.assertEqual([e for e in events if "cannot connect" in e.get("log_format", "")], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileResolving(self) -> None:
        """
        An endpoint cancelled while it resolves a name fails with
        C{DNSLookupError}, not C{CancelledError} (Twisted's
        HostnameEndpoint): a stop then is no failed attempt either.
        """
        from twisted.internet.error import DNSLookupError

        @implementer(IStreamClientEndpoint)
        class Resolving:
            def connect(self, factory):
                return Deferred(lambda d: d.errback(DNSLookupError("Couldn't find the host")))

        events = captureLogEvents(self)
        service = self.makeClient(Resolving())
        service.startService()
        service.stopService()
        self.assertEqual(self.relay.stats.connectFailures, 0)
        self.assertEqual([e for e in events if "cannot connect" in e.get("log_format", "")], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_linkClosedByTheStop(self) -> None:
        """
        The link the stop closes ends after the stop: that is no failed
        attempt, so no "cannot connect ...; next attempt" line, no failure
        in a row, and nothing scheduled.
        """
        events = captureLogEvents(self)
        service = self.makeClient(Hanging())
        service.startService()
        service.stopService()
        service.linkEnded("closed here: stopping")
        self.assertEqual([e for e in events if "cannot connect" in e.get("log_format", "")], [])
        self.assertEqual(service.backoff.failures, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopCancelsTheNextAttempt(self) -> None:
        """
        Stopping cancels the attempt scheduled after a failure: nothing is left
        scheduled, and no attempt follows.
        """
        service = self.makeClient()
        service.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(self.endpoint.attempts, 1)


class BackoffTests(SynchronousTestCase):
    def test_failuresDouble(self) -> None:
        """
        Each failure in a row doubles the delay from 0.5 s, up to 30 s.
        """
        backoff = Backoff(lambda: 0.5)
        self.assertEqual([backoff.failed() for _ in range(8)], [0.5, 1, 2, 4, 8, 16, 30, 30])

    def test_aLinkResets(self) -> None:
        """
        A link that came up resets the count of failures: the next delay is the
        first one again, and so is the delay after the next failure.
        """
        backoff = Backoff(lambda: 0.5)
        for _ in range(5):
            backoff.failed()
        self.assertEqual(backoff.succeeded(), 0.5)
        self.assertEqual(backoff.failures, 0)
        self.assertEqual(backoff.failed(), 0.5)

    def test_attemptsCounted(self) -> None:
        """
        Every connection attempt counts in C{connectAttempts}, and every failed
        one in C{connectFailures}.
        """
        stats = TunnelStats()
        clock = Clock()
        relay = Relay(clock, role="client")
        endpoint = ScriptedEndpoint()
        Reconnector(endpoint, TunnelFactory(relay), clock, "test", stats).startService()
        clock.pump([0.6, 1.2, 2.4])
        self.assertEqual((stats.connectAttempts, stats.connectFailures), (4, 4))
