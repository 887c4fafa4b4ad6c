"""
Several tunnels in one process, from a TOML file (C{twistd udptunnel run
--config FILE}).

Each C{[tunnel.NAME]} table is turned into the command line of its C{role}
(C{udp = 5073} becomes C{--udp=5073}, C{sessions = true} becomes
C{--sessions}, C{allow = ["10.0.0.0/8"]} one C{--allow} per item) and parsed
by the very option parser of C{udptunnel server} or C{client}: one validation
path, so a file can say nothing a command line could not, and every check
and every default is the same.  Only the errors are reworded, to name the
file, the tunnel and the key instead of the option.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.python import usage

from udptunnel.cli.clashes import Bind, firstClash, serverBind
from udptunnel.show import printable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (tested on 3.10 by hand)
    import tomli as tomllib

#: What a tunnel's name may be: it goes into log lines and metric labels.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

#: Keys of the top of the file: what the process has once, for all tunnels.
PROCESS_KEYS = ("metrics",)

#: Options of the command line that are no keys of a tunnel's table.
_NOT_KEYS = ("help", "version") + PROCESS_KEYS

ROLES = ("server", "client")

#: The largest file read: what a config of many tunnels takes, with room;
#: anything larger is a mistake, not to be read whole into memory.
MAX_SIZE = 1024 * 1024


class ConfigError(Exception):
    """
    What is wrong with a config file, in one line that names the file, and
    where it applies the tunnel and the key.
    """


@dataclass(frozen=True)
class TunnelConfig:
    """
    One C{[tunnel.NAME]} table: as written (a reload compares these), and as
    parsed by its role's option parser.
    """

    name: str
    role: str
    table: Mapping[str, Any]
    options: usage.Options = field(compare=False)
    #: The command line the table stands for (C{--udp=5073}, C{--sessions}).
    argv: tuple[str, ...] = field(compare=False, default=())


@dataclass(frozen=True)
class Config:
    path: str
    metrics: str | None
    tunnels: dict[str, TunnelConfig]


@dataclass(frozen=True)
class Parsers:
    """
    How the command line checks what a file holds (L{udptunnel.tap}'s).

    @ivar optionsFor: a fresh option parser for a role.
    @ivar metrics: the C{--metrics} endpoint description for a value given,
        or a L{usage.UsageError}.
    """

    optionsFor: Callable[[str], usage.Options]
    metrics: Callable[[str], str]
    #: The sockets a tunnel of a role binds, from its parsed options.
    binds: Callable[[str, usage.Options], list[Bind]] = lambda role, options: []


def loadConfig(path: str, parsers: Parsers) -> Config:
    """
    Read and check the file at C{path}: every tunnel parsed, nothing started.

    @raise ConfigError: the first thing wrong with it.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_SIZE:
        raise ConfigError(f"{path}: larger than {MAX_SIZE // 1024} KiB: not a config file?")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 ({e.reason})") from None
    return parseConfig(path, document, parsers)


def parseConfig(path: str, document: Mapping[str, Any], parsers: Parsers) -> Config:
    """
    Check a file's contents, C{document} (as C{tomllib} returns them).
    """
    for key in document:
        if key != "tunnel" and key not in PROCESS_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} at the top of the file"
                              f"{_suggest(key, ('tunnel', *PROCESS_KEYS))} (a tunnel's "
                              "options go in its [tunnel.NAME] table)")
    metrics = document.get("metrics")
    if metrics is not None:
        if isinstance(metrics, bool) or not isinstance(metrics, (str, int)):
            raise ConfigError(f"{path}: metrics: expected a port or an endpoint "
                              f"description, not {_kind(metrics)}")
        try:
            metrics = parsers.metrics(str(metrics))
        except usage.UsageError as e:
            raise ConfigError(f"{path}: {_inKeys(str(e))}") from None
    tables = document.get("tunnel")
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError(f"{path}: no tunnel: give one [tunnel.NAME] table per tunnel")
    tunnels = {}
    for name, table in tables.items():
        where = f"{path}: [tunnel.{printable(name)}]"
        if not NAME.match(name):
            raise ConfigError(f"{where}: a tunnel's name is letters, digits, '-' and '_' "
                              "(at most 64): it goes into log lines and metric labels")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{path}: tunnel.{name}: expected a table ([tunnel.{name}]), "
                              f"not {_kind(table)}")
        tunnels[name] = _tunnel(where, name, table, parsers.optionsFor)
    _checkClashes(path, metrics, tunnels, parsers)
    return Config(path, metrics, tunnels)


