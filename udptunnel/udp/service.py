"""
The service that binds the tunnel's UDP socket: a L{TunnelUDPPort}, whose
read loop is bounded by datagrams rather than bytes.  The port subclasses
Twisted's own, so it lives in L{udptunnel._twisted} with the other uses of
Twisted's private API.
"""

from __future__ import annotations

import socket
from errno import ECONNREFUSED
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel._twisted import TunnelUDPPort, adoptedUDPPort, waiting
from udptunnel.cli.activation import passedSockets
from udptunnel.interfaces import IDatagramSocket
from udptunnel.link.protocol import MAX_DATAGRAM
from udptunnel.sockopts import SocketSettings, tuneUDP
from udptunnel.udp.gso import SegmentSender, kernelSegments, socketSegments
from udptunnel.udp.kerneldrops import socketDrops

__all__ = [
    "SessionSocket",
    "TunnelUDPPort",
    "UDPService",
    "connectedPort",
    "systemdDatagramSocket",
]



class UDPService(Service):
    """
    Binds a L{TunnelUDPPort} at start (in C{privilegedStartService} when the
    runner calls it, so low ports work with C{--uid}) and closes it at stop;
    or, given C{fd} (a socket systemd passed), adopts that socket as one.
    """

    def __init__(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str,
        maxPacketSize: int,
        reactor: Any,
        fd: int | None = None,
    ) -> None:
        self._args = (port, protocol, interface, maxPacketSize, reactor)
        self._fd = fd
        self.port: TunnelUDPPort | None = None

    #: The port it binds (a subclass of L{TunnelUDPPort} for C{--reuse-port}).
    portType: type[TunnelUDPPort] = TunnelUDPPort

    def _listen(self) -> None:
        if self.port is None:
            _, protocol, _, maxPacketSize, reactor = self._args
            if self._fd is not None:
                port = adoptedUDPPort(self._fd, protocol, maxPacketSize, reactor)
            else:
                port = self.portType(*self._args)
            port.startListening()
            self.port = port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening()


@implementer(IReadDescriptor, IDatagramSocket)
class SessionSocket:
    """
    The UDP socket of one server session (C{--sessions}): an ephemeral port,
    connected to the peer, so the kernel delivers only what the peer sends
    it.

    Not a Twisted C{udp.Port}: a port logs "starting on" and "Closed" lines
    of its own for every socket, two lines a session that no rate limit
    reaches, and a server opens one per connection.  This reads through the
    reactor's public C{addReader}, with the same bounded, batched read as
    L{TunnelUDPPort}, and the same segmented sends (L{sendMany}).
    """

    maxDatagramsPerRead = 256

    def __init__(self, sock: socket.socket, protocol: DatagramProtocol, reactor: Any) -> None:
        self.socket = sock
        self.protocol = protocol
        self._reactor = reactor
        self._peer = sock.getpeername()[:2]
        self._reading = False
        self.sendTo = self._sendTo
        self.segments = SegmentSender(self._sendTo, socketSegments(sock, connected=True),
                                      enabled=kernelSegments(sock))
        self.sendMany = self.segments.sendMany
        self._waiting = waiting(sock)
        protocol.makeConnection(self)  # type: ignore[arg-type]
        self.startReading()

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "udptunnel session UDP"

    def doRead(self) -> None:
        recv = self.socket.recv
        peer = self._peer
        waiting = self._waiting
        datagrams = []
        for _ in range(self.maxDatagramsPerRead):
            try:
                datagrams.append((recv(MAX_DATAGRAM), peer))
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == ECONNREFUSED:
                    continue  # the ICMP error of an earlier send
                break  # nothing else is expected; the next turn tries again
            if len(datagrams) == 1 and not waiting():
                break  # as TunnelUDPPort.doRead: no read that would fail
        if datagrams:
            self.protocol.datagramsReceived(datagrams)  # type: ignore[attr-defined]

    def _sendTo(self, data: bytes, addr: tuple[str, int]) -> None:
        # Connected: the kernel sends to the peer (addr is always it).
        self.socket.send(data)

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()

    def stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def startReading(self) -> None:
        if not self._reading and self.socket.fileno() != -1:
            self._reading = True
            self._reactor.addReader(self)

    def getHost(self) -> IPv4Address | IPv6Address:
        host, port = self.socket.getsockname()[:2]
        kind = IPv6Address if self.socket.family == socket.AF_INET6 else IPv4Address
        return kind("UDP", host, port)

    def getHandle(self) -> socket.socket:
        return self.socket

    def kernelDrops(self) -> int | None:
        """
        The kernel's count of the datagrams it dropped on this socket, or
        C{None} where the platform does not say: one C{getsockopt}
        (L{socketDrops}), never the host's whole C{/proc/net/udp} table, which
        read for each of a server's thousands of sessions took seconds of
        the event loop.
        """
        if self.socket.fileno() == -1:
            return None
        return socketDrops(self.socket)

    def stopListening(self) -> None:
        self.stopReading()
        if self.socket.fileno() != -1:
            self.socket.close()
            self.protocol.doStop()


def connectedPort(
    protocol: DatagramProtocol,
    interface: str,
    peer: tuple[str, int],
    settings: SocketSettings,
    reactor: Any,
) -> SessionSocket:
    """
    A UDP socket of a server session: an ephemeral port on C{interface},
    connected to C{peer}; raises L{OSError} when none can be had (out of
    descriptors or ports).
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((interface, 0))
        sock.connect(peer)
        tuneUDP(sock, settings)
    except BaseException:
        sock.close()
        raise
    return SessionSocket(sock, protocol, reactor)


def systemdDatagramSocket(
    which: int | str, inherited: list[tuple[int, str | None]] | None = None
) -> tuple[int, str, int]:
    """
    The bound datagram socket C{--udp systemd:N} (the C{N}th socket passed,
    from 0) or C{systemd:NAME} names, among the sockets systemd passed
    (L{inheritedSockets} unless C{inherited} is given): its descriptor, and
    the address it is bound to.

    A name picks the one datagram socket of that name: the sockets of one
    C{.socket} unit share its name, so C{systemd:udptunnel.socket} finds the
    UDP one among a TCP and a UDP listener.  Checked at parse time, so that
    a missing C{LISTEN_FDS}, an index out of range or a stream socket is a
    usage error, not a traceback at start.

    @raise ValueError: why it cannot be used, in the user's terms.
    """
    if isinstance(which, int):
        candidates = passedSockets(f"systemd:{which}", inherited, index=which)
    else:
        candidates = passedSockets(f"systemd:{which}", inherited, name=which)
    found = []
    for fd in candidates:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ValueError(f"systemd:{which}: descriptor {fd} is no socket ({e})") from None
        try:  # a look only: the descriptor stays open, for the UDP service
            if sock.type == socket.SOCK_DGRAM and sock.family in (socket.AF_INET,
                                                                  socket.AF_INET6):
                host, port = sock.getsockname()[:2]
                found.append((fd, host, port))
        finally:
            sock.detach()
    if not found:
        raise ValueError(f"systemd:{which}: not a UDP socket (ListenDatagram= in "
                         "the .socket unit)")
    if len(found) > 1:
        raise ValueError(f"systemd:{which}: {len(found)} UDP sockets of that name: "
                         "give its index, systemd:N")
    return found[0]
