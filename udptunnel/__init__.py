"""
udptunnel: carry UDP datagrams through one TCP connection, in both
directions, as a plugin for twistd.
"""

__version__ = "0.1.0"


class StartupError(Exception):
    """
    The tunnel cannot start (a port is busy, an address cannot be bound); the
    message says which, in one line.

    It lives here so that its name is short: a daemonising twistd shows the
    parent just 100 bytes of "module.Class: message".
    """
