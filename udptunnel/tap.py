"""
The twistd plugin's command line and service wiring, and nothing else.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.python import usage

from udptunnel import __version__, reportStartupErrorsCleanly
from udptunnel.cli.activation import (
    SystemdStreamEndpoint,
    systemdDatagramSocket,
    systemdStreamSocket,
)
from udptunnel.cli.addresses import (
    HostPort,
    checkClientDescription,
    checkServerDescription,
    literalFamily,
    parseSystemdUDP,
    planUDP,
    splitDescription,
    splitHostPort,
)
from udptunnel.cli.clashes import Bind, serverBind, udpBind
from udptunnel.cli.configfile import (
    Config,
    ConfigError,
    Parsers,
    TunnelConfig,
    loadConfig,
)
from udptunnel.cli.optionnames import checkExactNames
from udptunnel.cli.speedups import LeanDispatch
from udptunnel.link.listening import AnnouncingEndpoint, allInterfaces
from udptunnel.link.preamble import PROFILES, handshakeFor
from udptunnel.link.protocol import TunnelFactory
from udptunnel.link.viaproxy import ProxyEndpoint, parseProxy
from udptunnel.ops.logreopen import LogReopener
from udptunnel.ops.notify import notifyService
from udptunnel.sockopts import (
    MAX_INT,
    MAX_KEEPALIVE_COUNT,
    MAX_KEEPALIVE_SECONDS,
    MAX_USER_TIMEOUT,
    SocketSettings,
    checkSettings,
)
from udptunnel.tunnel.access import AddressFilter, parseNetwork
from udptunnel.tunnel.clientsessions import ClientSessions, connectFrom
from udptunnel.tunnel.pending import DEFAULT_LIMIT as DEFAULT_MAX_PENDING
from udptunnel.tunnel.pending import DEFAULT_TIMEOUT as DEFAULT_PENDING_TIMEOUT
from udptunnel.tunnel.reconnect import CONNECT_TIMEOUT, Reconnector
from udptunnel.tunnel.serversessions import ServerSessions
from udptunnel.tunnel.service import TunnelService
from udptunnel.tunnel.sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_IDLE
from udptunnel.tunnel.single import Relay
from udptunnel.udp.port import connectedUDP
from udptunnel.udp.protocol import TunnelDatagramProtocol
from udptunnel.udp.reuseport import ReusePortReactor
from udptunnel.udp.service import UDPService

if TYPE_CHECKING:
    from udptunnel.link.tls import Credentials

EXAMPLE = """\
Example (an app on the NAT box reaches pop.example.net:5072 via a relay host):
  natbox$ twistd -n udptunnel server --udp 5073 --tcp 9999
  relay$  twistd udptunnel client --tcp natbox:9999 --udp 34559 \\
              --peer pop.example.net:5072
