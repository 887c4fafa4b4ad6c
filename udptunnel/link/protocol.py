"""
The TCP link's protocol: a thin adapter that takes a connection through
what comes before its first frame, splits the stream into frames for the
relay, and sends the relay's frames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel._twisted.writethrough import writerFor
from udptunnel.interfaces import ILink, ILinkRelay
from udptunnel.link.preamble import (
    NO_HANDSHAKE,
    Handshake,
    HandshakeMismatch,
    checkPreamble,
)
from udptunnel.link.proxyheader import ProxyHeaderError, parseProxyHeader
from udptunnel.show import logPrefixOf, printable, showAddress
from udptunnel.sockopts import SocketSettings, socketOf, tuneTCP
from udptunnel.wire import FrameDecoder, encodeFrames


@implementer(ILink, IHandshakeListener, IHalfCloseableProtocol)
class TunnelStreamProtocol(Int16StringReceiver):
    """
    One TCP connection of the tunnel: a 2-byte big-endian length, then that
    many bytes of datagram, back to back, both ways.

    What it takes from C{Int16StringReceiver}, and what it changes:

      - C{dataReceived} is its own parser (see there): faster, and it hands
        the relay all the frames of one read in one call.  It honours what
        the base class's parser does: C{MAX_LENGTH} and
        C{lengthLimitExceeded}, and C{pauseProducing} (no frame is delivered
        while paused; they wait, and come out on C{resumeProducing}).
      - C{stringReceived} delivers one frame to the relay, for whatever
        calls it; the parser does not.
      - C{sendString} is the base class's: one frame, through
        C{transport.write}, so in order with L{sendFrames} (which writes
        through only when nothing is queued).
      - C{recvd}, the base class's old view of the unparsed bytes, can be
        read but not replaced.
    """

    #: Frames longer than this go to C{lengthLimitExceeded} (which closes the
    #: connection) instead of to the relay.  Every length a 16-bit prefix can
    #: express is a valid frame by default: one too big for the UDP path is
    #: the relay's to drop and count, not a framing error.  Lower it in a
    #: subclass (or on an instance) to refuse longer frames.
    MAX_LENGTH = 0xFFFF

    remote = "?"
    remoteHost: str | None = None
    #: How L{sendFrames} writes, chosen at connection by
    #: L{udptunnel._twisted.writethrough.writerFor}: straight to the socket
    #: when Twisted's buffers are empty, or C{transport.write}.
    _write: Callable[[bytes], None]
    refused = False
    factory: TunnelFactory
    #: Whether TLS (if any) authenticated the peer, and whether the peer's
    #: preamble (if the profile wants one) arrived: the connection becomes
    #: the link when both are done.
    _secured = False
    _preambleDone = True
    #: The preamble's bytes received so far, while it is awaited.
    _preamble = b""
    #: The stream's first bytes while they could still be another
    #: profile's preamble (L{Handshake.foreign}); C{None} once they cannot.
    _sniffed: bytes | None = None
    #: With C{--proxy-protocol}: the header's bytes so far while it is
    #: awaited (C{None} once it arrived, or when none is expected).
    _proxyHeader: bytes | None = None
    #: The host of the TCP peer itself (the balancer, behind one).
    _peerHost: str | None = None
    #: The stream's frames (made at connection).
    _decoder: FrameDecoder
    #: Why we closed the connection, reported to the relay at
    #: connectionLost instead of the abort's own reason.
    _closedFor: Failure | None = None
    #: Called after the link wrote frames or started closing (a lane of
    #: the compiled pump looks again at whether it may write to it:
    #: L{udptunnel.tunnel.lanes}), or C{None}.
    laneChanged: Callable[[], None] | None = None

    def connectionMade(self) -> None:
        """
        Announce the connection to the relay at once, so that it waits among
        the pending ones (their cap and their deadline) through every stage
        before the first frame: the PROXY header, TLS, the preamble.
        """
        assert self.transport is not None
        address = self.transport.getPeer()
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.remoteHost = self._peerHost = address.host
            self.remote = showAddress((address.host, address.port))
        else:
            self.remote = printable(str(getattr(address, "name", None) or address))
        sock = socketOf(self.transport)
        if sock is not None:
            tuneTCP(sock, self.factory.settings)
        self._decoder = FrameDecoder()
        self._write = (writerFor(self.transport) if self.factory.writeThrough
                       else self.transport.write)
        handshake = self.factory.handshake
        self._preambleDone = not handshake.expect
        if handshake.foreign:
            self._sniffed = b""
        if self.factory.proxyProtocol:
            # The peer is the balancer: --allow judges the client the header
            # names (linkIdentified), so nobody is judged until then.
            self._proxyHeader = b""
            self.remoteHost = None
        if not self.factory.relay.linkConnected(self):
            self._refuse()
        elif self._proxyHeader is None:
            self._secure()

    def _refuse(self, why: Exception | None = None) -> None:
        """
        Close the connection at once; the relay hears C{why} at
        connectionLost, or nothing (it refused the connection itself).
        """
        if why is not None:
            self._closedFor = Failure(why)
        self.refused = True
        self.abort()

    def _secure(self) -> None:
        """
        The connection is admitted: TLS first if any, else become the link.
        """
        if not self.factory.tls:
            self._secured = True
            self._establish()
        # Over TLS the connection becomes the link only once the handshake
        # has authenticated the peer: see handshakeCompleted.

    def handshakeCompleted(self) -> None:
        self._secured = True
        self._establish()

    def _establish(self) -> None:
        """
        Become the link once the peer is authenticated (TLS) and its
        preamble arrived (C{--handshake} on a listening end).  A connecting
        end's preamble goes first, before any frame: the relay sends frames
        only once told of the link (and over TLS it is inside the TLS
        stream, as the peer reads it there).
        """
        if self.refused or not (self._secured and self._preambleDone):
            return
        if self.factory.handshake.send:
            self.transport.write(self.factory.handshake.send)  # type: ignore[union-attr]
        self.factory.relay.linkMade(self)

    def _receivePreamble(self, data: bytes) -> bytes | None:
        """
        Take the preamble out of the stream's first bytes.  The bytes after
        it (in the same read) are frames, returned; C{None} while it is
        incomplete, or when it was wrong (the connection is then closed,
        and the relay told why at connectionLost).
        """
        expected = self.factory.handshake.expect
        received = self._preamble + data
        matched = checkPreamble(expected, received)
        if matched is None:
            self._preamble = received
            return None
        self._preamble = b""
        if not matched:
            self._refuse(HandshakeMismatch(
                f"its first bytes were not the {len(expected)}-byte preamble of "
                f"--handshake (it began {received[:8].hex(' ')})"))
            return None
        self._preambleDone = True
        self._establish()
        return received[len(expected):]

    def _sniff(self, data: bytes) -> bytes | None:
        """
        Watch the stream's first bytes for another profile's preamble (a
        peer that speaks rfc1036's handshake to a server without it would
        otherwise be read as a 30 kB frame of garbage).  The bytes are held
        only while they match one (a real first frame that long is still
        incomplete then); returned once they cannot, C{None} meanwhile or
        when one matched (the connection is then closed, saying which
        C{--handshake} the peer wants).
        """
        assert self._sniffed is not None
        received = self._sniffed + data
        undecided = False
        for profile, preamble in self.factory.handshake.foreign:
            matched = checkPreamble(preamble, received)
            if matched:
                self._sniffed = None
                self._refuse(HandshakeMismatch(
                    f"the peer sends {profile}'s handshake: use --handshake {profile}"))
                return None
            undecided = undecided or matched is None
        if undecided:
            self._sniffed = received
            return None
        self._sniffed = None
        return received

    def _receiveProxyHeader(self, data: bytes) -> bytes | None:
        """
        Take the PROXY protocol header out of the stream's first bytes, take
        the client's address from it, and have the relay judge that client.
        The bytes after it (in the same read) are the stream, returned;
        C{None} while it is incomplete, or when it was wrong or the client
        is refused (the connection is closed).
        """
        assert self._proxyHeader is not None
        received = self._proxyHeader + data
        try:
            header = parseProxyHeader(received)
        except ProxyHeaderError as e:
            self._proxyHeader = None
            self._refuse(e)
            return None
        if header is None:
            self._proxyHeader = received
            return None
        self._proxyHeader = None
        if header.source is not None:
            self.remoteHost = header.source[0]
            self.remote = showAddress(header.source)
        else:
            self.remoteHost = self._peerHost  # LOCAL: the balancer's own
        if not self.factory.relay.linkIdentified(self):
            self._refuse()
            return None
        self._secure()
        return received[header.length:]

    def dataReceived(self, data: bytes) -> None:
        """
        Split the stream into frames, and give the relay all the frames of
        one read in one call.

        The stream is split by L{FrameDecoder} (the one parser of the wire),
        not Int16StringReceiver's own, which hands each frame to
        C{stringReceived} through a C{struct} unpack and several attribute
        updates (see the benchmark notes).  While paused, bytes only
        accumulate (the base class's C{resumeProducing} parses them).  As
        the base class does, a length prefix over C{MAX_LENGTH} calls
        C{lengthLimitExceeded} as soon as it arrives, after the frames
        before it.
        """
        if self.refused:
            return  # closing: its bytes are nobody's frames
        if self._proxyHeader is not None:
            rest = self._receiveProxyHeader(data)
            if not rest or self.refused:
                return
            data = rest
        if not self._preambleDone:
            rest = self._receivePreamble(data)
            if not rest or self.refused:
                return
            data = rest
        if self._sniffed is not None:
            rest = self._sniff(data)
            if not rest:
                return
            data = rest
        decoder = self._decoder
        if self.paused:
            decoder.pending += data
            return
        frames = decoder.feed(data, self.MAX_LENGTH)
        if frames:
            self.deliverFrames(frames)
        if decoder.exceeded is not None:
            self.lengthLimitExceeded(decoder.exceeded)

    def deliverFrames(self, frames: list[bytes]) -> None:
        """
        Hand the relay complete frames.  The link survives an exception of
        ours while they are handled: the stream was split into frames before
        (so the framing stays in step), only that read's frames are lost,
        and closing the link would turn one bug into a reconnect storm.
        """
        try:
            self.factory.relay.framesReceived(self, frames)
        except Exception:  # noqa: BLE001 (a bug of ours, whatever it raises)
            self.factory.relay.internalError("frames", Failure())

    def stringReceived(self, string: bytes) -> None:
        """
        One frame, for whatever calls the base class's hook: it goes to the
        relay as a read of one frame.  (L{dataReceived} does not call it.)
        """
        self.deliverFrames([string])

    def framesOnly(self) -> bool:
        """
        Whether the stream is nothing but frames from here on, with nothing
        held: established (no PROXY header, TLS, preamble or sniffing
        pending), not paused, no partial frame in the parser, every length
        a frame.  Only then may bytes bypass L{dataReceived} (the compiled
        pump, L{udptunnel._twisted.pumped}).
        """
        return (
            self._secured
            and self._preambleDone
            and self._proxyHeader is None
            and self._sniffed is None
            and not self.refused
            and not self.paused
            and not self._decoder.pending
            and self._decoder.exceeded is None
            and self.MAX_LENGTH >= 0xFFFF
        )

    def plainTransport(self) -> ITCPTransport | None:
        """
        The TCP connection whose socket frames may be written to directly
        (L{writesThrough}: Twisted's own TCP, no TLS layer), or C{None}.
        """
        if not self.writesThrough:
            return None
        return cast(ITCPTransport, self.transport)

    @property
    def writesThrough(self) -> bool:
        """
        Whether frames go straight to the socket when nothing is queued
        (L{writerFor}), rather than through C{transport.write}.
        """
        return self._write != self.transport.write  # type: ignore[union-attr]

    @property
    def recvd(self) -> bytes:
        """
        The bytes received and not parsed into frames yet.  Read-only: the
        base class let C{stringReceived} replace its parse buffer through
        this attribute, which this parser does not support.
        """
        return self._decoder.pending

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        if self._closedFor is not None:
            self.factory.relay.linkLost(self, self._closedFor)
        elif not self.refused:  # the relay counted and logged it already
            self.factory.relay.linkLost(self, reason)

    # ILink

    def sendFrames(self, datagrams: list[bytes]) -> None:
        self._write(encodeFrames(datagrams))
        self._changed()  # Twisted may hold some of it now

    #: The relay's flow control on this connection (L{attachProducer}).
    _producer: IPushProducer | None = None

    def close(self) -> None:
        """
        Close the connection once what was written has been sent.  The
        relay's producer is let go first, as the connection's loss would let
        it go: Twisted's TLS layer holds its close alert, and so the close,
        while a producer is registered, and a TLS link would stay open until
        a stop's grace ran out and it was aborted.
        """
        assert self.transport is not None
        self._releaseProducer()
        self.transport.loseConnection()
        self._changed()

    def _changed(self) -> None:
        """
        Tell the compiled pump's lane of this link, if any, that it may no
        longer (or may again) write to the socket past Twisted.
        """
        if self.laneChanged is not None:
            self.laneChanged()

    def drain(self) -> None:
        """
        A stopping end's half-close: the FIN goes after what was written,
        and the frames the peer sent before it saw the FIN still arrive
        (L{readConnectionLost} ends the connection once the peer closed).
        Twisted's TLS layer has no half-close: a TLS link is closed.
        """
        assert self.transport is not None
        if self.factory.tls:
            self.close()
            return
        self._releaseProducer()
        cast(ITCPTransport, self.transport).loseWriteConnection()
        self._changed()

    def _releaseProducer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            cast(IConsumer, self.transport).unregisterProducer()
            producer.stopProducing()

    # IHalfCloseableProtocol

    def readConnectionLost(self) -> None:
        """
        The peer closed its sending half (it stops, or it drained its own
        half-close): close this side once what was written is sent, rather
        than at once, so that frames still in Twisted's buffer reach a peer
        that keeps reading.
        """
        assert self.transport is not None
        self.transport.loseConnection()
        self._changed()

    def writeConnectionLost(self) -> None:
        """
        Our half-close went out (L{drain}); reading goes on.
        """

    def abort(self) -> None:
        cast(ITCPTransport, self.transport).abortConnection()
        self._changed()

    def attachProducer(self, producer: IPushProducer) -> None:
        self._producer = producer
        cast(IConsumer, self.transport).registerProducer(producer, True)


class TunnelFactory(Factory[TunnelStreamProtocol]):
    """
    Builds L{TunnelStreamProtocol}s that report to C{relay}.

    @ivar tls: whether connections are wrapped in TLS, so that they become
        the link only after the handshake.
    @ivar handshake: this end's part in the C{--handshake} profile: a
        preamble to send first, or one to require before the link.
    @ivar proxyProtocol: whether every connection must begin with a PROXY
        protocol header (C{--proxy-protocol}), whose source address is the
        connection's from then on.
    @ivar writeThrough: write frames straight to the socket when nothing
        is queued, where the checks allow (L{writerFor}); C{False}: always
        through C{transport.write} (C{--plain-twisted}).
    """

    protocol = TunnelStreamProtocol
    noisy = False

    def logPrefix(self) -> str:
        """
        The name Twisted's TCP port gives us in its own log lines (with
        the tunnel's, when it has one).
        """
        return logPrefixOf(self.relay, "TCP")

    def __init__(
        self, relay: ILinkRelay, settings: SocketSettings | None = None, tls: bool = False,
        handshake: Handshake = NO_HANDSHAKE, proxyProtocol: bool = False,
        writeThrough: bool = True,
    ) -> None:
        self.relay = relay
        self.settings = settings or SocketSettings()
        self.tls = tls
        self.handshake = handshake
        self.proxyProtocol = proxyProtocol
        self.writeThrough = writeThrough
