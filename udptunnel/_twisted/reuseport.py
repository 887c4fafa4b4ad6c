"""
A listening TCP port that joins its address's C{SO_REUSEPORT} group: set
before the bind.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort

#: Twisted's public way to bind with options (Twisted 26 and later).
_makeBinding = getattr(tcp, "makeBinding", None)


class _ReusePortTCPPort(tcp.Port):
    """
    Twisted's listening TCP port, with C{SO_REUSEPORT} set in its
    C{createInternetSocket} (an undocumented hook): where Twisted has no
    public way to ask for it (before C{tcp.makeBinding}).
    """

    def createInternetSocket(self) -> socket.socket:
        sock = super().createInternetSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


def listenTCPSharingPort(reactor: Any, port: int, factory: Any, backlog: int = 50,
                         interface: str = "") -> IListeningPort:
    """
    C{reactor.listenTCP}, as a member of the port's C{SO_REUSEPORT} group:
    through Twisted's public C{tcp.makeBinding} where the installed Twisted
    has it, else through L{_ReusePortTCPPort}.
    """
    if _makeBinding is not None:
        binding = _makeBinding(interface, port, reuseAddress=True, reusePort=True)
        return reactor.listenTCP(binding, factory, backlog, interface)
    listening = _ReusePortTCPPort(port, factory, backlog, interface, reactor)
    listening.startListening()
    return listening
