"""
Parsing and resolving the addresses given on the command line.

Everything here is pure (no reactor) so option parsing can validate eagerly
and report a bad address as a usage error before anything is bound.  Errors
are L{ValueError}s with a message fit to show a user.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import NamedTuple

_BRACKETED = re.compile(r"^\[(?P<host>[^\]]+)\]:(?P<port>[^:]*)$")
_PLAIN = re.compile(r"^(?P<host>[^:\[\]]+):(?P<port>[^:]*)$")


class HostPort(NamedTuple):
    """
    A host (name or IP literal, without brackets; C{None} when absent) and a
    port number.
    """

    host: str | None
    port: int


def parsePort(text: str, allowZero: bool = False) -> int:
    """
    Parse a port number, refusing anything outside 1..65535 (0 too, when
    C{allowZero}: it asks the kernel for an ephemeral port).
    """
    low = 0 if allowZero else 1
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise ValueError(f"port must be a number from {low} to 65535, not {text!r}")
    return int(text)


def splitHostPort(
    text: str, requireHost: bool = True, allowZero: bool = False
) -> HostPort:
    """
    Split C{HOST:PORT}, C{[IPv6]:PORT} or (unless C{requireHost}) a bare
    C{PORT}.

    An unbracketed IPv6 literal is refused rather than guessed at: in
    C{::1:53} nobody can tell where the address ends.
    """
    match = _BRACKETED.match(text) or _PLAIN.match(text)
    if match is None:
        if not requireHost and text.isdigit():
            return HostPort(None, parsePort(text, allowZero))
        if _isIPv6(text.rsplit(":", 1)[0]):
            raise ValueError(
                f"{text!r}: write an IPv6 address in brackets, as [ADDRESS]:PORT"
            )
        expected = "HOST:PORT" if requireHost else "[HOST:]PORT"
        raise ValueError(f"{text!r} is not {expected}")
    host = match.group("host")
    if text.startswith("["):
        _checkIPv6(host)
    return HostPort(host, parsePort(match.group("port"), allowZero))


def splitDescription(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    An endpoint description's type, positional and keyword arguments, split
    at the colons that no backslash escapes (as Twisted splits them), so
    that its port or path can be checked in the user's terms.
    """
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    positional = [part for part in parts[1:] if "=" not in part]
    keywords = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    return parts[0], positional, keywords


def checkServerDescription(description: str) -> None:
    """
    Check what Twisted would find wrong in a server endpoint description
    only when it binds it (after the UDP socket, naming no option): a port
    out of range, a Unix socket in a directory that does not exist.
    """
    kind, positional, keywords = splitDescription(description)
    where = keywords.get("port") or keywords.get("address") or (positional or [""])[0]
    if kind in ("tcp", "tcp6", "ssl"):
        parsePort(where, allowZero=True)
    elif kind == "unix":
        directory = os.path.dirname(where) or "."
        if not os.path.isdir(directory):
            raise ValueError(f"cannot make the socket {where}: no directory {directory}")


def checkClientDescription(description: str) -> None:
    """
    Check a TCP or TLS client endpoint description's host and port in the
    user's terms: Twisted's own errors name a missing argument of a class
    of its, or an C{int()} that failed.
    """
    kind, positional, keywords = splitDescription(description)
    if kind not in ("tcp", "tcp6", "ssl", "tls"):
        return
    host = keywords.get("host") or (positional[0] if positional else "")
    port = keywords.get("port") or (positional[1] if len(positional) > 1 else "")
    if not host or not port:
        raise ValueError(f"{description!r}: give the host and the port, as {kind}:HOST:PORT")
    parsePort(port)


def _isIPv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _checkIPv6(host: str) -> None:
    if not _isIPv6(host):
        raise ValueError(f"[{host}] is not an IPv6 address")


