"""
Every use of Twisted's private API in udptunnel, in one module.

Two measured speed-ups reach past Twisted's public interfaces:

  - the TCP write-through (L{writerFor}): it reads the send buffers and the
    socket of Twisted's C{tcp.Connection};
  - the UDP port (L{TunnelUDPPort}): it subclasses Twisted's C{udp.Port} and
    reads its C{socket}, C{maxPacketSize}, C{addressFamily} and C{protocol}.

Each is checked once, at first use, against the installed Twisted.  When a
check fails (a Twisted release renamed an attribute, or added a buffer),
the tunnel logs one warning naming what it missed and goes on through the
public API: slower, never wrong.  C{tests/test_private.py} asserts that both
checks pass on the installed Twisted, so an upgrade that breaks one fails
the suite loudly instead of slowing the tunnel down in silence.

Socket activation (C{--udp systemd:...}) reads the sockets Twisted's
C{systemd:} endpoint parser found (L{inheritedSockets}), and adopts one as
a L{TunnelUDPPort} through C{udp.Port._fromListeningDescriptor}
(L{adoptedUDPPort}); C{tests/test_systemd.py} exercises both.
"""

from __future__ import annotations

import collections
import io
import select
import socket
import struct
from collections.abc import Callable
from errno import EADDRNOTAVAIL, EAGAIN, ECONNREFUSED, EINTR, EINVAL, EWOULDBLOCK
from inspect import getattr_static
from typing import Any, cast

from twisted.copyright import version as twistedVersion
from twisted.internet import tcp, udp
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel.interfaces import IDatagramSocket
from udptunnel.show import printable
from udptunnel.tunnel.stats import RateLimitedLog
from udptunnel.udp.gso import (
    SegmentSender,
    kernelSegments,
    segmentMessage,
    socketSegments,
)

log = Logger()

# The TCP write-through

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


def writerFor(transport: Any) -> tuple[Callable[[bytes], None], bool]:
    """
    The function to write to C{transport} with, and whether it writes
    through.

    Only on Twisted's own TCP and Unix connections (whose buffers the
    write-through checks), never past a TLS layer (wrapped, or started on
    the connection itself), and only when L{writeThroughSupported}; else
    C{transport.write}.  (Twisted's Unix connections add a queue of file
    descriptors to pass, C{_sendmsgQueue}, sent with the next write; the
    tunnel never passes any, so writing past it reorders nothing.)
    """
    leanDispatch(getattr(transport, "reactor", None))
    if (
        isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", False)
        and writeThroughSupported()
    ):
        return _writeThroughTo(transport), True
    return transport.write, False


