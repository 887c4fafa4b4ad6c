"""
The counters in Prometheus' text format, over HTTP (C{--metrics}).

The format is written by C{prometheus_client}; a small twisted.web resource
serves it from the reactor thread, so no thread pool is involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from .relay import Relay


class RelayCollector:
    """
    Reads the relay's counters at each scrape.
    """

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        stats = self._relay.stats
        for direction, datagrams, size in (
            ("to_tunnel", stats.toTunnelDatagrams, stats.toTunnelBytes),
            ("from_tunnel", stats.fromTunnelDatagrams, stats.fromTunnelBytes),
        ):
            yield _counter(f"udptunnel_{direction}_datagrams",
                           f"Datagrams carried {direction.replace('_', ' ')}.", datagrams)
            yield _counter(f"udptunnel_{direction}_bytes",
                           f"Bytes carried {direction.replace('_', ' ')}.", size)
        drops = CounterMetricFamily("udptunnel_dropped_datagrams",
                                    "Datagrams dropped, by reason.", labels=["reason"])
        for reason, count in sorted(stats.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        links = CounterMetricFamily("udptunnel_links", "TCP links, by event.",
                                    labels=["event"])
        for event, count in (("up", stats.linksUp), ("lost", stats.linksLost),
                             ("replaced", stats.linksReplaced),
                             ("refused", stats.linksRefused),
                             ("failed", stats.linksFailed)):
            links.add_metric([event], count)
        yield links
        yield _counter("udptunnel_connect_attempts", "Client connection attempts.",
                       stats.connectAttempts)
        yield _counter("udptunnel_connect_failures", "Failed client connection attempts.",
                       stats.connectFailures)
        yield GaugeMetricFamily("udptunnel_link_up", "1 while a TCP link is up.",
                                value=int(self._relay.link is not None))
        peer = self._relay.peer or self._relay.learned
        info = GaugeMetricFamily("udptunnel_peer", "The UDP peer datagrams go to.",
                                 labels=["address", "mode"])
        if peer is not None:
            info.add_metric([f"{peer[0]}:{peer[1]}",
                             "fixed" if self._relay.peer else "phantom"], 1)
        yield info


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class _QuietSite(Site):
    """
    A site that keeps no access log: a scrape every few seconds would
    otherwise be a log line every few seconds, for ever.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def metricsSite(relay: Relay) -> Site:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RelayCollector(relay))
    return _QuietSite(MetricsResource(registry))
