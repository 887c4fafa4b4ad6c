"""
What the wheel installs: every module of the source tree, in every
subpackage (C{setup.cfg} lists the packages one by one: one left out
installs fine and fails at import), and nothing that is no longer there;
and that it builds without a C compiler (the compiled pump is optional).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY

SOURCE = os.path.join(REPOSITORY, "udptunnel")


def modules(top: str) -> set[str]:
    """
    The Python files under C{top}, relative to it.
    """
    found = set()
    for directory, subdirectories, names in os.walk(top):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        found.update(os.path.relpath(os.path.join(directory, name), top)
                     for name in names if name.endswith(".py"))
    return found


class WheelTests(SynchronousTestCase):
    def test_everyPackageListed(self) -> None:
        """
        setup.cfg lists every package of the source tree.
        """
        config = configparser.ConfigParser()
        config.read(os.path.join(os.path.dirname(SOURCE), "setup.cfg"))
        listed = set(config["options"]["packages"].split())
        found = {"udptunnel" + ("." + d.replace(os.sep, ".") if d != "." else "")
                 for d in {os.path.dirname(m) or "." for m in modules(SOURCE)}}
        self.assertEqual(listed - {"twisted.plugins"}, found)

    def test_installedAsTheSource(self) -> None:
        """
        The installed package (the one the end-to-end tests run) holds the
        source tree's modules, no fewer and no more (a stale build directory
        would add old ones back).  Asked of the environment's Python from
        outside the tree, where the tree is not on its path.
        """
        found = subprocess.run(
            [sys.executable, "-c", "import os, udptunnel; print(os.path.dirname(udptunnel.__file__))"],
            cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=60, check=True)
        installed = found.stdout.strip()
        self.assertFalse(os.path.samefile(installed, SOURCE))
        self.assertEqual(modules(installed), modules(SOURCE))

    def test_buildsWithoutCompiler(self) -> None:
        """
        Where the compiled pump cannot be built (no compiler: C{CC} fails),
        the wheel builds all the same, every module in it but the pump.
        """
        work = tempfile.mkdtemp(prefix="udptunnel-wheel-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        tree = os.path.join(work, "tree")
        top = os.path.dirname(SOURCE)
        ignore = shutil.ignore_patterns("__pycache__", "*.so", "dropin.cache")
        for name in ("udptunnel", "twisted"):
            shutil.copytree(os.path.join(top, name), os.path.join(tree, name), ignore=ignore)
        for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.rst", "LICENSE"):
            shutil.copy(os.path.join(top, name), tree)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps",
             "-w", os.path.join(work, "wheel"), tree],
            check=False, env={**os.environ, "CC": "false"}, capture_output=True, text=True,
            timeout=120)
        self.assertEqual(built.returncode, 0, built.stdout + built.stderr)
        (wheel,) = os.listdir(os.path.join(work, "wheel"))
        with zipfile.ZipFile(os.path.join(work, "wheel", wheel)) as archive:
            names = archive.namelist()
        self.assertEqual([n for n in names if "_pump" in n and not n.endswith(".c")], [])
        self.assertEqual({n.removeprefix("udptunnel/") for n in names
                          if n.startswith("udptunnel/") and n.endswith(".py")}, modules(SOURCE))
