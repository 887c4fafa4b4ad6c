"""
L{udptunnel.udp.protocol}: the UDP protocol hands each read to the core,
and a bug in the core does not stop it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import FakeUDPTransport, RecordingRelay
from udptunnel.udp.protocol import TunnelDatagramProtocol


class DatagramProtocolTests(SynchronousTestCase):
    def test_forwardsAndAnnounces(self) -> None:
        """
        The protocol tells the relay its transport when connected, hands it
        each datagram with its source, empty ones included, and tells it when
        the socket stops.
        """
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


class BuggyRelay(RecordingRelay):
    """
    A relay with a bug that shows on the first datagrams only.
    """

    raised = False

    def datagramsReceived(self, datagrams):
        if not self.raised:
            self.raised = True
            raise KeyError("a bug")
        super().datagramsReceived(datagrams)


class GuardTests(SynchronousTestCase):
    """
    An exception of the relay's is reported to it, and traffic goes on.
    """

    def test_datagramsGoOn(self) -> None:
        """
        An exception of the relay's while it handles a read of datagrams is
        reported to it (C{datagrams}), and the UDP protocol hands it the next
        read.
        """
        relay = BuggyRelay()
        protocol = TunnelDatagramProtocol(relay)
        protocol.datagramsReceived([(b"one", ("127.0.0.1", 1))])
        protocol.datagramsReceived([(b"two", ("127.0.0.1", 1))])
        self.assertEqual(relay.datagrams, [(b"two", ("127.0.0.1", 1))])
        self.assertEqual([where for where, _ in relay.errors], ["datagrams"])
        self.assertTrue(relay.errors[0][1].check(KeyError))