"""

_UDP_HELP = (
    "Local UDP address to bind, [HOST:]PORT ([::1]:5073 for IPv6; without HOST: "
    "all interfaces), or systemd:N / systemd:NAME for a datagram socket systemd "
    "passed (socket activation). Required unless --peer is given (then an "
    "ephemeral port)."
)
SESSIONS_HELP = (
    "Many sessions instead of one link: a client opens a TCP connection per UDP "
    "source (phantom mode); a server gives each connection its own UDP socket, "
    "connected to --peer."
)
_PEER_HELP = (
    "HOST:PORT: fixed destination of datagrams coming out of the tunnel; only "
    "datagrams from it are accepted. Without it (phantom mode) replies go to the "
    "source of the newest datagram received on --udp."
)

#: How to get TLS, in the README's words (it installs from a checkout).
TLS_INSTALL = "install udptunnel with its tls extra (pip install '.[tls]' in its source tree)"

# --tcp names an endpoint description, not a HOST:PORT, when it starts with
# one of these ("tcp:9999" is no host).
_ENDPOINT_TYPES = {"tcp", "tcp6", "ssl", "tls", "unix", "systemd", "tor", "onion"}


@contextmanager
def _blaming(option: str) -> Iterator[None]:
    """
    Turn a L{ValueError} about an address into a usage error naming C{option}.
    """
    try:
        yield
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None


def _validate(check: Any, what: str, value: str, option: str = "--tcp") -> None:
    """
    Build an endpoint from C{value} and throw it away, so a bad description
    is a usage error now and not a traceback when the service starts.
    """
    from twisted.internet import reactor

    try:
        check(reactor, value)
    except Exception as e:  # noqa: BLE001 (parsers raise anything)
        raise usage.UsageError(f"{option}: bad {what} {value!r}: {e}") from None


def _haveTLS() -> bool:
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


def _needTLS(kind: str, option: str) -> None:
    if kind in ("tls", "ssl") and not _haveTLS():
        raise usage.UsageError(
            f"{option}: {kind}: endpoints need pyOpenSSL: {TLS_INSTALL}"
        )


def _serverEndpoint(value: str, option: str, dualStack: bool = False) -> str:
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
    _needTLS(kind, option)
    if kind == "systemd":
        with _blaming(option):
            systemdStreamSocket(value)
        return value
    with _blaming(option):
        checkServerDescription(value)
    _validate(serverFromString, "server endpoint", value, option)
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
    elif kind not in _ENDPOINT_TYPES:
        with _blaming("--metrics"):
            try:
                host, port = splitHostPort(value)
            except ValueError as e:
                raise ValueError(f"{value!r} is not a port, HOST:PORT or an endpoint "
                                 f"description ({e})") from None
            if host is None or literalFamily(host) is None:
                raise ValueError(f"{value!r}: give an IP address as HOST, or a bare port")
        escaped = host.replace(":", "\\:")
        value = f"{'tcp6' if ':' in host else 'tcp'}:{port}:interface={escaped}"
    return _serverEndpoint(value, "--metrics")


def _connectTimeout(tcp: HostPort | str) -> float | None:
    """
    How long one connection attempt may take, in seconds, so that a timeout
    can be reported as such; C{None} for an endpoint type we do not know.
    """
    if isinstance(tcp, HostPort):
        return CONNECT_TIMEOUT
    kind, _, keywords = splitDescription(tcp)
    try:
        return float(keywords["timeout"])
    except (KeyError, ValueError):
        # Twisted's default for each of its client endpoints.
        return CONNECT_TIMEOUT if kind in ("tcp", "ssl", "tls", "unix") else None


def _wholeFrom(low: int, high: int) -> Callable[[str], int]:
    """
    A coercer of whole numbers from C{low} to C{high}: what the kernel takes
    for a socket option, so that anything else is refused at parse time.
    """

    def coerce(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, not {text!r}")
        return int(text)

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


#: No duration is longer (a billion seconds is 31 years): what a timer takes.
_FOREVER = 1e9


def _secondsUpTo(high: float, positive: bool = False) -> Callable[[str], float]:
    """
    A coercer of durations from 0 (or, C{positive}, more than 0) to
    C{high} seconds.
    """
    if high < _FOREVER:
        expected = f" from {'more than ' if positive else ''}0 to {high}"
    else:
        expected = ", more than 0" if positive else ", 0 or more"

    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (0 < value if positive else 0 <= value) or not value <= high:
            raise ValueError(f"expected a number of seconds{expected}, not {text!r}")
        return value

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


_seconds = _secondsUpTo(_FOREVER)
_positiveSeconds = _secondsUpTo(_FOREVER, positive=True)


def _naming(name: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """
    C{coerce}, but a bad value is a usage error that names option C{name}:
    Twisted would say "Parameter type enforcement failed" without saying
    which parameter.
    """

    def named(text: str) -> Any:
        try:
            return coerce(text)
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None

    named.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
    return named


def _profile(text: str) -> str:
    """
    A C{--handshake} profile name.
    """
    if text not in PROFILES:
        raise ValueError(f"expected one of {', '.join(PROFILES)}, not {text!r}")
    return text


_profile.coerceDoc = ""  # type: ignore[attr-defined]
_DEFAULTS = SocketSettings()
_BUFFER = _wholeFrom(0, MAX_INT)


def _runnerName(runner: Any) -> tuple[str, str]:
    """
    The program the user ran (C{twistd}, C{twist}) and the name they gave
    the plugin, from the runner's options (the parent of ours).
    """
    synopsis = runner.getSynopsis() if hasattr(runner, "getSynopsis") else ""
    found = re.match(r"Usage: (.+?) \[options\]", synopsis)
    program = found.group(1) if found else "twistd"
    plugin = getattr(runner, "subCommand", None) or "udptunnel"
    return program, plugin


class _WithExample(usage.Options):
    """
    What all our option parsers share: every --help ends with the seed
    example, kept verbatim (a longdesc would be re-wrapped); the synopsis
    reads as the command the user types; and a bad value names its option.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """
        Wrap each coercer of the class's C{optParameters} with L{_naming},
        so that every option, whoever adds it, names itself in its errors.
        """
        super().__init_subclass__(**kwargs)
        parameters = cls.__dict__.get("optParameters", [])
        for row in parameters:
            if len(row) > 4 and row[4] is not None:
                row[4] = _naming(row[0], row[4])

    def opt_version(self) -> None:
        """
        Print the version of udptunnel and exit.
        """
        print(f"udptunnel {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse, taking option names whole (L{checkExactNames}).
        """
        argv = list(sys.argv[1:] if options is None else options)
        checkExactNames(self, argv, self.elsewhere())
        super().parseOptions(argv)

    def elsewhere(self) -> dict[str, str]:
        """
        The options a sibling command has and this one lacks, each with
        that command's name (for the error of a misplaced option).
        """
        return {}

    def _top(self) -> _WithExample:
        """
        The plugin's own top-level options (whose parent is the runner's).
        """
        options = self
        while isinstance(options.parent, _WithExample):
            options = options.parent
        return options

    def commandLine(self) -> str:
        """
        What the user typed to get here: C{twistd udptunnel server}.
        """
        top = self._top()
        program, plugin = _runnerName(top.parent)
        words = [program, plugin] + ([top.subCommand] if top is not self else [])
        return " ".join(str(word) for word in words)

    def getSynopsis(self) -> str:
        # Twisted joins every parent's synopsis, which repeats ours
        # ("udptunnel server|client [options] server --tcp ...").
        top = self._top()
        program, plugin = _runnerName(top.parent)
        words = [program, f"[{program.split()[-1]} options]", plugin]
        if top is not self:
            words.append(str(top.subCommand))
        return "Usage: " + " ".join(words + [getattr(self, "synopsis", "[options]")])

    def getUsage(self, width: int | None = None) -> str:
        text = super().getUsage(width)
        # A parent shows its subcommand's usage when parsing failed in it.
        return text if EXAMPLE in text else text + "\n" + EXAMPLE

    def usageError(self, error: usage.UsageError) -> str:
        """
        What to show for a bad command line: the short synopsis of the
        command that failed, where to find the rest, and the error last,
        in one line (not the 60 lines of the full help).
        """
        command = self.commandLine()
        return (
            f"{self.getSynopsis()}\n"
            f"Run '{command} --help' for the options.\n"
            f"{command}: {error}"
        )


class _EndOptions(_WithExample):
    """
    What both ends share: the UDP side, socket tuning, TLS, observability.
    """

    optParameters: list[list[Any]] = [
        ["udp", None, None, _UDP_HELP],
        ["peer", None, None, _PEER_HELP],
        ["udp-rcvbuf", None, _DEFAULTS.udpReceiveBuffer,
         ("UDP socket receive buffer, bytes (capped by net.core.rmem_max; 0: "
         "the system's default)."), _BUFFER],
        ["udp-sndbuf", None, _DEFAULTS.udpSendBuffer,
         "UDP socket send buffer, bytes (0: the system's default).", _BUFFER],
        ["tcp-rcvbuf", None, 0,
         "TCP receive buffer, bytes (0: the kernel's autotuning).", _BUFFER],
        ["tcp-sndbuf", None, 0,
         "TCP send buffer, bytes (0: the kernel's autotuning).", _BUFFER],
        ["keepalive-idle", None, _DEFAULTS.keepaliveIdle,
         ("Seconds of silence on the link before TCP keepalive probes start "
         "(0: no keepalive)."), _wholeFrom(0, MAX_KEEPALIVE_SECONDS)],
        ["keepalive-interval", None, _DEFAULTS.keepaliveInterval,
         "Seconds between TCP keepalive probes.", _wholeFrom(1, MAX_KEEPALIVE_SECONDS)],
        ["keepalive-count", None, _DEFAULTS.keepaliveCount,
         "Unanswered keepalive probes before the link is declared dead.",
         _wholeFrom(1, MAX_KEEPALIVE_COUNT)],
        ["user-timeout", None, None,
         ("Seconds sent data may stay unacknowledged before the link is declared "
          "dead (TCP_USER_TIMEOUT; on Linux it also ends an idle link, at the "
          "first keepalive probe due after it; 0: the kernel's default). "
          "Default: idle + interval x count, 55 with the default keepalive."),
         _secondsUpTo(MAX_USER_TIMEOUT)],
        ["idle-timeout", None, 0,
         ("Close the link after this many seconds without a datagram either way "
         "(the client reconnects at once; 0: never)."), _seconds],
        ["stats-interval", None, 300,
         ("Log the counters every this many seconds, when they changed (0: only "
         "at shutdown)."), _seconds],
        ["metrics", None, None,
         ("Serve the counters in Prometheus text format (/metrics) and the status "
          "as JSON (/status) over HTTP on [HOST:]PORT (a bare port: 127.0.0.1 "
          "only; 0.0.0.0:PORT or [::]:PORT for every host) or a server endpoint "
          "(tcp:9100:interface=192.0.2.1).")],
        ["tls-cert", None, None,
         ("PEM certificate this end presents; with --tls-key and --tls-ca it turns "
         "on mutual TLS on the link.")],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-ca", None, None,
         "PEM certificate of the CA that must have signed the peer's certificate."],
        ["pending-timeout", None, DEFAULT_PENDING_TIMEOUT,
         ("Seconds a TCP connection may take to become the link (TLS handshake, "
          "first frame) before it is closed."), _positiveSeconds],
        ["session-idle", None, DEFAULT_SESSION_IDLE,
         ("With --sessions: end a session after this many seconds without a "
          "datagram either way (0: never)."), _seconds],
        ["max-sessions", None, DEFAULT_MAX_SESSIONS,
         ("With --sessions: sessions at once; at the cap a client closes its least "
          "recently active session for a new source, a server refuses the new "
          "connection."), _wholeFrom(1, 1_000_000)],
        ["handshake", None, "none",
         ("What the connection carries before the first frame: none (the classic "
          "wire: Debian's udptunnel 1.1, mullvad's udp-over-tcp) or rfc1036 (Marco "
          "d'Itri's udptunnel: the client sends a 32-byte preamble, the server "
          "requires it)."), _profile],
        ["max-pending", None, DEFAULT_MAX_PENDING,
         ("TCP connections that may wait to become the link at once; one more "
          "closes the oldest (0: no cap)."), _wholeFrom(0, 1_000_000)],
    ]

    optFlags: list[list[Any]] = [
        ["sessions", None, SESSIONS_HELP],
        ["reuse-port", None,
         ("With --sessions: share the port with other processes started the same way "
          "(SO_REUSEPORT), each with sessions of its own, to use more cores: a server's "
          "--tcp, a client's --udp.")],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["udp-allow"] = []

    def opt_udp_allow(self, value: str) -> None:
        """
        CIDR (repeatable): in phantom mode, only these sources may send into the tunnel and be learned as the reply address.
        """
        with _blaming("--udp-allow"):
            self["udp-allow"].append(parseNetwork(value))

    def postOptions(self) -> None:
        if self["tcp"] is None:
            raise usage.UsageError("--tcp is required")
        self["tcp"] = self.parseTCP(self["tcp"])
        if self["udp"] is None and self["peer"] is None:
            raise usage.UsageError("--udp is required unless --peer is given")
        udp = peer = None
        adopted = None
        with _blaming("--udp"):
            if self["udp"] is not None:
                which = parseSystemdUDP(self["udp"])
                if which is not None:
                    adopted = systemdDatagramSocket(which)
                    udp = HostPort(adopted[1], adopted[2])
                else:
                    udp = splitHostPort(self["udp"], requireHost=False, allowZero=True)
        with _blaming("--peer"):
            if self["peer"] is not None:
                peer = splitHostPort(self["peer"])
        try:
            self["plan"] = planUDP(udp, peer)
        except ValueError as e:
            # planUDP names the option to blame.
            raise usage.UsageError(str(e)) from None
        if adopted is not None:
            self["plan"] = self["plan"]._replace(fd=adopted[0])
        if self["udp-allow"] and self["peer"] is not None:
            raise usage.UsageError("--udp-allow is for phantom mode: not with --peer")
        if self["metrics"] is not None:
            self["metrics"] = metricsEndpoint(self["metrics"])
        self["settings"] = SocketSettings(
            udpReceiveBuffer=self["udp-rcvbuf"],
            udpSendBuffer=self["udp-sndbuf"],
            tcpReceiveBuffer=self["tcp-rcvbuf"],
            tcpSendBuffer=self["tcp-sndbuf"],
            keepaliveIdle=self["keepalive-idle"],
            keepaliveInterval=self["keepalive-interval"],
            keepaliveCount=self["keepalive-count"],
            userTimeout=self["user-timeout"],
        )
        try:
            checkSettings(self["settings"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["credentials"] = self.loadCredentials()
        if self["sessions"]:
            if self["idle-timeout"]:
                raise usage.UsageError(
                    "--idle-timeout is for the single link: with --sessions each session "
                    "ends after --session-idle")
            self.checkSessions()
        elif self["reuse-port"]:
            raise usage.UsageError(
                "--reuse-port is for --sessions: one link cannot be shared by processes")

    def checkSessions(self) -> None:
        raise NotImplementedError()

    def loadCredentials(self) -> Credentials | None:
        files = [self["tls-cert"], self["tls-key"], self["tls-ca"]]
        if not any(files):
            return None
        if not all(files):
            raise usage.UsageError("TLS needs all three of --tls-cert, --tls-key, --tls-ca")
        try:
            from udptunnel.link.tls import loadCredentials
        except ImportError as e:
            raise usage.UsageError(
                f"TLS needs pyOpenSSL: {TLS_INSTALL} ({e})"
            ) from None
        with _blaming("TLS"):
            return loadCredentials(*files)

    def parseTCP(self, value: str) -> Any:
        raise NotImplementedError()


class ServerOptions(_EndOptions):
    synopsis = "--tcp PORT|ENDPOINT [--udp [HOST:]PORT] [--peer HOST:PORT] [options]"
    longdesc = ("Listen for the tunnel's TCP link; a new connection takes it over with its "
                "first frame, or from a link silent for 3 s.")
    optParameters = [
        [
            "tcp",
            None,
            None,
            (
                "Required. Where to listen: a port (all interfaces) or a Twisted "
                "server endpoint (tcp:9999:interface=127.0.0.1, tcp6:9999, ssl:..., "
                "unix:..., systemd:...)."
            ),
        ],
    ]

    optFlags = [
        ["proxy-protocol", None,
         ("Every connection begins with a PROXY protocol header (v1 or v2, as a load "
          "balancer such as HAProxy sends): --allow, the logs and the metrics see the "
          "client it names. A connection without one is closed.")],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allow"] = []

    def opt_allow(self, value: str) -> None:
        """
        CIDR (repeatable): only connections from these networks may become the link; others are closed at once.
        """
        with _blaming("--allow"):
            self["allow"].append(parseNetwork(value))

    def parseTCP(self, value: str) -> str:
        return _serverEndpoint(value, "--tcp", dualStack=True)

    def elsewhere(self) -> dict[str, str]:
        return _onlyIn(ClientOptions, ServerOptions)

    def postOptions(self) -> None:
        if self["sessions"] and self["peer"] is None:
            self.checkSessions()  # before --udp's own complaint, which is beside the point
        super().postOptions()
        if self["proxy-protocol"] and self["credentials"] is not None:
            raise usage.UsageError(
                "--proxy-protocol is not for --tls-cert: the balancer's header comes "
                "before the TLS handshake, which this server would read first")
        if self["sessions"]:
            self["tcp"] = _withBacklog(self["tcp"])
        if self["reuse-port"] and self["tcp"].split(":", 1)[0] not in ("tcp", "tcp6"):
            raise usage.UsageError(
                "--reuse-port needs a TCP --tcp (a port, tcp:... or tcp6:...); with "
                "systemd, give each worker's .socket unit ReusePort=yes instead")

    def checkSessions(self) -> None:
        if self["peer"] is None:
            raise usage.UsageError(
                "server --sessions needs --peer: each connection gets its own UDP socket "
                "connected to the peer. A listening end in phantom mode cannot tell which "
                "connection a datagram is for: put --sessions on the connecting end "
                "(client --sessions, in phantom mode) instead")
        if self["plan"].fd is not None:
            raise usage.UsageError(
                "--udp systemd: is not for server --sessions: each connection gets a UDP "
                "socket of its own, bound here")
        if self["plan"].port != 0:
            raise usage.UsageError(
                "--udp: with --sessions each connection gets its own ephemeral UDP port; "
                "give the address alone as HOST:0, or leave --udp out")


class ClientOptions(_EndOptions):
    synopsis = "--tcp HOST:PORT|ENDPOINT [--udp [HOST:]PORT] [--peer HOST:PORT] [options]"
    longdesc = "Connect the tunnel's TCP link, and reconnect forever when it drops."
    optParameters = [
        [
            "tcp",
            None,
            None,
            (
                "Required. Where to connect: HOST:PORT ([IPv6]:PORT; names resolve "
                "to IPv4 and IPv6) or a Twisted client endpoint (tcp:..., tls:..., "
                "unix:...)."
            ),
        ],
        ["tls-name", None, None,
         ("With TLS: the name (or IP address) the server's certificate must carry "
         "(default: the host of --tcp HOST:PORT).")],
        ["proxy", None, None,
         ("Connect through a proxy: http://[USER:PASSWORD@]HOST:PORT (HTTP CONNECT) "
          "or socks5://[USER:PASSWORD@]HOST:PORT; the proxy resolves --tcp's host. "
          "TLS runs end to end, inside."),
         parseProxy],
    ]

    def parseTCP(self, value: str) -> HostPort | str:
        kind = value.split(":")[0]
        if kind in _ENDPOINT_TYPES:
            _needTLS(kind, "--tcp")
            with _blaming("--tcp"):
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
        except usage.UsageError:
            raise usage.UsageError(f"--tcp: {notHostPort}") from None
        return value

    def elsewhere(self) -> dict[str, str]:
        return _onlyIn(ServerOptions, ClientOptions)

    def checkSessions(self) -> None:
        if self["plan"].peer is not None:
            raise usage.UsageError(
                "client --sessions opens a connection per UDP source, for a phantom end: "
                "not with --peer (a fixed peer is one source: leave --sessions out, or put "
                "--sessions on the listening end, server --sessions --peer)")

    def postOptions(self) -> None:
        super().postOptions()
        if self["reuse-port"] and (self["plan"].fd is not None or self["plan"].port == 0):
            raise usage.UsageError(
                "--reuse-port shares --udp: give it a port (HOST:PORT); with systemd, "
                "give each worker's .socket unit ReusePort=yes instead")
        if self["proxy"] is not None and not isinstance(self["tcp"], HostPort):
            raise usage.UsageError(
                "--proxy: give --tcp as HOST:PORT (the proxy connects to it), "
                "not an endpoint description")
        if self["credentials"] is not None and self["tls-name"] is None:
            if not isinstance(self["tcp"], HostPort):
                raise usage.UsageError("with TLS and an endpoint description, give --tls-name")
            self["tls-name"] = self["tcp"].host


class RunOptions(_WithExample):
    synopsis = "--config FILE [--check]"
    longdesc = (
        "Run every tunnel of a TOML config file (one [tunnel.NAME] table each, "
        "whose keys are the long options of server or client, plus role = "
        "\"server\" or \"client\"). SIGUSR2 reloads the file: tunnels added, "
        "removed or changed are started, stopped or restarted; the others keep "
        "their links."
    )
    optParameters = [
        ["config", "c", None, "Required. The TOML file of the tunnels."],
    ]
    optFlags = [
        ["check", None, ("Check the file, say what it would run, and exit (status 0 "
                         "if it is good, 1 if not).")],
    ]

    def postOptions(self) -> None:
        if self["config"] is None:
            raise usage.UsageError("--config is required")
        # A daemon's working directory may change; a reload reads this path.
        self["config"] = os.path.abspath(self["config"])
        self["loaded"] = loadConfig(self["config"], PARSERS)
        if self["check"]:
            print(describeConfig(self["loaded"]))
            raise SystemExit(0)


def _onlyIn(other: type[usage.Options], this: type[usage.Options]) -> dict[str, str]:
    """
    The long options of command C{other} that command C{this} lacks.
    """
    names = {name.rstrip("=") for name in other().longOpt}
    mine = {name.rstrip("=") for name in this().longOpt}
    command = "server" if other is ServerOptions else "client"
    return dict.fromkeys(sorted(names - mine), command)


def describeConfig(config: Config) -> str:
    """
    What a config file runs, in a few lines (C{--check}).
    """
    lines = [f"{config.path}: {len(config.tunnels)} tunnel(s)"
             + (f", metrics on {config.metrics}" if config.metrics else "")]
    for tunnel in config.tunnels.values():
        words = [tunnel.role]
        for argument in tunnel.argv:
            option, equals, value = argument.partition("=")
            words += [option, shlex.quote(value)] if equals else [option]
        lines.append(f"  {tunnel.name}: udptunnel {' '.join(words)}")
    return "\n".join(lines)


def _optionsFor(role: str) -> usage.Options:
    return ServerOptions() if role == "server" else ClientOptions()


def _binds(role: str, options: usage.Options) -> list[Bind]:
    """
    The sockets a tunnel binds: its UDP socket, and a server's listener.
    """
    binds = [udpBind(options["plan"])]
    if role == "server":
        binds.append(serverBind(options["tcp"]))
    return [bind for bind in binds if bind is not None]


#: How a config file is checked: by the command line's own parsers.
PARSERS = Parsers(optionsFor=_optionsFor, metrics=lambda text: metricsEndpoint(text),
                  binds=_binds)


class Options(_WithExample):
    synopsis = "server|client|run [options]"
    longdesc = (
        "Carry UDP datagrams through one TCP connection, both ways (each datagram "
        "framed by a 2-byte big-endian length)."
    )
    subCommands = [
        ["server", None, ServerOptions, "Listen for the TCP link."],
        ["client", None, ClientOptions, "Connect the TCP link, reconnecting forever."],
        ["run", None, RunOptions, "Run the tunnels of a config file (--config FILE)."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Under a runner (twistd, twist), end a bad command line here, with
        status 1 and L{usageError}'s few lines: twistd would print the whole
        help before the error, and twist exit with status 64.  Parsed on its
        own (as in tests), it raises L{usage.UsageError} as usual.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            failed: _WithExample = getattr(self, "subOptions", None) or self
            raise SystemExit(failed.usageError(e)) from None
        except ConfigError as e:
            # The file is wrong, not the command line: its error alone.
            if self.parent is None:
                raise
            raise SystemExit(f"{self.commandLine()} run: {e}") from None
        if _daemonising(self):
            # twistd forks before the tunnel binds, and it is the parent that
            # reports what went wrong: see reportStartupErrorsCleanly.
            reportStartupErrorsCleanly()

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose server, client or run")


#: The listen backlog of a server with sessions: many clients (a client
#: with --sessions, a burst of DNS queries) connect at once, and Twisted's
#: default of 50 drops the rest of a burst, each retried a second later.
SESSIONS_BACKLOG = 1024


def _withBacklog(description: str) -> str:
    """
    A TCP server endpoint description with L{SESSIONS_BACKLOG}, unless it
    gives a backlog of its own (or is no TCP endpoint).
    """
    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6") or "backlog=" in description:
        return description
    return f"{description}:backlog={SESSIONS_BACKLOG}"


def _inForeground(options: usage.Options) -> bool:
    """
    Whether start-up errors should end the process with a message (twistd -n,
    twist) rather than an exception a daemonising twistd reports itself.
    """
    parent = getattr(options, "parent", None)
    return parent is not None and bool(parent.get("nodaemon", True))


def _daemonising(options: usage.Options) -> bool:
    """
    Whether twistd will fork a daemon, whose start-up errors its parent
    reports.
    """
    parent = getattr(options, "parent", None)
    return parent is not None and not parent.get("nodaemon", True)


def _underRunner(options: usage.Options) -> bool:
    """
    Whether a runner (twistd, twist) runs us, whose process the signals
    are for (parsed on its own, as in tests, the options have no parent).
    """
    return getattr(options, "parent", None) is not None


def _listener(description: str, factory: IProtocolFactory, format: str,
              reactor: Any, log: Any = None) -> IService:
    """
    C{strports.service} (which stops twistd with the reason when it cannot
    listen), whose endpoint logs where it listens once it does.  A
    C{systemd:} socket is adopted our way (L{SystemdStreamEndpoint}), so
    that a reload can restart its tunnel.
    """
    service = strports.service(description, factory, reactor=reactor)
    if splitDescription(description)[0] == "systemd":
        service.endpoint = SystemdStreamEndpoint(reactor, *systemdStreamSocket(description))
    service.endpoint = AnnouncingEndpoint(service.endpoint, format, log)
    return service


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Wire the tunnel (or a config file's tunnels) and what the process has
    once: the metrics listener, the log reopener, and last systemd's
    notifications.
    """
    if reactor is None:
        from twisted.internet import reactor
    from udptunnel.ops.metrics import metricsSite

    top: Any
    if options.subCommand == "run":
        top = _tunnelSet(options.subOptions["loaded"], _inForeground(options), reactor)
        metrics, site = top.config.metrics, lambda: metricsSite(tunnels=top.tunnels)
    else:
        end = options.subOptions
        top = tunnelService(end, options.subCommand == "client", reactor,
                            _inForeground(options))
        metrics, site = end["metrics"], lambda: metricsSite(top)
    if metrics is not None:
        from udptunnel.ops.limits import BoundedFactory

        _listener(metrics, BoundedFactory(site(), reactor, "metrics"),
                  "serving metrics on http://{address}/metrics and the status on /status"
                  + _reach(metrics), reactor).setServiceParent(top)
    if _underRunner(options):
        # Whatever twistd logs to (--logfile, its default twistd.log, or
        # standard output in the foreground): SIGHUP must never kill it.
        LogReopener(reactor).setServiceParent(top)
        # The process's reactor, not a test suite's.
        LeanDispatch(reactor).setServiceParent(top)
    notifying = notifyService(top, reactor)
    if notifying is not None:
        notifying.setServiceParent(top)  # the last child: READY once all started
    return top


