"""
What the tunnel takes from Twisted's private API at the process level,
installed explicitly where the process starts and undone where it stops:
the epoll reactor's event dispatch without its per-event log context
(L{udptunnel._twisted.dispatch}).  Only under a runner (twistd, twist):
a test suite's reactor is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service

from udptunnel._twisted.dispatch import installLeanDispatch


class LeanDispatch(Service):
    """
    While it runs, C{reactor} dispatches its events the lean way (when it
    is Twisted's epoll reactor and passes the check); before and after, as
    Twisted does.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._undo: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        self._undo = installLeanDispatch(self._reactor)

    def stopService(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()
        super().stopService()
