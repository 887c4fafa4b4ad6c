"""
Sphinx configuration of udptunnel's manual.

The reference pages are generated from the code by the extension in
C{_ext/udptunnel_reference.py}: options and config keys from the option
schema, metrics from the collector, the status fields from the status
document, so that the manual cannot drift from what the daemon does.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

from udptunnel import __version__

project = "udptunnel"
author = "the udptunnel authors"
copyright = "the udptunnel authors"
version = release = __version__

extensions = ["udptunnel_reference"]
exclude_patterns = ["_build"]
root_doc = "index"
nitpicky = True
html_theme = "alabaster"
html_title = f"udptunnel {version}"
html_static_path: list[str] = []

man_pages = [
    ("reference/udptunnel", "udptunnel",
     "carry UDP datagrams through a TCP connection, both ways", [author], 8),
]
man_show_urls = False