def _checkClashes(path: str, metrics: str | None, tunnels: Mapping[str, TunnelConfig],
                  parsers: Parsers) -> None:
    """
    Refuse two tunnels (or a tunnel and the metrics endpoint) that would
    bind the same socket: the second would fail at run time, or worse,
    share it.
    """
    binds = [(f"tunnel {name}", bind) for name, tunnel in tunnels.items()
             for bind in parsers.binds(tunnel.role, tunnel.options)]
    metricsBind = serverBind(metrics) if metrics is not None else None
    if metricsBind is not None:
        binds.insert(0, ("the metrics endpoint", metricsBind))
    clash = firstClash(binds)
    if clash is not None:
        first, second, bind = clash
        raise ConfigError(f"{path}: {first} and {second} would both bind {bind}: "
                          "give each its own")


def _tunnel(where: str, name: str, table: Mapping[str, Any],
            optionsFor: Callable[[str], usage.Options]) -> TunnelConfig:
    role = table.get("role")
    if role not in ROLES:
        got = "missing" if role is None else f"not {_kind(role)}"
        raise ConfigError(f"{where} role: expected \"server\" or \"client\", {got}")
    options = optionsFor(role)
    argv = arguments(where, role, {k: v for k, v in table.items() if k != "role"}, options)
    _parse(where, options, argv)
    return TunnelConfig(name, role, dict(table), options, tuple(argv))


def arguments(where: str, role: str, table: Mapping[str, Any],
              options: usage.Options) -> list[str]:
    """
    The command line that C{table} stands for, for C{options}' parser.
    """
    flags, parameters = _optionNames(options)
    repeatable = {key for key in parameters if isinstance(options.get(key), list)}
    argv = []
    for key, value in table.items():
        if key in PROCESS_KEYS:
            raise ConfigError(f"{where} {key}: one for the whole process: put it at the "
                              "top of the file, before the first [tunnel.NAME]")
        if key in flags:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} {key}: expected true or false, not {_kind(value)}")
            argv += [f"--{key}"] if value else []
        elif key in parameters:
            values = value if key in repeatable and isinstance(value, list) else [value]
            for one in values:
                argv.append(f"--{key}={_scalar(where, key, one, key in repeatable)}")
        else:
            known = [*flags, *parameters, "role"]
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, known)} "
                              f"(the keys are the long options of 'udptunnel {role}')")
    return argv


def _parse(where: str, options: usage.Options, argv: list[str]) -> usage.Options:
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        raise ConfigError(f"{where} {_inKeys(str(e))}") from None
    return options


def _optionNames(options: usage.Options) -> tuple[set[str], set[str]]:
    """
    The option parser's flags and the options that take a value, by long
    name, less those that have no place in a tunnel's table.
    """
    flags, parameters = set(), set()
    for name in options.longOpt:
        if name.endswith("="):
            parameters.add(name[:-1])
        else:
            flags.add(name)
    return flags - set(_NOT_KEYS), parameters - set(_NOT_KEYS)


def _scalar(where: str, key: str, value: Any, repeatable: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        expected = "a string or a list of strings" if repeatable else "a string or a number"
        raise ConfigError(f"{where} {key}: expected {expected}, not {_kind(value)}")
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _inKeys(message: str) -> str:
    """
    An option parser's message in the words of the file: C{--udp: bad ...}
    reads C{udp: bad ...}, C{--tcp is required} C{tcp is required}.
    """
    return re.sub(r"--([a-z][a-z0-9-]*)", r"\1", message)
