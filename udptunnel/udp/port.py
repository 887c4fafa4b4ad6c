"""
The tunnel's UDP sockets: the port an end binds (or the socket systemd
passed it), and each server session's socket, connected to the peer.
Every one is read by one bounded, batched loop (L{DatagramSocket.doRead})
through the reactor's public C{addReader}.

Not Twisted's C{udp.Port}, which the tunnel outgrew: it reads until 256
KiB have arrived in one turn of the event loop (a flood of empty datagrams
would never end a turn, and the reactor would starve), hands its protocol
one datagram a call (so no read's datagrams leave in one TCP write),
checks the address of every datagram it sends (the tunnel only ever sends
to IP literals), and logs two lines of its own for every socket (a server
opens one per session).  Here a turn reads at most
L{DatagramSocket.maxDatagramsPerRead} datagrams and hands them over in one
call, a send is the socket's own, and nothing reaches into Twisted's
private API.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable
from errno import EAGAIN, ECONNREFUSED, EINTR, EWOULDBLOCK
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel.interfaces import IDatagramSocket
from udptunnel.ratelimit import RateLimitedLog
from udptunnel.sockopts import Prepare
from udptunnel.udp.gso import SegmentSender, kernelSegments, socketSegments
from udptunnel.udp.kerneldrops import socketDrops
from udptunnel.udp.replies import (
    ANCILLARY_SPACE,
    LocalAddresses,
    isWildcard,
    listenForDestinations,
)
from udptunnel.wire import MAX_DATAGRAM

#: Errors of a read that mean "nothing more now".
_TRY_LATER = {EAGAIN, EWOULDBLOCK, EINTR}


def waiting(sock: socket.socket) -> Callable[[], object]:
    """
    A function that says whether anything waits to be read on C{sock} (a
    datagram, an empty one included, or an error to report): C{poll} with
    no timeout, on this one descriptor.

    The read loop asks it after a turn's first datagram, instead of reading
    until a read fails with C{EAGAIN}: on the latency path (one datagram
    per wake-up) that failed read, its exception included, costs several
    times this question.  C{FIONREAD} would not do: it says 0 both for no
    datagram and for an empty one.
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poll = poller.poll

    def readable() -> object:
        return poll(0)

    return readable


