"""
The house rules (docs/explanation/architecture.rst), checked on the source: imports
point down the layers only, the fence imports nothing of ours and is the
only place that touches Twisted's private names, and no module grows past
500 lines; and the suite's own rules, checked on the tests.
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY

SOURCE = os.path.join(REPOSITORY, "udptunnel")
TESTS = os.path.join(REPOSITORY, "tests")
#: The unit test modules that test something other than a module of the
#: package: the tree itself, and the benchmark's chart.
UNIT_ELSEWHERE = {"test_layers.py": "the tree itself",
                  "test_reference.py": "docs/_ext/udptunnel_reference.py",
                  "test_benchplot.py": "benchmarks/plot.py"}

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
#: Names with a leading underscore that are public API: a named tuple's.
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make"}


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


def privateNamesRead(modules: dict[str, str]) -> list[str]:
    """
    Where a module reads an attribute with a leading underscore
    (C{x._name}, or C{getattr(x, "_name")}) that no module of C{modules}
    defines: someone else's private name, which only the fence may read.
    """
    trees = {}
    for module, path in modules.items():
        with open(path) as file:
            trees[module] = ast.parse(file.read())
    defined = set(PUBLIC_UNDERSCORED)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
    read = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
                name = node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1
                  and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str)):
                name = node.args[1].value
            if (name and name.startswith("_") and not name.startswith("__")
                    and name not in defined):
                read.append(f"{module}:{node.lineno} reads {name}")
    return read


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
        outside = {module: path for module, path in sourceModules().items()
                   if not module.startswith("udptunnel._twisted")}
        leaks += privateNamesRead(outside)
        self.assertEqual(leaks, [])

    def test_privateReadsFound(self) -> None:
        """
        L{privateNamesRead} finds a read of a private name the modules do
        not define, by attribute and by C{getattr}, and not one they
        define, nor a named tuple's C{_replace}.
        """
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        source = os.path.join(path, "m.py")
        with open(source, "w") as file:
            file.write("class A:\n    def __init__(self):\n        self._mine = 1\n"
                       "def f(a, t, p):\n    return (a._mine, t._tempDataBuffer,"
                       " getattr(t, '_reads', 0), p._replace(x=1))\n")
        self.assertEqual(privateNamesRead({"m": source}),
                         ["m:5 reads _tempDataBuffer", "m:5 reads _reads"])

    def test_modulesSmall(self) -> None:
        """
        No module of the package is longer than L{MAX_LINES} lines.
        """
        big = []
        for module, path in sourceModules().items():
            with open(path) as file:
                lines = len(file.readlines())
            if lines > MAX_LINES:
                big.append(f"{module}: {lines} lines")
        self.assertEqual(big, [])


def suiteModules() -> dict[str, str]:
    """
    Every test module of the suite, by path relative to C{tests/}.
    """
    found = {}
    for directory, subdirectories, names in os.walk(TESTS):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        for name in names:
            if name.startswith("test_") and name.endswith(".py"):
                path = os.path.join(directory, name)
                found[os.path.relpath(path, TESTS)] = path
    return found


def parsed(path: str) -> ast.Module:
    with open(path) as file:
        return ast.parse(file.read())


class SuiteTests(SynchronousTestCase):
    """
    The suite's rules (docs/explanation/architecture.rst, "Tests").
    """

    def test_unitModulesFollowTheSource(self) -> None:
        """
        Each module C{tests/unit/PACKAGE/test_MODULE.py} tests
        C{udptunnel/PACKAGE/MODULE.py}, which exists; a test module is
        either a unit module or an end-to-end one.
        """
        strays = []
        for relative in suiteModules():
            parts = relative.split(os.sep)
            if parts[0] == "e2e":
                continue
            if parts[0] != "unit":
                strays.append(f"{relative}: neither in unit/ nor in e2e/")
                continue
            if len(parts) == 2 and parts[1] in UNIT_ELSEWHERE:
                continue
            source = os.path.join(SOURCE, *parts[1:-1], parts[-1].removeprefix("test_"))
            if not os.path.isfile(source):
                strays.append(f"{relative}: no {os.path.relpath(source, REPOSITORY)}")
        self.assertEqual(strays, [])

    def test_noTestModuleImportsAnother(self) -> None:
        """
        Test modules share only what C{tests.support} holds: none imports
        another test module.
        """
        wrong = []
        for relative, path in suiteModules().items():
            for node in ast.walk(parsed(path)):
                names = []
                if isinstance(node, ast.ImportFrom):
                    names = ["." * node.level + (node.module or "")]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                wrong += [f"{relative} imports {name}" for name in names
                          if name.startswith(".")
                          or (name.startswith("tests") and not name.startswith("tests.support")
                              and name != "tests")]
        self.assertEqual(wrong, [])

    def test_everyTestSaysWhatItChecks(self) -> None:
        """
        Every test method has a docstring, stating the behaviour it checks.
        """
        bare = []
        for relative, path in suiteModules().items():
            for node in ast.walk(parsed(path)):
                if isinstance(node, ast.ClassDef):
                    bare += [f"{relative}: {node.name}.{item.name}" for item in node.body
                             if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                             and item.name.startswith("test")
                             and not ast.get_docstring(item)]
        self.assertEqual(bare, [])

    def test_testsAreTrialMethods(self) -> None:
        """
        Every test is a method of a trial test case: no module-level function
        is named C{test...}, which pytest would collect as a test of its own
        and run under pytest-twisted's reactor, that the trial tests after it
        then find already running.
        """
        loose = []
        for relative, path in suiteModules().items():
            loose += [f"{relative}: {node.name}" for node in parsed(path).body
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.name.startswith("test")]
        self.assertEqual(loose, [])

    def test_noFailureBecomesASkip(self) -> None:
        """
        No test skips from an exception handler: a skip says what the
        machine lacks (asked before the test, as the C{whyNo...} functions
        of L{tests.support.system} do), never what went wrong in the test.
        """
        found = []
        for relative, path in sorted(suiteModules().items()) + [
                ("support/" + name, os.path.join(TESTS, "support", name))
                for name in sorted(os.listdir(os.path.join(TESTS, "support")))
                if name.endswith(".py")]:
            for node in ast.walk(parsed(path)):
                if isinstance(node, ast.ExceptHandler):
                    text = ast.unparse(node)
                    if "SkipTest" in text or "skipTest" in text:
                        found.append(f"{relative}:{node.lineno}")
        self.assertEqual(found, [])
