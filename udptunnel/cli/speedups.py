"""
What the tunnel takes from Twisted's private API at the process level,
installed explicitly where the process starts and undone where it stops:
the epoll reactor's wait through the compiled pump where it was built
(L{udptunnel._twisted.pumped}), else its event dispatch without the
per-event log context (L{udptunnel._twisted.dispatch}).  Only under a
runner (twistd, twist): a test suite's reactor is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from udptunnel._twisted.dispatch import dispatchVerdict, installLeanDispatch
from udptunnel._twisted.pumped import installPump, pumpProblems
from udptunnel.tunnel.lanes import Lanes

#: Set (to anything but empty) in the environment: run the pure-Python
#: path even where the compiled one was built (to compare them).
PURE_PYTHON = "UDPTUNNEL_PURE_PYTHON"


def compiledPump() -> tuple[ModuleType | None, str]:
    """
    The compiled pump module, or C{None}; and why, in words for the log.
    """
    if os.environ.get(PURE_PYTHON):
        return None, f"{PURE_PYTHON} is set"
    try:
        from udptunnel import _pump  # type: ignore[attr-defined]
    except ImportError:
        return None, "udptunnel._pump was not built (no C compiler at install?)"
    return _pump, "compiled"


class LeanDispatch(Service):
    """
    While it runs, C{reactor} waits through the compiled pump, moving the
    bytes of C{lanes} (when the pump was built, C{reactor} is Twisted's
    epoll reactor, and the checks pass), or dispatches its events the lean
    way; before and after, as Twisted does.
    """

    log = Logger()

    def __init__(self, reactor: Any, lanes: Lanes | None = None) -> None:
        self._reactor = reactor
        self._lanes = lanes
        self._undo: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        module, why = compiledPump()
        if module is not None and self._lanes is not None:
            problems = pumpProblems(self._reactor) or dispatchVerdict()
            if not problems:
                self._undo = installPump(self._reactor, module, self._lanes)
                self.log.info("data path: compiled (udptunnel._pump)")
                return
            why = "; ".join(problems)
        self._undo = installLeanDispatch(self._reactor)
        self.log.info("data path: pure Python ({why})", why=why)

    def stopService(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()
        super().stopService()