@implementer(IReadDescriptor, IDatagramSocket)
class DatagramSocket:
    """
    One UDP socket of the tunnel, and its protocol (which gets each read's
    datagrams in one C{datagramsReceived} call).

    Bound to a wildcard address it answers each source from the local
    address that source sent to (L{udptunnel.udp.replies}); connected to a
    peer (a server session's socket) it sends to that peer alone, and the
    kernel drops every other source.  L{sendMany} sends the frames of one
    TCP read with UDP segmentation offload where the kernel has it
    (L{udptunnel.udp.gso}).

    Whatever goes wrong while reading, the socket stays open: an exception
    out of C{doRead} would make the reactor drop it, and the tunnel would
    run on, deaf.
    """

    log = Logger()
    #: The most datagrams one turn of the event loop reads.
    maxDatagramsPerRead = 256

    def __init__(self, sock: socket.socket, protocol: DatagramProtocol, reactor: Any,
                 maxPacketSize: int = MAX_DATAGRAM) -> None:
        """
        @param sock: a bound (or connected) datagram socket, non-blocking.
        """
        self.socket = sock
        self.protocol = protocol
        self.reactor = reactor
        self.maxPacketSize = maxPacketSize
        self._reading = False
        self._listening = False
        self._failedOnce = False
        self._guard = RateLimitedLog(self.log, reactor)
        self._trimAddress = sock.family == socket.AF_INET6
        self._waiting = waiting(sock)
        self.localAddresses: LocalAddresses | None = None
        self._lastSeen: tuple[Any, Any] | None = None
        #: Reads one datagram: C{(data, source)}, or raises L{OSError}.
        self._receive: Callable[[int], tuple[bytes, Any]] = sock.recvfrom
        try:
            peer: Any = sock.getpeername()
        except OSError:
            peer = None
        #: Connected to one peer (a server session's socket): the kernel
        #: drops every other source.
        self.connected = peer is not None
        if peer is not None:
            send = sock.send

            def sendTo(data: bytes, addr: Any) -> Any:
                return send(data)  # connected: the kernel sends to the peer

            segments = socketSegments(sock, connected=True)
        elif isWildcard(sock) and self._answerFromDestination(sock):
            assert self.localAddresses is not None
            sendTo = self.localAddresses.sendTo
            segments = self.localAddresses.sendSegments
            self._receive = self._receiveWithDestination
        else:
            sendTo = sock.sendto  # type: ignore[assignment]
            segments = socketSegments(sock)
        self.sendTo = sendTo
        self.segments = SegmentSender(sendTo, segments, enabled=kernelSegments(sock))
        self.sendMany = self.segments.sendMany

    def _answerFromDestination(self, sock: socket.socket) -> bool:
        """
        Have the kernel say each datagram's destination, so that the reply
        goes from there; whether it does.
        """
        try:
            listenForDestinations(sock)
        except OSError as e:
            self.log.warn("cannot learn the local address of each datagram ({error}): "
                          "replies go from the address routing picks", error=e)
            return False
        self.localAddresses = LocalAddresses(sock)
        return True

    def _receiveWithDestination(self, size: int) -> tuple[bytes, Any]:
        """
        One datagram, with C{recvmsg}: its destination is remembered for its
        source (L{LocalAddresses.saw}).
        """
        data, ancillary, _, source = self.socket.recvmsg(size, ANCILLARY_SPACE)
        source = source[:2]  # the address replies go to, as the relay sees it
        # Steady traffic repeats the source and its pktinfo: compare, and
        # skip the look-up.
        if ancillary and (source, ancillary) != self._lastSeen:
            assert self.localAddresses is not None
            self.localAddresses.saw(source, ancillary)
            self._lastSeen = (source, ancillary)
        return data, source

    # Starting and stopping

    def startListening(self) -> None:
        """
        Connect the protocol (its C{startProtocol}) and start reading.
        """
        if not self._listening:
            self._listening = True
            self.protocol.makeConnection(self)  # type: ignore[arg-type]
            self.startReading()

    def stopListening(self) -> Deferred[None]:
        """
        Stop reading, close the socket, and tell the protocol
        (C{stopProtocol}); what the rate limit held back is written.
        """
        self.stopReading()
        if self.socket.fileno() != -1:
            self.socket.close()
        if self._listening:
            self._listening = False
            self._guard.flushAll()
            self.protocol.doStop()
        return succeed(None)

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()

    def startReading(self) -> None:
        if not self._reading and self.socket.fileno() != -1:
            self._reading = True
            self.reactor.addReader(self)

    def stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    # The read loop

    def doRead(self) -> None:
        receive = self._receive
        size = self.maxPacketSize
        trimAddress = self._trimAddress
        waiting = self._waiting
        datagrams: list[tuple[bytes, Any]] = []
        append = datagrams.append
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, source = receive(size)
            except OSError as e:
                if e.errno in _TRY_LATER:
                    break
                if e.errno == ECONNREFUSED:
                    continue  # the ICMP error of an earlier send: nothing to read
                self.readFailed(e)
                break
            if trimAddress:
                source = source[:2]  # flow and scope ids off, as Twisted's port does
            append((data, source))
            if len(datagrams) == 1 and not waiting():
                break
        if datagrams:
            self.deliver(datagrams)

    def deliver(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """
        Hand the protocol one read's datagrams (read here, or by the
        compiled pump, L{udptunnel._twisted.pumped}).
        """
        try:
            self.protocol.datagramsReceived(datagrams)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 (a bug of ours, whatever it raises)
            self._protocolFailed(Failure())

    def readFailed(self, error: OSError) -> None:
        """
        A read failed with something else than "nothing now": logged,
        rate-limited; the socket stays open.
        """
        self._guard.warn("read-error", "reading the UDP socket: {error}", error=error)

    def _protocolFailed(self, failure: Failure) -> None:
        if not self._failedOnce:
            self._failedOnce = True
            self.log.failure("internal error in the UDP protocol; the socket stays open",
                             failure)
        else:
            self._guard.warn("protocol-error", "internal error in the UDP protocol: {error}",
                             error=failure.getErrorMessage())

    # What the relay and the reactor ask

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        prefix = getattr(self.protocol, "logPrefix", None)
        return prefix() if prefix is not None else "udptunnel UDP"

    def getHost(self) -> IPv4Address | IPv6Address:
        host, port = self.socket.getsockname()[:2]
        kind = IPv6Address if self.socket.family == socket.AF_INET6 else IPv4Address
        return kind("UDP", host, port)

    def getHandle(self) -> socket.socket:
        return self.socket

    def kernelDrops(self) -> int | None:
        """
        The kernel's count of the datagrams it dropped on this socket, or
        C{None} where the platform does not say (or the socket is closed).
        """
        if self.socket.fileno() == -1:
            return None
        return socketDrops(self.socket)


def _family(interface: str) -> int:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def bindUDP(interface: str, port: int, protocol: DatagramProtocol, reactor: IReactorTime,
            reusePort: bool = False,
            prepare: Prepare | None = None) -> DatagramSocket:
    """
    A L{DatagramSocket} bound to C{interface}:C{port}, not yet listening.

    @param reusePort: join the port's C{SO_REUSEPORT} group
        (L{udptunnel.udp.reuseport}).
    @param prepare: called with the socket before it binds (its mark and
        device: L{udptunnel.sockopts.routeSocket}).
    @raise CannotListenError: the address cannot be bound.
    """
    sock = socket.socket(_family(interface), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reusePort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if prepare is not None:
            prepare(sock)
        sock.bind((interface, port))
    except OSError as e:
        sock.close()
        raise CannotListenError(interface, port, e) from None
    return DatagramSocket(sock, protocol, reactor)


def adoptUDP(fd: int, protocol: DatagramProtocol, reactor: IReactorTime,
             prepare: Prepare | None = None) -> DatagramSocket:
    """
    A L{DatagramSocket} on a duplicate of the bound datagram socket C{fd}
    (systemd passed it), not yet listening: C{fd} stays open, so that a
    stop and a start adopt it again.  systemd passes sockets blocking; the
    reactor must never wait on one.
    """
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setblocking(False)
        if prepare is not None:
            prepare(sock)
    except BaseException:
        sock.close()
        raise
    return DatagramSocket(sock, protocol, reactor)


def connectedUDP(interface: str, peer: tuple[str, int], protocol: DatagramProtocol,
                 reactor: IReactorTime,
                 prepare: Prepare | None = None) -> DatagramSocket:
    """
    A server session's L{DatagramSocket}, listening: an ephemeral port on
    C{interface}, connected to C{peer}.

    @param prepare: called with the socket before it binds and connects.
    @raise OSError: none can be had (out of descriptors or ports).
    """
    sock = socket.socket(_family(interface), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if prepare is not None:
            prepare(sock)
        sock.bind((interface, 0))
        sock.connect(peer)
    except BaseException:
        sock.close()
        raise
    udp = DatagramSocket(sock, protocol, reactor)
    udp.startListening()
    return udp
