"""
L{udptunnel.udp.protocol}: the UDP protocol hands each read to the core.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import FakeUDPTransport, RecordingRelay
from udptunnel.udp.protocol import TunnelDatagramProtocol


class DatagramProtocolTests(SynchronousTestCase):
    def test_forwardsAndAnnounces(self) -> None:
        relay = RecordingRelay()
        protocol = TunnelDatagramProtocol(relay)
        transport = FakeUDPTransport()
        protocol.makeConnection(transport)
        self.assertIs(relay.udp, transport)
        protocol.datagramReceived(b"", ("127.0.0.1", 1))
        protocol.datagramReceived(b"data", ("::1", 2))
        self.assertEqual(relay.datagrams, [(b"", ("127.0.0.1", 1)), (b"data", ("::1", 2))])
        protocol.doStop()
        self.assertIsNone(relay.udp)
