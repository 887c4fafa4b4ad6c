"""
The client's reconnection, with a fake endpoint and a fake clock: no sleeps.
"""

from __future__ import annotations

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from udptunnel.protocols import TunnelFactory
from udptunnel.reconnect import (
    MAX_DELAY,
    STABLE_LINK,
    Backoff,
    ReportingEndpoint,
    retryDelay,
)
from udptunnel.relay import Relay
from udptunnel.stats import TunnelStats

from .fakes import FakeUDPTransport, captureLogEvents


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


class RetryDelayTests(SynchronousTestCase):
    def test_firstRetryWithinASecond(self) -> None:
        for jitter in (0.0, 0.5, 1.0):
            delay = retryDelay(1, lambda jitter=jitter: jitter)
            self.assertLessEqual(delay, 0.6)
            self.assertGreaterEqual(delay, 0.4)

    def test_doublesThenCaps(self) -> None:
        delays = [retryDelay(n, lambda: 0.5) for n in range(1, 10)]
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])

    def test_jitterBounds(self) -> None:
        self.assertAlmostEqual(retryDelay(100, lambda: 0.0), MAX_DELAY * 0.8)
        self.assertAlmostEqual(retryDelay(100, lambda: 1.0), MAX_DELAY * 1.2)

    def test_policyRoundsForTheLog(self) -> None:
        delay = Backoff(lambda: 0.123456789)(1)
        self.assertEqual(delay, round(delay, 2))
        self.assertAlmostEqual(delay, retryDelay(1, lambda: 0.123456789), places=2)

    def test_hugeAttemptDoesNotOverflow(self) -> None:
        self.assertAlmostEqual(retryDelay(10**6, lambda: 0.5), MAX_DELAY)


class ReconnectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.relay = Relay(self.clock)
        self.udp = FakeUDPTransport()
        self.relay.udpStarted(self.udp)
        self.endpoint = ScriptedEndpoint()
        self.service = ClientService(
            ReportingEndpoint(self.endpoint, "test:server", self.relay.stats),
            TunnelFactory(self.relay),
            retryPolicy=lambda attempt: retryDelay(attempt, lambda: 0.5),
            clock=self.clock,
        )

    def test_retriesForeverWithBackoff(self) -> None:
        self.service.startService()
        self.assertEqual(self.endpoint.attempts, 1)
        for delay in [0.5, 1, 2, 4, 8, 16, 30, 30, 30]:
            self.clock.advance(delay - 0.01)
            attempts = self.endpoint.attempts
            self.clock.advance(0.01)
            self.assertEqual(self.endpoint.attempts, attempts + 1)
        self.assertEqual(self.relay.stats.connectFailures, 10)
        self.assertTrue(self.service.running)

    def test_serverComesBack(self) -> None:
        self.service.startService()
        self.clock.advance(0.5 + 1 + 2)
        self.endpoint.up = True
        self.clock.advance(4)
        self.assertEqual(len(self.endpoint.protocols), 1)
        self.assertEqual(self.relay.stats.linksUp, 1)
        self.assertIsNotNone(self.relay.link)

    def test_reconnectsAfterLoss(self) -> None:
        """
        A dropped link is retried after the first delay, and the relay keeps
        its UDP socket and learned address throughout.
        """
        self.endpoint.up = True
        self.service.startService()
        first = self.endpoint.protocols[0]
        self.relay.datagramsReceived([(b"x", ("127.0.0.1", 40000))])
        first.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.relay.link)
        self.clock.advance(0.5)
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.assertEqual(self.relay.stats.linksUp, 2)
        self.assertIsNotNone(self.relay.link)
        self.assertIs(self.relay.udp, self.udp)
        self.assertEqual(self.relay.learnedPeer, ("127.0.0.1", 40000))

    def test_failureLoggedWithReason(self) -> None:
        events = captureLogEvents(self)
        endpoint = ReportingEndpoint(ScriptedEndpoint(), "tcp:server:1", TunnelStats())
        self.failureResultOf(endpoint.connect(TunnelFactory(self.relay)))
        self.assertEqual(events[0]["where"], "tcp:server:1")
        self.assertIn("refused", events[0]["why"])

    def test_timeoutSaysSo(self) -> None:
        """
        A connection attempt that times out says "connect timed out after
        N s", not Twisted's "User timeout caused connection failure", which
        reads as if --user-timeout had fired.
        """

        @implementer(IStreamClientEndpoint)
        class TimingOut:
            def connect(self, factory):
                return fail(TimeoutError())

        events = captureLogEvents(self)
        for timeout, expected in ((7, "connect timed out after 7 s"), (None, "connect timed out")):
            endpoint = ReportingEndpoint(TimingOut(), "server:1", TunnelStats(), timeout=timeout)
            self.failureResultOf(endpoint.connect(TunnelFactory(self.relay)), TimeoutError)
            self.assertEqual(events[-1]["why"], expected)
            self.assertNotIn("User timeout", formatEvent(events[-1]))

    def test_pendingAttemptCancelledOnStop(self) -> None:
        """
        Stopping while a connection attempt hangs does not hang the stop.
        """
        pending: Deferred = Deferred()

        @implementer(IStreamClientEndpoint)
        class Hanging:
            def connect(self, factory):
                return pending

        service = ClientService(
            Hanging(), TunnelFactory(self.relay), retryPolicy=retryDelay, clock=self.clock
        )
        service.startService()
        self.successResultOf(service.stopService())

    def test_cancelledAttemptIsNoFailure(self) -> None:
        """
        An attempt called off because the client stops is neither logged
        nor counted as a failed one.
        """
        events = captureLogEvents(self)
        stats = TunnelStats()
        pending: Deferred = Deferred()

        @implementer(IStreamClientEndpoint)
        class Hanging:
            def connect(self, factory):
                return pending

        endpoint = ReportingEndpoint(Hanging(), "server:1", stats)
        d = endpoint.connect(TunnelFactory(self.relay))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(stats.connectFailures, 0)
        self.assertEqual([e for e in events if "cannot connect" in e.get("log_format", "")], [])


class BackoffTests(SynchronousTestCase):
    """
    ClientService restarts its attempt count at every TCP connection; the
    backoff must not, for links that die young.
    """

    def test_plainRetries(self) -> None:
        backoff = Backoff(lambda: 0.5)
        self.assertEqual([backoff(n) for n in (1, 2, 3)], [0.5, 1, 2])

    def test_shortLinksBackOff(self) -> None:
        """
        A server that accepts and drops the client at once (say, rejecting
        its TLS certificate) is retried less and less often.
        """
        backoff = Backoff(lambda: 0.5)
        delays = []
        for _ in range(8):
            backoff.linkEnded(0.1)
            delays.append(backoff(1))
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30, 30])

    def test_stableLinkResets(self) -> None:
        backoff = Backoff(lambda: 0.5)
        for _ in range(5):
            backoff.linkEnded(0.0)
        backoff.linkEnded(STABLE_LINK + 1)
        self.assertEqual(backoff(1), 0.5)

    def test_attemptsCounted(self) -> None:
        stats = TunnelStats()
        endpoint = ReportingEndpoint(ScriptedEndpoint(), "test", stats)
        for _ in range(3):
            self.failureResultOf(endpoint.connect(TunnelFactory(Relay(Clock()))))
        self.assertEqual((stats.connectAttempts, stats.connectFailures), (3, 3))
