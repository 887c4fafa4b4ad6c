"""
The typed configuration: what a tunnel is (L{TunnelConfig}) and what the
process has once (L{ProcessConfig}), frozen; and L{tunnelConfig}, the one
place that reads a tunnel's options (from the command line or a config
file's table alike) and refuses the combinations that cannot work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udptunnel._twisted.prepared import missingHooks
from udptunnel.cli.activation import systemdDatagramSocket
from udptunnel.cli.addresses import (
    HostPort,
    UDPPlan,
    parseSystemdUDP,
    planUDP,
    splitDescription,
    splitHostPort,
)
from udptunnel.cli.schema import CLIENT, SERVER, Option, optionsOf
from udptunnel.cli.values import TLS_INSTALL
from udptunnel.link.viaproxy import Proxy
from udptunnel.sockopts import SocketSettings, checkSettings
from udptunnel.tunnel import hold
from udptunnel.tunnel.access import Network
from udptunnel.tunnel.pending import DEFAULT_LIMIT, DEFAULT_TIMEOUT
from udptunnel.tunnel.sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_IDLE

if TYPE_CHECKING:
    from udptunnel.link.tls import Credentials

#: The options read together, once every other one is read alone.
_ADDRESSES = ("tcp", "udp", "peer", "metrics")

#: The listen backlog of a server with sessions: many clients (a client
#: with --sessions, a burst of DNS queries) connect at once, and Twisted's
#: default of 50 drops the rest of a burst, each retried a second later.
SESSIONS_BACKLOG = 1024


class OptionError(ValueError):
    """
    A tunnel's options cannot be used; the message names the option to
    fix, as C{--name}.
    """


@dataclass(frozen=True)
class TunnelConfig:
    """
    One tunnel end, checked.

    @ivar tcp: a server's listening endpoint description; a client's
        C{HostPort}, or its client endpoint description.
    @ivar udp: where the UDP socket binds (or which socket systemd passed),
        and the fixed peer, if any.
    @ivar metrics: the command line's C{--metrics} (a config file has one
        for the process: L{ProcessConfig.metrics}).
    @ivar plainTwisted: the command line's C{--plain-twisted} (in a config
        file, L{ProcessConfig.plainTwisted}).
    @ivar name: the tunnel's name in a config file, C{None} on a command
        line.
    """

    role: str
    tcp: HostPort | str
    udp: UDPPlan
    settings: SocketSettings = field(default_factory=SocketSettings)
    sessions: bool = False
    reusePort: bool = False
    proxyProtocol: bool = False
    allow: tuple[Network, ...] = ()
    udpAllow: tuple[Network, ...] = ()
    proxy: Proxy | None = None
    credentials: Credentials | None = None
    tlsName: str | None = None
    handshake: str = "none"
    idleTimeout: float = 0
    statsInterval: float = 300
    pendingTimeout: float = DEFAULT_TIMEOUT
    maxPending: int = DEFAULT_LIMIT
    sessionIdle: float = DEFAULT_SESSION_IDLE
    maxSessions: int = DEFAULT_MAX_SESSIONS
    holdAge: float = hold.DEFAULT_AGE
    holdDatagrams: int = hold.DEFAULT_DATAGRAMS
    holdBytes: int = hold.DEFAULT_BYTES
    metrics: str | None = None
    plainTwisted: bool = False
    name: str | None = None

    @property
    def client(self) -> bool:
        return self.role == CLIENT


@dataclass(frozen=True)
class ProcessConfig:
    """
    What a process runs: its tunnels, and what it has once for all of them.

    @ivar path: the config file the tunnels come from (a reload reads it
        again), or C{None} for the one tunnel of a command line.
    """

    tunnels: tuple[TunnelConfig, ...]
    metrics: str | None = None
    path: str | None = None
    #: Twisted's public API only (C{--plain-twisted}): no write-through, no
    #: lean event dispatch (L{udptunnel._twisted}).
    plainTwisted: bool = False


def _read(option: Option, given: Any) -> Any:
    """
    The value of C{option} as C{given} (a string, a number, a flag's bool,
    a list for a repeatable one), or its default.
    """
    if option.flag:
        return bool(given)
    if option.repeatable:
        return tuple(_one(option, item) for item in (given or ()))
    value = option.default if given is None else given
    return None if value is None else _one(option, value)


def _one(option: Option, value: Any) -> Any:
    assert option.parse is not None
    try:
        return option.parse(str(value))
    except ValueError as e:
        raise OptionError(f"--{option.name}: {e}") from None


def tunnelConfig(role: str, given: Mapping[str, Any], name: str | None = None) -> TunnelConfig:
    """
    The tunnel that the options C{given} (by long name; what is left out
    takes its default) describe, for a C{role} end.

    @raise OptionError: a value, or a combination, that cannot work.
    """
    options = {option.name: option for option in optionsOf(role)}
    # Each value alone first; then the addresses, which depend on one
    # another; then the combinations.
    read = {name: _read(option, given.get(name)) for name, option in options.items()
            if name not in _ADDRESSES}
    if role == SERVER and read["sessions"] and given.get("peer") is None:
        _checkServerSessions(None, UDPPlan("", 0, None))  # its own error comes first
    if given.get("tcp") is None:
        raise OptionError("--tcp is required")
    tcp = _read(options["tcp"], given["tcp"])
    plan = _plan(given.get("udp"), given.get("peer"))
    if read["udp-allow"] and given.get("peer") is not None:
        raise OptionError("--udp-allow is for phantom mode: not with --peer")
    metrics = _read(options["metrics"], given.get("metrics"))
    settings = SocketSettings(
        udpReceiveBuffer=read["udp-rcvbuf"],
        udpSendBuffer=read["udp-sndbuf"],
        tcpReceiveBuffer=read["tcp-rcvbuf"],
        tcpSendBuffer=read["tcp-sndbuf"],
        keepaliveIdle=read["keepalive-idle"],
        keepaliveInterval=read["keepalive-interval"],
        keepaliveCount=read["keepalive-count"],
        userTimeout=read["user-timeout"],
        fwmark=read["fwmark"],
        bindDevice=read["bind-device"] or "",
    )
    try:
        checkSettings(settings)
    except ValueError as e:
        raise OptionError(str(e)) from None
    missing = missingHooks() if settings.routed else None
    if missing is not None:
        raise OptionError(f"--fwmark and --bind-device need {missing}, which this Twisted "
                          "release lacks")
    credentials = _credentials(read["tls-cert"], read["tls-key"], read["tls-ca"])
    if read["sessions"]:
        if read["idle-timeout"]:
            raise OptionError("--idle-timeout is for the single link: with --sessions each "
                              "session ends after --session-idle")
        if role == SERVER:
            _checkServerSessions(given.get("peer"), plan)
        else:
            _checkClientSessions(plan)
    elif read["reuse-port"]:
        raise OptionError("--reuse-port is for --sessions: one link cannot be shared by "
                          "processes")
    tlsName = None
    if role == SERVER:
        if read["proxy-protocol"] and credentials is not None:
            raise OptionError(
                "--proxy-protocol is not for --tls-cert: the balancer's header comes "
                "before the TLS handshake, which this server would read first")
        if read["sessions"]:
            tcp = _withBacklog(tcp)
        if read["reuse-port"] and tcp.split(":", 1)[0] not in ("tcp", "tcp6"):
            raise OptionError(
                "--reuse-port needs a TCP --tcp (a port, tcp:... or tcp6:...); with "
                "systemd, give each worker's .socket unit ReusePort=yes instead")
    else:
        if read["reuse-port"] and (plan.fd is not None or plan.port == 0):
            raise OptionError(
                "--reuse-port shares --udp: give it a port (HOST:PORT); with systemd, "
                "give each worker's .socket unit ReusePort=yes instead")
        if read["proxy"] is not None and not isinstance(tcp, HostPort):
            raise OptionError("--proxy: give --tcp as HOST:PORT (the proxy connects to it), "
                              "not an endpoint description")
        tlsName = read["tls-name"]
        if credentials is not None and tlsName is None:
            if not isinstance(tcp, HostPort):
                raise OptionError("with TLS and an endpoint description, give --tls-name")
            tlsName = tcp.host
    return TunnelConfig(
        role=role, tcp=tcp, udp=plan, settings=settings, sessions=read["sessions"],
        reusePort=read["reuse-port"], proxyProtocol=bool(read.get("proxy-protocol")),
        allow=read.get("allow", ()), udpAllow=read["udp-allow"], proxy=read.get("proxy"),
        credentials=credentials, tlsName=tlsName, handshake=read["handshake"],
        idleTimeout=read["idle-timeout"], statsInterval=read["stats-interval"],
        pendingTimeout=read["pending-timeout"], maxPending=read["max-pending"],
        sessionIdle=read["session-idle"], maxSessions=read["max-sessions"],
        holdAge=read["hold"], holdDatagrams=read["hold-datagrams"],
        holdBytes=read["hold-bytes"],
        metrics=metrics, plainTwisted=read["plain-twisted"], name=name,
    )


def _plan(udp: str | None, peer: str | None) -> UDPPlan:
    """
    C{--udp} and C{--peer} resolved together (L{planUDP}), or the socket
    systemd passed.
    """
    if udp is None and peer is None:
        raise OptionError("--udp is required unless --peer is given")
    bind = fixed = adopted = None
    try:
        if udp is not None:
            which = parseSystemdUDP(udp)
            if which is not None:
                adopted = systemdDatagramSocket(which)
                bind = HostPort(adopted[1], adopted[2])
            else:
                bind = splitHostPort(udp, requireHost=False, allowZero=True)
    except ValueError as e:
        raise OptionError(f"--udp: {e}") from None
    try:
        if peer is not None:
            fixed = splitHostPort(peer)
    except ValueError as e:
        raise OptionError(f"--peer: {e}") from None
    try:
        plan = planUDP(bind, fixed)
    except ValueError as e:
        raise OptionError(str(e)) from None  # it names the option to blame
    return plan._replace(fd=adopted[0]) if adopted is not None else plan


def _credentials(cert: str | None, key: str | None, ca: str | None) -> Credentials | None:
    files = [cert, key, ca]
    if not any(files):
        return None
    if cert is None or key is None or ca is None:
        raise OptionError("TLS needs all three of --tls-cert, --tls-key, --tls-ca")
    try:
        from udptunnel.link.tls import loadCredentials
    except ImportError as e:
        raise OptionError(f"TLS needs pyOpenSSL: {TLS_INSTALL} ({e})") from None
    try:
        return loadCredentials(cert, key, ca)
    except ValueError as e:
        raise OptionError(f"TLS: {e}") from None


def _checkServerSessions(peer: str | None, plan: UDPPlan) -> None:
    if peer is None:
        raise OptionError(
            "server --sessions needs --peer: each connection gets its own UDP socket "
            "connected to the peer. A listening end in phantom mode cannot tell which "
            "connection a datagram is for: put --sessions on the connecting end "
            "(client --sessions, in phantom mode) instead")
    if plan.fd is not None:
        raise OptionError(
            "--udp systemd: is not for server --sessions: each connection gets a UDP "
            "socket of its own, bound here")
    if plan.port != 0:
        raise OptionError(
            "--udp: with --sessions each connection gets its own ephemeral UDP port; "
            "give the address alone as HOST:0, or leave --udp out")


def _checkClientSessions(plan: UDPPlan) -> None:
    if plan.peer is not None:
        raise OptionError(
            "client --sessions opens a connection per UDP source, for a phantom end: "
            "not with --peer (a fixed peer is one source: leave --sessions out, or put "
            "--sessions on the listening end, server --sessions --peer)")


def _withBacklog(description: str) -> str:
    """
    A TCP server endpoint description with L{SESSIONS_BACKLOG}, unless it
    gives a backlog of its own (or is no TCP endpoint).
    """
    kind = splitDescription(description)[0]
    if kind not in ("tcp", "tcp6") or "backlog=" in description:
        return description
    return f"{description}:backlog={SESSIONS_BACKLOG}"
