"""
The PROXY protocol (HAProxy's, versions 1 and 2): the header a TCP load
balancer sends first, naming the client it accepted the connection from.

Behind a balancer every connection comes from the balancer's address, so
C{--allow}, the logs and the metrics would all see the balancer; with
C{--proxy-protocol} the server reads this header before anything else and
takes the client's address from it.  This module is the parser only: pure,
fed the bytes received so far, so it can be tested byte by byte.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: A version 2 header's first 12 bytes.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A version 1 header's first bytes.
V1_PREFIX = b"PROXY "
#: The longest version 1 line, CRLF included (the specification's bound).
V1_MAX = 107
_V2_FIXED = 16


class ProxyHeaderError(Exception):
    """
    The connection did not begin with a valid PROXY protocol header (or
    sent none in time): it is closed, and the relay counts it (pending
    closed, C{proxy-header}).
    """


@dataclass(frozen=True)
class ProxyHeader:
    """
    A parsed header.

    @ivar source: the client's (host, port), or C{None} when the header
        names no client (v1 C{UNKNOWN}, v2 C{LOCAL}: the balancer's own
        health check, or an address family other than IPv4 and IPv6): the
        connection's own address is kept then.
    @ivar length: how many bytes the header took; the stream follows.
    """

    source: tuple[str, int] | None
    length: int


def parseProxyHeader(data: bytes) -> ProxyHeader | None:
    """
    The header at the start of C{data} (all the bytes received so far), or
    C{None} while they are a valid beginning but too few.

    @raise ProxyHeaderError: they cannot begin a header (checked as early as
        possible, so that garbage is refused at its first wrong byte).
    """
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        return _parseV2(data)
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parseV1(data)
    raise ProxyHeaderError(f"no PROXY protocol header (the connection began {data[:8].hex(' ')})")


def _parseV1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 header with a stray CR or LF")
        return None
    line = data[:end]
    if b"\n" in line or b"\r" in line:
        # As refused while the line is incomplete, whatever the reads.
        raise ProxyHeaderError("PROXY v1 header with a stray CR or LF")
    parts = line.split(b" ")
    length = end + 2
    if parts[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(None, length)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 header {line[:V1_MAX]!r}")
    version = 4 if parts[1] == b"TCP4" else 6
    source = _address(parts[2], version)
    _address(parts[3], version)
    sourcePort = _port(parts[4])
    _port(parts[5])
    return ProxyHeader((source, sourcePort), length)


def _address(text: bytes, version: int) -> str:
    if b"%" in text:
        # Python's ipaddress takes any scope id ("::1%<anything>"), which
        # --allow would ignore and the logs would print: a balancer names
        # the client's address, and that has no scope.
        raise ProxyHeaderError(f"PROXY v1 header with a scoped address {text[:45]!r}")
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"PROXY v1 header with a bad address {text[:45]!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 header: {text[:45]!r} is not an IPv{version} address")
    return str(address)


def _port(text: bytes) -> int:
    if not (text.isdigit() and len(text) <= 5 and int(text) <= 0xFFFF):
        raise ProxyHeaderError(f"PROXY v1 header with a bad port {text[:8]!r}")
    return int(text)


def _parseV2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 header of version {data[12] >> 4}")
        return None
    versionCommand, familyTransport = data[12], data[13]
    if versionCommand >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {versionCommand >> 4}")
    command = versionCommand & 0x0F
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 header with an unknown command {command}")
    size = data[14] << 8 | data[15]
    length = _V2_FIXED + size
    if len(data) < length:
        return None
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(None, length)
    family = familyTransport >> 4
    body = data[_V2_FIXED:length]
    if family == 1:
        if size < 12:
            raise ProxyHeaderError(f"PROXY v2 IPv4 header of {size} bytes of addresses")
        host = str(ipaddress.IPv4Address(body[0:4]))
        return ProxyHeader((host, body[8] << 8 | body[9]), length)
    if family == 2:
        if size < 36:
            raise ProxyHeaderError(f"PROXY v2 IPv6 header of {size} bytes of addresses")
        host = str(ipaddress.IPv6Address(body[0:16]))
        return ProxyHeader((host, body[32] << 8 | body[33]), length)
    # UNSPEC, UNIX or unknown: the specification says use the real address.
    return ProxyHeader(None, length)
