"""
What a config file's tunnels bind, and which two would bind the same
socket: caught when the file is checked (C{--check}, start, reload), rather
than as "address already in use" from the second tunnel at run time.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from udptunnel.cli.activation import systemdStreamSocket
from udptunnel.cli.addresses import UDPPlan, splitDescription
from udptunnel.show import showAddress

_WILDCARDS = ("", "0.0.0.0", "::")


class Bind(NamedTuple):
    """
    One socket a tunnel (or the process) binds: C{kind} is C{UDP}, C{TCP},
    C{unix} or C{systemd} (a passed descriptor), C{where} its address (an
    IP literal or a path), C{port} its port (or descriptor).
    """

    kind: str
    where: str
    port: int

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"the Unix socket {self.where}"
        if self.kind == "systemd":
            return f"the socket systemd passed as descriptor {self.port}"
        return f"{self.kind} {showAddress((self.where or '0.0.0.0', self.port))}"


def udpBind(plan: UDPPlan) -> Bind | None:
    """
    The UDP socket of C{plan}, or C{None} for an ephemeral port.
    """
    if plan.fd is not None:
        return Bind("systemd", "", plan.fd)
    if plan.port == 0:
        return None
    return Bind("UDP", plan.interface, plan.port)


def serverBind(description: str) -> Bind | None:
    """
    The listening socket of a server endpoint description, or C{None} for
    an ephemeral port or an endpoint of a kind we do not know.
    """
    kind, positional, keywords = splitDescription(description)
    if kind in ("tcp", "tcp6", "ssl"):
        port = int(keywords.get("port") or (positional or ["0"])[0])
        default = "::" if kind == "tcp6" else "0.0.0.0"
        return Bind("TCP", keywords.get("interface", default), port) if port else None
    if kind == "unix":
        return Bind("unix", keywords.get("address") or (positional or [""])[0], 0)
    if kind == "systemd":
        return Bind("systemd", "", systemdStreamSocket(description)[0])
    return None


def overlap(one: Bind, other: Bind) -> bool:
    """
    Whether binding both would fail (or share a socket): the same kind and
    port, on the same address or on a wildcard that takes the other's (on
    Linux C{::} takes IPv4 addresses too).
    """
    if (one.kind, one.port) != (other.kind, other.port):
        return False
    if one.kind not in ("UDP", "TCP"):
        return one.where == other.where
    if one.where == other.where or "::" in (one.where, other.where):
        return True
    for wildcard, address in ((one.where, other.where), (other.where, one.where)):
        if wildcard in _WILDCARDS and _version(address) == 4:
            return True
    return False


def firstClash(binds: list[tuple[str, Bind]]) -> tuple[str, str, Bind] | None:
    """
    The first two owners (tunnel names) in C{binds} whose sockets overlap,
    with the first one's socket; C{None} when there are none.
    """
    for index, (owner, bind) in enumerate(binds):
        for other, otherBind in binds[:index]:
            if overlap(bind, otherBind):
                return other, owner, otherBind
    return None


def _version(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None
