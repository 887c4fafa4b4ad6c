"""
L{udptunnel.link.preamble}: rfc1036's handshake, required, sent, refused
and counted, and recognised by a listening end that does not use it.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import (
    FakeUDPTransport,
    RecordingRelay,
    captureLogEvents,
    scrape,
)
from tests.support.net import (
    frame,
)
from udptunnel.link.preamble import (
    NO_HANDSHAKE,
    RFC1036_PREAMBLE,
    Handshake,
    HandshakeMismatch,
    checkPreamble,
    handshakeFor,
)
from udptunnel.link.protocol import TunnelFactory
from udptunnel.tunnel.serversessions import ServerSessions
from udptunnel.tunnel.single import Relay

SERVER = handshakeFor("rfc1036", connecting=False)


CLIENT = handshakeFor("rfc1036", connecting=True)


#: The same length as the preamble, one byte wrong (the last).
WRONG = RFC1036_PREAMBLE[:-1] + b"\x00"


class ReasonRecordingRelay(RecordingRelay):
    def linkLost(self, link, reason):
        super().linkLost(link, reason)
        self.reasons = getattr(self, "reasons", []) + [reason]


def connect(relay, handshake=NO_HANDSHAKE, tls=False):
    protocol = TunnelFactory(relay, tls=tls, handshake=handshake).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
    protocol.makeConnection(transport)
    return protocol, transport


class PreambleTests(SynchronousTestCase):
    def test_theBytes(self) -> None:
        """
        The preamble is the 32 bytes the issue quotes from rfc1036/udptunnel.
        """
        self.assertEqual(RFC1036_PREAMBLE.hex(" "),
                         "75 64 70 74 75 6e 6e 65 6c 20 62 79 20 6d 64 2e "
                         "00 00 00 01 03 06 10 15 21 28 36 45 55 66 78 91")

    def test_profiles(self) -> None:
        """
        In C{rfc1036} the connecting end sends the preamble and expects nothing,
        the listening end expects it and sends nothing; C{none} connecting is
        L{NO_HANDSHAKE}, and C{none} listening watches for rfc1036's preamble,
        which an C{rfc1036} listening end does not.
        """
        self.assertEqual((CLIENT.send, CLIENT.expect), (RFC1036_PREAMBLE, b""))
        self.assertEqual((SERVER.send, SERVER.expect), (b"", RFC1036_PREAMBLE))
        self.assertEqual(handshakeFor("none", True), NO_HANDSHAKE)
        # A listening end without a preamble watches for rfc1036's.
        self.assertEqual(handshakeFor("none", False),
                         Handshake(foreign=(("rfc1036", RFC1036_PREAMBLE),)))
        self.assertEqual(SERVER.foreign, ())

    def test_check(self) -> None:
        """
        L{checkPreamble} is C{None} while the bytes so far match but are too
        few, true once the whole preamble arrived (whatever follows it), and
        false from the first byte that differs.
        """
        self.assertIsNone(checkPreamble(b"abc", b""))
        self.assertIsNone(checkPreamble(b"abc", b"ab"))
        self.assertTrue(checkPreamble(b"abc", b"abc"))
        self.assertTrue(checkPreamble(b"abc", b"abcdef"))
        self.assertFalse(checkPreamble(b"abc", b"x"))
        self.assertFalse(checkPreamble(b"abc", b"abx"))


class ServerProtocolTests(SynchronousTestCase):
    """
    A listening end with the profile requires the preamble, strips it, and
    only then makes the connection the link.
    """

    def test_preambleThenFramesInOneRead(self) -> None:
        """
        The preamble and frames in one read: the connection becomes the link,
        the frames after the preamble reach the relay, the server sends nothing
        back, and the connection stays open.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, SERVER)
        self.assertEqual(relay.links, [])
        protocol.dataReceived(RFC1036_PREAMBLE + frame(b"one") + frame(b"two"))
        self.assertEqual(relay.links, [protocol])
        self.assertEqual(relay.frames, [b"one", b"two"])
        self.assertEqual(transport.value(), b"")  # a server sends no preamble
        self.assertFalse(transport.disconnecting)

    def test_oneByteAtATime(self) -> None:
        """
        Fed one byte at a time, the connection becomes the link at the
        preamble's 32nd byte and not before; the frames after it, an empty one
        included, reach the relay.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER)
        stream = RFC1036_PREAMBLE + frame(b"") + frame(b"x" * 300)
        for i in range(len(stream)):
            protocol.dataReceived(stream[i : i + 1])
            self.assertEqual(relay.links, [protocol] if i >= 31 else [], i)
        self.assertEqual(relay.frames, [b"", b"x" * 300])

    def test_preambleAloneThenFrames(self) -> None:
        """
        A read of the preamble alone makes the link and delivers no frame; the
        next read's frames are delivered.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertEqual((relay.links, relay.frames), ([protocol], []))
        protocol.dataReceived(frame(b"after"))
        self.assertEqual(relay.frames, [b"after"])

    def test_mismatchCloses(self) -> None:
        """
        A wrong preamble closes the connection; nothing of it is a frame,
        it never becomes the link, and the relay is told why.
        """
        relay = ReasonRecordingRelay()
        protocol, transport = connect(relay, SERVER)
        protocol.dataReceived(WRONG + frame(b"never"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual((relay.links, relay.frames), ([], []))
        protocol.dataReceived(frame(b"late"))
        self.assertEqual(relay.frames, [])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(relay.lost, [protocol])
        self.assertTrue(relay.reasons[0].check(HandshakeMismatch))

    def test_mismatchAtTheFirstWrongByte(self) -> None:
        """
        The classic wire (a frame's length first) is refused as soon as a
        byte differs, without waiting for 32 bytes.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, SERVER)
        protocol.dataReceived(b"u")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"\x00")
        self.assertTrue(transport.disconnecting)

    def test_tlsAndPreamble(self) -> None:
        """
        Over TLS the connection becomes the link once both the handshake is
        done and the preamble (inside the TLS stream) arrived.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER, tls=True)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertEqual(relay.links, [])
        protocol.handshakeCompleted()
        self.assertEqual(relay.links, [protocol])

        relay = RecordingRelay()
        protocol, _ = connect(relay, SERVER, tls=True)
        protocol.handshakeCompleted()
        self.assertEqual(relay.links, [])
        protocol.dataReceived(RFC1036_PREAMBLE + frame(b"a"))
        self.assertEqual((relay.links, relay.frames), ([protocol], [b"a"]))

    def test_withoutProfileThePreambleIsFrames(self) -> None:
        """
        The default (C{none}) is the classic wire: the preamble's first two
        bytes are read as a frame length, as 1.1 would.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay)
        self.assertEqual(relay.links, [protocol])
        protocol.dataReceived(frame(RFC1036_PREAMBLE))
        self.assertEqual(relay.frames, [RFC1036_PREAMBLE])


NONE_SERVER = handshakeFor("none", connecting=False)


class ForeignPreambleTests(SynchronousTestCase):
    """
    A listening end of the classic wire that receives rfc1036's preamble
    closes the connection and says which C{--handshake} the peer wants,
    instead of reading the preamble's C{ud} as a 30,052-byte frame.
    """

    def test_preambleRefusedWithTheHint(self) -> None:
        """
        rfc1036's preamble then a frame, sent to a listening end of C{none}: the
        connection (the link at once) is closed with no frame delivered, and the
        relay is told by a L{HandshakeMismatch} that names C{--handshake rfc1036}.
        """
        relay = ReasonRecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        self.assertEqual(relay.links, [protocol])  # the link at once, as before
        protocol.dataReceived(RFC1036_PREAMBLE + frame(b"never"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(relay.frames, [])
        (reason,) = relay.reasons
        self.assertTrue(reason.check(HandshakeMismatch))
        self.assertIn("the peer sends rfc1036's handshake: use --handshake rfc1036",
                      reason.getErrorMessage())

    def test_oneByteAtATime(self) -> None:
        """
        Fed one byte at a time, rfc1036's preamble is recognised at its last
        byte: the connection stays open until then, and is closed after it.
        """
        relay = ReasonRecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        for i, byte in enumerate(RFC1036_PREAMBLE):
            self.assertFalse(transport.disconnecting, i)
            protocol.dataReceived(bytes([byte]))
        self.assertTrue(transport.disconnecting)

    def test_framesPassAtOnce(self) -> None:
        """
        A stream whose first byte cannot begin the preamble is frames from
        that byte; one that begins like it is held only until a byte
        differs, and then parsed whole.
        """
        relay = RecordingRelay()
        protocol, _ = connect(relay, NONE_SERVER)
        protocol.dataReceived(frame(b"one"))
        self.assertEqual(relay.frames, [b"one"])

        relay = RecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        big = b"u" + b"x" * (0x7578 - 1)
        stream = frame(big) + frame(b"two")
        protocol.dataReceived(stream[:1])
        self.assertEqual(protocol.recvd, b"")  # held: it may be the preamble
        protocol.dataReceived(stream[1:])
        self.assertEqual(relay.frames, [big, b"two"])
        self.assertFalse(transport.disconnecting)

    def test_nearMissIsFrames(self) -> None:
        """
        The preamble with its last byte wrong is no preamble: frames.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, NONE_SERVER)
        protocol.dataReceived(WRONG)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol.recvd, WRONG)

    def test_pendingConnectionCounted(self) -> None:
        """
        Refused while waiting (a live link was there), it is counted as a
        pending connection closed for C{handshake}, and logged with the
        hint; the live link is untouched.
        """
        events = captureLogEvents(self)
        relay = Relay(Clock(), role="server")
        relay.udpStarted(FakeUDPTransport())
        live, _ = connect(relay, NONE_SERVER)
        live.dataReceived(frame(b"traffic"))
        protocol, transport = connect(relay, NONE_SERVER)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(relay.link, live)
        self.assertEqual(relay.stats.pendingClosed["handshake"], 1)
        self.assertTrue(any("use --handshake rfc1036" in str(e.get("why", "")) for e in events))

    def test_clientDoesNotWatch(self) -> None:
        """
        A connecting end never receives a preamble (rfc1036's server sends
        none): its first bytes are frames, whatever they are.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, handshakeFor("none", connecting=True))
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertFalse(transport.disconnecting)


class ClientProtocolTests(SynchronousTestCase):
    """
    A connecting end with the profile sends the preamble before any frame.
    """

    def test_preambleFirst(self) -> None:
        """
        A connecting end writes the preamble as soon as it is the link, before
        the relay's first frame; what it receives is frames, with no preamble.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, CLIENT)
        self.assertEqual(transport.value(), RFC1036_PREAMBLE)
        self.assertEqual(relay.links, [protocol])
        protocol.sendFrames([b"hello"])
        self.assertEqual(transport.value(), RFC1036_PREAMBLE + frame(b"hello"))
        protocol.dataReceived(frame(b"reply"))  # the server sends no preamble
        self.assertEqual(relay.frames, [b"reply"])

    def test_afterTLS(self) -> None:
        """
        Over TLS, a connecting end writes the preamble only once the TLS
        handshake completed, and nothing before.
        """
        relay = RecordingRelay()
        protocol, transport = connect(relay, CLIENT, tls=True)
        self.assertEqual(transport.value(), b"")
        protocol.handshakeCompleted()
        self.assertEqual(transport.value(), RFC1036_PREAMBLE)

    def test_refusedSendsNothing(self) -> None:
        """
        A connecting end writes no preamble on a connection its relay refuses.
        """
        relay = RecordingRelay()
        relay.allowed = False
        _, transport = connect(relay, CLIENT)
        self.assertEqual(transport.value(), b"")

    def test_defaultSendsNothing(self) -> None:
        """
        Without a profile (C{none}), a connecting end writes nothing before its
        first frame.
        """
        _, transport = connect(RecordingRelay())
        self.assertEqual(transport.value(), b"")


