"""
udptunnel: carry UDP datagrams through one TCP connection, in both
directions, as a plugin for twistd.
"""

from __future__ import annotations

__version__ = "0.1.0"


class StartupError(Exception):
    """
    The tunnel cannot start (a port is busy, an address cannot be bound); the
    message says which, in one line.
    """
