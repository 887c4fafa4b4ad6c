"""
Connections that are admitted but are not the link (yet): each has a
deadline to become the link, and only so many may wait at once.

Without this, anything that connects and then says nothing (a port scan
that leaves its sockets open, a TLS peer that never finishes its handshake)
holds a descriptor for ever, and a few thousand of them lock the real
client out.  The relay decides what a pending connection may become; this
module only keeps the list, the clocks and the cap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from udptunnel.interfaces import ILink

#: Seconds a connection may take to become the link (TLS handshake done,
#: admitted, and then either the first frame or a silent link to take over).
DEFAULT_TIMEOUT = 10
#: Connections that may wait at once; one more closes the oldest.
DEFAULT_LIMIT = 64


class PendingLinks:
    """
    The connections waiting to become the link, oldest first.

    When the cap is reached, the I{oldest} waiting connection is closed to
    make room, not the newcomer: a real client gets through its handshake
    in milliseconds, so a flood of silent connections cannot keep it out by
    filling the list first, as it could if newcomers were refused.

    @ivar expired: called with a link whose deadline passed.
    @ivar evicted: called with a link closed to make room for a newer one.
    """

    def __init__(
        self,
        clock: IReactorTime,
        expired: Callable[[ILink], object],
        evicted: Callable[[ILink], object],
        timeout: float = DEFAULT_TIMEOUT,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._clock = clock
        self._expired = expired
        self._evicted = evicted
        self.timeout = timeout
        self.limit = limit
        # dicts keep insertion order: the first key is the oldest.
        self._deadlines: dict[ILink, IDelayedCall] = {}
        self._checks: dict[ILink, IDelayedCall] = {}

    def add(self, link: ILink) -> None:
        """
        Start C{link}'s clock; close the oldest waiting connection first if
        the list is full.
        """
        while self.limit and len(self._deadlines) >= self.limit:
            oldest = next(iter(self._deadlines))
            self.remove(oldest)
            self._evicted(oldest)
        self._deadlines[link] = self._clock.callLater(self.timeout, self._expire, link)

    def checkLater(self, link: ILink, delay: float, check: Callable[[ILink], Any]) -> None:
        """
        Call C{check(link)} after C{delay} seconds, if it is still waiting
        (one such check per link: a new one replaces the old).
        """
        self._cancel(self._checks, link)
        self._checks[link] = self._clock.callLater(delay, self._check, link, check)

    def remove(self, link: ILink) -> bool:
        """
        Forget C{link} (it became the link, or it is gone); whether it was
        waiting.
        """
        self._cancel(self._checks, link)
        return self._cancel(self._deadlines, link)

    def newest(self, accept: Callable[[ILink], bool]) -> ILink | None:
        """
        The most recent waiting connection that C{accept}s, or C{None}.
        """
        for link in reversed(list(self._deadlines)):
            if accept(link):
                return link
        return None

    def __contains__(self, link: object) -> bool:
        return link in self._deadlines

    def __len__(self) -> int:
        return len(self._deadlines)

    def __iter__(self) -> Iterator[ILink]:
        return iter(list(self._deadlines))

    def _expire(self, link: ILink) -> None:
        del self._deadlines[link]
        self._cancel(self._checks, link)
        self._expired(link)

    def _check(self, link: ILink, check: Callable[[ILink], Any]) -> None:
        del self._checks[link]
        if link in self._deadlines:
            check(link)

    @staticmethod
    def _cancel(calls: dict[ILink, IDelayedCall], link: ILink) -> bool:
        call = calls.pop(link, None)
        if call is None:
            return False
        if call.active():
            call.cancel()
        return True
