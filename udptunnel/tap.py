"""
The twistd plugin's command line and service wiring, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.application import internet, strports
from twisted.application.service import IService
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.python import usage

from .addresses import HostPort, planUDP, splitHostPort
from .protocols import MAX_DATAGRAM, TunnelDatagramProtocol, TunnelFactory
from .reconnect import ReportingEndpoint, retryDelay
from .relay import Relay

EXAMPLE = """\
Example (an app on the NAT box reaches pop.example.net:5072 via a relay host):
  natbox$ twistd -n udptunnel server --udp 5073 --tcp 9999
  relay$  twistd udptunnel client --tcp natbox:9999 --udp 34559 \\
              --peer pop.example.net:5072
"""

_UDP_HELP = (
    "Local UDP address to bind, [HOST:]PORT ([::1]:5073 for IPv6; without HOST: "
    "all interfaces). Required unless --peer is given (then an ephemeral port)."
)
_PEER_HELP = (
    "HOST:PORT: fixed destination of datagrams coming out of the tunnel; only "
    "datagrams from it are accepted. Without it (phantom mode) replies go to the "
    "source of the newest datagram received on --udp."
)

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


def _validate(check: Any, what: str, value: str) -> None:
    """
    Build an endpoint from C{value} and throw it away, so a bad description
    is a usage error now and not a traceback when the service starts.
    """
    from twisted.internet import reactor

    try:
        check(reactor, value)
    except Exception as e:  # noqa: BLE001 (parsers raise anything)
        raise usage.UsageError(f"--tcp: bad {what} {value!r}: {e}") from None


class _WithExample(usage.Options):
    """
    Every --help ends with the seed example, kept verbatim (a longdesc would
    be re-wrapped).
    """

    def getUsage(self, width: int | None = None) -> str:
        text = super().getUsage(width)
        # A parent shows its subcommand's usage when parsing failed in it.
        return text if EXAMPLE in text else text + "\n" + EXAMPLE


class _EndOptions(_WithExample):
    """
    What both ends share: the UDP side.
    """

    optParameters: list[list[Any]] = [
        ["udp", None, None, _UDP_HELP],
        ["peer", None, None, _PEER_HELP],
    ]

    def postOptions(self) -> None:
        if self["tcp"] is None:
            raise usage.UsageError("--tcp is required")
        self["tcp"] = self.parseTCP(self["tcp"])
        if self["udp"] is None and self["peer"] is None:
            raise usage.UsageError("--udp is required unless --peer is given")
        udp = peer = None
        with _blaming("--udp"):
            if self["udp"] is not None:
                udp = splitHostPort(self["udp"], requireHost=False, allowZero=True)
        with _blaming("--peer"):
            if self["peer"] is not None:
                peer = splitHostPort(self["peer"])
            self["plan"] = planUDP(udp, peer)

    def parseTCP(self, value: str) -> Any:
        raise NotImplementedError()


class ServerOptions(_EndOptions):
    synopsis = "--tcp PORT|ENDPOINT [--udp [HOST:]PORT] [--peer HOST:PORT]"
    longdesc = "Listen for the tunnel's TCP link; the newest connection is the link."
    optParameters = [
        [
            "tcp",
            None,
            None,
            (
                "Where to listen: a port (all interfaces) or a Twisted server endpoint "
                "(tcp:9999:interface=127.0.0.1, tcp6:9999, ssl:..., unix:..., systemd:...)."
            ),
        ],
    ]

    def parseTCP(self, value: str) -> str:
        description = f"tcp:{value}" if value.isdigit() else value
        _validate(serverFromString, "server endpoint", description)
        return description


class ClientOptions(_EndOptions):
    synopsis = "--tcp HOST:PORT|ENDPOINT [--udp [HOST:]PORT] [--peer HOST:PORT]"
    longdesc = "Connect the tunnel's TCP link, and reconnect forever when it drops."
    optParameters = [
        [
            "tcp",
            None,
            None,
            (
                "Where to connect: HOST:PORT ([IPv6]:PORT; names resolve to IPv4 and "
                "IPv6) or a Twisted client endpoint (tcp:..., tls:..., unix:...)."
            ),
        ],
    ]

    def parseTCP(self, value: str) -> HostPort | str:
        if value.split(":")[0] in _ENDPOINT_TYPES:
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


class Options(_WithExample):
    synopsis = "server|client [options]"
    longdesc = (
        "Carry UDP datagrams through one TCP connection, both ways (each datagram "
        "framed by a 2-byte big-endian length)."
    )
    subCommands = [
        ["server", None, ServerOptions, "Listen for the TCP link."],
        ["client", None, ClientOptions, "Connect the TCP link, reconnecting forever."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose server or client")


def _inForeground(options: usage.Options) -> bool:
    """
    Whether start-up errors should end the process with a message (twistd -n,
    twist) rather than an exception a daemonising twistd reports itself.
    """
    parent = getattr(options, "parent", None)
    return parent is not None and bool(parent.get("nodaemon", True))


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Wire the relay and its children: the UDP socket first (frames arriving
    on a fresh link need it), then the TCP listener or reconnecting client.
    """
    if reactor is None:
        from twisted.internet import reactor
    end = options.subOptions
    plan = end["plan"]
    relay = Relay(reactor, peer=plan.peer, exitOnStartupError=_inForeground(options))
    internet.UDPServer(
        plan.port,
        TunnelDatagramProtocol(relay),
        interface=plan.interface,
        maxPacketSize=MAX_DATAGRAM,
        reactor=reactor,
    ).setServiceParent(relay)
    factory = TunnelFactory(relay)
    tcp = end["tcp"]
    if options.subCommand == "server":
        strports.service(tcp, factory, reactor=reactor).setServiceParent(relay)
    else:
        if isinstance(tcp, HostPort):
            assert tcp.host is not None
            endpoint = HostnameEndpoint(reactor, tcp.host, tcp.port)
            where = f"{tcp.host}:{tcp.port}"
        else:
            endpoint, where = clientFromString(reactor, tcp), tcp
        internet.ClientService(
            ReportingEndpoint(endpoint, where, relay.stats),
            factory,
            retryPolicy=retryDelay,
            clock=reactor,
        ).setServiceParent(relay)
    return relay
