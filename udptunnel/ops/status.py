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

#: Every field of the document, by its path (C{[]}: each item of a list;
#: C{*}: each key of an object), with what it says: the manual's reference
#: is generated from this, and a test checks it against documents of every
#: kind of tunnel.
FIELDS: dict[str, str] = {
    "version": "the version of udptunnel running",
    "tunnels": "every tunnel of the process, in the order of the config file",
    "tunnels[].name": "the tunnel's name in the config file; null for a command line's",
    "tunnels[].role": "server or client",
    "tunnels[].kind": "single-link, or sessions (--sessions)",
    "tunnels[].fwmark": "the mark of the sockets that face the network (--fwmark); null: "
                        "none",
    "tunnels[].bindDevice": "the interface they are bound to (--bind-device); null: none",
    "tunnels[].link": "single link: the TCP link",
    "tunnels[].link.up": "whether a link is up",
    "tunnels[].link.remote": "while up: the peer's address (the client a PROXY header "
                             "named, behind a balancer)",
    "tunnels[].link.age": "while up: seconds since it became the link",
    "tunnels[].udp": "the UDP side",
    "tunnels[].udp.local": "the address the UDP socket is bound to (null before it is, "
                           "and for a server's sessions, which have their own)",
    "tunnels[].udp.peer": "where datagrams out of the tunnel go: --peer, or the "
                          "phantom peer learned (null before one is)",
    "tunnels[].udp.peerMode": "fixed (--peer), phantom (learned), or per-session "
                              "(a client's sessions: each its own peer)",
    "tunnels[].traffic": "what the tunnel carried",
    "tunnels[].traffic.toTunnel": "from the UDP side into the TCP side",
    "tunnels[].traffic.toTunnel.datagrams": "datagrams",
    "tunnels[].traffic.toTunnel.bytes": "bytes of datagrams (without the framing)",
    "tunnels[].traffic.fromTunnel": "from the TCP side out to UDP",
    "tunnels[].traffic.fromTunnel.datagrams": "datagrams",
    "tunnels[].traffic.fromTunnel.bytes": "bytes of datagrams (without the framing)",
    "tunnels[].links": "the links' events, as udptunnel_links_total{event} counts them",
    "tunnels[].links.*": "a count by event: up, lost, failed, and on a server replaced "
                         "and refused",
    "tunnels[].links.sessionsOpen": "with --sessions: sessions open now",
    "tunnels[].pending": "TCP connections waiting to become the link",
    "tunnels[].drops": "datagrams dropped, by reason, as "
                       "udptunnel_dropped_datagrams_total{reason} counts them",
    "tunnels[].drops.*": "a count by reason (every reason always there, at 0 until "
                         "one is dropped)",
    "tunnels[].sessions": "with --sessions: each session, the oldest first",
    "tunnels[].sessions[].peer": "its UDP peer",
    "tunnels[].sessions[].local": "its UDP socket's address (a server's session has "
                                  "its own)",
    "tunnels[].sessions[].link": "its TCP connection's peer (null while it connects)",
    "tunnels[].sessions[].age": "seconds since it began",
    "tunnels[].sessions[].toTunnel": "what it carried into the tunnel",
    "tunnels[].sessions[].toTunnel.datagrams": "datagrams",
    "tunnels[].sessions[].toTunnel.bytes": "bytes",
    "tunnels[].sessions[].fromTunnel": "what it carried out of the tunnel",
    "tunnels[].sessions[].fromTunnel.datagrams": "datagrams",
    "tunnels[].sessions[].fromTunnel.bytes": "bytes",
}


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
        "fwmark": relay.fwmark or None,
        "bindDevice": relay.bindDevice or None,
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
