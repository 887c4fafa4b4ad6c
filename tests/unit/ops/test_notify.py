"""
L{udptunnel.ops.notify}: systemd's notifications.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import FakeLink, captureLogEvents
from tests.support.processes import (
    notifySocket,
)
from udptunnel.ops.notify import (
    STATUS_INTERVAL,
    Notifier,
    NotifyService,
    notifyAddress,
    notifyService,
    watchdogInterval,
)
from udptunnel.tunnel.service import TunnelService


class _Tunnel(TunnelService):
    """
    A relay whose state the test sets.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.now = "link down"

    def state(self) -> str:
        return self.now


class _Recording(Service):
    def __init__(self, notices: socket.socket, log: list[str]) -> None:
        self._notices, self._log = notices, log

    def startService(self) -> None:
        super().startService()
        # Nothing was sent before this sibling started.
        self._notices.setblocking(False)
        try:
            self._log.append(self._notices.recv(1000).decode())
        except BlockingIOError:
            self._log.append("nothing yet")


class NotifyTests(SynchronousTestCase):
    """
    The messages, on a real abstract Unix socket, with a fake clock.
    """

    def setUp(self) -> None:
        self.notices, self.address = notifySocket(self, self.id().rsplit(".", 1)[-1])
        self.clock = Clock()
        self.relay = _Tunnel(self.clock)

    def received(self) -> list[str]:
        self.notices.setblocking(False)
        messages = []
        for _ in range(100):
            try:
                messages.append(self.notices.recv(1000).decode())
            except BlockingIOError:
                break
        return messages

    def service(self, environ: dict[str, str] | None = None) -> NotifyService:
        environ = {"NOTIFY_SOCKET": self.address} if environ is None else environ
        service = notifyService(self.relay, self.clock, environ)
        assert service is not None
        return service

    def test_addresses(self) -> None:
        """
        C{NOTIFY_SOCKET} starting with C{@} is an abstract name (bytes with a
        leading NUL), with C{/} a path; unset or another kind of address
        (C{vsock:}) means no address, and no L{NotifyService}.
        """
        self.assertEqual(notifyAddress({"NOTIFY_SOCKET": "@x"}), b"\0x")
        self.assertEqual(notifyAddress({"NOTIFY_SOCKET": "/run/n"}), "/run/n")
        self.assertIsNone(notifyAddress({}))
        self.assertIsNone(notifyAddress({"NOTIFY_SOCKET": "vsock:2:1"}))
        self.assertIsNone(notifyService(self.relay, self.clock, {}))

    def test_watchdogInterval(self) -> None:
        """
        The watchdog pings at half of C{WATCHDOG_USEC}; not at all when it is
        unset or 0, or when C{WATCHDOG_PID} names another process.
        """
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "10000000"}, 5), 5.0)
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "10000000",
                                           "WATCHDOG_PID": "5"}, 5), 5.0)
        self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": "10000000",
                                            "WATCHDOG_PID": "6"}, 5))
        self.assertIsNone(watchdogInterval({}, 5))
        self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": "0"}, 5))

    def test_readyAfterTheOtherChildren(self) -> None:
        """
        READY=1 (with the state) comes once the children before it started,
        not before.
        """
        before: list[str] = []
        _Recording(self.notices, before).setServiceParent(self.relay)
        self.service().setServiceParent(self.relay)
        self.relay.startService()
        self.assertEqual(before, ["nothing yet"])
        self.assertEqual(self.received(), ["READY=1\nSTATUS=link down"])

    def test_statusOnChanges(self) -> None:
        """
        A change is sent on the next turn; changes within
        L{STATUS_INTERVAL} of the last send go together, after it; no change,
        nothing sent.
        """
        self.service().setServiceParent(self.relay)
        self.relay.startService()
        self.received()
        self.clock.advance(STATUS_INTERVAL)
        self.relay.now = "link up 127.0.0.1:4000, peer nobody (phantom)"
        self.relay.stateChanged()
        self.clock.advance(0)
        self.assertEqual(self.received(), ["STATUS=link up 127.0.0.1:4000, peer nobody (phantom)"])
        self.relay.now = "link down"
        self.relay.stateChanged()
        self.relay.now = "link up 127.0.0.1:4001, peer nobody (phantom)"
        self.relay.stateChanged()
        self.clock.advance(STATUS_INTERVAL / 2)
        self.assertEqual(self.received(), [])
        self.clock.advance(STATUS_INTERVAL / 2)
        self.assertEqual(self.received(), ["STATUS=link up 127.0.0.1:4001, peer nobody (phantom)"])
        self.relay.stateChanged()
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(self.received(), [])

    def test_watchdogAndStopping(self) -> None:
        """
        C{WATCHDOG=1} is sent at start, after C{READY=1}, then every half of
        C{WATCHDOG_USEC}; at stop, C{STOPPING=1} is sent, the pings end and the
        service no longer observes the relay's state.
        """
        self.service({"NOTIFY_SOCKET": self.address,
                      "WATCHDOG_USEC": "4000000"}).setServiceParent(self.relay)
        self.relay.startService()
        self.assertEqual(self.received(), ["READY=1\nSTATUS=link down", "WATCHDOG=1"])
        self.clock.advance(2)
        self.assertEqual(self.received(), ["WATCHDOG=1"])
        self.relay.stopService()
        self.assertEqual(self.received(), ["STOPPING=1\nSTATUS=stopping"])
        self.clock.advance(10)
        self.assertEqual(self.received(), [])
        self.assertEqual(self.relay.stateObservers, [])

    def test_relayHooks(self) -> None:
        """
        The single-link relay tells its observers when the link comes up
        and goes down.
        """
        from twisted.python.failure import Failure

        from udptunnel.tunnel.single import Relay


        relay = Relay(self.clock)
        calls: list[str] = []
        relay.stateObservers.append(lambda: calls.append(relay.state()))
        link = FakeLink()
        relay.linkConnected(link)
        relay.linkMade(link)
        relay.linkLost(link, Failure(ConnectionError("gone")))
        self.assertEqual(calls, [f"link up {link.remote}, peer nobody (phantom)",
                                 "link down, peer nobody (phantom)"])

    def test_noSocketThere(self) -> None:
        """
        A notify socket that is gone: a warning, the tunnel goes on.
        """
        from twisted.logger import formatEvent


        events = captureLogEvents(self)
        notifier = Notifier(b"\0udptunnel-test-nobody-listens")
        self.addCleanup(notifier.close)
        notifier.send("READY=1")
        notifier.send("WATCHDOG=1")
        warnings = [formatEvent(e) for e in events if "cannot notify" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("'READY=1'", warnings[0])
