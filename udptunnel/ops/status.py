"""
What a running tunnel is doing, as one JSON document (C{/status} on the
metrics endpoint) and as the table C{python -m udptunnel status} prints.

The document is built from the services' own state at each request: the
link with its peer and age, the UDP socket and its peer, the sessions, the
traffic and the drops.  It says the same as the metrics, in the same
words, for one look rather than a time series.
"""

from __future__ import annotations

from typing import Any

from udptunnel import __version__
from udptunnel.show import showAddress
from udptunnel.tunnel.service import TunnelService
from udptunnel.tunnel.session import Session, Traffic, localAddress


def statusDocument(tunnels: list[tuple[str | None, TunnelService]]) -> dict[str, Any]:
    """
    The status of C{tunnels} (each with its name, C{None} for the tunnel
    of a command line).
    """
    return {"version": __version__,
            "tunnels": [tunnelStatus(name, relay) for name, relay in tunnels]}


def tunnelStatus(name: str | None, relay: TunnelService) -> dict[str, Any]:
    relay.summary()  # reads the kernel's drops, as a scrape does
    now = relay.clock.seconds()
    stats = relay.stats
    sessions = getattr(relay, "liveSessions", None)
    status: dict[str, Any] = {
        "name": name,
        "role": relay.role,
        "kind": "single-link" if sessions is None else "sessions",
    }
    links: dict[str, int] = stats.linkEvents(relay.role == "server")
    if sessions is None:
        link = getattr(relay, "link", None)
        learned = getattr(relay, "learnedPeer", None)
        status["link"] = ({"up": True, "remote": link.remote,
                           "age": _age(now, getattr(relay, "linkSince", now))}
                          if link is not None else {"up": False})
        status["udp"] = {"local": localAddress(getattr(relay, "udp", None)),
                         "peer": showAddress(relay.udpPeer or learned)
                         if (relay.udpPeer or learned) else None,
                         "peerMode": "fixed" if relay.udpPeer else "phantom"}
        status["traffic"] = _traffic(stats)
    else:
        live: list[Session] = sessions()
        udp = getattr(relay, "udp", None)
        status["udp"] = {"local": localAddress(udp),
                         "peer": showAddress(relay.udpPeer) if relay.udpPeer else None,
                         "peerMode": "fixed" if relay.udpPeer else "per-session"}
        status["traffic"] = _traffic(stats)
        status["sessions"] = [_session(session, now) for session in
                              sorted(live, key=lambda s: s.since)]
        links["sessionsOpen"] = len(live)
    status["links"] = links
    status["pending"] = relay.pendingCount()
    status["drops"] = stats.dropCounts()
    return status


def _session(session: Session, now: float) -> dict[str, Any]:
    link = session.link
    return {
        "peer": showAddress(session.peer) if session.peer else None,
        "local": localAddress(session.udp),
        "link": link.remote if link is not None else None,
        "age": _age(now, session.since),
        **_traffic(session.traffic),
    }


def _traffic(traffic: Traffic) -> dict[str, Any]:
    return {"toTunnel": {"datagrams": traffic.toTunnelDatagrams,
                         "bytes": traffic.toTunnelBytes},
            "fromTunnel": {"datagrams": traffic.fromTunnelDatagrams,
                           "bytes": traffic.fromTunnelBytes}}


def _age(now: float, since: float) -> float:
    return round(max(0.0, now - since), 1)
