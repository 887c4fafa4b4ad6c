"""
The hold queue: datagrams kept while the single link is down (a restart of
the other end, a reconnect), sent in order on the next link.

UDP's contract is that a datagram may be lost, never that it arrives
late: so what waits longer than its age bound (C{--hold}, about the time a
restart takes) is dropped and counted (C{expired}) rather than delivered
stale, and the queue is bounded by count and bytes (C{hold-full} beyond).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

#: The defaults: a restart of the other end takes about a second, and a
#: second or two of traffic of a tunnel client fits.
DEFAULT_AGE = 2
DEFAULT_DATAGRAMS = 1024
DEFAULT_BYTES = 1 << 20


class HoldQueue:
    """
    Datagrams waiting for a link, each with when it came, oldest first.

    @param drop: how the queue reports what it drops: C{drop(reason,
        format, count=N, **fields)}, as a session does.
    """

    def __init__(self, clock: IReactorTime, drop: Callable[..., None],
                 maxAge: float = DEFAULT_AGE, maxDatagrams: int = DEFAULT_DATAGRAMS,
                 maxBytes: int = DEFAULT_BYTES) -> None:
        self._clock = clock
        self._drop = drop
        self.maxAge = maxAge
        self.maxDatagrams = maxDatagrams
        self.maxBytes = maxBytes
        self._held: deque[tuple[float, bytes]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, datagrams: list[bytes]) -> None:
        """
        Keep C{datagrams} for the next link; those that do not fit are
        dropped (C{hold-full}).
        """
        now = self._clock.seconds()
        self._expire(now)
        held = self._held
        full = 0
        for datagram in datagrams:
            if len(held) >= self.maxDatagrams or self._bytes + len(datagram) > self.maxBytes:
                full += 1
                continue
            held.append((now, datagram))
            self._bytes += len(datagram)
        if full:
            self._drop("hold-full", "no link, and the hold queue is full "
                       "(--hold-datagrams, --hold-bytes)", count=full)

    def release(self) -> list[bytes]:
        """
        The datagrams still young enough to send, oldest first; the queue
        is empty after it.
        """
        self._expire(self._clock.seconds())
        released = [datagram for _, datagram in self._held]
        self._held.clear()
        self._bytes = 0
        return released

    def discard(self) -> int:
        """
        Forget every datagram held (the tunnel stops); how many there were.
        """
        count = len(self._held)
        self._held.clear()
        self._bytes = 0
        return count

    def _expire(self, now: float) -> None:
        held = self._held
        oldest = now - self.maxAge
        expired = 0
        while held and held[0][0] < oldest:
            self._bytes -= len(held.popleft()[1])
            expired += 1
        if expired:
            self._drop("expired", "held longer than --hold without a link", count=expired)
