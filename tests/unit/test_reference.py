"""
The manual's generated reference (C{docs/_ext/udptunnel_reference.py}):
that it covers every option, key and metric of the code, and that what it
says matches what the daemon does.
"""

from __future__ import annotations

import importlib.util
import os
import re
from types import ModuleType

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY
from udptunnel import tap
from udptunnel.cli.configfile import PROCESS_KEYS
from udptunnel.ops.metrics import RelayCollector

OPTIONS_PAGE = os.path.join(REPOSITORY, "docs", "reference", "udptunnel.rst")


def loadReference() -> ModuleType:
    """
    The Sphinx extension's module, which is no package's.
    """
    path = os.path.join(REPOSITORY, "docs", "_ext", "udptunnel_reference.py")
    spec = importlib.util.spec_from_file_location("udptunnel_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = loadReference()


class OptionsTests(SynchronousTestCase):
    def test_everyHelpOptionInTheManual(self) -> None:
        """
        Every option that C{server --help} or C{client --help} lists has its
        entry in the manual's option reference, once, and the reference has
        no entry for an option that does not exist.
        """
        with open(OPTIONS_PAGE) as file:
            entries = re.findall(r"^\.\. udptunnel-option:: (\S+)$", file.read(), re.MULTILINE)
        listed = set()
        for options in (tap.ServerOptions(), tap.ClientOptions()):
            listed |= set(re.findall(r"^\s+--([a-z-]+)", options.getUsage(), re.MULTILINE))
        listed -= {"help", "version"}
        self.assertEqual(sorted(entries), sorted(set(entries)))
        self.assertEqual(sorted(entries), sorted(listed))

    def test_entryOfAnOption(self) -> None:
        """
        An option's entry gives its value, its roles, its default and its
        config key, and its --help text.
        """
        head, _tail = reference.optionLines("session-idle")
        text = "\n".join(head)
        self.assertIn(".. option:: --session-idle SECONDS", text)
        self.assertIn("**server and client** · default ``180`` · config key ``session-idle``",
                      text)
        self.assertIn("end a session after this many seconds", text)

    def test_refusedCombinations(self) -> None:
        """
        Every refused example is refused by the parser, and is shown under
        each option it is about, with the parser's message.
        """
        for _role, _given, about in reference.REFUSED:
            for name in about:
                self.assertIn(name, reference.optionNames())
        _head, tail = reference.optionLines("reuse-port")
        self.assertIn("   * ``server --tcp 9999 --udp 5073 --reuse-port``: --reuse-port is "
                      "for --sessions\\: one link cannot be shared by processes", tail)
        for name in reference.optionNames():
            list(reference.refusals(name))  # raises for an example no longer refused

    def test_unknownOption(self) -> None:
        """
        An entry for an option the code lacks is an error (the build fails).
        """
        self.assertRaises(KeyError, reference.optionLines, "no-such-option")

    def test_helpTextIsText(self) -> None:
        """
        A value in help text (C{tcp:9999}, C{http://HOST}) is not made a
        link, and reST's markup characters are shown as they are.
        """
        self.assertEqual(reference._escape("tcp:9999 *x* `y` a|b http://h"),
                         "tcp\\:9999 \\*x\\* \\`y\\` a\\|b http\\://h")


class ConfigKeysTests(SynchronousTestCase):
    def test_everyKey(self) -> None:
        """
        The keys listed are C{role}, the process's keys and every option's
        long name: what a config file's reader takes.
        """
        keys = [row[0] for row in reference.configKeyRows()]
        self.assertEqual(keys[0], "role")
        self.assertEqual(keys[1:1 + len(PROCESS_KEYS)], list(PROCESS_KEYS))
        self.assertEqual(sorted(keys[1:]), sorted(reference.optionNames()))


class MetricsTests(SynchronousTestCase):
    def test_namesAsExposed(self) -> None:
        """
        Every family the reference lists appears, under the name it gives,
        in a real exposition of a tunnel of the kinds it says have it.
        """
        exposed = {}
        for label, relay in reference.tunnelsOfEachKind():
            registry = CollectorRegistry(auto_describe=True)
            registry.register(RelayCollector(relay))
            exposed[label] = generate_latest(registry).decode()
        families = reference.metricFamilies()
        self.assertGreater(len(families), 15)
        for family in families:
            for kind in family["kinds"]:
                self.assertIn(f"# TYPE {reference.exposedName(family)} ", exposed[kind]
                              .replace("_info info", "_info gauge"))

    def test_sessionsOnlyWithSessions(self) -> None:
        """
        A family that only some kinds have says which: the sessions gauge is
        on the two C{--sessions} ends alone.
        """
        (family,) = [f for f in reference.metricFamilies()
                     if f["name"] == "udptunnel_sessions_open"]
        self.assertEqual(family["kinds"], ["server --sessions", "client --sessions"])
