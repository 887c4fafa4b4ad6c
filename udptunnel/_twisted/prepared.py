"""
TCP sockets prepared before they connect or bind: Twisted creates a
connecting or listening socket and uses it at once, and has no public way
to set an option in between (C{tcp.makeBinding} knows only the reuse
options).  C{SO_MARK} and C{SO_BINDTODEVICE} must be set there: the route
of a connection is looked up when it connects.  So this reactor's
C{connectTCP} and C{listenTCP} make Twisted's own connector and port with
C{createInternetSocket} (an undocumented hook) calling C{prepare} on the
new socket; everything else is the reactor's.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IConnector, IListeningPort
from zope.interface import directlyProvides, providedBy

#: What readies a socket before it binds or connects (the same as
#: L{udptunnel.sockopts.Prepare}, spelled again: the fence imports nothing
#: of ours).
Prepare = Callable[[socket.socket], None]


def missingHooks() -> str | None:
    """
    What the installed Twisted lacks of the hooks this module uses, or
    C{None}: checked before a tunnel relies on them (a mark silently not set
    would send the tunnel's traffic where the mark was to keep it from).
    """
    for owner, name in ((tcp.Client, "createInternetSocket"), (tcp.Port, "createInternetSocket"),
                        (tcp.Connector, "_makeTransport")):
        if not callable(getattr(owner, name, None)):
            return f"twisted.internet.tcp.{owner.__name__}.{name}"
    return None


def _prepared(sock: socket.socket, prepare: Prepare) -> socket.socket:
    """
    C{sock}, once C{prepare} took it; closed if it refused.
    """
    try:
        prepare(sock)
    except BaseException:
        sock.close()
        raise
    return sock


class _PreparedClient(tcp.Client):
    def __init__(self, host: str, port: int, bindAddress: Any, connector: Any, reactor: Any,
                 prepare: Prepare) -> None:
        # Client.__init__ creates the socket: the hook must be set first.
        self._prepare = prepare
        super().__init__(host, port, bindAddress, connector, reactor)

    def createInternetSocket(self) -> socket.socket:
        return _prepared(super().createInternetSocket(), self._prepare)


class _PreparedConnector(tcp.Connector):
    _prepare: Prepare

    def _makeTransport(self) -> tcp.Client:
        return _PreparedClient(self.host, self.port, self.bindAddress, self, self.reactor,
                               self._prepare)


class _PreparedPort(tcp.Port):
    _prepare: Prepare

    def createInternetSocket(self) -> socket.socket:
        return _prepared(super().createInternetSocket(), self._prepare)


class PreparedReactor:
    """
    The reactor, as the endpoints of the tunnel's TCP sockets see it: its
    TCP sockets are handed to C{prepare} before they connect or bind.
    Everything else is the reactor's, interfaces included (so that
    C{HostnameEndpoint} finds its name resolver).
    """

    def __init__(self, reactor: Any, prepare: Prepare) -> None:
        self._reactor = reactor
        self._prepare = prepare
        directlyProvides(self, *providedBy(reactor))

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> IConnector:
        connector = _PreparedConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector._prepare = self._prepare
        connector.connect()
        return connector

    def listenTCP(self, port: Any, factory: Any, backlog: int = 50,
                  interface: str = "") -> IListeningPort:
        listening = _PreparedPort(port, factory, backlog, interface, self._reactor)
        listening._prepare = self._prepare
        listening.startListening()
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
