"""
The builder: from a checked configuration to the services that run it.
Every object of the data path is made here, and joined: the tunnel's core
service, its UDP socket's service, its TCP listener or reconnector, and
what the process has once (metrics, the log's reopening, the lean event
dispatch, systemd's notifications).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint

from udptunnel._twisted.prepared import PreparedReactor
from udptunnel.cli.activation import SystemdStreamEndpoint, systemdStreamSocket
from udptunnel.cli.addresses import HostPort, splitDescription
from udptunnel.cli.settings import ProcessConfig, TunnelConfig
from udptunnel.cli.speedups import LeanDispatch
from udptunnel.cli.values import reach
from udptunnel.link.listening import AnnouncingEndpoint, ReusePortReactor
from udptunnel.link.preamble import handshakeFor
from udptunnel.link.protocol import TunnelFactory
from udptunnel.link.viaproxy import ProxyEndpoint
from udptunnel.ops.logreopen import LogReopener
from udptunnel.ops.notify import notifyService
from udptunnel.sockopts import routeSocket
from udptunnel.tunnel.access import AddressFilter
from udptunnel.tunnel.clientsessions import ClientSessions, connectFrom
from udptunnel.tunnel.lanes import Lanes, LaneService, SingleLane
from udptunnel.tunnel.reconnect import CONNECT_TIMEOUT, Reconnector
from udptunnel.tunnel.serversessions import ServerSessions
from udptunnel.tunnel.service import UDP_SERVICE, TunnelService
from udptunnel.tunnel.single import Relay
from udptunnel.udp.port import connectedUDP
from udptunnel.udp.protocol import TunnelDatagramProtocol
from udptunnel.udp.service import UDPService


@dataclass(frozen=True)
class Runner:
    """
    How the process runs.

    @ivar present: under a runner (twistd, twist), whose process the
        signals and the reactor are: not a test that builds services.
    @ivar foreground: a start-up error should end the process with its
        message (twistd -n, twist), not an exception that a daemonising
        twistd reports itself.
    """

    present: bool = False
    foreground: bool = False


def makeService(process: ProcessConfig, reactor: Any, runner: Runner = Runner()) -> IService:
    """
    Wire a process's tunnels (the one of a command line, or a config
    file's, reloaded from it) and what it has once: the metrics listener,
    the log's reopening and the lean event dispatch (under a runner), and
    last systemd's notifications.
    """
    from udptunnel.ops.limits import BoundedFactory
    from udptunnel.ops.metrics import metricsSite

    speedups = not process.plainTwisted
    # The pump's lanes: only under a runner, whose reactor the pump may run.
    lanes = Lanes() if speedups and runner.present else None
    top: Any
    if process.path is not None:
        top = _tunnelSet(process.path, reactor, runner.foreground, speedups, lanes)
        site = metricsSite(tunnels=top.tunnels)
    else:
        (tunnel,) = process.tunnels
        top = tunnelService(tunnel, reactor, runner.foreground, speedups, lanes)
        site = metricsSite(top)
    if process.metrics is not None:
        _listener(process.metrics, BoundedFactory(site, reactor, "metrics"),
                  "serving metrics on http://{address}/metrics and the status on /status"
                  + reach(process.metrics), reactor).setServiceParent(top)
    if runner.present:
        # Whatever twistd logs to (--logfile, its default twistd.log, or
        # standard output in the foreground): SIGHUP must never kill it.
        LogReopener(reactor).setServiceParent(top)
        if speedups:
            # The process's reactor, not a test suite's.
            LeanDispatch(reactor, lanes).setServiceParent(top)
    notifying = notifyService(top, reactor)
    if notifying is not None:
        notifying.setServiceParent(top)  # the last child: READY once all started
    return top


def _tunnelSet(path: str, reactor: Any, foreground: bool, speedups: bool,
               lanes: Lanes | None) -> Any:
    """
    The tunnels of the config file at C{path}, reloaded from it on SIGUSR2.
    """
    from udptunnel.cli.configfile import Table, loadConfig
    from udptunnel.cli.tunnelset import TunnelSet

    def build(table: Table, atStart: bool) -> TunnelService:
        # A tunnel that cannot bind at start ends the process (as a command
        # line would); at a reload it is logged, and the others run on.
        return tunnelService(table.config, reactor, foreground and atStart, speedups, lanes)

    return TunnelSet(loadConfig(path), lambda: loadConfig(path), build, reactor)


def tunnelService(config: TunnelConfig, reactor: Any, exitOnStartupError: bool = False,
                  speedups: bool = True, lanes: Lanes | None = None) -> TunnelService:
    """
    The service of one tunnel, with its sockets and connections as
    children.

    @param speedups: write frames straight to the socket when nothing is
        queued (L{udptunnel._twisted.writethrough}); C{False}:
        C{--plain-twisted}.
    @param lanes: the process's lanes, which a single link joins so that
        the compiled pump may carry its bytes (L{udptunnel.tunnel.lanes});
        C{None}: it never does.
    """
    common = {
        "exitOnStartupError": exitOnStartupError,
        "statsInterval": config.statsInterval,
        "pendingTimeout": config.pendingTimeout,
        "maxPending": config.maxPending,
        "name": config.name,
    }
    relay: TunnelService
    if config.sessions:
        relay = _sessions(config, common, reactor, speedups, lanes)
    else:
        relay = _singleLink(config, common, reactor, speedups)
        if lanes is not None:
            assert isinstance(relay, Relay)
            LaneService(lanes, SingleLane(relay, lanes)).setServiceParent(relay)
    relay.fwmark, relay.bindDevice = config.settings.fwmark, config.settings.bindDevice
    return relay


def _singleLink(config: TunnelConfig, common: dict[str, Any], reactor: Any,
                speedups: bool) -> TunnelService:
    """
    The default: one UDP socket, one link.
    """
    relay = Relay(
        reactor,
        udpPeer=config.udp.peer,
        allow=_filter(config.allow),
        udpAllow=_filter(config.udpAllow),
        idleTimeout=config.idleTimeout,
        role=config.role,
        hold=(config.holdAge, config.holdDatagrams, config.holdBytes)
        if config.holdAge > 0 else None,
        **common,
    )
    _udpService(config, relay, reactor).setServiceParent(relay)
    factory = _factory(config, relay, speedups)
    if config.client:
        endpoint, where = _clientEndpoint(config, reactor)
        reconnector = Reconnector(endpoint, factory, reactor, where, relay.stats,
                                  timeout=_connectTimeout(config.tcp), log=_namedLog(relay))
        relay.onLinkEnded = reconnector.linkEnded
        reconnector.setServiceParent(relay)
    else:
        _serverListener(config, factory, _routed(config, reactor), relay).setServiceParent(relay)
    return relay


def _sessions(config: TunnelConfig, common: dict[str, Any], reactor: Any,
              speedups: bool, lanes: Lanes | None) -> TunnelService:
    """
    C{--sessions}: a connection per UDP source (client), or a UDP socket
    per connection (server).
    """
    limits: dict[str, Any] = {"maxSessions": config.maxSessions,
                              "sessionIdle": config.sessionIdle}
    relay: ClientSessions | ServerSessions
    if config.client:
        endpoint, _ = _clientEndpoint(config, reactor)
        relay = ClientSessions(
            reactor,
            connectFrom(endpoint, lambda session: _factory(config, session, speedups)),
            udpAllow=_filter(config.udpAllow),
            lanes=lanes,
            **limits, **common,
        )
        _udpService(config, relay, reactor).setServiceParent(relay)
    else:
        interface, peer = config.udp.interface, config.udp.peer
        assert peer is not None
        relay = ServerSessions(
            reactor,
            peer,
            lambda session: connectedUDP(interface, peer,
                                         TunnelDatagramProtocol(session, config.settings),
                                         reactor, _prepare(config)),
            allow=_filter(config.allow),
            lanes=lanes,
            **limits, **common,
        )
        listening = _routed(config, reactor)
        if config.reusePort:
            listening = ReusePortReactor(listening)
        _serverListener(config, _factory(config, relay, speedups), listening,
                        relay).setServiceParent(relay)
    return relay


def _factory(config: TunnelConfig, relay: Any, speedups: bool) -> TunnelFactory:
    """
    The factory of the protocols of C{config}'s connections, reporting to
    C{relay}.
    """
    return TunnelFactory(relay, config.settings, tls=config.credentials is not None,
                         handshake=handshakeFor(config.handshake, config.client),
                         proxyProtocol=config.proxyProtocol, writeThrough=speedups)


def _filter(networks: Any) -> AddressFilter | None:
    return AddressFilter(networks) if networks else None


def _udpService(config: TunnelConfig, relay: Any, reactor: Any) -> UDPService:
    plan = config.udp
    # Only a socket towards --peer faces the network: a phantom end's
    # faces its applications, and a device or a mark would cut them off.
    service = UDPService(plan.port, TunnelDatagramProtocol(relay, config.settings),
                         plan.interface, reactor, fd=plan.fd, reusePort=config.reusePort,
                         prepare=_prepare(config) if plan.peer is not None else None)
    service.setName(UDP_SERVICE)
    return service


def _namedLog(relay: TunnelService) -> Any:
    """
    A named tunnel's logger, for what its children log; C{None} (their
    own) for the tunnel of a command line.
    """
    return relay.log if relay.name is not None else None


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


def _serverListener(config: TunnelConfig, factory: TunnelFactory, reactor: Any,
                    relay: TunnelService) -> IService:
    listening: IProtocolFactory = factory
    if config.credentials is not None:
        from udptunnel.link.tls import serverFactory

        listening = serverFactory(config.credentials, factory)
    assert isinstance(config.tcp, str)
    return _listener(config.tcp, listening, "listening for the TCP link on {address}",
                     reactor, _namedLog(relay))


def _routed(config: TunnelConfig, reactor: Any) -> Any:
    """
    The reactor as the tunnel's TCP endpoints should see it: with
    C{--fwmark} or C{--bind-device}, one whose TCP sockets are marked and
    bound to the device before they connect or bind.
    """
    if not config.settings.routed:
        return reactor
    return PreparedReactor(reactor, _prepare(config))


def _prepare(config: TunnelConfig) -> Any:
    """
    What marks a socket that faces the network, or C{None}.
    """
    settings = config.settings
    return (lambda sock: routeSocket(sock, settings)) if settings.routed else None


def _clientEndpoint(config: TunnelConfig, reactor: Any) -> tuple[IStreamClientEndpoint, str]:
    reactor = _routed(config, reactor)
    tcp = config.tcp
    endpoint: IStreamClientEndpoint
    if config.proxy is not None:
        # HOST:PORT only (checked): the proxy resolves and connects.
        assert isinstance(tcp, HostPort) and tcp.host is not None
        proxy = config.proxy
        toProxy = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=CONNECT_TIMEOUT)
        endpoint = ProxyEndpoint(reactor, toProxy, proxy, tcp.host, tcp.port)
        where = repr(endpoint)
    elif isinstance(tcp, HostPort):
        assert tcp.host is not None
        endpoint = HostnameEndpoint(reactor, tcp.host, tcp.port, timeout=CONNECT_TIMEOUT)
        where = f"{tcp.host}:{tcp.port}"
    else:
        endpoint, where = clientFromString(reactor, tcp), tcp
    if config.credentials is not None:
        from udptunnel.link.tls import clientEndpoint

        assert config.tlsName is not None
        endpoint = clientEndpoint(config.credentials, config.tlsName, endpoint)
    return endpoint, where


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
