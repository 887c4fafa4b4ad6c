"""
SIGHUP reopens twistd's log file, as daemons do for logrotate: after the
file was moved away, logging goes on in a new file at the original path.
"""

from __future__ import annotations

import gc
import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.logfile import BaseLogFile


class LogReopener(Service):
    """
    While running, SIGHUP reopens every open log file of twistd's.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._onSignal)

    def stopService(self) -> None:
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
        super().stopService()

    def _onSignal(self, signalNumber: int, frame: object) -> None:
        # Signal handlers must not touch the log file themselves: hand the
        # work to the reactor.
        self._reactor.callFromThread(self.reopen)

    def reopen(self) -> None:
        """
        twistd keeps its L{BaseLogFile} to itself, so find the open ones
        among all objects; this is rare enough for that to be fine.
        """
        files = [o for o in gc.get_objects() if isinstance(o, BaseLogFile) and not o.closed]
        for logFile in files:
            logFile.reopen()
        self.log.info("SIGHUP: reopened {count} log file(s)", count=len(files))
