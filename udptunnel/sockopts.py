"""
Socket tuning: buffer sizes, and the TCP keepalive and user timeout that let
a link whose peer vanished without a FIN or RST (cable pulled, NAT state
lost) be noticed without any keepalive frames in the stream; and the
routing of the sockets that face the network (C{--fwmark},
C{--bind-device}), set before they connect.

Every option is named here by the command-line option that sets it, so that
a value the kernel refuses is reported in the user's words: at parse time
by L{checkSettings}, on a scratch socket, and (should a socket still refuse
it) once per option by L{tuneUDP} and L{tuneTCP}.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

#: What readies a socket before it binds or connects (its mark and device:
#: L{routeSocket}); the fence spells it again, as it imports nothing of ours
#: (L{udptunnel._twisted.prepared.Prepare}).
Prepare = Callable[[socket.socket], None]

log = Logger()

#: The largest value setsockopt takes: a C int.  It bounds the buffer sizes,
#: and TCP_USER_TIMEOUT, which is in milliseconds.
MAX_INT = 2**31 - 1
#: What Linux accepts for TCP_KEEPIDLE and TCP_KEEPINTVL, in seconds
#: (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL in include/net/tcp.h).
MAX_KEEPALIVE_SECONDS = 32767
#: ...and for TCP_KEEPCNT (MAX_TCP_KEEPCNT).
MAX_KEEPALIVE_COUNT = 127
#: The largest --user-timeout, in seconds: its milliseconds fit a C int.
MAX_USER_TIMEOUT = MAX_INT / 1000
#: The user timeout when none is given and keepalive is off.
FALLBACK_USER_TIMEOUT = 60.0
#: The largest --fwmark: the kernel's marks are 32 bits.
MAX_MARK = 2**32 - 1
#: SO_MARK and SO_BINDTODEVICE, which Python names on Linux only.
SO_MARK = getattr(socket, "SO_MARK", None)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", None)
#: What a process needs to mark its sockets, as the error says it.
MARK_CAPABILITY = ("it needs CAP_NET_ADMIN (or CAP_NET_RAW, on Linux 5.17 and later): run "
                   "as root, or give the unit AmbientCapabilities=CAP_NET_ADMIN under "
                   "systemd")


@dataclass(frozen=True)
class SocketSettings:
    """
    What to set on the tunnel's sockets; 0 leaves the kernel's default.

    @ivar userTimeout: C{TCP_USER_TIMEOUT} in seconds, or C{None} to derive
        it from the keepalive figures (see L{effectiveUserTimeout}).
    @ivar fwmark: C{SO_MARK} of the sockets that face the network (0:
        none), so that policy routing (a WireGuard full tunnel's) can tell
        the tunnel's own traffic from what it should route into the VPN.
    @ivar bindDevice: C{SO_BINDTODEVICE} of the same sockets (empty: none).
    """

    udpReceiveBuffer: int = 1 << 20
    udpSendBuffer: int = 1 << 20
    tcpReceiveBuffer: int = 0
    tcpSendBuffer: int = 0
    keepaliveIdle: int = 15
    keepaliveInterval: int = 10
    keepaliveCount: int = 4
    userTimeout: float | None = None
    fwmark: int = 0
    bindDevice: str = ""

    @property
    def routed(self) -> bool:
        """
        Whether the sockets that face the network are marked or bound to a
        device.
        """
        return bool(self.fwmark or self.bindDevice)

    def keepaliveDetection(self) -> float:
        """
        Seconds of silence after which keepalive gives up on an idle link:
        C{idle + interval x count} (0 with keepalive off).
        """
        if self.keepaliveIdle <= 0:
            return 0.0
        return float(self.keepaliveIdle + self.keepaliveInterval * self.keepaliveCount)

    def effectiveUserTimeout(self) -> float:
        """
        The C{TCP_USER_TIMEOUT} to set, in seconds (0: none).

        On Linux a user timeout also decides when keepalive gives up
        (tcp(7)): an idle link is dropped at the first probe due after that
        many seconds, whatever C{TCP_KEEPCNT} says.  So unless one is given,
        it is the keepalive's own figure: the count then does what it says,
        and a dead link is noticed as fast busy as idle (15 + 4 x 10 = 55 s
        with the defaults).
        """
        if self.userTimeout is not None:
            return self.userTimeout
        return self.keepaliveDetection() or FALLBACK_USER_TIMEOUT


#: One socket option: the command-line option that sets it, the kernel's
#: name for it, level, option (C{None} where the platform lacks it), value
#: (an int, or the bytes the kernel takes).
_Option = tuple[str, str, int, int | None, int | bytes]


def _udpOptions(settings: SocketSettings) -> Iterator[_Option]:
    yield ("--udp-rcvbuf", "SO_RCVBUF", socket.SOL_SOCKET, socket.SO_RCVBUF,
           settings.udpReceiveBuffer)
    yield ("--udp-sndbuf", "SO_SNDBUF", socket.SOL_SOCKET, socket.SO_SNDBUF,
           settings.udpSendBuffer)


def _tcpOptions(settings: SocketSettings) -> Iterator[_Option]:
    tcp = socket.IPPROTO_TCP
    yield "TCP_NODELAY", "TCP_NODELAY", tcp, socket.TCP_NODELAY, 1
    yield ("--tcp-rcvbuf", "SO_RCVBUF", socket.SOL_SOCKET, socket.SO_RCVBUF,
           settings.tcpReceiveBuffer)
    yield ("--tcp-sndbuf", "SO_SNDBUF", socket.SOL_SOCKET, socket.SO_SNDBUF,
           settings.tcpSendBuffer)
    if settings.keepaliveIdle > 0:
        yield "--keepalive-idle", "SO_KEEPALIVE", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1
        yield ("--keepalive-idle", "TCP_KEEPIDLE", tcp, getattr(socket, "TCP_KEEPIDLE", None),
               settings.keepaliveIdle)
        yield ("--keepalive-interval", "TCP_KEEPINTVL", tcp,
               getattr(socket, "TCP_KEEPINTVL", None), settings.keepaliveInterval)
        yield ("--keepalive-count", "TCP_KEEPCNT", tcp, getattr(socket, "TCP_KEEPCNT", None),
               settings.keepaliveCount)
    yield ("--user-timeout", "TCP_USER_TIMEOUT", tcp, getattr(socket, "TCP_USER_TIMEOUT", None),
           round(settings.effectiveUserTimeout() * 1000))


def _routeOptions(settings: SocketSettings) -> Iterator[_Option]:
    if settings.fwmark:
        yield ("--fwmark", "SO_MARK", socket.SOL_SOCKET, SO_MARK,
               struct.pack("=I", settings.fwmark))
    if settings.bindDevice:
        yield ("--bind-device", "SO_BINDTODEVICE", socket.SOL_SOCKET, SO_BINDTODEVICE,
               settings.bindDevice.encode())


def _refusal(sock: socket.socket, option: _Option) -> str | None:
    """
    Set one option; why the kernel refused it, or C{None}.
    """
    _, _, level, number, value = option
    if number is None or (isinstance(value, int) and value <= 0):
        return None
    try:
        sock.setsockopt(level, number, value)
    except OSError as e:
        return e.strerror or str(e)
    except (OverflowError, TypeError):
        # An int too big for a C int is an OverflowError, or a TypeError
        # once Python tries it as a buffer instead.
        return "too large"
    return None


def _describe(option: _Option, reason: str) -> str:
    name, kernelName, _, _, value = option
    if isinstance(value, bytes):
        shown = str(struct.unpack("=I", value)[0]) if name == "--fwmark" else value.decode()
    else:
        shown = str(value)
    hint = ""
    if reason in ("Operation not permitted", "Permission denied"):
        hint = f": {MARK_CAPABILITY}" if name == "--fwmark" else \
            ": it needs CAP_NET_RAW on Linux before 5.7"
    elif name == "--bind-device" and reason == "No such device":
        hint = ": no network interface has that name"
    return f"{name}: the kernel refuses {kernelName}={shown}: {reason}{hint}"


#: The options whose failure was logged already: one line each per process,
#: not one per connection.
_warned: set[str] = set()


def _set(sock: socket.socket, options: Iterator[_Option]) -> None:
    for option in options:
        reason = _refusal(sock, option)
        if reason is not None and option[0] not in _warned:
            _warned.add(option[0])
            log.warn("cannot set {problem} (logged once)", problem=_describe(option, reason))


def tuneUDP(sock: socket.socket, settings: SocketSettings) -> None:
    """
    A large receive buffer absorbs bursts while the event loop is busy
    (the kernel caps it at C{net.core.rmem_max}).
    """
    _set(sock, _udpOptions(settings))


def tuneTCP(sock: socket.socket, settings: SocketSettings) -> None:
    """
    Nagle off (frames are batched per event-loop turn already), buffers,
    keepalive probes and the user timeout, where the platform has them.
    Unix sockets get none of the TCP options.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    _set(sock, _tcpOptions(settings))


def routeSocket(sock: socket.socket, settings: SocketSettings) -> None:
    """
    Mark C{sock} and bind it to the device, as C{settings} say, before it
    binds or connects (the route of a connected socket is looked up at
    connect).  Unlike the tuning, these must hold: a socket the kernel will
    not mark would take the route the mark was to avoid.

    @raise OSError: the kernel refused one, saying which and why.
    """
    for option in _routeOptions(settings):
        reason = _refusal(sock, option)
        if reason is not None:
            raise OSError(_describe(option, reason))


def checkSettings(settings: SocketSettings) -> None:
    """
    Try every setting on scratch sockets, so that a value this kernel
    refuses is a usage error now rather than a warning on every link.

    @raise ValueError: naming the first option refused.
    """
    if settings.routed and (SO_MARK is None or SO_BINDTODEVICE is None):
        raise ValueError("--fwmark and --bind-device are for Linux")
    for kind, options in ((socket.SOCK_DGRAM, _udpOptions), (socket.SOCK_STREAM, _tcpOptions),
                          (socket.SOCK_STREAM, _routeOptions)):
        with socket.socket(socket.AF_INET, kind) as scratch:
            for option in options(settings):
                reason = _refusal(scratch, option)
                if reason is not None:
                    raise ValueError(_describe(option, reason))


def socketOf(transport: Any) -> socket.socket | None:
    """
    The kernel socket under C{transport}, looking through a TLS wrapper.
    """
    while getattr(transport, "transport", None) is not None:
        transport = transport.transport
    getHandle = getattr(transport, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    return handle if isinstance(handle, socket.socket) else None
