"""
The twistd plugin's command line, and nothing else: the option parsers of
C{udptunnel server}, C{client} and C{run}, made from the options' schema
(L{udptunnel.cli.schema}), each turning what was typed into a checked
configuration (L{udptunnel.cli.settings}); and L{makeService}, which hands
that configuration to the builder (L{udptunnel.cli.build}).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from udptunnel import __version__
from udptunnel.cli.build import Runner
from udptunnel.cli.build import makeService as build
from udptunnel.cli.configfile import ConfigError, describeConfig, loadConfig
from udptunnel.cli.optionnames import checkExactNames
from udptunnel.cli.preflight import checkBinds
from udptunnel.cli.schema import CLIENT, SERVER, Option, optionsOf
from udptunnel.cli.settings import OptionError, ProcessConfig, tunnelConfig

EXAMPLE = """\
Example (an app on the NAT box reaches pop.example.net:5072 via a relay host):
  natbox$ twistd -n udptunnel server --udp 5073 --tcp 9999
  relay$  twistd udptunnel client --tcp natbox:9999 --udp 34559 \\
              --peer pop.example.net:5072
"""


def _runnerName(runner: Any) -> tuple[str, str]:
    """
    The program the user ran (C{twistd}, whose options have C{--nodaemon};
    or C{twist}) and the name they gave the plugin, from the runner's
    options (the parent of ours).
    """
    program = "twistd" if runner is None or "nodaemon" in runner else "twist"
    plugin = getattr(runner, "subCommand", None) or "udptunnel"
    return program, plugin


class _WithExample(usage.Options):
    """
    What all our option parsers share: option names taken whole, every
    --help ends with the seed example, kept verbatim (a longdesc would be
    re-wrapped), and the synopsis reads as the command the user types.
    """

    def opt_version(self) -> None:
        """
        Print the version of udptunnel and exit.
        """
        print(f"udptunnel {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse, taking option names whole (L{checkExactNames}).
        """
        argv = list(sys.argv[1:] if options is None else options)
        checkExactNames(self, argv, self.elsewhere())
        super().parseOptions(argv)

    def elsewhere(self) -> dict[str, str]:
        """
        The options a sibling command has and this one lacks, each with
        that command's name (for the error of a misplaced option).
        """
        return {}

    def _top(self) -> _WithExample:
        """
        The plugin's own top-level options (whose parent is the runner's).
        """
        options = self
        while isinstance(options.parent, _WithExample):
            options = options.parent
        return options

    def commandLine(self) -> str:
        """
        What the user typed to get here: C{twistd udptunnel server}.
        """
        top = self._top()
        program, plugin = _runnerName(top.parent)
        words = [program, plugin] + ([top.subCommand] if top is not self else [])
        return " ".join(str(word) for word in words)

    def getSynopsis(self) -> str:
        # Twisted joins every parent's synopsis, which repeats ours
        # ("udptunnel server|client [options] server --tcp ...").
        top = self._top()
        program, plugin = _runnerName(top.parent)
        words = [program, f"[{program} options]", plugin]
        if top is not self:
            words.append(str(top.subCommand))
        return "Usage: " + " ".join(words + [getattr(self, "synopsis", "[options]")])

    def getUsage(self, width: int | None = None) -> str:
        text = super().getUsage(width)
        # A parent shows its subcommand's usage when parsing failed in it.
        return text if EXAMPLE in text else text + "\n" + EXAMPLE

    def usageError(self, error: usage.UsageError) -> str:
        """
        What to show for a bad command line: the short synopsis of the
        command that failed, where to find the rest, and the error last,
        in one line (not the 60 lines of the full help).
        """
        command = self.commandLine()
        return (
            f"{self.getSynopsis()}\n"
            f"Run '{command} --help' for the options.\n"
            f"{command}: {error}"
        )


def _repeat(option: Option) -> Any:
    """
    The C{opt_} method of a repeatable option: each value is kept.
    """

    def opt(self: usage.Options, value: str) -> None:
        self[option.name].append(value)

    opt.__doc__ = option.help
    return opt


