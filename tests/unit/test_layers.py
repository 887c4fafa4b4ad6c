"""
The house rules (docs/architecture.rst), checked on the source: imports
point down the layers only, the fence imports nothing of ours and is the
only place that touches Twisted's private names, and no module grows past
500 lines.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY

SOURCE = os.path.join(REPOSITORY, "udptunnel")

#: The layers, from the top; a module may import its own layer and those
#: below it.  The UDP and the TCP side sit side by side, and neither imports
#: the other.
LAYERS: list[set[str]] = [
    {"tap", "__main__"},
    {"cli"},
    {"ops"},
    {"tunnel"},
    {"link", "udp"},
    {"interfaces", "wire", "show", "sockopts", "ratelimit", "__init__"},
    {"_twisted"},
]
SIDE_BY_SIDE = {"link", "udp"}
#: The most lines a module may have.
MAX_LINES = 500


def sourceModules() -> dict[str, str]:
    """
    Every module of the package, by dotted name (C{udptunnel.x.y}), with
    its path.
    """
    found = {}
    for directory, subdirectories, names in os.walk(SOURCE):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, os.path.dirname(SOURCE))[:-3]
                found[relative.replace(os.sep, ".").removesuffix(".__init__")] = path
    return found


def layerOf(module: str) -> int:
    """
    The index in L{LAYERS} of C{udptunnel.PART...}'s first part.
    """
    parts = module.split(".")
    part = parts[1] if len(parts) > 1 else "__init__"
    for index, layer in enumerate(LAYERS):
        if part in layer:
            return index
    raise AssertionError(f"{module} is in no layer: place it in LAYERS")


def importsOf(path: str, module: str) -> list[str]:
    """
    The modules of ours that C{path} imports (C{udptunnel...}).
    """
    with open(path) as file:
        tree = ast.parse(file.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level] if not path.endswith("__init__.py") \
                    else module.split(".")[: len(module.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "udptunnel":
                modules = sourceModules()
                found += [f"udptunnel.{alias.name}" if f"udptunnel.{alias.name}" in modules
                          else "udptunnel" for alias in node.names]
            elif name.startswith("udptunnel."):
                found.append(name)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("udptunnel")]
    return found


class LayerTests(SynchronousTestCase):
    def test_importsPointDown(self) -> None:
        """
        No module imports from a layer above its own, and the two sides of
        the data path do not import each other.
        """
        wrong = []
        for module, path in sourceModules().items():
            mine = layerOf(module)
            for imported in importsOf(path, module):
                theirs = layerOf(imported)
                sides = {(name.split(".") + [""])[1] for name in (module, imported)}
                if theirs < mine or (sides == SIDE_BY_SIDE):
                    wrong.append(f"{module} imports {imported}")
        self.assertEqual(wrong, [])

    def test_fenceIsALeaf(self) -> None:
        """
        The fence imports nothing of ours, and only the fence reads a
        private name of Twisted's (C{twisted...._name}, or an attribute
        C{._name} of a Twisted object it was handed).
        """
        leaks = []
        for module, path in sourceModules().items():
            inFence = module.startswith("udptunnel._twisted")
            if inFence:
                leaks += [f"{module} imports {m}" for m in importsOf(path, module)]
                continue
            with open(path) as file:
                tree = ast.parse(file.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                    leaks += [f"{module} imports {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_")]
                    if any(part.startswith("_") for part in (node.module or "").split(".")):
                        leaks.append(f"{module} imports {node.module}")
        self.assertEqual(leaks, [])

    def test_modulesSmall(self) -> None:
        big = []
        for module, path in sourceModules().items():
            with open(path) as file:
                lines = len(file.readlines())
            if lines > MAX_LINES:
                big.append(f"{module}: {lines} lines")
        self.assertEqual(big, [])
