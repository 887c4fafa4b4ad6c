"""
The plugin's command line and config files parsed in-process, as
C{twistd udptunnel ...} parses them, and a stand-in for the runner's own
options.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from typing import Any

from udptunnel.cli.configfile import loadConfig
from udptunnel.tap import Options


def parse(*argv: str) -> Options:
    """
    C{argv} parsed by the plugin's L{Options}, as twistd would; a mistake
    raises L{twisted.python.usage.UsageError}.
    """
    options = Options()
    options.parseOptions(list(argv))
    return options


class Runner(dict):  # type: ignore[type-arg]
    """
    Stands for twistd's options (which have C{--nodaemon}) or twist's (which
    have not): the parent of ours.
    """

    def __init__(self, twistd: bool = True) -> None:
        super().__init__(nodaemon=True) if twistd else super().__init__()
        self.subCommand = "udptunnel"


def writeFile(testCase: Any, text: str, name: str = "tunnels.toml") -> str:
    directory = tempfile.mkdtemp()
    testCase.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, name)
    with open(path, "w") as file:
        file.write(textwrap.dedent(text))
    return path


def load(testCase: Any, text: str) -> Any:
    return loadConfig(writeFile(testCase, text))


class ShortUsageAssertions:
    """
    What a bad command line must show, in-process or through the installed
    runner alike: a few lines, the command's short synopsis, where the full
    help is, and last the error, naming the option to fix; never a
    traceback, never the whole help.
    """

    def assertShortUsageError(self, status: int, output: str, end: str | None,
                              expected: tuple[str, ...], program: str = "twistd") -> None:
        """
        Status 1; the error on the last line, with every fragment of
        C{expected}; the short synopsis of C{end} ("server", "client",
        "run", C{None} for the plugin itself) and a pointer to --help before
        it; no traceback and not the full help.
        """
        test: Any = self
        test.assertEqual(status, 1, output)
        test.assertNotIn("Traceback", output)
        test.assertNotIn("Parameter type enforcement", output)
        lines = [line for line in output.splitlines() if line.strip()]
        error = lines[-1] if lines else ""
        for fragment in expected:
            test.assertIn(fragment, error, output)
        command = f"{program} udptunnel" + (f" {end}" if end else "")
        test.assertTrue(error.startswith(f"{command}: "), output)
        test.assertIn(f"Usage: {program} [{program} options] {command.split(' ', 1)[1]} ", output)
        test.assertIn(f"'{command} --help'", output)
        # The full help lists every option; the short form none of them.
        test.assertNotIn("--keepalive-interval=", output)
        test.assertLessEqual(len(output.splitlines()), 4, output)
