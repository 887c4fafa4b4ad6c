"""
L{udptunnel.cli.activation}: which of the sockets systemd passed an option
takes, and the adopted listener that a restarted tunnel adopts again.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.net import udpSocket
from udptunnel.cli.activation import (
    SystemdStreamEndpoint,
    systemdDatagramSocket,
    systemdStreamSocket,
)
from udptunnel.tap import Options

INHERITED = [(3, "udptunnel.socket"), (4, "udptunnel.socket"), (5, "metrics.socket")]


class StreamLookupTests(SynchronousTestCase):
    """
    L{systemdStreamSocket}: which of the sockets systemd passed a C{systemd:}
    stream endpoint description names.
    """

    def test_byIndex(self) -> None:
        """
        C{index=N} picks the Nth socket passed (from 0), whatever its name, with
        the address family C{domain} names.
        """
        self.assertEqual(systemdStreamSocket("systemd:domain=INET6:index=1", INHERITED),
                         (4, socket.AF_INET6))

    def test_byName(self) -> None:
        """
        C{name=NAME} picks the socket that C{LISTEN_FDNAMES} gives that name.
        """
        self.assertEqual(systemdStreamSocket("systemd:domain=INET:name=metrics.socket",
                                             INHERITED), (5, socket.AF_INET))

    def test_errorsSayWhy(self) -> None:
        """
        A description that names no usable socket (none passed, an index out of
        range, an unknown name or domain, neither or both of C{index} and
        C{name}) is a L{ValueError} that starts with the description and says why.
        """
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
        """
        Each listen adopts a duplicate: once it stops, the descriptor systemd
        passed is still open and still that socket, so the endpoint listens on
        the same port again, and that listener accepts connections.
        """
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


class DatagramLookupTests(SynchronousTestCase):
    """
    Which of the sockets systemd passed C{--udp systemd:...} takes.
    """

    def setUp(self) -> None:
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(self.tcp.close)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.udp = udpSocket(self)
        # As one .socket unit passes them: the same name for both.
        self.inherited: list[tuple[int, str | None]] = [
            (self.tcp.fileno(), "tun.socket"), (self.udp.fileno(), "tun.socket")]

    def test_byIndex(self) -> None:
        """
        C{systemd:N} gives the Nth passed socket's descriptor and the address it
        is bound to, and leaves the descriptor open.
        """
        fd, host, port = systemdDatagramSocket(1, self.inherited)
        self.assertEqual((fd, host, port),
                         (self.udp.fileno(), "127.0.0.1", self.udp.getsockname()[1]))
        # A look only: the descriptor is still open.
        self.assertEqual(self.udp.getsockname()[1], port)

    def test_byNamePicksTheDatagramSocket(self) -> None:
        """
        Of the stream and the datagram socket that one C{.socket} unit passes
        under one name, C{systemd:NAME} picks the datagram one.
        """
        self.assertEqual(systemdDatagramSocket("tun.socket", self.inherited)[0],
                         self.udp.fileno())

    def test_streamRefused(self) -> None:
        """
        An index that names a stream socket is refused: not a UDP socket.
        """
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket(0, self.inherited)
        self.assertIn("not a UDP socket", str(caught.exception))

    def test_outOfRange(self) -> None:
        """
        An index past the sockets passed is refused, saying how many were.
        """
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket(2, self.inherited)
        self.assertIn("passed 2 socket(s)", str(caught.exception))

    def test_unknownName(self) -> None:
        """
        A name that no passed socket has is refused, listing the names passed.
        """
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket("other", self.inherited)
        self.assertIn("no socket of that name; systemd passed tun.socket",
                      str(caught.exception))

    def test_twoOfOneName(self) -> None:
        """
        A name that two UDP sockets share is refused as ambiguous, asking for the
        socket's index instead.
        """
        other = udpSocket(self)
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket("tun.socket", [*self.inherited, (other.fileno(), "tun.socket")])
        self.assertIn("give its index", str(caught.exception))

    def test_nothingPassed(self) -> None:
        """
        Not started by systemd: the error says so.  (The test process has
        no LISTEN_FDS, so the real look-up finds nothing.)
        """
        self.assertNotIn("LISTEN_FDS", os.environ)
        with self.assertRaises(ValueError) as caught:
            systemdDatagramSocket(0)
        self.assertIn("systemd passed no sockets", str(caught.exception))

    def test_optionsRefuse(self) -> None:
        """
        On the command line, a usage error that names C{--udp}.
        """
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["server", "--tcp", "9999", "--udp", "systemd:0"])
        self.assertIn("--udp: systemd:0: systemd passed no sockets", str(caught.exception))
