"""
The manual's reference, generated from the code so that it cannot drift:

- C{.. udptunnel-option:: NAME}: one option of C{server} and C{client},
  from the option schema (its value, roles, default, config key, help),
  then the directive's own text (the longer story), then the combinations
  the parser refuses that involve it, each with the parser's own message;
- C{.. udptunnel-options-check::}: fails the build (a warning, under
  C{-W}) when an option of the schema has no C{udptunnel-option} above it;
- C{.. udptunnel-config-keys::}: the keys of a config file, from the same
  schema;
- C{.. udptunnel-metrics::}: every metric family, read from the collector
  over a tunnel of each kind;
- C{.. udptunnel-status-fields::}: the fields of C{/status}, from the
  status module's list of them.

The functions that make the text are plain (no Sphinx needed), so the test
suite can check them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from udptunnel.cli.configfile import PROCESS_KEYS
from udptunnel.cli.schema import BOTH, CLIENT, OPTIONS, SERVER, Option
from udptunnel.cli.settings import OptionError, tunnelConfig

#: Combinations the parser refuses, each shown under the options it is
#: about with the message the parser gives for it (computed at build
#: time: an example that stops being refused fails the build).
REFUSED: tuple[tuple[str, dict[str, Any], tuple[str, ...]], ...] = (
    (SERVER, {"udp": "5073"}, ("tcp",)),
    (SERVER, {"tcp": "9999"}, ("udp", "peer")),
    (SERVER, {"tcp": "9999", "udp": "[::1]:5073", "peer": "192.0.2.1:5072"}, ("udp", "peer")),
    (CLIENT, {"tcp": "relay:9999", "peer": "192.0.2.1:5072", "udp-allow": ["10.0.0.0/8"]},
     ("udp-allow",)),
    (CLIENT, {"tcp": "relay:9999", "udp": "5073", "tls-cert": "client.pem"},
     ("tls-cert", "tls-key", "tls-ca")),
    (SERVER, {"tcp": "9999", "peer": "192.0.2.1:5072", "sessions": True, "idle-timeout": "60"},
     ("sessions", "idle-timeout")),
    (SERVER, {"tcp": "9999", "udp": "5073", "sessions": True}, ("sessions", "peer")),
    (SERVER, {"tcp": "9999", "udp": "5073", "peer": "192.0.2.1:5072", "sessions": True},
     ("sessions", "udp")),
    (CLIENT, {"tcp": "relay:9999", "peer": "192.0.2.1:5072", "sessions": True},
     ("sessions", "peer")),
    (SERVER, {"tcp": "9999", "udp": "5073", "reuse-port": True}, ("reuse-port",)),
    (SERVER, {"tcp": "unix:/run/udptunnel.sock", "peer": "192.0.2.1:5072", "sessions": True,
              "reuse-port": True}, ("reuse-port",)),
    (CLIENT, {"tcp": "relay:9999", "sessions": True, "reuse-port": True, "udp": "127.0.0.1:0"},
     ("reuse-port",)),
    (CLIENT, {"tcp": "tcp:relay:9999", "udp": "5073", "proxy": "http://proxy:3128"},
     ("proxy",)),
)


def optionNames() -> list[str]:
    """
    Every option's name once, in the order of the schema.
    """
    return list(dict.fromkeys(option.name for option in OPTIONS))


def commandLine(role: str, given: dict[str, Any]) -> str:
    """
    The command line of a refused example, as a user would type it.
    """
    words = [role]
    for name, value in given.items():
        for one in value if isinstance(value, list) else [value]:
            words.append(f"--{name}" if one is True else f"--{name} {one}")
    return " ".join(words)


def refusals(name: str) -> Iterator[tuple[str, str]]:
    """
    The refused examples about option C{name}: each command line and the
    parser's message for it.

    @raise ValueError: an example the parser accepts.
    """
    for role, given, about in REFUSED:
        if name not in about:
            continue
        try:
            tunnelConfig(role, given)
        except OptionError as e:
            yield commandLine(role, given), str(e)
        else:
            raise ValueError(f"{commandLine(role, given)} is no longer refused")


def _roles(roles: frozenset[str]) -> str:
    return "server and client" if roles == BOTH else f"{next(iter(roles))} only"


def optionLines(name: str) -> tuple[list[str], list[str]]:
    """
    The text of option C{name} as reST: what comes before the directive's
    own text (its signature and facts), and what comes after it (the
    refused combinations).

    @raise KeyError: no option has that name.
    """
    versions = [option for option in OPTIONS if option.name == name]
    if not versions:
        raise KeyError(name)
    signatures = [f"--{name} {o.value}" if o.value else f"--{name}" for o in versions]
    head = [".. option:: " + ", ".join(dict.fromkeys(signatures)), ""]
    roles = frozenset().union(*(o.roles for o in versions))
    first = versions[0]
    facts = [f"**{_roles(roles)}**"]
    if first.default not in (None, "") and not first.flag:
        facts.append(f"default ``{first.default}``")
    if first.repeatable:
        facts.append("repeatable")
    facts.append(("once, at the top of a config file: ``" if first.process
                  else "config key ``") + name + "``")
    head += ["   " + " · ".join(facts), ""]
    for option in versions:
        prefix = f"*{next(iter(option.roles))}*: " if len(versions) > 1 else ""
        head += ["   " + prefix + _escape(option.help), ""]
    tail: list[str] = []
    refused = list(refusals(name))
    if refused:
        tail += ["   Refused (the parser's own words):", ""]
        for line, message in refused:
            tail += [f"   * ``{line}``: {_escape(message)}"]
        tail.append("")
    return head, tail


def configKeyRows() -> list[tuple[str, str, str, str]]:
    """
    The keys of a config file: each key, where it goes, its TOML type and
    its default.
    """
    rows = [("role", "each tunnel table", "string", '"server" or "client"; required')]
    for key in PROCESS_KEYS:
        option = next(o for o in OPTIONS if o.name == key)
        rows.append((key, "top of the file", _tomlType(option), _default(option)))
    for name in optionNames():
        versions = [o for o in OPTIONS if o.name == name]
        if versions[0].process:
            continue
        roles = frozenset().union(*(o.roles for o in versions))
        where = "each tunnel table" if roles == BOTH else f"a {next(iter(roles))}'s table"
        kinds = {_tomlType(o): next(iter(o.roles)) for o in versions}
        kind = "; ".join(f"{role}'s: {text}" for text, role in kinds.items()) \
            if len(kinds) > 1 else next(iter(kinds))
        rows.append((name, where, kind, _default(versions[0])))
    return rows


def _tomlType(option: Option) -> str:
    if option.flag:
        return "boolean"
    if option.repeatable:
        return "array of strings, or one string"
    if option.value in ("SECONDS", "BYTES", "N"):
        return "number"
    if option.value.startswith(("PORT", "[HOST:]PORT")):
        return "string, or a number (a port)"
    return "string"


def _default(option: Option) -> str:
    if option.flag:
        return "false"
    if option.repeatable:
        return "none"
    return "none" if option.default in (None, "") else str(option.default)


def _escape(text: str) -> str:
    """
    Help text as reST: its C{*}, C{`}, C{|} and trailing C{_} are text.
    """
    for char in ("\\", "*", "`", "|"):
        text = text.replace(char, "\\" + char)
    # Not a link: tcp:9999 or http://HOST are values to type.
    text = re.sub(r"\b([a-z][a-z0-9]*):", r"\1\\:", text)
    return text.replace("_ ", "\\_ ")


#: A tunnel of each kind, as the collector and the status see it.
KINDS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("server", SERVER, {"tcp": "9999", "udp": "5073"}),
    ("client", CLIENT, {"tcp": "127.0.0.1:9999", "udp": "5073", "peer": "192.0.2.1:5072"}),
    ("phantom client", CLIENT, {"tcp": "127.0.0.1:9999", "udp": "5073"}),
    ("server --sessions", SERVER, {"tcp": "9999", "peer": "192.0.2.1:5072", "sessions": True}),
    ("client --sessions", CLIENT, {"tcp": "127.0.0.1:9999", "udp": "5073", "sessions": True}),
)


