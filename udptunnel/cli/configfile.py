"""
Several tunnels in one process, from a TOML file (C{twistd udptunnel run
--config FILE}).

Each C{[tunnel.NAME]} table's keys are the long options of its C{role}
(C{udp = 5073} is C{--udp 5073}, C{sessions = true} is C{--sessions}, a
repeatable option takes a list), and the table is read by the command
line's own reader (L{udptunnel.cli.settings.tunnelConfig}): one validation
path, so a file can say nothing a command line could not, and every check
and every default is the same.  Only the errors are reworded, to name the
file, the tunnel and the key instead of the option.
"""

from __future__ import annotations

import difflib
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from udptunnel.cli.clashes import firstClash, serverBind, udpBind
from udptunnel.cli.schema import CLIENT, SERVER, optionsOf
from udptunnel.cli.settings import (
    OptionError,
    ProcessConfig,
    TunnelConfig,
    tunnelConfig,
)
from udptunnel.cli.values import metricsEndpoint
from udptunnel.show import printable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (tested on 3.10 by hand)
    import tomli as tomllib

#: What a tunnel's name may be: it goes into log lines and metric labels.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

#: Keys of the top of the file: what the process has once, for all tunnels.
PROCESS_KEYS = ("metrics", "plain-twisted")

ROLES = (SERVER, CLIENT)

#: The largest file read: what a config of many tunnels takes, with room;
#: anything larger is a mistake, not to be read whole into memory.
MAX_SIZE = 1024 * 1024


class ConfigError(Exception):
    """
    What is wrong with a config file, in one line that names the file, and
    where it applies the tunnel and the key.
    """


@dataclass(frozen=True)
class Table:
    """
    One C{[tunnel.NAME]} table: as written (a reload compares these), the
    tunnel it describes, and the command line it stands for (what
    C{--check} prints).
    """

    name: str
    table: Mapping[str, Any]
    config: TunnelConfig = field(compare=False)
    argv: tuple[str, ...] = field(compare=False, default=())

    @property
    def role(self) -> str:
        return self.config.role


@dataclass(frozen=True)
class ConfigFile:
    path: str
    metrics: str | None
    tunnels: dict[str, Table]
    plainTwisted: bool = False

    def process(self) -> ProcessConfig:
        """
        What the file runs, as a process's configuration.
        """
        return ProcessConfig(tuple(t.config for t in self.tunnels.values()), self.metrics,
                             self.path, self.plainTwisted)


def loadConfig(path: str) -> ConfigFile:
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
    return parseConfig(path, document)


def parseConfig(path: str, document: Mapping[str, Any]) -> ConfigFile:
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
            metrics = metricsEndpoint(str(metrics))
        except ValueError as e:
            raise ConfigError(f"{path}: metrics: {e}") from None
    plainTwisted = document.get("plain-twisted", False)
    if not isinstance(plainTwisted, bool):
        raise ConfigError(f"{path}: plain-twisted: expected true or false, not "
                          f"{_kind(plainTwisted)}")
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
        tunnels[name] = _tunnel(where, name, table)
    _checkClashes(path, metrics, tunnels)
    return ConfigFile(path, metrics, tunnels, plainTwisted)


def _checkClashes(path: str, metrics: str | None, tunnels: Mapping[str, Table]) -> None:
    """
    Refuse two tunnels (or a tunnel and the metrics endpoint) that would
    bind the same socket: the second would fail at run time, or worse,
    share it.
    """
    binds = []
    if metrics is not None:
        binds.append(("the metrics endpoint", serverBind(metrics)))
    for name, tunnel in tunnels.items():
        config = tunnel.config
        binds.append((f"tunnel {name}", udpBind(config.udp)))
        if config.role == SERVER:
            assert isinstance(config.tcp, str)
            binds.append((f"tunnel {name}", serverBind(config.tcp)))
    clash = firstClash([(owner, bind) for owner, bind in binds if bind is not None])
    if clash is not None:
        first, second, bind = clash
        raise ConfigError(f"{path}: {first} and {second} would both bind {bind}: "
                          "give each its own")


def _tunnel(where: str, name: str, table: Mapping[str, Any]) -> Table:
    role = table.get("role")
    if role not in ROLES:
        got = "missing" if role is None else f"not {_kind(role)}"
        raise ConfigError(f"{where} role: expected \"server\" or \"client\", {got}")
    options = {option.name: option for option in optionsOf(role) if not option.process}
    given: dict[str, Any] = {}
    argv = []
    for key, value in table.items():
        if key == "role":
            continue
        if key in PROCESS_KEYS:
            raise ConfigError(f"{where} {key}: one for the whole process: put it at the "
                              "top of the file, before the first [tunnel.NAME]")
        option = options.get(key)
        if option is None:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, [*options, 'role'])} "
                              f"(the keys are the long options of 'udptunnel {role}')")
        if option.flag:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} {key}: expected true or false, not {_kind(value)}")
            given[key] = value
            argv += [f"--{key}"] if value else []
        elif option.repeatable:
            items = [_scalar(where, key, one, True)
                     for one in (value if isinstance(value, list) else [value])]
            given[key] = items
            argv += [f"--{key}={item}" for item in items]
        else:
            given[key] = _scalar(where, key, value, False)
            argv.append(f"--{key}={given[key]}")
    try:
        config = tunnelConfig(role, given, name)
    except OptionError as e:
        raise ConfigError(f"{where} {_inKeys(str(e))}") from None
    return Table(name, dict(table), config, tuple(argv))


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


def describeConfig(config: ConfigFile) -> str:
    """
    What a config file runs, in a few lines (C{--check}): each tunnel as
    the command line it stands for.
    """
    lines = [f"{config.path}: {len(config.tunnels)} tunnel(s)"
             + (f", metrics on {config.metrics}" if config.metrics else "")
             + (", Twisted's public API only" if config.plainTwisted else "")]
    for tunnel in config.tunnels.values():
        words = [tunnel.role]
        for argument in tunnel.argv:
            option, equals, value = argument.partition("=")
            words += [option, shlex.quote(value)] if equals else [option]
        lines.append(f"  {tunnel.name}: udptunnel {' '.join(words)}")
    return "\n".join(lines)
