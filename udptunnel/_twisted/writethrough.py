"""
The TCP write-through: a link's frames go straight to the socket when
Twisted's send buffers are empty, instead of waiting for a turn of the
event loop and two C{epoll_ctl} calls.
"""

from __future__ import annotations

import collections
import io
import socket
from collections.abc import Callable
from inspect import getattr_static
from typing import Any

from twisted.copyright import version as twistedVersion
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

log = Logger()

#: What the write-through reads of a C{tcp.Connection}, and the types it
#: relies on.  C{offset} and C{_tempDataLen} it does not read, but they are
#: part of the buffer model it relies on: C{dataBuffer} (sent from C{offset})
#: then C{_tempDataBuffer}, and nothing else, hold all that is queued.
_REQUIRED: dict[str, type] = {
    "dataBuffer": bytes,
    "offset": int,
    "_tempDataBuffer": list,
    "_tempDataLen": int,
    "connected": int,
    "disconnecting": int,
}

#: The only attributes of a C{tcp.Connection} that may hold queued bytes.
_BUFFERS = frozenset({"dataBuffer", "_tempDataBuffer"})

#: What an attribute that queues bytes would look like.
_BUFFER_TYPES = (bytes, bytearray, memoryview, list, collections.deque, io.BytesIO)

_PROBE = b"udptunnel write-through check"
_MISSING = object()


class _StandInReactor:
    """
    Just enough reactor for a connection built by L{connectionProblems}: the
    check must not register anything with the real one.
    """

    def addReader(self, reader: object) -> None:
        pass

    def removeReader(self, reader: object) -> None:
        pass

    def addWriter(self, writer: object) -> None:
        pass

    def removeWriter(self, writer: object) -> None:
        pass


def connectionProblems(connectionClass: type[tcp.Connection] = tcp.Connection) -> list[str]:
    """
    What, in the installed Twisted, breaks the assumptions of the
    write-through (L{writerFor}); empty when it is safe.

    It builds a real C{connectionClass} over one end of a socket pair, and
    checks that:

      - the attributes the write-through reads exist, with their types;
      - no other attribute looks like a buffer (a byte string, a list...):
        a release that added one would queue bytes where the write-through
        does not look, and its writes would overtake them;
      - C{write} queues into C{_tempDataBuffer}, and C{doWrite}, once the
        socket took everything, leaves both buffers empty: exactly what
        "nothing is queued" means to the write-through.

    @param connectionClass: C{tcp.Connection}, or (in tests) a subclass
        that mimics a changed release.
    """
    name = f"{connectionClass.__module__.rsplit('.', 1)[-1]}.{connectionClass.__name__}"
    problems: list[str] = []
    mine, peer = socket.socketpair()
    try:
        connection = connectionClass(mine, Protocol(), reactor=_StandInReactor())  # type: ignore[arg-type]
        for attribute, expected in _REQUIRED.items():
            value = getattr(connection, attribute, _MISSING)
            if value is _MISSING:
                problems.append(f"{name} has no {attribute}")
            elif not isinstance(value, expected):
                problems.append(
                    f"{name}.{attribute} is a {type(value).__name__}, not {expected.__name__}"
                )
        if getattr(connection, "socket", None) is not mine:
            problems.append(f"{name} keeps its socket elsewhere than in .socket")
        names = set(vars(connection)) | set(dir(connectionClass))
        for attribute in sorted(names - _BUFFERS):
            if attribute.startswith("__"):
                continue
            if isinstance(getattr_static(connection, attribute, None), _BUFFER_TYPES):
                problems.append(f"{name}.{attribute} looks like another send buffer")
        if problems:
            return problems
        # Twisted's own write path, on a connection no reactor knows of.
        connection.connected = 1
        connection.write(_PROBE)
        if connection._tempDataBuffer != [_PROBE] or connection.dataBuffer:
            problems.append(f"{name}.write does not queue into _tempDataBuffer")
            return problems
        connection.doWrite()
        if connection.dataBuffer or connection._tempDataBuffer or connection.offset:
            problems.append(f"{name}.doWrite leaves its buffers non-empty once all is sent")
        peer.settimeout(1)
        if peer.recv(len(_PROBE) + 1) != _PROBE:
            problems.append(f"{name}.doWrite does not send the queued bytes")
    except Exception as e:  # noqa: BLE001 -- any failure means "do not rely on it"
        problems.append(f"checking {name} raised {e!r}")
    finally:
        mine.close()
        peer.close()
    return problems


#: The problems L{connectionProblems} found, once computed.
_connectionVerdict: list[str] | None = None


def writeThroughSupported() -> bool:
    """
    Whether the write-through is safe on the installed Twisted: checked on
    the first call, and a warning logged then if it is not.
    """
    global _connectionVerdict
    if _connectionVerdict is None:
        _connectionVerdict = connectionProblems()
        if _connectionVerdict:
            log.warn(
                "Twisted {twistedVersion}: {problems}. Writing to TCP through "
                "transport.write instead of straight to the socket: correct, "
                "but slower (a reactor turn per write).",
                twistedVersion=twistedVersion,
                problems="; ".join(_connectionVerdict),
            )
    return not _connectionVerdict


def writerFor(transport: Any) -> Callable[[bytes], None]:
    """
    The function to write to C{transport} with.

    Only on Twisted's own TCP and Unix connections (whose buffers the
    write-through checks), never past a TLS layer (wrapped, or started on
    the connection itself), and only when L{writeThroughSupported}; else
    C{transport.write}.  (Twisted's Unix connections add a queue of file
    descriptors to pass, C{_sendmsgQueue}, sent with the next write; the
    tunnel never passes any, so writing past it reorders nothing.)
    """
    if (
        isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", False)
        and writeThroughSupported()
    ):
        return _writeThroughTo(transport)
    return transport.write


def _writeThroughTo(transport: Any) -> Callable[[bytes], None]:
    """
    A C{write} for C{transport} that writes to the socket at once when
    nothing is queued before C{data}, and queues only what the kernel did
    not take.

    Twisted's C{transport.write} always queues and sends on a later reactor
    turn, which costs a turn and two C{epoll_ctl} calls per write (what
    writing through saves: benchmarks/README.rst, "Design measurements").
    It checks Twisted's buffers
    (C{dataBuffer}, C{_tempDataBuffer}) and writes to its C{socket}: see
    L{connectionProblems} for what makes that safe.
    """

    def writeThrough(data: bytes) -> None:
        if (
            transport.connected
            and not transport.disconnecting
            and not transport.dataBuffer
            and not transport._tempDataBuffer
        ):
            # The socket's own send, not writeSomeData: that sends at most
            # 128 KiB a call, so every batch of large datagrams would leave a
            # remainder to copy and queue.
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = 0  # EAGAIN, or an error the ordinary path will meet
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        transport.write(data)

    return writeThrough