def _reach(description: str) -> str:
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


def _tunnelSet(config: Config, foreground: bool, reactor: Any) -> Any:
    """
    The tunnels of a config file, reloaded from it on SIGUSR2.
    """
    from udptunnel.cli.tunnelset import TunnelSet

    def build(tunnel: TunnelConfig, atStart: bool) -> TunnelService:
        # A tunnel that cannot bind at start ends the process (as a command
        # line would); at a reload it is logged, and the others run on.
        return tunnelService(tunnel.options, tunnel.role == "client", reactor,
                             foreground and atStart, name=tunnel.name)

    return TunnelSet(config, lambda: loadConfig(config.path, PARSERS), build, reactor)


def tunnelService(end: usage.Options, client: bool, reactor: Any,
                  exitOnStartupError: bool, name: str | None = None) -> TunnelService:
    """
    The service of one tunnel, with its sockets and connections as
    children, from its parsed options C{end}.
    """
    common = {
        "exitOnStartupError": exitOnStartupError,
        "statsInterval": end["stats-interval"],
        "pendingTimeout": end["pending-timeout"],
        "maxPending": end["max-pending"],
        "name": name,
    }
    if end["sessions"]:
        return _sessions(end, client, common, reactor)
    return _singleLink(end, client, common, reactor)


