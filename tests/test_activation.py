"""
The TCP listener of a C{systemd:} endpoint, adopted so that a restarted
tunnel (a config file's reload) can adopt it again.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from udptunnel.cli.activation import SystemdStreamEndpoint, systemdStreamSocket

INHERITED = [(3, "udptunnel.socket"), (4, "udptunnel.socket"), (5, "metrics.socket")]


class LookupTests(SynchronousTestCase):
    def test_byIndex(self) -> None:
        self.assertEqual(systemdStreamSocket("systemd:domain=INET6:index=1", INHERITED),
                         (4, socket.AF_INET6))

    def test_byName(self) -> None:
        self.assertEqual(systemdStreamSocket("systemd:domain=INET:name=metrics.socket",
                                             INHERITED), (5, socket.AF_INET))

    def test_errorsSayWhy(self) -> None:
        for description, inherited, why in [
            ("systemd:domain=INET:index=0", [], "systemd passed no sockets"),
            ("systemd:domain=INET:index=3", INHERITED, "passed 3 socket(s), numbered from 0"),
            ("systemd:domain=INET:name=other", INHERITED, "no socket of that name"),
            ("systemd:domain=IPX:index=0", INHERITED, "domain=INET, INET6 or UNIX"),
            ("systemd:domain=INET", INHERITED, "one of index=N or name=NAME"),
            ("systemd:domain=INET:index=0:name=x", INHERITED, "one of index=N or name=NAME"),
        ]:
            with self.assertRaises(ValueError) as caught:
                systemdStreamSocket(description, inherited)
            self.assertIn(why, str(caught.exception), description)
            self.assertTrue(str(caught.exception).startswith(description), description)


class ReadoptionTests(TestCase):
    """
    Listening, stopping and listening again on the same passed socket:
    what a reload that restarts the tunnel does.
    """

    @inlineCallbacks
    def test_listenAgainAfterStop(self) -> object:
        passed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(passed.close)
        passed.bind(("127.0.0.1", 0))
        passed.listen(8)
        port = passed.getsockname()[1]
        endpoint = SystemdStreamEndpoint(reactor, passed.fileno(), socket.AF_INET)
        for _ in range(2):
            listening = yield endpoint.listen(Factory.forProtocol(Protocol))
            self.assertEqual(listening.getHost().port, port)
            yield listening.stopListening()
            # The descriptor systemd passed is still open, still that socket
            # (Twisted's own endpoint closes it: this would raise EBADF).
            self.assertEqual(passed.getsockname()[1], port)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.close()