class _EndOptions(_WithExample):
    """
    The options of one end, made from the schema (L{optionsOf}); what was
    typed becomes the checked L{config} once parsed.
    """

    role: str
    optParameters: list[list[Any]]
    optFlags: list[list[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        options = optionsOf(cls.role)
        cls.optParameters = [[o.name, None, o.default, o.help] for o in options
                             if not o.flag and not o.repeatable]
        cls.optFlags = [[o.name, None, o.help] for o in options if o.flag]
        for option in options:
            if option.repeatable:
                setattr(cls, "opt_" + option.name.replace("-", "_"), _repeat(option))

    def __init__(self) -> None:
        super().__init__()
        for option in optionsOf(self.role):
            if option.repeatable:
                self[option.name] = []

    def elsewhere(self) -> dict[str, str]:
        other = CLIENT if self.role == SERVER else SERVER
        mine = {o.name for o in optionsOf(self.role)}
        return {o.name: other for o in optionsOf(other) if o.name not in mine}

    def postOptions(self) -> None:
        try:
            self.config = tunnelConfig(self.role, self)
        except OptionError as e:
            raise usage.UsageError(str(e)) from None


class ServerOptions(_EndOptions):
    role = SERVER
    synopsis = "--tcp PORT|ENDPOINT [--udp [HOST:]PORT] [--peer HOST:PORT] [options]"
    longdesc = ("Listen for the tunnel's TCP link; a new connection takes it over with its "
                "first frame, or from a link silent for 3 s.")


class ClientOptions(_EndOptions):
    role = CLIENT
    synopsis = "--tcp HOST:PORT|ENDPOINT [--udp [HOST:]PORT] [--peer HOST:PORT] [options]"
    longdesc = "Connect the tunnel's TCP link, and reconnect forever when it drops."


class RunOptions(_WithExample):
    synopsis = "--config FILE [--check]"
    longdesc = (
        "Run every tunnel of a TOML config file (one [tunnel.NAME] table each, "
        "whose keys are the long options of server or client, plus role = "
        "\"server\" or \"client\"). SIGUSR2 reloads the file: tunnels added, "
        "removed or changed are started, stopped or restarted; the others keep "
        "their links."
    )
    optParameters = [
        ["config", "c", None, "Required. The TOML file of the tunnels."],
    ]
    optFlags = [
        ["check", None, ("Check the file, say what it would run, and exit (status 0 "
                         "if it is good, 1 if not).")],
    ]

    def postOptions(self) -> None:
        if self["config"] is None:
            raise usage.UsageError("--config is required")
        # A daemon's working directory may change; a reload reads this path.
        path = os.path.abspath(self["config"])
        loaded = loadConfig(path)
        if self["check"]:
            print(describeConfig(loaded))
            raise SystemExit(0)
        self.config = loaded.process()


class Options(_WithExample):
    synopsis = "server|client|run [options]"
    longdesc = (
        "Carry UDP datagrams through one TCP connection, both ways (each datagram "
        "framed by a 2-byte big-endian length)."
    )
    subCommands = [
        ["server", None, ServerOptions, "Listen for the TCP link."],
        ["client", None, ClientOptions, "Connect the TCP link, reconnecting forever."],
        ["run", None, RunOptions, "Run the tunnels of a config file (--config FILE)."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Under a runner (twistd, twist), end a bad command line here, with
        status 1 and L{usageError}'s few lines: twistd would print the whole
        help before the error, and twist exit with status 64.  Parsed on its
        own (as in tests), it raises L{usage.UsageError} as usual.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            failed: _WithExample = getattr(self, "subOptions", None) or self
            raise SystemExit(failed.usageError(e)) from None
        except ConfigError as e:
            # The file is wrong, not the command line: its error alone.
            if self.parent is None:
                raise
            raise SystemExit(f"{self.commandLine()} run: {e}") from None

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose server, client or run")

    def process(self) -> ProcessConfig:
        """
        What the command line runs, checked.
        """
        config = self.subOptions.config
        if isinstance(config, ProcessConfig):
            return config
        return ProcessConfig((config,), config.metrics, plainTwisted=config.plainTwisted)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    The services of what the command line asks for.  Under a twistd that
    will fork a daemon, every socket is tried first, here, in the process
    the user started: a port that is taken is then one line and status 1
    (the daemon's own error would reach the user only as twistd's report
    of an exception).
    """
    if reactor is None:
        from twisted.internet import reactor
    runner = options.parent
    process = options.process()
    if runner is not None and not runner.get("nodaemon", True):
        checkBinds(process)
    return build(process, reactor, Runner(present=runner is not None,
                                          foreground=runner is not None
                                          and bool(runner.get("nodaemon", True))))
