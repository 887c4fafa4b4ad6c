"""
udptunnel: carry UDP datagrams through one TCP connection, in both
directions, as a plugin for twistd.
"""

__version__ = "0.1.0"