def tunnelsOfEachKind() -> Iterator[tuple[str, Any]]:
    """
    An unstarted tunnel of each kind of L{KINDS}, on a fake reactor:
    nothing is bound.
    """
    from twisted.internet.testing import MemoryReactorClock

    from udptunnel.cli.build import tunnelService

    for label, role, given in KINDS:
        yield label, tunnelService(tunnelConfig(role, given), MemoryReactorClock())


def metricFamilies() -> list[dict[str, Any]]:
    """
    Every metric family the collector serves, with the kinds of tunnel
    that have it, its labels and the label values it shows from the start.
    """
    from udptunnel.ops.metrics import RelayCollector

    families: dict[str, dict[str, Any]] = {}
    for kind, (label, relay) in enumerate(tunnelsOfEachKind()):
        for place, metric in enumerate(RelayCollector(relay).collect()):
            family = families.setdefault(metric.name, {
                "name": metric.name, "type": metric.type, "help": metric.documentation,
                "kinds": [], "labels": {}, "order": (place, kind)})
            family["kinds"].append(label)
            for sample in metric.samples:
                for key, value in sample.labels.items():
                    family["labels"].setdefault(key, {})[value] = None
    return sorted(families.values(), key=lambda family: family["order"])


def exposedName(family: dict[str, Any]) -> str:
    """
    The name a family's series carry: counters end in C{_total}, info
    families in C{_info}.
    """
    suffix = {"counter": "_total", "info": "_info"}.get(family["type"], "")
    return family["name"] + suffix


