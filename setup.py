"""
The compiled fast path (udptunnel/_pump.c) is optional: where it cannot be
built (no compiler, no Python headers, not Linux), the install goes on
without it and udptunnel runs its pure-Python path.  Everything else is in
setup.cfg.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux") and sys.implementation.name == "cpython":
    extensions.append(Extension("udptunnel._pump", ["udptunnel/_pump.c"], optional=True,
                                extra_compile_args=["-O2", "-std=gnu11"]))

setup(ext_modules=extensions)
