"""
What each value a user writes means, or why it is refused: numbers in
their ranges, durations, networks, endpoint descriptions.  One parser per
kind of value, shared by the command line and the config file, each
raising L{ValueError} with a message fit to show (the caller names the
option).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.endpoints import clientFromString, serverFromString

from udptunnel.cli.activation import systemdStreamSocket
from udptunnel.cli.addresses import (
    HostPort,
    checkClientDescription,
    checkServerDescription,
    literalFamily,
    splitDescription,
    splitHostPort,
)
from udptunnel.link.listening import allInterfaces
from udptunnel.link.preamble import PROFILES
from udptunnel.link.viaproxy import SCHEMES, Proxy
from udptunnel.sockopts import MAX_MARK
from udptunnel.tunnel.access import parseNetwork

#: How to get TLS, in the README's words (it installs from a checkout).
TLS_INSTALL = "install udptunnel with its tls extra (pip install '.[tls]' in its source tree)"

#: A value names an endpoint description, not a HOST:PORT, when it starts
#: with one of these (C{tcp:9999} is no host).
ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "ssl", "tls", "unix", "systemd", "tor", "onion"})

#: No duration is longer (a billion seconds is 31 years): what a timer takes.
FOREVER = 1e9


def wholeFrom(low: int, high: int) -> Callable[[str], int]:
    """
    A parser of whole numbers from C{low} to C{high}: what the kernel takes
    for a socket option, so that anything else is refused at parse time.
    """

    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, not {text!r}")
        return int(text)

    return parse


def secondsUpTo(high: float, positive: bool = False) -> Callable[[str], float]:
    """
    A parser of durations from 0 (or, C{positive}, more than 0) to C{high}
    seconds.
    """
    if high < FOREVER:
        expected = f" from {'more than ' if positive else ''}0 to {high}"
    else:
        expected = ", more than 0" if positive else ", 0 or more"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (0 < value if positive else 0 <= value) or not value <= high:
            raise ValueError(f"expected a number of seconds{expected}, not {text!r}")
        return value

    return parse


seconds = secondsUpTo(FOREVER)
positiveSeconds = secondsUpTo(FOREVER, positive=True)


def profile(text: str) -> str:
    """
    A C{--handshake} profile name.
    """
    if text not in PROFILES:
        raise ValueError(f"expected one of {', '.join(PROFILES)}, not {text!r}")
    return text


_MARK = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)\Z")


def fwmark(text: str) -> int:
    """
    A C{--fwmark}: a 32-bit mark, in decimal (C{51820}) or hexadecimal
    (C{0xca6c}), as C{ip rule} and WireGuard's C{FwMark} write it; 0 is no
    mark.
    """
    value = -1
    if _MARK.match(text):
        value = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
    if not 0 <= value <= MAX_MARK:
        raise ValueError(f"expected a mark from 0 to {MAX_MARK} (or 0x0 to 0xffffffff), "
                         f"not {text!r}")
    return value


#: What a network interface's name may be (Linux: at most 15 bytes, no
#: slash, colon or blank).
_INTERFACE = re.compile(r"[A-Za-z0-9_.@-]{1,15}\Z")


def interfaceName(text: str) -> str:
    """
    A C{--bind-device}: a network interface's name.  Whether it exists is
    the kernel's to say (L{udptunnel.sockopts.checkSettings}).
    """
    if not _INTERFACE.match(text):
        raise ValueError(f"expected a network interface's name (up to 15 letters, digits, "
                         f"'-', '_', '.' or '@'), not {text!r}")
    return text


network = parseNetwork
"""
A CIDR block or a single address, host bits refused: the same parser the
address filters are built from.
"""


def haveTLS() -> bool:
    """
    Whether Twisted's TLS (pyOpenSSL) can be imported: C{tls:} and C{ssl:}
    endpoints need it, and without it Twisted fails with a C{NameError}.
    Only asked when such an endpoint is given (it costs megabytes).
    """
    try:
        import twisted.internet.ssl  # noqa: F401
    except ImportError:
        return False
    return True


def _needTLS(kind: str) -> None:
    if kind in ("tls", "ssl") and not haveTLS():
        raise ValueError(f"{kind}: endpoints need pyOpenSSL: {TLS_INSTALL}")


def _validate(check: Any, what: str, value: str) -> None:
    """
    Build an endpoint from C{value} and throw it away, so a bad description
    is refused now and not a traceback when the service starts.
    """
    from twisted.internet import reactor

    try:
        check(reactor, value)
    except Exception as e:  # noqa: BLE001 (parsers raise anything)
        raise ValueError(f"bad {what} {value!r}: {e}") from None


def serverEndpoint(value: str, dualStack: bool = False) -> str:
    """
    A server endpoint description; a bare port means C{tcp:PORT}, or with
    C{dualStack} all interfaces of both families (L{allInterfaces}).  Its
    port and its socket's directory are checked here: Twisted would only
    find them wrong when it binds, after the UDP socket, and without naming
    the option.
    """
    if value.isdigit():
        value = allInterfaces(value) if dualStack else f"tcp:{value}"
    kind = splitDescription(value)[0]
    _needTLS(kind)
    if kind == "systemd":
        systemdStreamSocket(value)
        return value
    checkServerDescription(value)
    _validate(serverFromString, "server endpoint", value)
    return value


def listeningEndpoint(value: str) -> str:
    """
    A server's C{--tcp}: a bare port on all interfaces of both families.
    """
    return serverEndpoint(value, dualStack=True)


def clientEndpoint(value: str) -> HostPort | str:
    """
    A client's C{--tcp}: C{HOST:PORT}, or a client endpoint description.
    """
    kind = value.split(":")[0]
    if kind in ENDPOINT_TYPES:
        _needTLS(kind)
        checkClientDescription(value)
        _validate(clientFromString, "client endpoint", value)
        return value
    try:
        return splitHostPort(value)
    except ValueError as e:
        notHostPort = str(e)
    # Perhaps an endpoint type from a plugin.
    try:
        _validate(clientFromString, "client endpoint", value)
    except ValueError:
        raise ValueError(notHostPort) from None
    return value


def metricsEndpoint(value: str) -> str:
    """
    The server endpoint of C{--metrics}: a bare port on loopback (the status
    lists every peer's address: only what is asked for is served to other
    hosts), C{HOST:PORT} on that address, or an endpoint description.
    """
    kind = splitDescription(value)[0]
    if value.isdigit():
        value = f"tcp:{value}:interface=127.0.0.1"
    elif kind not in ENDPOINT_TYPES:
        try:
            host, port = splitHostPort(value)
        except ValueError as e:
            raise ValueError(f"{value!r} is not a port, HOST:PORT or an endpoint "
                             f"description ({e})") from None
        if host is None or literalFamily(host) is None:
            raise ValueError(f"{value!r}: give an IP address as HOST, or a bare port")
        escaped = host.replace(":", "\\:")
        value = f"{'tcp6' if ':' in host else 'tcp'}:{port}:interface={escaped}"
    return serverEndpoint(value)


def reach(description: str) -> str:
    """
    Who can reach a listener, for its start-up line: the operator should
    see at once whether the metrics (and every peer's address in the
    status) are open to other hosts.
    """
    kind, _, keywords = splitDescription(description)
    if kind not in ("tcp", "tcp6"):
        return ""
    interface = keywords.get("interface", "")
    if interface in ("", "0.0.0.0", "::"):
        return " (every host that can reach this one: mind the firewall)"
    if literalFamily(interface) is not None and ipaddress.ip_address(interface).is_loopback:
        return " (this host only)"
    return ""


def parseProxy(text: str) -> Proxy:
    """
    Parse C{http://[USER:PASSWORD@]HOST:PORT} or C{socks5://...}, raising
    L{ValueError} with a message that does not repeat the password.
    """
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError("expected http://[USER:PASSWORD@]HOST:PORT or socks5://...")
    # The credentials end at the last "@": a password may hold "/", "?" or
    # "#" unencoded, which would end a URL's authority and reach an error
    # message as its path.
    credentials, at, address = rest.rpartition("@")
    parts = urlsplit(f"{scheme}://{address}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a proxy URL has no path: {str(parts.path + parts.query)!r}")
    hostPort = parts.netloc
    try:
        where = splitHostPort(hostPort)
    except ValueError as e:
        raise ValueError(f"{scheme}://{hostPort}: {e}") from None
    assert where.host is not None
    user = password = None
    if at:
        user, colon, password = (unquote(p) for p in credentials.partition(":"))
        if not colon or not user:
            raise ValueError("credentials are USER:PASSWORD")
        if scheme == "socks5" and max(len(user.encode()), len(password.encode())) > 255:
            raise ValueError("SOCKS5 user names and passwords are 255 bytes at most")
    return Proxy(scheme, where.host, where.port, user, password)
