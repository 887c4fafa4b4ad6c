"""
udptunnel: carry UDP datagrams through one TCP connection, in both
directions, as a plugin for twistd.
"""

from __future__ import annotations

import ast
import re
import sys
from typing import Any

__version__ = "0.1.0"


class StartupError(Exception):
    """
    The tunnel cannot start (a port is busy, an address cannot be bound); the
    message says which, in one line.

    It lives here so that its name is short: a daemonising twistd shows the
    parent just 100 bytes of "module.Class: message".
    """


#: How a daemonising twistd's parent reports the exception its daemon
#: raised at start-up: the repr of the first 98 bytes of "module.Class:
#: message" (twisted.scripts._twistd_unix, _waitForStart).
_TWISTD_REPORT = re.compile(
    r"An error has occurred: (?P<data>b(?P<q>['\"]).*(?P=q))\n"
    r"Please look at log file for more information\.\n\Z",
    re.DOTALL,
)
_PREFIX = f"{StartupError.__module__}.{StartupError.__qualname__}: "
#: The most a status report carries after its "1 " (see L{_TWISTD_REPORT}).
_REPORT_ROOM = 98


class _CleanStartupReport:
    """
    Stands for C{sys.__stderr__} in a daemonising twistd, where its parent
    reports the daemon's start-up error as a bytes repr (C{An error has
    occurred: b'udptunnel.StartupError: cannot listen...'}): it writes that
    report as the message itself, and everything else unchanged.

    twistd gives no hook between its parent reading the status pipe and
    printing it, and this is the stream it prints to.  Should twistd's
    wording change, the report no longer matches and passes through as is.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(cleanStartupReport(text))
        # The parent leaves with os._exit, which flushes nothing.
        self._stream.flush()
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def cleanStartupReport(text: str) -> str:
    """
    twistd's report of a L{StartupError} as the line a user should read;
    any other text as it is.
    """
    found = _TWISTD_REPORT.match(text)
    if found is None:
        return text
    try:
        data = ast.literal_eval(found.group("data"))
    except (SyntaxError, ValueError):
        return text
    line = data.decode("ascii", "backslashreplace")
    if not line.startswith(_PREFIX):
        return text
    message = line[len(_PREFIX):]
    if len(data) >= _REPORT_ROOM:
        message += "... (the log file has the rest)"
    return f"udptunnel: cannot start: {message}\n"


def reportStartupErrorsCleanly() -> None:
    """
    Make a daemonising twistd's parent print a start-up error as the message
    itself (see L{_CleanStartupReport}).  Called before twistd forks.
    """
    if sys.__stderr__ is not None and not isinstance(sys.__stderr__, _CleanStartupReport):
        sys.__stderr__ = _CleanStartupReport(sys.__stderr__)  # type: ignore[misc, assignment]
