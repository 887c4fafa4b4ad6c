"""
The TCP listener a C{systemd:} endpoint names (socket activation), adopted
so that it can be adopted again.

Twisted's own C{systemd:} endpoint closes the descriptor systemd passed once
it has adopted it: a tunnel of a config file that a reload restarts would
then adopt whatever socket got that number since.  This endpoint adopts a
duplicate at each listen, and the descriptor systemd passed stays open for
the next start; the choice of socket (C{domain}, C{index} or C{name}) reads
as Twisted's, from the same list (L{udptunnel._twisted.inheritedSockets}).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from udptunnel._twisted.systemd import inheritedSockets
from udptunnel.cli.addresses import splitDescription

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def systemdStreamSocket(description: str,
                        inherited: list[tuple[int, str | None]] | None = None) -> tuple[int, int]:
    """
    The descriptor and address family of the listening socket that the
    endpoint description C{systemd:domain=D:index=N} (or C{name=NAME})
    names, among those systemd passed (L{inheritedSockets} unless
    C{inherited} is given).

    @raise ValueError: why it cannot be used, in the user's terms.
    """
    _, positional, keywords = splitDescription(description)
    domain = keywords.get("domain", positional[0] if positional else None)
    if domain not in _FAMILIES:
        raise ValueError(f"{description}: give domain=INET, INET6 or UNIX")
    if ("index" in keywords) == ("name" in keywords):
        raise ValueError(f"{description}: give one of index=N or name=NAME")
    index = keywords.get("index")
    if index is not None and not index.isdigit():
        raise ValueError(f"{description}: index=N, a number from 0")
    # Twisted's choice among the sockets of one name: the first.
    fd = passedSockets(description, inherited,
                       index=int(index) if index is not None else None,
                       name=keywords.get("name"))[0]
    return fd, _FAMILIES[domain]


def passedSockets(label: str, inherited: list[tuple[int, str | None]] | None = None,
                  index: int | None = None, name: str | None = None) -> list[int]:
    """
    The descriptors among those systemd passed (L{inheritedSockets} unless
    C{inherited} is given) that C{index} (the Nth, from 0) or C{name} (all
    of that C{LISTEN_FDNAMES} name) picks: for C{--tcp systemd:...} and
    C{--udp systemd:...} alike.

    @raise ValueError: why none can be, after C{label} (what the user gave).
    """
    if inherited is None:
        inherited = inheritedSockets()
    if not inherited:
        raise ValueError(f"{label}: systemd passed no sockets (no LISTEN_FDS and "
                         "LISTEN_FDNAMES for this process): start it from a .socket unit, "
                         "or under systemd-socket-activate")
    if index is not None:
        if index >= len(inherited):
            raise ValueError(f"{label}: systemd passed {len(inherited)} socket(s), "
                             "numbered from 0")
        return [inherited[index][0]]
    named = [fd for fd, passed in inherited if passed == name]
    if not named:
        names = sorted({passed for _, passed in inherited if passed is not None})
        raise ValueError(f"{label}: no socket of that name; systemd passed "
                         f"{', '.join(names) or 'unnamed sockets'}")
    return named


@implementer(IStreamServerEndpoint)
class SystemdStreamEndpoint:
    """
    Listens on a duplicate of descriptor C{fd}, which stays open.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        # Twisted closes the descriptor it adopts: give it a copy.
        endpoint = AdoptedStreamServerEndpoint(self._reactor, os.dup(self._fd), self._family)
        return endpoint.listen(protocolFactory)


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
