"""
A server endpoint that says where it listens, in our words.

Twisted's ports log "<factory class> starting on <port number>", which
names a class of ours and leaves out the address; the line an operator
looks for is "listening on 127.0.0.1:9999".
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from udptunnel._twisted.reuseport import listenTCPSharingPort
from udptunnel.show import showAddress


@implementer(IStreamServerEndpoint)
class AnnouncingEndpoint:
    """
    Wraps a server endpoint to log C{format} (a log format with an
    C{{address}} field) once it listens.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, format: str,
                 log: Logger | None = None) -> None:
        """
        @param log: where to log (a named tunnel's logger), if not our own.
        """
        self._endpoint = endpoint
        self._format = format
        if log is not None:
            self.log = log

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._endpoint.listen(protocolFactory).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        address = describeAddress(port.getHost())
        if _acceptsIPv4(port):
            address += " (IPv6 and IPv4)"
        self.log.info(self._format, address=address)
        return port


def hasIPv6() -> bool:
    """
    Whether this host can listen on IPv6: a kernel without it (or booted
    with ipv6.disable=1) refuses the socket or the bind.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
    except OSError:
        return False
    return True


def allInterfaces(port: str) -> str:
    """
    The server endpoint of a bare port: all interfaces, IPv6 and IPv4 (one
    socket on C{::}, which Linux also gives IPv4 connections, as
    C{::ffff:a.b.c.d}, unless net.ipv6.bindv6only is set) where the host
    has IPv6, and IPv4 alone where it has not.
    """
    if hasIPv6():
        return f"tcp6:{port}:interface=\\:\\:"
    return f"tcp:{port}"


def _acceptsIPv4(port: Any) -> bool:
    """
    Whether a listening port on C{::} takes IPv4 connections too (its
    socket's IPV6_V6ONLY is off), so the log line can say so.
    """
    host = port.getHost()
    sock = getattr(port, "socket", None)
    if not isinstance(host, IPv6Address) or host.host != "::" or sock is None:
        return False
    try:
        return not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    except OSError:
        return False


def describeAddress(address: Any) -> str:
    """
    A listening address as people write it: C{127.0.0.1:9999},
    C{[::]:9999}, or a Unix socket's path.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        return showAddress((address.host, address.port))
    if isinstance(address, UNIXAddress):
        name = address.name
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return str(address)


class ReusePortReactor:
    """
    The reactor, seen by a server endpoint (C{tcp:}, C{tcp6:}) that should
    listen with C{SO_REUSEPORT} (C{--reuse-port}: several worker processes
    share the port, the kernel hands each new connection to one of them):
    its C{listenTCP} joins the port's group, and everything else is the
    reactor's.  So the endpoint description, its
    parser and C{strports.service} (with its clean start-up errors) stay
    Twisted's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> IListeningPort:
        return listenTCPSharingPort(self._reactor, port, factory, backlog, interface)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