class CountedTests(SynchronousTestCase):
    """
    The relays count a mismatch as a pending connection closed for
    C{handshake}, log it rate-limited, and the metric has the series.
    """

    def assertCounted(self, relay, what: str) -> None:
        events = captureLogEvents(self)
        for _ in range(3):
            protocol, transport = connect(relay, SERVER)
            self.assertEqual(relay.pendingCount(), 1)
            protocol.dataReceived(WRONG)
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(relay.pendingCount(), 0)
        self.assertEqual(relay.stats.pendingClosed["handshake"], 3)
        self.assertEqual(relay.stats.linksFailed, 0)
        self.assertEqual(relay.stats.linksUp, 0)
        warnings = [e for e in events if "preamble" in str(e.get("why", ""))]
        self.assertEqual(len(warnings), 1)  # rate-limited: 3 within the interval
        self.assertIn(what, warnings[0]["log_format"])
        self.assertIn('udptunnel_pending_closed_total{reason="handshake"} 3.0', scrape(relay))

    def test_relay(self) -> None:
        """
        The single-link relay has the series at 0 from the start, counts each
        wrong preamble as a pending connection closed for C{handshake}, and logs
        that it never became the link.
        """
        relay = Relay(Clock(), role="server")
        relay.udpStarted(FakeUDPTransport())
        self.assertIn('udptunnel_pending_closed_total{reason="handshake"} 0.0', scrape(relay))
        self.assertCounted(relay, "never became the link")

    def test_serverSessions(self) -> None:
        """
        The sessions server counts each wrong preamble the same, and logs that
        it never became a session.
        """
        relay = ServerSessions(Clock(), ("192.0.2.1", 53), lambda protocol: FakeUDPTransport())
        self.assertCounted(relay, "never became a session")

    def test_serverSessionsMatch(self) -> None:
        """
        On the sessions server, a connection becomes a session only once its
        preamble arrived whole.
        """
        relay = ServerSessions(Clock(), ("192.0.2.1", 53), lambda protocol: FakeUDPTransport())
        protocol, _ = connect(relay, SERVER)
        self.assertEqual(relay.sessionCount(), 0)
        protocol.dataReceived(RFC1036_PREAMBLE)
        self.assertEqual(relay.sessionCount(), 1)

    def test_pendingTimeoutBoundsTheWait(self) -> None:
        """
        A connection that never sends its preamble is closed at the pending
        deadline, as one that never sends a frame.
        """
        clock = Clock()
        relay = Relay(clock, role="server", pendingTimeout=5)
        relay.udpStarted(FakeUDPTransport())
        protocol, transport = connect(relay, SERVER)
        protocol.dataReceived(RFC1036_PREAMBLE[:10])
        clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(relay.stats.pendingClosed["timeout"], 1)
