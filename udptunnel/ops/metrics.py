"""
The counters in Prometheus' text format, over HTTP (C{--metrics}).

The format is written by C{prometheus_client}; a small twisted.web resource
serves it from the reactor thread, so no thread pool is involved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from udptunnel import __version__
from udptunnel.show import showAddress, showHost

if TYPE_CHECKING:
    from udptunnel.tunnel.service import TunnelService


#: What each label value of a labelled family means, by family: the manual's
#: reference of the metrics is generated from these and from the collector
#: (a test checks that every value the code can count is here).  A send
#: error not listed is counted under its errno name.
LABEL_VALUES: dict[str, dict[str, str]] = {
    "udptunnel_dropped_datagrams": {
        "no-link": "no TCP link was up (or the session had none), and it was not held "
                   "(--hold 0, or --sessions)",
        "no-address": "a phantom end had not learned where to send yet",
        "no-socket": "the UDP socket was closed",
        "foreign-source": "it came from another source than --peer",
        "udp-not-allowed": "its source is outside --udp-allow",
        "oversize": "it is larger than a UDP datagram to the peer can be",
        "replaced-link": "it arrived on a link (or a session's connection) that was "
                         "just replaced",
        "kernel-overflow": "the kernel dropped it: the UDP socket's receive buffer was "
                           "full (read from /proc/net/udp)",
        "no-session": "it arrived on a server's connection whose session had ended",
        "expired": "it was held for the next link (--hold) longer than --hold seconds",
        "hold-full": "it came while there was no link, and the hold queue was full "
                     "(--hold-datagrams, --hold-bytes)",
        "queue-full": "a client session's queue, while its connection is made, was full "
                      "(64 datagrams, 256 KiB a session, 16 MiB in all)",
        "congested": "a client session's link could not keep up (its sessions share "
                     "one UDP socket, so this one's datagrams are dropped)",
        "connect-failed": "it was queued for a client session whose connection never "
                          "came up",
        "EAGAIN": "sending it failed: the socket's send buffer was full",
        "ENOBUFS": "sending it failed: the kernel had no buffer for it",
        "ECONNREFUSED": "sending it failed: the peer's port was closed (an ICMP error)",
        "EHOSTUNREACH": "sending it failed: no route to the peer's host",
        "ENETUNREACH": "sending it failed: no route to the peer's network",
        "EPERM": "sending it failed: a firewall rule refused it",
    },
    "udptunnel_links": {
        "up": "a TCP connection became the link (a client's: once it proved itself)",
        "lost": "the link ended: closed by either side, or the connection was lost",
        "failed": "a connection never became the link: refused by the server, a failed "
                  "TLS handshake, a client's failed attempt",
        "replaced": "a live link was taken over by a newer connection",
        "refused": "a connection from outside --allow was closed at once",
    },
    "udptunnel_link_takeovers": {
        "first-frame": "the newcomer sent its first frame",
        "link-silent": "no frame had come on the old link for 3 s",
    },
    "udptunnel_pending_closed": {
        "timeout": "it did not become the link within --pending-timeout",
        "evicted": "--max-pending was reached, and it was the oldest waiting",
        "peer-closed": "its peer closed it before it became the link (a probe, a health "
                       "check)",
        "handshake": "its first bytes were not the --handshake preamble (or were "
                     "rfc1036's, unasked)",
        "proxy-header": "its PROXY protocol header was malformed",
    },
    "udptunnel_internal_errors": {
        "datagrams": "an exception of ours while handling datagrams from the UDP socket",
        "frames": "an exception of ours while handling frames from a link",
    },
    "udptunnel_peer": {
        "fixed": "address is --peer, HOST:PORT",
        "phantom": "address is the host of the phantom peer learned, without its port "
                   "(an ephemeral port would make a new series at each restart of the "
                   "application)",
    },
    "udptunnel_sessions": {
        "opened": "a session began",
        "closed": "a session ended with its connection",
        "expired": "a session ended after --session-idle without a datagram",
        "evicted": "a client closed its least recently active session, at "
                   "--max-sessions, for a new source",
        "refused": "a server refused a connection at --max-sessions",
        "failed": "a server's session could not open its UDP socket",
    },
}


class RelayCollector:
    """
    Reads the relay's counters at each scrape.

    Every series a tunnel of this kind can have exists from the first
    scrape, at 0 (so C{rate()} and alerts work before the first event), and
    none it cannot have: a server has no connection attempts, a client no
    refused connections.  Labels take a bounded set of values; the phantom
    peer's ephemeral port is not one of them.
    """

    def __init__(self, relay: TunnelService) -> None:
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        relay = self._relay
        relay.summary()  # reads the kernel's drops on the socket
        stats = relay.stats
        server = relay.role == "server"
        for direction, way, datagrams, size in (
            ("to_tunnel", "into the tunnel, from UDP to the TCP side",
             stats.toTunnelDatagrams, stats.toTunnelBytes),
            ("from_tunnel", "out of the tunnel, from the TCP side to UDP",
             stats.fromTunnelDatagrams, stats.fromTunnelBytes),
        ):
            yield _counter(f"udptunnel_{direction}_datagrams", f"Datagrams carried {way}.",
                           datagrams)
            yield _counter(f"udptunnel_{direction}_bytes",
                           f"Bytes of datagrams carried {way} (without the framing).", size)
        yield _labelled("udptunnel_dropped_datagrams", "Datagrams dropped, by reason.",
                        "reason", stats.dropCounts(), ())
        yield _labelled("udptunnel_links", "TCP links, by event.", "event",
                        stats.linkEvents(server), ())
        if server:
            yield _labelled("udptunnel_link_takeovers",
                            "Links taken over from a live one, by why the newcomer won.",
                            "reason", stats.takeovers, ("first-frame", "link-silent"))
        yield _labelled("udptunnel_pending_closed",
                        "TCP connections closed before they became the link, by why.",
                        "reason", stats.pendingClosed,
                        ("timeout", "evicted", "peer-closed", "handshake", "proxy-header")
                        if server else ("timeout",))
        yield _labelled("udptunnel_internal_errors",
                        "Exceptions in the tunnel's own code while handling traffic.",
                        "where", stats.internalErrors, ("datagrams", "frames"))
        if not server:
            yield _counter("udptunnel_connect_attempts", "Client connection attempts.",
                           stats.connectAttempts)
            yield _counter("udptunnel_connect_failures", "Failed client connection attempts.",
                           stats.connectFailures)
        sessions = relay.sessionCount()
        if sessions is None:
            if relay.udpPeer is None:
                yield _counter("udptunnel_phantom_changes",
                               "Times the phantom end's source address changed.",
                               stats.phantomChanges)
            yield GaugeMetricFamily("udptunnel_link_up", "1 while a TCP link is up.",
                                    value=relay.linksUp())
        else:
            yield GaugeMetricFamily("udptunnel_sessions_open", "Sessions open (--sessions).",
                                    value=sessions)
            yield GaugeMetricFamily("udptunnel_session_links_up",
                                    "Sessions whose TCP connection is up.",
                                    value=relay.linksUp())
            yield _labelled("udptunnel_sessions", "Sessions, by event.", "event", {
                "opened": stats.sessionsOpened, "closed": stats.sessionsClosed,
                "expired": stats.sessionsExpired,
                **({"refused": stats.sessionsRefused, "failed": stats.sessionsFailed}
                   if server else {"evicted": stats.sessionsEvicted}),
            }, ())
        yield GaugeMetricFamily("udptunnel_pending_links",
                                "TCP connections waiting to become the link.",
                                value=relay.pendingCount())
        info = InfoMetricFamily("udptunnel_peer", "Where datagrams out of the tunnel go: "
                                "the fixed peer, or the phantom peer's host (no port).",
                                labels=["address", "mode"])
        learned = getattr(relay, "learnedPeer", None)
        if relay.udpPeer is not None:
            info.add_metric([showAddress(relay.udpPeer), "fixed"], {})
        elif learned is not None:
            info.add_metric([showHost(learned[0]), "phantom"], {})
        yield info
        yield _build()


def _build() -> Metric:
    build = InfoMetricFamily("udptunnel_build", "The version of udptunnel running.",
                             labels=["version"])
    build.add_metric([__version__], {})
    return build


class TunnelsCollector:
    """
    The series of several named tunnels (a config file's) in one
    exposition: each family once, each of its series with a C{tunnel}
    label; the build once, for the process.
    """

    def __init__(self, tunnels: Callable[[], list[tuple[str, TunnelService]]]) -> None:
        """
        @param tunnels: the tunnels running now, with their names (asked at
            each scrape: a reload adds and removes tunnels).
        """
        self._tunnels = tunnels

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for name, relay in self._tunnels():
            for metric in RelayCollector(relay).collect():
                if metric.name == "udptunnel_build":
                    continue
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = Metric(
                        metric.name, metric.documentation, metric.type, metric.unit)
                family.samples.extend(
                    sample._replace(labels={"tunnel": name, **sample.labels})
                    for sample in metric.samples)
        yield from families.values()
        yield _build()


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled(name: str, documentation: str, label: str, counts: Mapping[str, int],
              known: Iterable[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    values = dict.fromkeys(known, 0)
    values.update(counts)
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)

    def render_HEAD(self, request: Request) -> bytes:
        """
        The headers of a GET, without the body (Twisted would otherwise
        render the GET and log a warning for every HEAD).
        """
        body = self.render_GET(request)
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        return b""


class _OneRequest(http.HTTPChannel):
    """
    A connection that carries one request: its answer says C{Connection:
    close}, and the connection closes after it.  So the limit on a
    connection's life (L{udptunnel.ops.limits.DEADLINE}) is a limit on one
    request, and never cuts a scraper's kept-alive connection between two
    scrapes.
    """

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False


class _QuietSite(Site):
    """
    A site that keeps no access log: a scrape every few seconds would
    otherwise be a log line every few seconds, for ever.
    """

    noisy = False
    # A plain HTTPChannel (HTTP/1.1 only: no TLS, so no HTTP/2 to negotiate).
    protocol = _OneRequest  # type: ignore[assignment]

    def log(self, request: http.Request) -> None:
        pass

    def logPrefix(self) -> str:
        """
        The name Twisted's port gives the site in its own log lines.
        """
        return "udptunnel metrics"


class StatusResource(Resource):
    """
    C{/status}: every tunnel's state as JSON (L{udptunnel.ops.status}).
    """

    isLeaf = True

    def __init__(self, tunnels: Callable[[], list[tuple[str | None, TunnelService]]]) -> None:
        super().__init__()
        self._tunnels = tunnels

    def render_GET(self, request: Request) -> bytes:
        from udptunnel.ops.status import statusDocument

        request.setHeader(b"Content-Type", b"application/json")
        document = statusDocument(self._tunnels())
        return json.dumps(document, indent=1).encode() + b"\n"


class _Root(Resource):
    """
    C{/status} is the status; every other path the metrics (as before
    C{/status} existed, so any scrape path keeps working).
    """

    def __init__(self, metrics: Resource, status: Resource) -> None:
        super().__init__()
        self._metrics = metrics
        self._status = status

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self._status if path == b"status" else self._metrics

    def render(self, request: Request) -> bytes:
        return self._metrics.render(request)


def metricsSite(relay: TunnelService | None = None,
                tunnels: Callable[[], list[tuple[str, TunnelService]]] | None = None) -> Site:
    """
    The site of one tunnel's series (C{relay}), or of named C{tunnels}',
    and their status at C{/status}.
    """
    registry = CollectorRegistry(auto_describe=True)
    listed: Callable[[], list[tuple[str | None, TunnelService]]]
    if relay is not None:
        registry.register(RelayCollector(relay))
        listed = lambda: [(None, relay)]
    else:
        assert tunnels is not None
        registry.register(TunnelsCollector(tunnels))
        listed = tunnels  # type: ignore[assignment]
    return _QuietSite(_Root(MetricsResource(registry), StatusResource(listed)))
