"""
C{python -m udptunnel status [URL]}: a running tunnel's C{/status} as a
compact table, the way C{wg show} shows a WireGuard interface; C{--json}
prints the document itself.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from twisted.python import usage

from udptunnel import __version__
from udptunnel.cli.addresses import splitHostPort
from udptunnel.cli.optionnames import checkExactNames
from udptunnel.show import printable

DEFAULT_URL = "http://127.0.0.1:9100/"
#: Seconds to wait for the endpoint: a tunnel answers at once, or not at all.
TIMEOUT = 5.0


class StatusOptions(usage.Options):
    synopsis = "[URL | [HOST:]PORT] [--json]"
    longdesc = (f"Show what a running udptunnel is doing, from its --metrics endpoint "
                f"(URL, default {DEFAULT_URL}; a bare PORT means 127.0.0.1:PORT): "
                "every tunnel, its link, its UDP peer, its sessions, traffic and drops.")
    optFlags = [["json", None, "Print the JSON document (/status) instead of the table."]]

    def parseOptions(self, options: list[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        checkExactNames(self, argv)
        super().parseOptions(argv)

    def parseArgs(self, target: str = DEFAULT_URL) -> None:
        self["url"] = endpointURL(target)

    def opt_version(self) -> None:
        """
        Print the version of udptunnel and exit.
        """
        print(f"udptunnel {__version__}")
        raise SystemExit(0)

    def getSynopsis(self) -> str:
        return f"Usage: python -m udptunnel status {self.synopsis}"


def endpointURL(target: str) -> str:
    """
    The URL of a metrics endpoint given as a URL, C{HOST:PORT} or a bare
    C{PORT} (on 127.0.0.1, where C{--metrics PORT} listens).

    @raise usage.UsageError: C{target} is none of these.
    """
    if target.isdigit():
        target = f"127.0.0.1:{target}"
    if "://" not in target:
        try:
            host, port = splitHostPort(target)
        except ValueError as e:
            raise usage.UsageError(f"not a URL, HOST:PORT or PORT: {e}") from None
        target = f"http://{f'[{host}]' if host and ':' in host else host}:{port}/"
    try:
        parts = urllib.parse.urlsplit(target)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as e:
        raise usage.UsageError(f"{printable(target)!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(f"{printable(target)!r} is not an http:// URL with a host")
    return target


def statusURL(url: str) -> str:
    """
    The C{/status} URL of a metrics endpoint's URL (its root, C{/metrics},
    or C{/status} itself).
    """
    base = url.split("?", 1)[0].rstrip("/")
    for suffix in ("/metrics", "/status"):
        base = base.removesuffix(suffix)
    return base + "/status"


def fetch(url: str) -> dict[str, Any]:
    """
    The status document at C{url}.

    @raise SystemExit: with a one-line reason when nothing (or something
        else) answers.
    """
    where = statusURL(url)
    try:
        with urllib.request.urlopen(where, timeout=TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"udptunnel status: {where}: HTTP {e.code} "
                         f"{printable(str(e.reason))}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        why = getattr(reason, "strerror", None) or str(reason)
        raise SystemExit(f"udptunnel status: cannot reach {where}: {printable(why)}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise SystemExit(f"udptunnel status: {where}: not a udptunnel status "
                         "(is it udptunnel's --metrics endpoint?)") from None
    if not isinstance(document, dict) or not isinstance(document.get("tunnels"), list):
        raise SystemExit(f"udptunnel status: {where}: not a udptunnel status")
    return document


def render(document: dict[str, Any]) -> str:
    """
    The document as text: a block per tunnel, keys aligned, sessions as
    a table.  Every string in it is shown escaped (L{printable}): it holds
    addresses a stranger may have chosen (a PROXY header's), and this goes
    to the operator's terminal.
    """
    blocks = []
    for tunnel in _escaped(document)["tunnels"]:
        rows = _rows(tunnel)
        width = max(len(key) for key, _ in rows)
        lines = [f"tunnel: {tunnel.get('name') or '(command line)'}"]
        lines += [f"  {key + ':':<{width + 1}} {value}" for key, value in rows]
        if tunnel.get("sessions"):
            lines += ["", *("  " + line for line in _sessionTable(tunnel["sessions"]))]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) or "no tunnels"


def _escaped(value: Any) -> Any:
    """
    C{value} (a JSON document) with every string, key or value, escaped.
    """
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {_escaped(key): _escaped(item) for key, item in value.items()}
    return value


def _rows(tunnel: dict[str, Any]) -> list[tuple[str, str]]:
    udp = tunnel["udp"]
    rows = []
    if tunnel["kind"] == "sessions":
        open_ = tunnel["links"].get("sessionsOpen", len(tunnel.get("sessions", [])))
        rows.append(("role", f"{tunnel['role']}, sessions ({open_} open)"))
        if udp.get("peer"):
            rows.append(("udp", f"a socket per session <-> {udp['peer']} (fixed)"))
        else:
            rows.append(("udp", f"{udp.get('local') or '-'}, a session per source"))
    else:
        rows.append(("role", f"{tunnel['role']}, single link"))
        link = tunnel["link"]
        rows.append(("link", f"up, {link['remote']}, for {duration(link['age'])}"
                     if link["up"] else "down"))
        peer = udp.get("peer") or "none learned yet"
        rows.append(("udp", f"{udp.get('local') or '-'} <-> {peer} ({udp['peerMode']})"))
    route = [f"fwmark {tunnel['fwmark']}"] if tunnel.get("fwmark") else []
    if tunnel.get("bindDevice"):
        route.append(f"device {tunnel['bindDevice']}")
    if route:
        rows.append(("route", ", ".join(route)))
    traffic = tunnel["traffic"]
    rows.append(("transfer", (f"{_amount(traffic['toTunnel'])} into the tunnel, "
                              f"{_amount(traffic['fromTunnel'])} out of it")))
    links = tunnel["links"]
    rows.append(("links", ", ".join(f"{event} {count}" for event, count in links.items()
                                    if event != "sessionsOpen")))
    if tunnel.get("pending"):
        rows.append(("pending", str(tunnel["pending"])))
    drops = {reason: n for reason, n in tunnel["drops"].items() if n}
    rows.append(("drops", ", ".join(f"{reason} {n}" for reason, n in sorted(drops.items()))
                 or "none"))
    return rows


def _sessionTable(sessions: list[dict[str, Any]]) -> list[str]:
    header = ("session peer", "link", "age", "into the tunnel", "out of it")
    table = [header] + [
        (session.get("peer") or "-", session.get("link") or "(connecting)",
         duration(session["age"]), _amount(session["toTunnel"]),
         _amount(session["fromTunnel"]))
        for session in sessions
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in table]


def _amount(way: dict[str, int]) -> str:
    count = way["datagrams"]
    return f"{size(way['bytes'])} ({count} datagram{'' if count == 1 else 's'})"


def size(count: float) -> str:
    """
    A byte count as people read it: C{512 B}, C{1.50 KiB}, C{3.20 MiB}.
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """
    An age as C{wg show} says it, to the second: C{1 h 2 min 3 s}.
    """
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min"))
             if n]
    return " ".join(parts + [f"{secs} s"]) if parts else f"{seconds:.1f} s"


def main(argv: list[str]) -> int:
    options = StatusOptions()
    # Options anywhere, as people type them (getopt stops at the URL).
    argv = [a for a in argv if a.startswith("-")] + [a for a in argv if not a.startswith("-")]
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"{options.getSynopsis()}\npython -m udptunnel status: {e}", file=sys.stderr)
        return 1
    document = fetch(options["url"])
    try:
        text = json.dumps(document, indent=1) if options["json"] else render(document)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SystemExit(f"udptunnel status: {statusURL(options['url'])}: not a udptunnel "
                         "status (a field is missing or of another kind)") from None
    print(text)
    return 0
