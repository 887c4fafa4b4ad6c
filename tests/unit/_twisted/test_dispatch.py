"""
L{udptunnel._twisted.dispatch}: the epoll reactor's lean event dispatch,
installed explicitly and checked once.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import captureLogEvents
from udptunnel._twisted.dispatch import (
    _closeReactor,
    _Reader,
    dispatchProblems,
    installLeanDispatch,
)


class LeanDispatchTests(SynchronousTestCase):
    """
    L{installLeanDispatch}: the epoll reactor's iteration without the
    per-event log context, checked against the installed Twisted, and
    undone as explicitly as it is installed.
    """

    def freshReactor(self) -> Any:
        from twisted.internet.epollreactor import EPollReactor

        fresh = EPollReactor()
        self.addCleanup(_closeReactor, fresh)
        return fresh

    def pair(self) -> tuple[socket.socket, socket.socket]:
        mine, peer = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(peer.close)
        mine.setblocking(False)
        return mine, peer

    def test_installedTwistedPasses(self) -> None:
        """
        Fails loudly when a Twisted release breaks what leanPoll relies on.
        """
        self.assertEqual(dispatchProblems(), [])

    def test_changedTwistedRefused(self) -> None:
        """
        An epoll reactor whose C{_selectables} was renamed fails the check,
        which names the attribute.
        """
        from twisted.internet.epollreactor import EPollReactor

        class Renamed(EPollReactor):
            def __init__(self) -> None:
                super().__init__()
                self._byDescriptor = self.__dict__.pop("_selectables")

        self.assertIn("EPollReactor._selectables is not a dict", dispatchProblems(Renamed))

    def test_otherReactorsUntouched(self) -> None:
        """
        Any reactor but the epoll reactor (or none) is left as it is: nothing
        installed, no C{doIteration} of its own set.
        """
        from twisted.internet.task import Clock
        from twisted.internet.testing import MemoryReactor

        for other in (Clock(), MemoryReactor(), None):
            self.assertIsNone(installLeanDispatch(other))
            self.assertNotIn("doIteration", vars(other) if other is not None else {})

    def test_dispatchesAsTwistedDoes(self) -> None:
        """
        A read event reaches its reader; an exception out of doRead still
        disconnects that reader (Twisted's own handling), and the others go
        on; undone, the reactor iterates as Twisted's own again.
        """
        from twisted.internet.epollreactor import EPollReactor

        fresh = self.freshReactor()
        undo = installLeanDispatch(fresh)
        assert undo is not None
        self.addCleanup(undo)
        self.assertIn("doIteration", vars(fresh))  # the instance's own, not its class's

        mine, peer = self.pair()
        good = _Reader(mine)
        fresh.addReader(good)
        badSock, badPeer = self.pair()

        class Broken(_Reader):
            lost: object = None

            def doRead(self) -> None:
                raise RuntimeError("bug")

            def connectionLost(self, reason: object) -> None:
                self.lost = reason

        bad = Broken(badSock)
        fresh.addReader(bad)
        peer.send(b"x")
        badPeer.send(b"y")
        fresh.doIteration(1.0)
        self.assertEqual(good.reads, 1)
        self.assertIsNotNone(bad.lost)
        self.assertNotIn(bad, fresh.getReaders())
        self.assertIn(good, fresh.getReaders())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        fresh.removeReader(good)
        undo()
        self.assertIs(fresh.doIteration.__func__, EPollReactor.doPoll)  # type: ignore[attr-defined]

    def test_failedCheckKeepsTwistedsOwn(self) -> None:
        """
        When the check fails, one warning, and the reactor keeps its own
        doIteration.
        """
        from udptunnel._twisted import dispatch

        self.patch(dispatch, "_dispatchVerdict", None)
        self.patch(dispatch, "dispatchProblems", lambda: ["EPollReactor has no _poller.poll"])
        events = captureLogEvents(self)
        fresh = self.freshReactor()
        before = fresh.doIteration
        self.assertIsNone(installLeanDispatch(fresh))
        self.assertIsNone(installLeanDispatch(fresh))
        self.assertEqual(fresh.doIteration, before)
        warnings = [e for e in events if "Dispatching events" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
