"""
SIGHUP reopens twistd's log file, as daemons do for logrotate: after the
file was moved away, logging goes on in a new file at the original path.

It is installed whatever twistd logs to: its default C{twistd.log} as well
as a C{--logfile}, and in the foreground (standard output, nothing to
reopen) it only says so; SIGHUP's default action would end the process
and leave its pid file behind.
"""

from __future__ import annotations

import os
import signal
import stat
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from udptunnel._twisted.logfiles import openLogFiles


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
        self._keepModes()
        self._previous = signal.signal(signal.SIGHUP, self._onSignal)

    def _keepModes(self) -> None:
        """
        Make a reopened log file get the mode the first one had.  twistd
        creates its log file before it daemonises, under the user's umask
        (0644, say), and reopens it after, under the daemon's umask 077: the
        new file would be 0600 and unreadable to the group that could read
        the old one.
        """
        for logFile in openLogFiles():
            if logFile.defaultMode is None:
                try:
                    logFile.defaultMode = stat.S_IMODE(os.stat(logFile.path).st_mode)
                except OSError:
                    pass

    def stopService(self) -> None:
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
        super().stopService()

    def _onSignal(self, signalNumber: int, frame: object) -> None:
        # Signal handlers must not touch the log file themselves: hand the
        # work to the reactor.
        self._reactor.callFromThread(self.reopen)

    def reopen(self) -> None:
        """
        Reopen each of twistd's open log files
        (L{udptunnel._twisted.logfiles}).
        """
        files = openLogFiles()
        for logFile in files:
            logFile.reopen()
        if files:
            self.log.info("SIGHUP: reopened {count} log file(s)", count=len(files))
        else:
            self.log.info("SIGHUP: no log file to reopen (logging to standard output or "
                          "syslog)")
