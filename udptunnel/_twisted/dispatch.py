"""
The epoll reactor's event dispatch without Twisted's per-event log
context.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.copyright import version as twistedVersion
from twisted.logger import Logger

log = Logger()
_MISSING = object()

class _Reader:
    """
    A reader of one end of a socket pair, for L{dispatchProblems}: it notes
    each C{doRead}, and the log context it ran in.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "udptunnel check"

    def doRead(self) -> None:
        self.reads += 1
        self.sock.recv(64)

    def connectionLost(self, reason: object) -> None:
        pass


def dispatchProblems(reactorClass: Any = None) -> list[str]:
    """
    What, in the installed Twisted, breaks the assumptions of L{leanPoll};
    empty when it is safe.

    It builds a fresh epoll reactor (never run), checks the attributes
    L{leanPoll} reads, and that with it a reader with data waiting is
    called exactly once by one iteration, and not again once drained.
    """
    from twisted.internet import epollreactor

    if reactorClass is None:
        reactorClass = epollreactor.EPollReactor
    problems: list[str] = []
    mine = peer = None
    try:
        reactor = reactorClass()
    except Exception as e:  # noqa: BLE001
        return [f"building an epoll reactor raised {e!r}"]
    try:
        if not callable(getattr(getattr(reactor, "_poller", None), "poll", None)):
            problems.append("EPollReactor has no _poller.poll")
        if not isinstance(getattr(reactor, "_selectables", None), dict):
            problems.append("EPollReactor._selectables is not a dict")
        if not callable(getattr(reactor, "_doReadOrWrite", None)):
            problems.append("EPollReactor has no _doReadOrWrite")
        if getattr(getattr(reactor, "doIteration", None), "__func__", None) is not getattr(
            reactorClass, "doPoll", _MISSING
        ):
            problems.append("EPollReactor.doIteration is not its doPoll")
        if problems:
            return problems
        mine, peer = socket.socketpair()
        mine.setblocking(False)
        reader = _Reader(mine)
        reactor.addReader(reader)
        poll = leanPoll(reactor)
        peer.send(b"x")
        poll(1.0)
        poll(0)
        if reader.reads != 1:
            problems.append(f"a read event reached the reader {reader.reads} times, not once")
        reactor.removeReader(reader)
    except Exception as e:  # noqa: BLE001 -- any failure means "do not rely on it"
        problems.append(f"checking the epoll reactor raised {e!r}")
    finally:
        for sock in (mine, peer):
            if sock is not None:
                sock.close()
        _closeReactor(reactor)
    return problems


def _closeReactor(reactor: Any) -> None:
    """
    Close the descriptors of a reactor that never ran: its waker's pipe and
    its epoll descriptor.
    """
    try:
        waker = getattr(reactor, "waker", None)
        if waker is not None:
            waker.connectionLost(None)
    finally:
        poller = getattr(reactor, "_poller", None)
        if poller is not None:
            poller.close()


def leanPoll(reactor: Any) -> Callable[[float | None], None]:
    """
    C{EPollReactor.doPoll} without Twisted's per-event log context.

    Twisted wraps every read and write event in C{log.callWithLogger}: a
    C{logPrefix()} call, two dictionary copies and a push and pop on a
    thread-local stack, so that a legacy C{log.msg} inside the handler is
    labelled with the connection's name.  The tunnel logs through
    C{twisted.logger}, which does not read that context, and on the latency
    path (one datagram in flight, four wake-ups per round trip) the wrapper
    was the largest cost of ours (benchmarks/README.rst, "Design
    measurements").  What changes: a
    legacy log line of Twisted's own emitted while handling an event says
    C{[-]} where it said the connection's name.
    """
    poller = reactor._poller
    selectables = reactor._selectables
    doReadOrWrite = reactor._doReadOrWrite
    get = selectables.get

    def doPoll(timeout: float | None) -> None:
        try:
            events = poller.poll(-1 if timeout is None else timeout, len(selectables))
        except InterruptedError:
            return
        for fd, event in events:
            selectable = get(fd)
            if selectable is not None:
                doReadOrWrite(selectable, fd, event)

    return doPoll


#: The problems L{dispatchProblems} found, once computed.
_dispatchVerdict: list[str] | None = None


def dispatchVerdict() -> list[str]:
    """
    L{dispatchProblems} of the installed Twisted, computed (and, when there
    are any, warned of) once per process: the lean dispatch and the
    compiled pump both rely on what it checks.
    """
    global _dispatchVerdict
    if _dispatchVerdict is None:
        _dispatchVerdict = dispatchProblems()
        if _dispatchVerdict:
            log.warn(
                "Twisted {twistedVersion}: {problems}. Dispatching events through "
                "Twisted's own loop: correct, but slower per event.",
                twistedVersion=twistedVersion,
                problems="; ".join(_dispatchVerdict),
            )
    return _dispatchVerdict


def installLeanDispatch(reactor: Any) -> Callable[[], None] | None:
    """
    Have C{reactor} (Twisted's epoll reactor, the default on Linux) run
    L{leanPoll} as its C{doIteration}; return what undoes it, or C{None}
    when it was not done: any other reactor, or a Twisted that fails
    L{dispatchProblems} (one warning, the first time: L{dispatchVerdict}),
    keeps its own.
    """
    from twisted.internet import epollreactor

    if type(reactor) is not epollreactor.EPollReactor:
        return None
    if dispatchVerdict():
        return None
    setattr(reactor, "doIteration", leanPoll(reactor))  # noqa: B010 (an instance's own)

    def uninstall() -> None:
        if "doIteration" in vars(reactor):
            delattr(reactor, "doIteration")

    return uninstall
