"""
Bounds on a listener that strangers may reach, beside the tunnel's own:
how many connections at once (in all, and from one host), how long each may
live, however it drips its bytes, how many bytes it may send, and a reserve
of descriptors it leaves to the tunnel.

The metrics endpoint is served by twisted.web, whose only timeout restarts
at every byte: 300 connections dripping a byte every 20 s held a
descriptor each, for ever, until the tunnel could accept no connection.
"""

from __future__ import annotations

import os
import resource
from typing import Any, cast

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from udptunnel.ratelimit import RateLimitedLog
from udptunnel.show import showAddress

#: Connections at once, in all and from one host.
MAX_CONNECTIONS = 16
MAX_PER_HOST = 4
#: Seconds a connection may live, from its accept: time for one request and
#: its answer (Prometheus' own scrape timeout is 10 s).
DEADLINE = 10.0
#: Bytes a connection may send: a request of ours has no body, and
#: twisted.web takes at most 16 KiB of headers.
MAX_BYTES = 64 * 1024
#: Descriptors left to the tunnel: no connection is taken when fewer than
#: this many are free below the process's limit.
RESERVE = 64


def descriptorsFree() -> int | None:
    """
    How many more descriptors this process may open, or C{None} when it
    cannot tell (no C{/proc}, no limit).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        opened = len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
    return soft - opened


class _Bounded(ProtocolWrapper):
    """
    One connection: closed at its deadline, or as soon as it sent too much.
    """

    factory: BoundedFactory
    _deadline: IDelayedCall | None = None
    _received = 0

    def connectionMade(self) -> None:
        self._deadline = self.factory.clock.callLater(self.factory.deadline, self._expire)
        super().connectionMade()

    def _expire(self) -> None:
        self._deadline = None
        self.factory.refuse("deadline", self.getPeer(),
                            f"still open after {self.factory.deadline:g} s")
        self._abort()

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.factory.maxBytes:
            self.factory.refuse("size", self.getPeer(),
                                f"sent more than {self.factory.maxBytes} bytes")
            self._abort()
            return
        super().dataReceived(data)

    def _abort(self) -> None:
        cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        super().connectionLost(reason)


class BoundedFactory(WrappingFactory):
    """
    Wraps the factory of a listener with the bounds above; a connection
    over them is closed as soon as it is accepted, and logged
    (rate-limited) with why.

    @ivar what: the listener's name in the log lines (C{metrics}).
    """

    protocol = _Bounded
    noisy = False
    log = Logger()

    def __init__(self, wrapped: Any, clock: IReactorTime, what: str,
                 maxConnections: int = MAX_CONNECTIONS, maxPerHost: int = MAX_PER_HOST,
                 deadline: float = DEADLINE, maxBytes: int = MAX_BYTES,
                 reserve: int = RESERVE) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.what = what
        self.maxConnections = maxConnections
        self.maxPerHost = maxPerHost
        self.deadline = deadline
        self.maxBytes = maxBytes
        self.reserve = reserve
        self._warn = RateLimitedLog(self.log, clock)

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper | None:  # type: ignore[override]
        host = getattr(addr, "host", None)
        if len(self.protocols) >= self.maxConnections:
            why = f"{len(self.protocols)} connections open"
        elif host is not None and sum(
                1 for p in self.protocols if getattr(p.getPeer(), "host", None) == host
        ) >= self.maxPerHost:
            why = f"{self.maxPerHost} connections open from its host"
        elif (free := descriptorsFree()) is not None and free < self.reserve:
            why = f"only {free} descriptors free, kept for the tunnel"
        else:
            return super().buildProtocol(addr)
        self.refuse("full", addr, why)
        return None

    def refuse(self, kind: str, addr: Any, why: str) -> None:
        where = getattr(addr, "host", None)
        remote = showAddress((where, addr.port)) if where is not None else str(addr)
        self._warn.warn(kind, "{what}: closed the connection from {remote}: {why}",
                        what=self.what, remote=remote, why=why)

    def doStop(self) -> None:
        self._warn.flushAll()
        super().doStop()

    def logPrefix(self) -> str:
        return str(getattr(self.wrappedFactory, "logPrefix", lambda: self.what)())
