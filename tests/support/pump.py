"""
The compiled pump (C{udptunnel._pump}) as the install built it.

The suite imports C{udptunnel} from the source tree, which holds the C
source and no build of it; the installed distribution holds the built
module, which imports nothing of ours and so loads from there by path.
Where none was built, the tests that need it skip, unless
C{UDPTUNNEL_REQUIRE_COMPILED} is set (CI, which installs a compiler): then
they fail, as a build that silently fell back would go unnoticed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sysconfig
from types import ModuleType

from twisted.trial.unittest import SkipTest

_loaded: ModuleType | None = None


def installedPump() -> ModuleType | None:
    """
    C{udptunnel._pump} from the installed distribution, or C{None}.
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    # The installed distribution's own record, not the source tree's
    # egg-info (which a build leaves beside the sources).
    installed = importlib.metadata.distributions(
        name="udptunnel", path=[sysconfig.get_paths()["platlib"]])
    files = [file for distribution in installed for file in distribution.files or []]
    for file in files:
        if file.parent.name == "udptunnel" and file.name.startswith("_pump."):
            spec = importlib.util.spec_from_file_location("udptunnel._pump", file.locate())
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _loaded = module
            return module
    return None


def requirePump() -> ModuleType:
    """
    The compiled pump, or the test skips (fails where it is required).
    """
    module = installedPump()
    if module is not None:
        return module
    why = "udptunnel._pump is not built in the installed distribution"
    if os.environ.get("UDPTUNNEL_REQUIRE_COMPILED"):
        raise AssertionError(f"{why}, and UDPTUNNEL_REQUIRE_COMPILED is set")
    raise SkipTest(why)
