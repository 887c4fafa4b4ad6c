"""
A logger that a flood cannot turn into a flood of lines: a bad datagram,
a refused connection or a stranger's takeover costs a counter increment,
and at most one line per kind every few seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class RateLimitedLog:
    """
    Log the first message of each kind at once, then at most one per
    C{interval} seconds: the newest of those held back meanwhile, at the
    end of the interval, saying how many others were left out.

    So a burst costs a line or two, and its last word (the link that came
    up last, the newest phantom peer) still reaches the log within the
    interval, instead of waiting for the next message of its kind, which
    may never come.  L{flushAll} writes what is held at once (at a stop).
    """

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = 10.0):
        self._log = log
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        #: By kind: the newest message held back (its emitter, format and
        #: fields), how many were held in all, and when it goes out.
        self._held: dict[str, tuple[Any, str, dict[str, Any], int, IDelayedCall]] = {}

    def warn(self, kind: str, format: str, **fields: Any) -> None:
        self._emit(self._log.warn, kind, format, fields)

    def info(self, kind: str, format: str, **fields: Any) -> None:
        self._emit(self._log.info, kind, format, fields)

    def _emit(self, emit: Any, kind: str, format: str, fields: dict[str, Any]) -> None:
        now = self._clock.seconds()
        last = self._last.get(kind)
        if last is None or now - last >= self._interval:
            self._last[kind] = now
            emit(format, held=0, **fields)
            return
        held = self._held.get(kind)
        if held is None:
            due = self._clock.callLater(last + self._interval - now, self._flush, kind)
            self._held[kind] = (emit, format, fields, 1, due)
        else:
            self._held[kind] = (emit, format, fields, held[3] + 1, held[4])

    def _flush(self, kind: str) -> None:
        emit, format, fields, count, _ = self._held.pop(kind)
        self._last[kind] = self._clock.seconds()
        if count > 1:
            format += " ({held} more since the last such message)"
        emit(format, held=count - 1, **fields)

    def flushAll(self) -> None:
        """
        Write every message held back now, and leave no timer behind.
        """
        for kind in list(self._held):
            due = self._held[kind][4]
            if due.active():
                due.cancel()
            self._flush(kind)
