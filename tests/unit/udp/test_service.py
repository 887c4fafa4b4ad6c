"""
L{udptunnel.udp.service}: the UDP socket's service.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.support.net import Recorder
from udptunnel.udp.service import UDPService


class ServiceTests(TestCase):
    def test_bindsOnceAndCloses(self) -> Any:
        """
        The socket is bound in C{privilegedStartService}, and C{startService}
        keeps it rather than binding another; stopping closes it.
        """
        protocol = Recorder()
        service = UDPService(0, protocol, "127.0.0.1", reactor)
        service.privilegedStartService()
        port = service.port
        service.startService()
        self.assertIs(service.port, port)
        assert port is not None
        self.assertNotEqual(port.fileno(), -1)
        return service.stopService().addCallback(
            lambda _: self.assertEqual(port.fileno(), -1)
        )
