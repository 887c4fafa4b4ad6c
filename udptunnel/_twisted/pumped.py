"""
The epoll reactor's wait through the compiled pump (C{udptunnel._pump}):
the wake-ups that only move bytes between an armed UDP socket and TCP
socket are handled in C, and the reactor turns only for the rest.

The fence's part: it reads the reactor's private state (its epoll
descriptor, its selectables, its dispatch and disconnect), and hands
Twisted's connections the bytes the pump read for them, as their own
C{doRead} would.  Which pairs are armed, and when, is decided outside the
fence, by the I{lanes} object it is given (duck-typed, as the fence
imports nothing of ours): C{prepare()} before every wait, C{collect()}
after it, C{dirtied(pair)} after Python handled anything of a pair's, and
each pair's owner takes what is handed back to the relay (the
C{transport} of its C{link} is the connection the pair was made for).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import main, tcp
from twisted.logger import Logger

log = Logger()


def transportIdle(transport: Any) -> bool:
    """
    Whether bytes written to C{transport}'s socket now overtake nothing:
    a Twisted TCP connection, connected, not closing (nor half-closing),
    with nothing queued.
    """
    return (
        isinstance(transport, tcp.Connection)
        and bool(transport.connected)
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    )


def pumpProblems(reactor: Any) -> list[str]:
    """
    What keeps the pump from running C{reactor}'s wait, beyond what the
    lean dispatch needs (L{udptunnel._twisted.dispatch.dispatchVerdict},
    which the caller checks too); empty when it can.
    """
    from twisted.internet import epollreactor

    if type(reactor) is not epollreactor.EPollReactor:
        return [f"the reactor is {type(reactor).__name__}, not the epoll reactor"]
    problems = []
    if not callable(getattr(reactor, "_disconnectSelectable", None)):
        problems.append("EPollReactor has no _disconnectSelectable")
    if not callable(getattr(tcp.Connection, "_dataReceived", None)):
        problems.append("tcp.Connection has no _dataReceived")
    return problems


def pumpedPoll(reactor: Any, pump: Any, lanes: Any, module: Any) -> Callable[[float | None], None]:
    """
    C{EPollReactor.doPoll} through C{pump}: C{lanes.prepare()} arms the
    pairs, the pump waits and moves what it may, C{lanes.collect()} takes
    the counters, and every event the pump left and every hand-back is
    dispatched in the order the pump gave them.
    """
    selectables = reactor._selectables
    doReadOrWrite = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    get = selectables.get
    wait, pairOf = pump.wait, pump.pairOf
    prepare, collect, dirtied = lanes.prepare, lanes.collect, lanes.dirtied
    DATAGRAMS, STREAM, STREAM_LOST = module.DATAGRAMS, module.STREAM, module.STREAM_LOST
    TCP_REST, FRAMES, READ_ERROR = module.TCP_REST, module.FRAMES, module.READ_ERROR

    def stream(connection: Any, data: bytes) -> None:
        # What _doReadOrWrite does with the result of a connection's doRead.
        try:
            why = connection._dataReceived(data)
        except BaseException:  # noqa: BLE001 (as _doReadOrWrite: the connection is lost)
            why = sys.exc_info()[1]
            log.failure("handling the bytes read for {connection}", connection=connection)
        if why:
            disconnect(connection, why, True)

    def ownConnection(pair: Any) -> Any:
        """
        The connection C{pair} was made for, or C{None} once it is gone:
        closed by an earlier hand-back or event of this turn (its
        descriptor perhaps another connection's already).
        """
        connection = get(pair.tcpFd)
        if connection is None or getattr(pair.owner.link, "transport", None) is not connection:
            return None
        return connection

    def handBack(kind: int, pair: Any, payload: Any) -> None:
        if kind == DATAGRAMS:
            pair.owner.datagramsHanded(payload)
        elif kind == FRAMES:
            pair.owner.framesHanded(payload)
        elif kind == READ_ERROR:
            pair.owner.udpReadFailed(payload)
        else:
            connection = ownConnection(pair)
            if connection is None:
                return
            if kind == STREAM:
                stream(connection, payload)
            elif kind == STREAM_LOST:
                disconnect(connection, main.CONNECTION_LOST, True)
            elif kind == TCP_REST:
                connection.write(payload)

    def doPoll(timeout: float | None) -> None:
        prepare()
        try:
            items = wait(-1.0 if timeout is None else timeout, max(len(selectables), 1))
        finally:
            collect()
        for item in items:
            if len(item) == 2:
                fd, event = item
                selectable = get(fd)
                if selectable is not None:
                    doReadOrWrite(selectable, fd, event)
                pair = pairOf(fd)
            else:
                handBack(*item)
                pair = item[1]
            if pair is not None:
                dirtied(pair)  # its state may have changed: armed again or not

    return doPoll


def installPump(reactor: Any, module: Any, lanes: Any) -> Callable[[], None]:
    """
    Have C{reactor} wait through C{module}'s pump, with C{lanes} choosing
    what it moves (once the checks passed: L{pumpProblems}); return what
    undoes it.
    """
    pump = module.Pump(reactor._poller.fileno())
    lanes.attach(pump, module.Pair)
    setattr(reactor, "doIteration", pumpedPoll(reactor, pump, lanes, module))  # noqa: B010

    def uninstall() -> None:
        lanes.detach()
        if "doIteration" in vars(reactor):
            delattr(reactor, "doIteration")

    return uninstall
