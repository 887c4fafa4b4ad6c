"""
C{--reuse-port}: several worker processes share one port, one tunnel each.

Sessions are independent of one another, so the way to use more than one
core is more than one process, each a whole tunnel end with sessions of its
own, sharing the port the outside world knows (C{SO_REUSEPORT}):

  - servers share the TCP port: the kernel hands each new connection to one
    of the listening workers, and that worker owns the session (its UDP
    socket, connected to C{--peer}) until it ends;
  - clients share the UDP port: for sockets of a C{SO_REUSEPORT} group the
    kernel picks the socket of each datagram by a hash of its source and
    destination (address and port), so every datagram of one application
    reaches the same worker, which holds its session and sends its replies
    from its own socket, bound to the same address and port.

Nothing is shared between the workers but the kernel's group: a worker
that stops or starts changes the group, which moves some applications to
another worker, where they get a new session, as after C{--session-idle}.
The kernel admits into a group only sockets that all set the option, of
the same user: a second end started without C{--reuse-port} cannot bind,
and says so.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

__all__ = ["ReusePortReactor", "ReusePortTCPPort"]


def reusePort(sock: socket.socket) -> socket.socket:
    """
    Make C{sock} (not yet bound) a member of the C{SO_REUSEPORT} group of
    the address it will bind.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


class ReusePortTCPPort(tcp.Port):
    """
    Twisted's listening TCP port, with C{SO_REUSEPORT} set before the bind
    (Twisted older than 26 has no public way to ask for it).
    """

    def createInternetSocket(self) -> socket.socket:
        return reusePort(super().createInternetSocket())


class ReusePortReactor:
    """
    The reactor, seen by a server endpoint (C{tcp:}, C{tcp6:}) that should
    listen with C{SO_REUSEPORT}: its C{listenTCP} makes a
    L{ReusePortTCPPort}, as the reactor's own makes a C{tcp.Port}, and
    everything else is the reactor's.  So the endpoint description, its
    parser and C{strports.service} (with its clean start-up errors) stay
    Twisted's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> ReusePortTCPPort:
        listening = ReusePortTCPPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