def resolve(
    host: str, port: int, family: int = socket.AF_UNSPEC, passive: bool = False
) -> tuple[int, str]:
    """
    Resolve C{host} to one IP literal of C{family} (the first that
    C{getaddrinfo} prefers), as UDP sockets in Twisted accept literals only.

    @return: C{(family, literal)}
    """
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, 0, flags)
    except (OSError, UnicodeError) as e:
        wanted = {int(socket.AF_INET): " IPv4", int(socket.AF_INET6): " IPv6"}.get(family, "")
        raise ValueError(f"cannot resolve{wanted} address of {host!r}: {e}") from None
    infoFamily, _, _, _, sockaddr = infos[0]
    return infoFamily, str(sockaddr[0])


class UDPPlan(NamedTuple):
    """
    Where to bind the UDP socket and where datagrams coming out of the tunnel
    go: C{peer} is an C{(IP literal, port)} pair, or C{None} for phantom mode.
    C{fd}, when not C{None}, is a socket systemd passed (C{--udp systemd:}),
    adopted instead of binding one; C{interface} and C{port} are its own.
    """

    interface: str
    port: int
    peer: tuple[str, int] | None
    fd: int | None = None


SYSTEMD_PREFIX = "systemd:"


def parseSystemdUDP(text: str) -> int | str | None:
    """
    The socket C{--udp systemd:N} or C{--udp systemd:NAME} names: the index
    C{N} among the sockets systemd passed (0 is descriptor 3), or the
    C{NAME} its C{LISTEN_FDNAMES} gives it (C{FileDescriptorName=}, by
    default the C{.socket} unit's name); C{None} when C{text} is an
    address, not C{systemd:...}.
    """
    if not text.startswith(SYSTEMD_PREFIX):
        return None
    which = text[len(SYSTEMD_PREFIX):]
    if which.isdigit():
        return int(which)
    if not which or ":" in which:
        raise ValueError(
            f"{text!r}: give the socket systemd passed as systemd:N (its index, "
            "from 0) or systemd:NAME (its FileDescriptorName=)"
        )
    return which


_FAMILY_NAMES = {int(socket.AF_INET): "IPv4", int(socket.AF_INET6): "IPv6"}


def literalFamily(host: str) -> int | None:
    """
    The address family of an IP literal, C{None} for a name.
    """
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return int(socket.AF_INET6 if version == 6 else socket.AF_INET)


def _resolvePeer(peer: HostPort, family: int) -> tuple[int, str]:
    """
    Resolve C{--peer} in the family of C{--udp}; when it has no address
    there, say that the two options disagree, rather than that a literal
    such as C{127.0.0.1} "cannot be resolved".
    """
    assert peer.host is not None
    wanted = _FAMILY_NAMES.get(family)
    if wanted is not None:
        other = literalFamily(peer.host)
        if other is not None and other != family:
            raise ValueError(
                f"--udp is {wanted} and --peer {_FAMILY_NAMES[other]}: "
                "give both in the same address family"
            )
    try:
        return resolve(peer.host, peer.port, family)
    except ValueError as e:
        if wanted is not None:
            try:
                resolve(peer.host, peer.port)
            except ValueError:
                pass
            else:
                raise ValueError(
                    f"--peer: {peer.host!r} has no {wanted} address, and --udp is {wanted}"
                ) from None
        raise ValueError(f"--peer: {e}") from None


def planUDP(udp: HostPort | None, peer: HostPort | None) -> UDPPlan:
    """
    Resolve C{--udp} and C{--peer} together: the socket's address family
    decides which address of the peer to use, and without a local host the
    peer's family decides which wildcard to bind.  Resolving here, once, at
    start-up is what lets an unresolvable peer be a usage error.

    @raise ValueError: a message that starts with the option to blame.
    """
    if udp is None and peer is None:
        raise ValueError("--udp is required unless --peer is given")
    family: int = socket.AF_UNSPEC
    interface = None
    if udp is not None and udp.host is not None:
        try:
            family, interface = resolve(udp.host, udp.port, passive=True)
        except ValueError as e:
            raise ValueError(f"--udp: {e}") from None
    peerAddress = None
    if peer is not None:
        family, literal = _resolvePeer(peer, family)
        peerAddress = (literal, peer.port)
    if interface is None:
        interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
    return UDPPlan(interface, udp.port if udp is not None else 0, peerAddress)