def _singleLink(end: usage.Options, client: bool, common: dict[str, Any],
                reactor: Any) -> TunnelService:
    """
    The default: one UDP socket, one link.
    """
    plan = end["plan"]
    relay = Relay(
        reactor,
        udpPeer=plan.peer,
        allow=_filter(end.get("allow")),
        udpAllow=_filter(end["udp-allow"]),
        idleTimeout=end["idle-timeout"],
        role="client" if client else "server",
        **common,
    )
    settings, credentials = end["settings"], end["credentials"]
    _udpService(plan, relay, settings, reactor).setServiceParent(relay)
    factory = TunnelFactory(relay, settings, tls=credentials is not None,
                            handshake=handshakeFor(end["handshake"], client),
                            **_proxyProtocol(end))
    if client:
        endpoint, where = _clientEndpoint(end, reactor)
        reconnector = Reconnector(endpoint, factory, reactor, where, relay.stats,
                                  timeout=_connectTimeout(end["tcp"]), log=_namedLog(relay))
        relay.onLinkEnded = reconnector.linkEnded
        reconnector.setServiceParent(relay)
    else:
        _serverListener(end, factory, reactor, relay).setServiceParent(relay)
    return relay


def _sessions(end: usage.Options, client: bool, common: dict[str, Any],
              reactor: Any) -> TunnelService:
    """
    C{--sessions}: a connection per UDP source (client), or a UDP socket
    per connection (server).
    """
    plan = end["plan"]
    settings, credentials = end["settings"], end["credentials"]
    tls = credentials is not None
    handshake = handshakeFor(end["handshake"], client)
    limits = {"maxSessions": end["max-sessions"], "sessionIdle": end["session-idle"]}
    relay: ClientSessions | ServerSessions
    if client:
        endpoint, _ = _clientEndpoint(end, reactor)
        relay = ClientSessions(
            reactor,
            connectFrom(endpoint, lambda session: TunnelFactory(session, settings, tls=tls,
                                                                handshake=handshake)),
            udpAllow=_filter(end["udp-allow"]),
            **limits, **common,
        )
        _udpService(plan, relay, settings, reactor,
                    reusePort=end["reuse-port"]).setServiceParent(relay)
    else:
        relay = ServerSessions(
            reactor,
            plan.peer,
            _sessionSocket(plan, settings, reactor),
            allow=_filter(end.get("allow")),
            **limits, **common,
        )
        factory = TunnelFactory(relay, settings, tls=tls, handshake=handshake,
                                **_proxyProtocol(end))
        listening = ReusePortReactor(reactor) if end["reuse-port"] else reactor
        _serverListener(end, factory, listening, relay).setServiceParent(relay)
    return relay


