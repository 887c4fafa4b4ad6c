"""
L{udptunnel._twisted.reuseport} and the ports that use it: members of a
C{SO_REUSEPORT} group share a port, nobody else does.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, ServerFactory
from twisted.trial.unittest import TestCase

from tests.support.net import LOCAL
from udptunnel._twisted import reuseport
from udptunnel.link.listening import ReusePortReactor
from udptunnel.udp.port import DatagramSocket
from udptunnel.udp.service import UDPService


class SharedPortTests(TestCase):
    """
    The ports themselves, on loopback: the kernel lets members of a group
    bind one port, and nobody else.
    """

    def udpPort(self, port: int, shared: bool) -> DatagramSocket:
        service = UDPService(port, DatagramProtocol(), LOCAL, reactor, reusePort=shared)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.port is not None
        return service.port

    def test_udpShared(self) -> None:
        """
        Two L{UDPService}s with C{reusePort} bind the same UDP port; a
        plain one cannot join them, and says why as Twisted would.
        """
        first = self.udpPort(0, shared=True)
        port = first.getHost().port
        second = self.udpPort(port, shared=True)
        self.assertEqual(second.getHost().port, port)
        self.assertRaises(CannotListenError, self.udpPort, port, False)

    def test_udpPlainNotShared(self) -> None:
        """
        Without the option the kernel refuses a second bind: what makes the
        test above mean something.
        """
        port = self.udpPort(0, shared=False).getHost().port
        self.assertRaises(CannotListenError, self.udpPort, port, True)

    def test_tcpShared(self) -> None:
        """
        L{ReusePortReactor.listenTCP} makes ports that listen on one TCP
        port together; the reactor's own cannot.  Both ways: through
        Twisted's public C{makeBinding}, and through the fallback for a
        Twisted without it.
        """
        for public in (True, False):
            if not public:
                self.patch(reuseport, "_makeBinding", None)
            shared = ReusePortReactor(reactor)
            first = shared.listenTCP(0, ServerFactory(), interface=LOCAL)
            self.addCleanup(first.stopListening)
            port = first.getHost().port
            second = shared.listenTCP(port, ServerFactory(), interface=LOCAL)
            self.addCleanup(second.stopListening)
            self.assertEqual(second.getHost().port, port)
            self.assertEqual(isinstance(second, reuseport._ReusePortTCPPort), not public)
            self.assertRaises(CannotListenError, reactor.listenTCP, port, ServerFactory(),
                              interface=LOCAL)

    def test_reactorDelegates(self) -> None:
        """
        Everything but C{listenTCP} is the reactor's.
        """
        self.assertEqual(ReusePortReactor(reactor).callLater, reactor.callLater)
