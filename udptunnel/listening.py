"""
A server endpoint that says where it listens, in our words.

Twisted's ports log "<factory class> starting on <port number>", which
names a class of ours and leaves out the address; the line an operator
looks for is "listening on 127.0.0.1:9999".
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from .addresses import showAddress


@implementer(IStreamServerEndpoint)
class AnnouncingEndpoint:
    """
    Wraps a server endpoint to log C{format} (a log format with an
    C{{address}} field) once it listens.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, format: str) -> None:
        self._endpoint = endpoint
        self._format = format

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._endpoint.listen(protocolFactory).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.log.info(self._format, address=describeAddress(port.getHost()))
        return port


def describeAddress(address: Any) -> str:
    """
    A listening address as people write it: C{127.0.0.1:9999},
    C{[::]:9999}, or a Unix socket's path.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        return showAddress((address.host, address.port))
    if isinstance(address, UNIXAddress):
        name = address.name
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return str(address)
