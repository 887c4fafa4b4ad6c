"""
Every option of C{udptunnel server} and C{client}, once: its name, what it
does, its default and how its value is read.  The command line's parsers
are made from it, the config file's keys are its names, and the manual's
reference is generated from it, so that they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from udptunnel.cli import values
from udptunnel.sockopts import (
    MAX_INT,
    MAX_KEEPALIVE_COUNT,
    MAX_KEEPALIVE_SECONDS,
    MAX_USER_TIMEOUT,
    SocketSettings,
)
from udptunnel.tunnel.hold import DEFAULT_AGE as DEFAULT_HOLD_AGE
from udptunnel.tunnel.hold import DEFAULT_BYTES as DEFAULT_HOLD_BYTES
from udptunnel.tunnel.hold import DEFAULT_DATAGRAMS as DEFAULT_HOLD_DATAGRAMS
from udptunnel.tunnel.pending import DEFAULT_LIMIT as DEFAULT_MAX_PENDING
from udptunnel.tunnel.pending import DEFAULT_TIMEOUT as DEFAULT_PENDING_TIMEOUT
from udptunnel.tunnel.sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_IDLE

SERVER = "server"
CLIENT = "client"
BOTH = frozenset({SERVER, CLIENT})


@dataclass(frozen=True)
class Option:
    """
    One option.

    @ivar parse: reads a value as written (a string) into what the tunnel
        uses, or raises L{ValueError} saying why not; C{None} for a flag.
    @ivar default: the value when it is not given, as written (C{None}:
        none, or one derived from others).
    @ivar repeatable: given any number of times (a list in a config file).
    @ivar process: the process has it once, not each tunnel (at the top of
        a config file).
    @ivar value: what its value is, in the words of the synopsis
        (C{SECONDS}, C{HOST:PORT}); empty for a flag.
    """

    name: str
    help: str
    parse: Callable[[str], Any] | None = None
    default: Any = None
    roles: frozenset[str] = BOTH
    repeatable: bool = False
    process: bool = False
    value: str = ""

    @property
    def flag(self) -> bool:
        return self.parse is None and not self.repeatable


def _asIs(text: str) -> str:
    return text


_DEFAULTS = SocketSettings()
_BUFFER = values.wholeFrom(0, MAX_INT)

SESSIONS_HELP = (
    "Many sessions instead of one link: a client opens a TCP connection per UDP "
    "source (phantom mode); a server gives each connection its own UDP socket, "
    "connected to --peer."
)

OPTIONS: tuple[Option, ...] = (
    Option("tcp", (
        "Required. Where to listen: a port (all interfaces) or a Twisted "
        "server endpoint (tcp:9999:interface=127.0.0.1, tcp6:9999, ssl:..., "
        "unix:..., systemd:...)."), values.listeningEndpoint, roles=frozenset({SERVER}),
        value="PORT|ENDPOINT"),
    Option("tcp", (
        "Required. Where to connect: HOST:PORT ([IPv6]:PORT; names resolve "
        "to IPv4 and IPv6) or a Twisted client endpoint (tcp:..., tls:..., "
        "unix:...)."), values.clientEndpoint, roles=frozenset({CLIENT}),
        value="HOST:PORT|ENDPOINT"),
    Option("udp", (
        "Local UDP address to bind, [HOST:]PORT ([::1]:5073 for IPv6; without HOST: "
        "all interfaces), or systemd:N / systemd:NAME for a datagram socket systemd "
        "passed (socket activation). Required unless --peer is given (then an "
        "ephemeral port)."), _asIs, value="[HOST:]PORT|systemd:N"),
    Option("peer", (
        "HOST:PORT: fixed destination of datagrams coming out of the tunnel; only "
        "datagrams from it are accepted. Without it (phantom mode) replies go to the "
        "source of the newest datagram received on --udp."), _asIs, value="HOST:PORT"),
    Option("udp-rcvbuf", (
        "UDP socket receive buffer, bytes (capped by net.core.rmem_max; 0: "
        "the system's default)."), _BUFFER, _DEFAULTS.udpReceiveBuffer, value="BYTES"),
    Option("udp-sndbuf", "UDP socket send buffer, bytes (0: the system's default).",
           _BUFFER, _DEFAULTS.udpSendBuffer, value="BYTES"),
    Option("tcp-rcvbuf", "TCP receive buffer, bytes (0: the kernel's autotuning).",
           _BUFFER, 0, value="BYTES"),
    Option("tcp-sndbuf", "TCP send buffer, bytes (0: the kernel's autotuning).",
           _BUFFER, 0, value="BYTES"),
    Option("keepalive-idle", (
        "Seconds of silence on the link before TCP keepalive probes start "
        "(0: no keepalive)."), values.wholeFrom(0, MAX_KEEPALIVE_SECONDS),
        _DEFAULTS.keepaliveIdle, value="SECONDS"),
    Option("keepalive-interval", "Seconds between TCP keepalive probes.",
           values.wholeFrom(1, MAX_KEEPALIVE_SECONDS), _DEFAULTS.keepaliveInterval,
           value="SECONDS"),
    Option("keepalive-count", "Unanswered keepalive probes before the link is declared dead.",
           values.wholeFrom(1, MAX_KEEPALIVE_COUNT), _DEFAULTS.keepaliveCount, value="N"),
    Option("user-timeout", (
        "Seconds sent data may stay unacknowledged before the link is declared "
        "dead (TCP_USER_TIMEOUT; on Linux it also ends an idle link, at the "
        "first keepalive probe due after it; 0: the kernel's default). "
        "Default: idle + interval x count, 55 with the default keepalive."),
        values.secondsUpTo(MAX_USER_TIMEOUT), value="SECONDS"),
    Option("idle-timeout", (
        "Close the link after this many seconds without a datagram either way "
        "(the client reconnects at once; 0: never)."), values.seconds, 0, value="SECONDS"),
    Option("stats-interval", (
        "Log the counters every this many seconds, when they changed (0: only "
        "at shutdown)."), values.seconds, 300, value="SECONDS"),
    Option("metrics", (
        "Serve the counters in Prometheus text format (/metrics) and the status "
        "as JSON (/status) over HTTP on [HOST:]PORT (a bare port: 127.0.0.1 "
        "only; 0.0.0.0:PORT or [::]:PORT for every host) or a server endpoint "
        "(tcp:9100:interface=192.0.2.1)."), values.metricsEndpoint, process=True,
        value="[HOST:]PORT|ENDPOINT"),
    Option("fwmark", (
        "Mark the sockets that face the network with this firewall mark "
        "(SO_MARK; decimal or 0x hex): the link's TCP socket before it connects "
        "(also through --proxy), a server's listening socket, the UDP sockets "
        "towards --peer. With --fwmark 51820 a WireGuard full tunnel on this host "
        "routes the tunnel's own traffic around itself. Needs CAP_NET_ADMIN."),
        values.fwmark, 0, value="MARK"),
    Option("bind-device", (
        "Bind the same sockets to this network interface (SO_BINDTODEVICE), for "
        "a host with several uplinks."), values.interfaceName, value="IFACE"),
    Option("tls-cert", (
        "PEM certificate this end presents; with --tls-key and --tls-ca it turns "
        "on mutual TLS on the link."), _asIs, value="FILE"),
    Option("tls-key", "PEM private key of --tls-cert.", _asIs, value="FILE"),
    Option("tls-ca", "PEM certificate of the CA that must have signed the peer's certificate.",
           _asIs, value="FILE"),
    Option("pending-timeout", (
        "Seconds a TCP connection may take to become the link (TLS handshake, "
        "first frame) before it is closed."), values.positiveSeconds,
        DEFAULT_PENDING_TIMEOUT, value="SECONDS"),
    Option("hold", (
        "Single link: keep datagrams that arrive while there is no link (the other "
        "end restarts, the client reconnects) for up to this many seconds, and send "
        "them in order on the next link; older ones are dropped as expired "
        "(0: drop them at once)."), values.seconds, DEFAULT_HOLD_AGE, value="SECONDS"),
    Option("hold-datagrams", "Single link: the most datagrams held while there is no link.",
           values.wholeFrom(1, 1_000_000), DEFAULT_HOLD_DATAGRAMS, value="N"),
    Option("hold-bytes", "Single link: the most bytes of datagrams held while there is no link.",
           values.wholeFrom(1, 1 << 30), DEFAULT_HOLD_BYTES, value="BYTES"),
    Option("session-idle", (
        "With --sessions: end a session after this many seconds without a "
        "datagram either way (0: never)."), values.seconds, DEFAULT_SESSION_IDLE, value="SECONDS"),
    Option("max-sessions", (
        "With --sessions: sessions at once; at the cap a client closes its least "
        "recently active session for a new source, a server refuses the new "
        "connection."), values.wholeFrom(1, 1_000_000), DEFAULT_MAX_SESSIONS, value="N"),
    Option("handshake", (
        "What the connection carries before the first frame: none (the classic "
        "wire: Debian's udptunnel 1.1, mullvad's udp-over-tcp) or rfc1036 (Marco "
        "d'Itri's udptunnel: the client sends a 32-byte preamble, the server "
        "requires it)."), values.profile, "none", value="none|rfc1036"),
    Option("max-pending", (
        "TCP connections that may wait to become the link at once; one more "
        "closes the oldest (0: no cap)."), values.wholeFrom(0, 1_000_000),
        DEFAULT_MAX_PENDING, value="N"),
    Option("tls-name", (
        "With TLS: the name (or IP address) the server's certificate must carry "
        "(default: the host of --tcp HOST:PORT)."), _asIs, roles=frozenset({CLIENT}),
        value="NAME"),
    Option("proxy", (
        "Connect through a proxy: http://[USER:PASSWORD@]HOST:PORT (HTTP CONNECT) "
        "or socks5://[USER:PASSWORD@]HOST:PORT; the proxy resolves --tcp's host. "
        "TLS runs end to end, inside."), values.parseProxy, roles=frozenset({CLIENT}),
        value="URL"),
    Option("plain-twisted", (
        "Use Twisted's public API only: no frames written straight to the socket, no "
        "lean event dispatch (slower; for a Twisted release whose checks fail, or to "
        "compare)."), process=True),
    Option("sessions", SESSIONS_HELP),
    Option("reuse-port", (
        "With --sessions: share the port with other processes started the same way "
        "(SO_REUSEPORT), each with sessions of its own, to use more cores: a server's "
        "--tcp, a client's --udp.")),
    Option("proxy-protocol", (
        "Every connection begins with a PROXY protocol header (v1 or v2, as a load "
        "balancer such as HAProxy sends): --allow, the logs and the metrics see the "
        "client it names. A connection without one is closed."), roles=frozenset({SERVER})),
    Option("allow", (
        "CIDR (repeatable): only connections from these networks may become the link; "
        "others are closed at once."), values.network, roles=frozenset({SERVER}),
        repeatable=True, value="CIDR"),
    Option("udp-allow", (
        "CIDR (repeatable): in phantom mode, only these sources may send into the tunnel "
        "and be learned as the reply address."), values.network, repeatable=True, value="CIDR"),
)


def optionsOf(role: str) -> list[Option]:
    """
    The options of C{udptunnel ROLE}, in the order of its --help.
    """
    return [option for option in OPTIONS if role in option.roles]
