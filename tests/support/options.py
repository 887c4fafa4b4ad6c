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
