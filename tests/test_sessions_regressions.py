"""
Regression tests, with fakes and a L{Clock}, for defects of the sessions
(C{--sessions}) that the end-to-end tests (L{tests.test_sessions_e2e})
found.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeLink, FakeUDPTransport
from udptunnel.interfaces import IRelay
from udptunnel.sessions import ClientSessions

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
