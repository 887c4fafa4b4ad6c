"""
The twistd plugin: C{twistd udptunnel server|client ...}.

One statement, and the tap module imported only when the plugin is used,
so every twistd plugin scan stays cheap.
"""

from twisted.application.service import ServiceMaker

udptunnel = ServiceMaker(
    "udptunnel",
    "udptunnel.tap",
    "Carry UDP datagrams through a TCP connection, both ways.",
    "udptunnel",
)
