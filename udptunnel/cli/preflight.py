"""
Every socket a process will bind, tried before a daemonising twistd forks:
a port that is taken (or an address the host does not have) is then one
line and status 1 in the terminal of the user who started it.  Without
this, the daemon's error would reach that user only as twistd's report of
an exception (C{An error has occurred: b'udptunnel.StartupError: ...'}).

The daemon binds again for real, so a port taken in between still fails
there, reported by twistd.
"""

from __future__ import annotations

import socket

from udptunnel.cli.clashes import Bind, serverBind, udpBind
from udptunnel.cli.settings import ProcessConfig


def binds(process: ProcessConfig) -> list[tuple[str | None, Bind, bool]]:
    """
    The TCP and UDP sockets C{process} binds to a port: its tunnels' (with
    their names, and whether they share the port, C{--reuse-port}) and its
    metrics endpoint's.
    """
    found = []
    for tunnel in process.tunnels:
        for bind in (udpBind(tunnel.udp),
                     serverBind(tunnel.tcp) if isinstance(tunnel.tcp, str)
                     and tunnel.role == "server" else None):
            if bind is not None and bind.kind in ("TCP", "UDP"):
                found.append((tunnel.name, bind, tunnel.reusePort))
    if process.metrics is not None:
        metrics = serverBind(process.metrics)
        if metrics is not None:
            found.append((None, metrics, False))
    return found


def checkBinds(process: ProcessConfig) -> None:
    """
    Bind each socket of C{process} once and let it go.

    @raise SystemExit: with the first that cannot be bound, in the words of
        the tunnel's own start-up error.
    """
    for name, bind, reusePort in binds(process):
        kind = socket.SOCK_STREAM if bind.kind == "TCP" else socket.SOCK_DGRAM
        family = socket.AF_INET6 if ":" in bind.where else socket.AF_INET
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted
            if reusePort:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((bind.where, bind.port))
            except OSError as e:
                where = f"tunnel {name}: " if name is not None else ""
                raise SystemExit(f"udptunnel: cannot start: {where}cannot listen on "
                                 f"{bind.where or '*'}:{bind.port}: {e.strerror}") from None
