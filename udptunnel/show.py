"""
How addresses and strings from the network are written in logs, metrics,
the status and on a terminal: one formatter, everywhere, and every string a
stranger may have chosen escaped.  A leaf: it imports nothing of ours.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """
    C{text} safe for one log line or a terminal: every character that is
    not printable (a control character such as ESC or a newline, a
    direction override) as its escape, C{\\x1b}, C{\\n}, C{\\u202e}.

    Every string that came from the network (an address a PROXY header
    named, a proxy's answer, an error a peer caused) goes through here
    before it reaches a log line or the operator's terminal, so that a
    stranger can neither forge a log line nor drive the terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def showHost(host: str) -> str:
    """
    An IP literal as people write it: an IPv4 address seen through a
    dual-stack IPv6 socket (C{::ffff:192.0.2.1}) as the IPv4 address it is;
    anything unprintable escaped (L{printable}).
    """
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:"):]
    return printable(host)


def showAddress(addr: tuple[str, int] | None) -> str:
    """
    C{host:port} for logs and metrics, an IPv6 host in brackets, C{nobody}
    for C{None}: the one formatter of addresses, everywhere.
    """
    if addr is None:
        return "nobody"
    host, port = showHost(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def logPrefixOf(relay: object, what: str) -> str:
    """
    The name a socket or a connection of C{relay}'s goes by in Twisted's
    own log lines: C{udptunnel TCP}, or with the tunnel's name, when it has
    one, C{udptunnel dns TCP}.
    """
    name = getattr(relay, "name", None)
    return f"udptunnel {name} {what}" if isinstance(name, str) else f"udptunnel {what}"
