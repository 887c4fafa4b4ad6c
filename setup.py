"""
The compiled fast path (udptunnel/pump_c/, the module udptunnel._pump) is optional: where it cannot be
built (no compiler, no Python headers, not Linux), the install goes on
without it and udptunnel runs its pure-Python path.  Everything else is in
setup.cfg.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux") and sys.implementation.name == "cpython":
    sources = [f"udptunnel/pump_c/{name}.c" for name in ("pump", "pair", "carry", "addresses")]
    extensions.append(Extension("udptunnel._pump", sources, depends=["udptunnel/pump_c/pump.h"],
                                optional=True, extra_compile_args=["-O2", "-std=gnu11"]))

setup(ext_modules=extensions)