def _writeThroughTo(transport: Any) -> Callable[[bytes], None]:
    """
    A C{write} for C{transport} that writes to the socket at once when
    nothing is queued before C{data}, and queues only what the kernel did
    not take.

    Twisted's C{transport.write} always queues and sends on a later reactor
    turn, which costs a turn and two C{epoll_ctl} calls per write: writing
    through cut the CPU per round trip from 28 to 18 us and raised pipelined
    round trips/s by 45%, measured.  It checks Twisted's buffers
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
            # remainder to copy and queue (-7% CPU per 1400-byte datagram,
            # +10% pipelined round trips at 1400 bytes, measured).
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


# The event loop's dispatch


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
    was the largest cost of ours: ping-pong RTT p50 122-134 -> 106-110 us
    all on one CPU, and -15% CPU per round trip, measured.  What changes: a
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


def leanDispatch(reactor: Any) -> bool:
    """
    Have C{reactor} (Twisted's epoll reactor, the default on Linux) run
    L{leanPoll} as its C{doIteration}, once; whether it does.  Any other
    reactor, or a Twisted that fails L{dispatchProblems} (one warning),
    keeps its own.
    """
    global _dispatchVerdict
    from twisted.internet import epollreactor

    if getattr(reactor, "_udptunnelLeanPoll", False):
        return True
    if type(reactor) is not epollreactor.EPollReactor:
        return False
    if _dispatchVerdict is None:
        _dispatchVerdict = dispatchProblems()
        if _dispatchVerdict:
            log.warn(
                "Twisted {twistedVersion}: {problems}. Dispatching events through "
                "Twisted's own loop: correct, but slower per event.",
                twistedVersion=twistedVersion,
                problems="; ".join(_dispatchVerdict),
            )
    if _dispatchVerdict:
        return False
    setattr(reactor, "doIteration", leanPoll(reactor))  # noqa: B010 (an instance's own)
    setattr(reactor, "_udptunnelLeanPoll", True)  # noqa: B010
    return True


# The UDP port

_TRY_LATER = {EAGAIN, EWOULDBLOCK, EINTR}


def waiting(sock: socket.socket) -> Callable[[], object]:
    """
    A function that says whether anything waits to be read on C{sock} (a
    datagram, an empty one included, or an error to report): C{poll} with
    no timeout, on this one descriptor.

    Why: the read loop stops at the read that fails with C{EAGAIN}, and on
    the latency path (one datagram per wake-up) that failed read, its
    exception included, cost 2.6 us against 0.4 us for this question
    (measured): so after the first datagram of a turn, the loop asks
    before reading on.  C{FIONREAD} would not do: it says 0 both for no
    datagram and for an empty one.
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poll = poller.poll

    def readable() -> object:
        return poll(0)

    return readable


def portProblems(port: udp.Port) -> list[str]:
    """
    What, on the listening C{port}, breaks the assumptions of
    L{TunnelUDPPort.doRead}; empty when it is safe.
    """
    problems = []
    try:
        handle = port.getHandle()
    except Exception as e:  # noqa: BLE001
        return [f"udp.Port.getHandle raised {e!r}"]
    if getattr(port, "socket", None) is not handle or not isinstance(handle, socket.socket):
        problems.append("udp.Port keeps its socket elsewhere than in .socket")
    if not isinstance(getattr(port, "maxPacketSize", None), int):
        problems.append("udp.Port has no integer maxPacketSize")
    family = getattr(handle, "family", None)
    if getattr(port, "addressFamily", None) != family:
        problems.append("udp.Port.addressFamily is not its socket's family")
    if getattr(port, "protocol", None) is None:
        problems.append("udp.Port has no protocol")
    return problems


#: Whether L{TunnelUDPPort} has logged that it falls back, in this process.
_portWarned = False


def _portSupported(port: udp.Port) -> bool:
    """
    Whether L{TunnelUDPPort.doRead} is safe on C{port}; the first time it is
    not, a warning says why.
    """
    global _portWarned
    problems = portProblems(port)
    if problems and not _portWarned:
        _portWarned = True
        log.warn(
            "Twisted {twistedVersion}: {problems}. Reading UDP with Twisted's own "
            "loop instead: correct, but one datagram per call (no batching into "
            "one TCP write) and not bounded by a count of datagrams per turn.",
            twistedVersion=twistedVersion,
            problems="; ".join(problems),
        )
    return not problems


@implementer(IDatagramSocket)
class TunnelUDPPort(udp.Port):
    """
    Twisted's UDP port, changed where the tunnel needs it:

      - Twisted's port reads until 256 KiB have arrived in one event-loop
        turn, so a flood of empty datagrams (0 bytes each) would keep it
        reading for ever: the reactor would starve, and every datagram read
        would be queued for a TCP link that never gets a turn to drain.  This
        port reads at most L{maxDatagramsPerRead} datagrams per turn.
      - It hands the protocol all the datagrams of one read at once
        (C{datagramsReceived}), so the relay frames them into one TCP write:
        +45% one-way throughput and -35% CPU per round trip, measured.
      - L{sendTo} is the socket's own C{sendto}: C{Port.write} checks the
        address of every datagram (four C{inet_pton} calls, 4.4 us), while
        the relay only ever sends to IP literals it got from the kernel or
        resolved itself: 89k -> 145k datagrams/s one way, measured.
      - Bound to a wildcard address (C{0.0.0.0}, C{::}), it answers each
        source from the local address that source sent to
        (L{LocalAddresses}), as a well-behaved UDP server does: it reads
        with C{recvmsg} and sends with C{sendmsg}.  Bound to one address,
        it keeps C{recvfrom} and C{sendto}.
      - L{sendMany} sends the frames of one TCP read with UDP segmentation
        offload where the kernel has it (L{udptunnel.udp.gso}): one
        C{sendmsg} per run of same-size datagrams to one address.

    If L{portProblems} finds the port unlike what C{doRead} reads, it reads
    with Twisted's own C{doRead} instead (the protocol's
    C{datagramReceived}, one datagram at a time).
    """

    maxDatagramsPerRead = 256
    protocol: Any
    _failedOnce = False
    _guard: RateLimitedLog | None = None
    #: On a wildcard-bound socket, the local address each recent source
    #: sent to (L{LocalAddresses}); C{None} on a socket bound to one address.
    localAddresses: LocalAddresses | None = None
    #: Whether a datagram waits (L{waiting}).
    _waiting: Callable[[], object]
    #: Sends a read's frames in runs (UDP GSO), or one by one.
    segments: SegmentSender

    def startListening(self) -> None:
        super().startListening()
        sock = self.getHandle()
        self.sendTo = sock.sendto
        if not _portSupported(self):
            self.doRead = super().doRead  # type: ignore[method-assign]
        elif isWildcard(sock):
            self._answerFromDestination(sock)
        self._waiting = waiting(sock)
        local = self.localAddresses
        self.segments = SegmentSender(
            self.sendTo,
            local.sendSegments if local is not None else socketSegments(sock),
            enabled=kernelSegments(sock),
        )
        self.sendMany = self.segments.sendMany
        leanDispatch(self.reactor)

    def connectionLost(self, reason: Any = None) -> None:
        if self._guard is not None:
            self._guard.flushAll()
        super().connectionLost(reason)

    def _answerFromDestination(self, sock: socket.socket) -> None:
        """
        Send each source's datagrams from the local address it sent to.

        A socket bound to C{0.0.0.0} or C{::} sends with the source address
        routing picks, which need not be the one the peer sent to: after an
        iptables C{REDIRECT} in C{OUTPUT} the peer sent to C{127.0.0.1}, and
        only a reply from there matches the connection-tracking entry that
        rewrites it back to the address the application believes it talks
        to (a connected socket drops any other).  So the kernel tells us each
        datagram's destination (C{IP_PKTINFO}, C{IPV6_RECVPKTINFO}), and
        L{sendTo} names it as the source.  A socket bound to one address
        needs none of it, and keeps C{recvfrom} and C{sendto}.
        """
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        except OSError as e:
            log.warn("cannot learn the local address of each datagram ({error}): "
                     "replies go from the address routing picks", error=e)
            return
        self.localAddresses = LocalAddresses(sock)
        self.doRead = self._doReadWithDestination  # type: ignore[method-assign]
        self.sendTo = self.localAddresses.sendTo

    def doRead(self) -> None:
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        trimAddress = self.addressFamily == socket.AF_INET6
        datagrams: list[tuple[bytes, Any]] = []
        append = datagrams.append
        waiting = self._waiting
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, addr = recvfrom(size)
            except OSError as e:
                if e.errno in _TRY_LATER:
                    break
                if e.errno == ECONNREFUSED:
                    # The ICMP error of an earlier send: nothing to read.
                    continue
                self._readFailed(e)
                break
            if trimAddress:
                # Flow and scope ids off, as Twisted's own port does.
                addr = addr[:2]
            append((data, addr))
            if len(datagrams) == 1 and not waiting():
                break
        if datagrams:
            try:
                self.protocol.datagramsReceived(datagrams)
            except Exception:  # noqa: BLE001 (a bug of ours, whatever it raises)
                self._protocolFailed(Failure())

    def _doReadWithDestination(self) -> None:
        """
        L{doRead}, with C{recvmsg}: each datagram's destination address is
        remembered for its source (L{LocalAddresses.saw}); the protocol
        still gets C{(data, addr)}.
        """
        recvmsg = self.socket.recvmsg
        size = self.maxPacketSize
        trimAddress = self.addressFamily == socket.AF_INET6
        local = self.localAddresses
        assert local is not None
        saw = local.saw
        lastSource = lastAncillary = None
        datagrams: list[tuple[bytes, Any]] = []
        append = datagrams.append
        waiting = self._waiting
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, ancillary, _flags, addr = recvmsg(size, _ANCILLARY_SPACE)
            except OSError as e:
                if e.errno in _TRY_LATER:
                    break
                if e.errno == ECONNREFUSED:
                    continue
                self._readFailed(e)
                break
            if trimAddress:
                addr = addr[:2]
            # Steady traffic repeats the source and its pktinfo: compare,
            # and skip the look-up (-0.2 us per datagram, measured).
            if ancillary and (addr != lastSource or ancillary != lastAncillary):
                saw(addr, ancillary)
                lastSource, lastAncillary = addr, ancillary
            append((data, addr))
            if len(datagrams) == 1 and not waiting():
                break
        if datagrams:
            try:
                self.protocol.datagramsReceived(datagrams)
            except Exception:  # noqa: BLE001 (a bug of ours, whatever it raises)
                self._protocolFailed(Failure())

    # Whatever goes wrong while reading, the socket stays open: an exception
    # out of doRead makes the reactor close the port, and the tunnel would
    # run on, deaf, relaying nothing UDP any more.

    def _readFailed(self, error: OSError) -> None:
        _guardLog(self).warn("read-error", "reading the UDP socket: {error}", error=error)

    def _protocolFailed(self, failure: Failure) -> None:
        if not self._failedOnce:
            self._failedOnce = True
            log.failure("internal error in the UDP protocol; the socket stays open",
                        failure)
        else:
            _guardLog(self).warn("protocol-error", "internal error in the UDP protocol: "
                                 "{error}", error=printable(failure.getErrorMessage()))


# Sockets passed by systemd (socket activation)


def inheritedSockets() -> list[tuple[int, str | None]]:
    """
    The sockets systemd passed this process, as C{(descriptor, name)} pairs
    in their order (the first is descriptor 3), exactly as Twisted's
    C{systemd:} server endpoint sees them, so that C{--tcp systemd:...} and
    C{--udp systemd:...} index the same list.

    Twisted reads C{LISTEN_FDS} once, when C{twisted.internet.endpoints} is
    imported, and deletes it from the environment: so this asks the
    L{ListenFDs} that Twisted's C{systemd:} endpoint parser keeps
    (C{_SystemdParser._sddaemon}, private), and the environment only when a
    Twisted release moved it.  A name is C{None} where Twisted keeps none
    per descriptor (it keeps them in C{_names}; its public mapping by name
    loses all but one of the sockets of a C{.socket} unit, which share the
    unit's name).
    """
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    listen = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if not isinstance(listen, ListenFDs):
        listen = ListenFDs.fromEnvironment()
    descriptors = listen.inheritedDescriptors()
    names = getattr(listen, "_names", None)
    if not isinstance(names, (list, tuple)) or len(names) != len(descriptors):
        byDescriptor = {fd: name for name, fd in listen.inheritedNamedDescriptors().items()}
        names = [byDescriptor.get(fd) for fd in descriptors]
    return list(zip(descriptors, names))


def adoptedUDPPort(fd: int, protocol: Any, maxPacketSize: int, reactor: Any) -> TunnelUDPPort:
    """
    A L{TunnelUDPPort} (our bounded, batched C{doRead}) on the bound
    datagram socket C{fd} that systemd passed, not yet listening: call
    C{startListening}.  Twisted's own C{reactor.adoptDatagramPort} would
    make a plain C{udp.Port}; its class method
    C{udp.Port._fromListeningDescriptor} (private) makes one of our class.
    It works on a duplicate of C{fd}, so C{fd} stays open (a stop and a
    start adopt it again); the socket is made non-blocking, as systemd
    passes it blocking and the reactor must never wait on it.
    """
    probe = socket.socket(fileno=fd)  # the kernel says its family; detached below
    try:
        family = probe.family
        probe.setblocking(False)
    finally:
        probe.detach()
    port = TunnelUDPPort._fromListeningDescriptor(reactor, fd, family, protocol,
                                                  maxPacketSize)
    assert isinstance(port, TunnelUDPPort)
    return port


# Answering from the address each datagram was sent to

#: Linux's values, for Python builds whose socket module lacks them.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: int = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: int = getattr(socket, "IPV6_PKTINFO", 50)

#: C{struct in_pktinfo}: interface index, local address, header destination.
IN_PKTINFO = struct.Struct("=i4s4s")
#: C{struct in6_pktinfo}: address, interface index.
IN6_PKTINFO = struct.Struct("=16sI")

#: Room for a pktinfo message, and for one more the kernel might add.
_ANCILLARY_SPACE = socket.CMSG_SPACE(IN6_PKTINFO.size) + socket.CMSG_SPACE(16)

_NO_ADDRESS = bytes(4)
#: Errors of a send from an address the host no longer has.
_ADDRESS_GONE = {EADDRNOTAVAIL, EINVAL}


def isWildcard(sock: socket.socket) -> bool:
    """
    Whether C{sock} is bound to all addresses (C{0.0.0.0}, C{::}).
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    return sock.getsockname()[0] in ("0.0.0.0", "::")


class LocalAddresses:
    """
    For the most recent L{size} sources of a wildcard-bound socket, the
    ancillary data that sends from the local address each last sent to; and
    L{sendTo}, which uses it.

    Bounded, as a flood from many sources must not grow it: when full, the
    source that appeared (or changed address) longest ago is forgotten, and
    learned again from its next datagram.  In a run of datagrams from one
    source, the read loop compares each one's pktinfo with the last and
    calls L{saw} only on a change; L{saw} itself costs a look-up.
    """

    size = 512

    def __init__(self, sock: socket.socket, size: int | None = None) -> None:
        if size is not None:
            self.size = size
        self._six = sock.family == socket.AF_INET6
        #: source -> (the pktinfo bytes received, the ancillary data to send)
        self._bySource: dict[Any, tuple[bytes, list[tuple[int, int, bytes]]]] = {}
        self.sendTo = self._sender(sock)
        self.sendSegments = self._segmentSender(sock)

    def saw(self, source: Any, ancillary: list[tuple[int, int, bytes]]) -> None:
        """
        A datagram from C{source} came with C{ancillary} data (from
        C{recvmsg}): remember where it was sent.
        """
        for level, kind, info in ancillary:
            if kind == IP_PKTINFO and level == socket.IPPROTO_IP:
                break
            if kind == IPV6_PKTINFO and level == socket.IPPROTO_IPV6:
                break
        else:
            return
        known = self._bySource.get(source)
        if known is not None and known[0] == info:
            return
        send = self._reply(info)
        if send is None:
            return
        bySource = self._bySource
        if known is not None:
            del bySource[source]  # so it counts as recent
        elif len(bySource) >= self.size:
            del bySource[next(iter(bySource))]
        bySource[source] = (info, send)

    def _reply(self, info: bytes) -> list[tuple[int, int, bytes]] | None:
        """
        The ancillary data that sends from the destination in C{info}, a
        received pktinfo; C{None} where no reply may come from it.
        """
        if not self._six:
            if len(info) < IN_PKTINFO.size:
                return None
            _, local, _ = IN_PKTINFO.unpack_from(info)
            # The kernel's own choice of a reply source: the destination of
            # a unicast datagram, an address of the interface for broadcast.
            return [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(0, local, _NO_ADDRESS))]
        if len(info) < IN6_PKTINFO.size:
            return None
        local, index = IN6_PKTINFO.unpack_from(info)
        if local[0] == 0xFF:
            return None  # multicast: not a source; let routing pick
        if not (local[0] == 0xFE and local[1] & 0xC0 == 0x80):
            index = 0  # only a link-local source needs its interface
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(local, index))]

    def localFor(self, source: Any) -> str | None:
        """
        The local address replies to C{source} go from, printable; C{None}
        when routing picks it.
        """
        known = self._bySource.get(source)
        if known is None:
            return None
        info = known[1][0][2]
        if self._six:
            return socket.inet_ntop(socket.AF_INET6, info[:16])
        return socket.inet_ntop(socket.AF_INET, info[4:8])

    def _sender(self, sock: socket.socket) -> Callable[[bytes, Any], int]:
        """
        The L{IDatagramSocket.sendTo} of a wildcard-bound socket: it sends
        C{data} to C{addr} from the local address C{addr} last sent to, if
        known; else as C{sendto} would.  A local address that is gone
        (removed from its interface) is forgotten, and the datagram sent
        from the one routing picks.  (A closure: the fast path is one
        dictionary look-up and one C{sendmsg}.)
        """
        sendto, sendmsg = sock.sendto, sock.sendmsg
        known = self._bySource.get
        bySource = self._bySource

        def sendTo(data: bytes, addr: Any) -> int:
            entry = known(addr)
            if entry is None:
                return sendto(data, addr)
            try:
                return sendmsg((data,), entry[1], 0, addr)
            except OSError as e:
                if e.errno not in _ADDRESS_GONE:
                    raise
            bySource.pop(addr, None)
            return sendto(data, addr)

        return sendTo

    def _segmentSender(self, sock: socket.socket) -> Callable[[Any, int, Any], Any]:
        """
        The C{sendSegments} of a wildcard-bound socket
        (L{udptunnel.udp.gso.SegmentSender}): a run of datagrams in one
        C{sendmsg}, from the local address C{addr} last sent to as
        L{sendTo} sends them, with the C{UDP_SEGMENT} message beside the
        pktinfo one.
        """
        sendmsg = sock.sendmsg
        known = self._bySource.get
        bySource = self._bySource

        def sendSegments(buffers: Any, segmentSize: int, addr: Any) -> Any:
            segment = segmentMessage(segmentSize)
            entry = known(addr)
            if entry is None:
                return sendmsg(buffers, [segment], 0, addr)
            try:
                return sendmsg(buffers, [*entry[1], segment], 0, addr)
            except OSError as e:
                if e.errno not in _ADDRESS_GONE:
                    raise
            bySource.pop(addr, None)
            return sendmsg(buffers, [segment], 0, addr)

        return sendSegments


def _guardLog(port: TunnelUDPPort) -> RateLimitedLog:
    if port._guard is None:
        port._guard = RateLimitedLog(log, cast(IReactorTime, port.reactor))
    return port._guard