def metricsLines() -> list[str]:
    from udptunnel.ops.metrics import LABEL_VALUES

    lines: list[str] = []
    every = [label for label, _, _ in KINDS]
    for family in metricFamilies():
        name = exposedName(family)
        kinds = ("every tunnel" if family["kinds"] == every
                 else ", ".join(f"``{kind}``" for kind in family["kinds"]))
        lines += [name, "-" * len(name), "", f"**{family['type']}**, on {kinds}", "",
                  _escape(family["help"]), ""]
        meanings = LABEL_VALUES.get(family["name"], {})
        for key, seen in family["labels"].items():
            if meanings and set(seen) & set(meanings):
                lines += [f"Label ``{key}``:", ""]
                for value, meaning in meanings.items():
                    lines += [f"``{value}``", f"   {_escape(meaning)}"]
                lines.append("")
            else:
                lines += [f"Label ``{key}``.", ""]
    return lines


def statusDocuments() -> dict[str, Any]:
    """
    The status document of a tunnel of each kind, unstarted.
    """
    from udptunnel.ops.status import statusDocument

    return statusDocument([(label.replace(" ", "-").replace("--", ""), relay)
                           for label, relay in tunnelsOfEachKind()])


def statusLines() -> list[str]:
    from udptunnel.ops.status import FIELDS

    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - field", "     - what it says"]
    for path, meaning in FIELDS.items():
        lines += [f"   * - ``{path}``", f"     - {_escape(meaning)}"]
    document = json.dumps(statusDocuments(), indent=1)
    lines += ["", "The document of an unstarted tunnel of each kind (names made up):", "",
              ".. code-block:: json", ""]
    lines += ["   " + line for line in document.splitlines()]
    return lines + [""]


def configKeyLines() -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - key", "     - where", "     - type", "     - default"]
    for key, where, kind, default in configKeyRows():
        lines += [f"   * - ``{key}``", f"     - {where}", f"     - {kind}",
                  f"     - {_escape(default)}"]
    return lines + [""]


def setup(app: Any) -> dict[str, Any]:
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class _Generated(SphinxDirective):
        def render(self, lines: Sequence[str]) -> list[Any]:
            from docutils import nodes

            container = nodes.section() if any(
                line.startswith("---") for line in lines) else nodes.container()
            source = self.get_source_info()[0]
            content = StringList(list(lines), source=source)
            if isinstance(container, nodes.section):
                from sphinx.util.nodes import nested_parse_with_titles

                nested_parse_with_titles(self.state, content, container)
            else:
                self.state.nested_parse(content, self.content_offset, container)
            return list(container.children)

    class OptionDirective(_Generated):
        required_arguments = 1
        has_content = True

        def run(self) -> list[Any]:
            name = self.arguments[0]
            try:
                head, tail = optionLines(name)
            except KeyError:
                raise self.error(f"udptunnel has no option --{name}") from None
            except ValueError as e:
                raise self.error(str(e)) from None
            seen = self.env.temp_data.setdefault("udptunnel-options", set())
            if name in seen:
                raise self.error(f"--{name} is already in the reference")
            seen.add(name)
            body = ["   " + line if line else "" for line in self.content]
            return self.render(head + body + [""] + tail)

    class OptionsCheck(_Generated):
        def run(self) -> list[Any]:
            seen = self.env.temp_data.get("udptunnel-options", set())
            missing = [name for name in optionNames() if name not in seen]
            if missing:
                raise self.error("options not in the reference: "
                                 + ", ".join("--" + name for name in missing))
            return []

    def simple(make: Any) -> type:
        class Directive(_Generated):
            def run(self) -> list[Any]:
                return self.render(make())

        return Directive

    def plainLinks(app: Any, doctree: Any, docname: str) -> None:
        """
        In the manual page, a link to another page is its title alone: a
        man page has no pages to link to (and the man writer would print an
        empty C{<>} after it).
        """
        from docutils import nodes

        if app.builder.name != "man":
            return
        for reference in list(doctree.findall(nodes.reference)):
            reference.replace_self(nodes.Text(reference.astext()))

    app.connect("doctree-resolved", plainLinks)
    app.add_directive("udptunnel-option", OptionDirective)
    app.add_directive("udptunnel-options-check", OptionsCheck)
    app.add_directive("udptunnel-config-keys", simple(configKeyLines))
    app.add_directive("udptunnel-metrics", simple(metricsLines))
    app.add_directive("udptunnel-status-fields", simple(statusLines))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
