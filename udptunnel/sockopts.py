"""
Socket tuning: buffer sizes, and the TCP keepalive and user timeout that let
a link whose peer vanished without a FIN or RST (cable pulled, NAT state
lost) be noticed without any keepalive frames in the stream.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class SocketSettings:
    """
    What to set on the tunnel's sockets; 0 leaves the kernel's default.

    The keepalive defaults detect a silent peer in 15 + 4 x 10 = 55 s, and
    the user timeout gives up on data unacknowledged for 60 s, so a dead link
    is noticed within about a minute whether it was idle or busy.
    """

    udpReceiveBuffer: int = 1 << 20
    udpSendBuffer: int = 1 << 20
    tcpReceiveBuffer: int = 0
    tcpSendBuffer: int = 0
    keepaliveIdle: int = 15
    keepaliveInterval: int = 10
    keepaliveCount: int = 4
    userTimeout: float = 60.0


def _set(sock: socket.socket, level: int, option: int | None, value: int) -> None:
    if option is None or value <= 0:
        return
    try:
        sock.setsockopt(level, option, value)
    except OSError as e:
        log.warn("cannot set socket option {option}={value}: {error}",
                 option=option, value=value, error=e)


def tuneUDP(sock: socket.socket, settings: SocketSettings) -> None:
    """
    A large receive buffer absorbs bursts while the event loop is busy
    (the kernel caps it at C{net.core.rmem_max}).
    """
    _set(sock, socket.SOL_SOCKET, socket.SO_RCVBUF, settings.udpReceiveBuffer)
    _set(sock, socket.SOL_SOCKET, socket.SO_SNDBUF, settings.udpSendBuffer)


def tuneTCP(sock: socket.socket, settings: SocketSettings) -> None:
    """
    Nagle off (frames are batched per event-loop turn already), buffers,
    keepalive probes and the user timeout, where the platform has them.
    Unix sockets get none of the TCP options.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    _set(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _set(sock, socket.SOL_SOCKET, socket.SO_RCVBUF, settings.tcpReceiveBuffer)
    _set(sock, socket.SOL_SOCKET, socket.SO_SNDBUF, settings.tcpSendBuffer)
    if settings.keepaliveIdle > 0:
        _set(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None),
             settings.keepaliveIdle)
        _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None),
             settings.keepaliveInterval)
        _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None),
             settings.keepaliveCount)
    _set(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None),
         int(settings.userTimeout * 1000))