def _proxyProtocol(end: usage.Options) -> dict[str, Any]:
    """
    A server factory's C{--proxy-protocol} argument (a client has none).
    """
    return {"proxyProtocol": bool(end.get("proxy-protocol"))}


def _filter(networks: Any) -> AddressFilter | None:
    return AddressFilter(networks) if networks else None


def _udpService(plan: Any, relay: Any, settings: SocketSettings, reactor: Any,
                reusePort: bool = False) -> UDPService:
    return UDPService(plan.port, TunnelDatagramProtocol(relay, settings), plan.interface,
                      reactor, fd=plan.fd, reusePort=reusePort)


def _sessionSocket(plan: Any, settings: SocketSettings, reactor: Any) -> Any:
    """
    How a server session gets its UDP socket: an ephemeral port on the
    C{--udp} host, connected to C{--peer}.
    """
    return lambda relay: connectedUDP(plan.interface, plan.peer,
                                      TunnelDatagramProtocol(relay, settings), reactor)


def _namedLog(relay: TunnelService) -> Any:
    """
    A named tunnel's logger, for what its children log; C{None} (their
    own) for the tunnel of a command line.
    """
    return relay.log if relay.name is not None else None


def _serverListener(end: usage.Options, factory: TunnelFactory, reactor: Any,
                    relay: TunnelService) -> IService:
    listening: IProtocolFactory = factory
    if end["credentials"] is not None:
        from udptunnel.link.tls import serverFactory

        listening = serverFactory(end["credentials"], factory)
    return _listener(end["tcp"], listening, "listening for the TCP link on {address}", reactor,
                     _namedLog(relay))


def _clientEndpoint(end: usage.Options, reactor: Any) -> tuple[IStreamClientEndpoint, str]:
    tcp = end["tcp"]
    endpoint: IStreamClientEndpoint
    proxy = end.get("proxy")
    if proxy is not None:
        # HOST:PORT only (postOptions): the proxy resolves and connects.
        toProxy = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=CONNECT_TIMEOUT)
        endpoint = ProxyEndpoint(reactor, toProxy, proxy, tcp.host, tcp.port)
        where = repr(endpoint)
    elif isinstance(tcp, HostPort):
        assert tcp.host is not None
        endpoint = HostnameEndpoint(reactor, tcp.host, tcp.port, timeout=CONNECT_TIMEOUT)
        where = f"{tcp.host}:{tcp.port}"
    else:
        endpoint, where = clientFromString(reactor, tcp), tcp
    if end["credentials"] is not None:
        from udptunnel.link.tls import clientEndpoint

        endpoint = clientEndpoint(end["credentials"], end["tls-name"], endpoint)
    return endpoint, where
