"""
L{udptunnel.link.viaproxy}: the client's way through an HTTP or SOCKS5
proxy.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.properties import chunksOf, mutated, ports, properties
from udptunnel.cli.values import parseProxy
from udptunnel.link.viaproxy import (
    HANDSHAKE_TIMEOUT,
    MAX_HTTP_ANSWER,
    ProxyEndpoint,
    ProxyError,
)


class FakeProxyEndpoint:
    """
    Connects the handshake at once to a L{StringTransport} (the proxy).
    """

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class HandshakeTestCase(SynchronousTestCase):
    proxyURL = "http://127.0.0.1:3128"

    def connect(self, url: str, host: str = "relay.example", port: int = 9000
                ) -> tuple[FakeProxyEndpoint, Deferred[IProtocol], list[Recorder]]:
        self.clock = Clock()
        fake = FakeProxyEndpoint()
        built: list[Recorder] = []

        def build() -> Recorder:
            built.append(Recorder())
            return built[-1]

        endpoint = ProxyEndpoint(self.clock, fake, parseProxy(url), host, port)
        d = endpoint.connect(Factory.forProtocol(build))
        return fake, d, built

    def failure(self, d: Deferred[IProtocol]) -> str:
        failure: Failure = self.failureResultOf(d, ProxyError)
        return failure.getErrorMessage()


class ConnectTests(HandshakeTestCase):
    """
    HTTP CONNECT.
    """

    def test_connected(self) -> None:
        """
        The tunnel's protocol is built only once the proxy said 200, and
        gets what followed the proxy's answer.
        """
        fake, d, built = self.connect("http://127.0.0.1:3128")
        self.assertEqual(fake.transport.value(),
                         b"CONNECT relay.example:9000 HTTP/1.1\r\n"
                         b"Host: relay.example:9000\r\n\r\n")
        fake.protocol.dataReceived(b"HTTP/1.1 200 Connection est")
        self.assertEqual(built, [])
        self.assertNoResult(d)
        fake.protocol.dataReceived(b"ablished\r\nVia: x\r\n\r\nframes")
        self.assertIs(self.successResultOf(d), built[0])
        self.assertTrue(built[0].made)
        self.assertEqual(built[0].received, b"frames")
        fake.protocol.dataReceived(b" more")
        self.assertEqual(built[0].received, b"frames more")
        # What the tunnel writes goes straight to the connection.
        self.assertIs(built[0].transport, fake.transport)

    def test_ipv6AndCredentials(self) -> None:
        """
        CONNECT names an IPv6 host in brackets, in the request line and in
        C{Host}, and sends the user name and password as Basic
        C{Proxy-Authorization}.
        """
        fake, _, _ = self.connect("http://me:pw@127.0.0.1:3128", host="::1")
        token = base64.b64encode(b"me:pw")
        self.assertEqual(fake.transport.value(),
                         b"CONNECT [::1]:9000 HTTP/1.1\r\nHost: [::1]:9000\r\n"
                         b"Proxy-Authorization: Basic " + token + b"\r\n\r\n")

    def test_refused(self) -> None:
        """
        An answer other than 2xx fails the attempt with the proxy's status
        line; the connection is aborted, and the tunnel's protocol never built.
        """
        fake, d, built = self.connect("http://127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.assertEqual(self.failure(d), "proxy refused: HTTP/1.1 403 Forbidden")
        # Aborted: StringTransport.abortConnection sets disconnected (and
        # disconnecting); loseConnection sets disconnecting only.
        self.assertTrue(fake.transport.disconnected)
        self.assertEqual(built, [])

    def test_needsAuthentication(self) -> None:
        """
        A 407 when no credentials were given: the proxy needs authentication.
        """
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
        self.assertEqual(self.failure(d),
                         "proxy needs authentication: HTTP/1.0 407 Proxy Authentication Required")

    def test_wrongCredentials(self) -> None:
        """
        A 407 when credentials were given: the proxy refused them.
        """
        fake, d, _ = self.connect("http://me:secret@127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.1 407 Denied\r\n\r\n")
        why = self.failure(d)
        self.assertEqual(why, "proxy refused the credentials: HTTP/1.1 407 Denied")

    def test_notHTTP(self) -> None:
        """
        An answer that cannot begin C{HTTP/} fails the attempt at once: the
        proxy does not speak HTTP.
        """
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        fake.protocol.dataReceived(b"\x05\x00")
        self.assertIn("does not speak HTTP", self.failure(d))

    def test_closedBeforeAnswer(self) -> None:
        """
        A proxy that closes the connection before it answered fails the
        attempt, saying so.
        """
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        fake.protocol.connectionLost(Failure(ConnectionError()))
        self.assertIn("closed the connection", self.failure(d))

    def test_unauthorized(self) -> None:
        """
        tinyproxy answers CONNECT with wrong credentials by a 401.
        """
        fake, d, _ = self.connect("http://me:secret@127.0.0.1:3128")
        fake.protocol.dataReceived(b"HTTP/1.0 401 Unauthorized\r\n\r\n")
        self.assertEqual(self.failure(d),
                         "proxy refused the credentials: HTTP/1.0 401 Unauthorized")

    def test_silentProxy(self) -> None:
        """
        A proxy that accepts and never answers fails the attempt at
        L{HANDSHAKE_TIMEOUT}, so that the client retries; the connection is
        aborted.
        """
        fake, d, _ = self.connect("http://127.0.0.1:3128")
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertIn("did not answer", self.failure(d))
        self.assertTrue(fake.transport.disconnected)  # aborted

    def test_cancel(self) -> None:
        """
        A cancelled attempt (the client stops) fails with L{CancelledError},
        not as a refusal, and leaves no timer.
        """
        _, d, _ = self.connect("http://127.0.0.1:3128")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Socks5Tests(HandshakeTestCase):
    """
    SOCKS5, RFC 1928 and RFC 1929.
    """

    def test_noAuthName(self) -> None:
        """
        A host name goes to the proxy unresolved; a reply split anywhere is
        reassembled.
        """
        fake, d, built = self.connect("socks5://127.0.0.1:1080")
        self.assertEqual(fake.transport.value(), b"\x05\x01\x00")
        fake.transport.clear()
        fake.protocol.dataReceived(b"\x05\x00")
        self.assertEqual(fake.transport.value(),
                         b"\x05\x01\x00\x03\x0drelay.example\x23\x28")
        for byte in b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04":
            fake.protocol.dataReceived(bytes([byte]))
        self.assertNoResult(d)
        fake.protocol.dataReceived(b"\x38data")
        self.assertIs(self.successResultOf(d), built[0])
        self.assertEqual(built[0].received, b"data")

    def test_password(self) -> None:
        """
        With credentials, the greeting offers user name and password and no
        authentication; the proxy choosing the first gets them (RFC 1929), then
        the request for an IPv4 address; a reply with an IPv6 bound address
        connects.
        """
        fake, d, built = self.connect("socks5://me:pw@127.0.0.1:1080", host="127.0.0.2")
        self.assertEqual(fake.transport.value(), b"\x05\x02\x02\x00")
        fake.transport.clear()
        fake.protocol.dataReceived(b"\x05\x02")
        self.assertEqual(fake.transport.value(), b"\x01\x02me\x02pw")
        fake.transport.clear()
        fake.protocol.dataReceived(b"\x01\x00")
        self.assertEqual(fake.transport.value(), b"\x05\x01\x00\x01\x7f\x00\x00\x02\x23\x28")
        fake.protocol.dataReceived(b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x01")
        self.assertIs(self.successResultOf(d), built[0])

    def test_authenticationFailed(self) -> None:
        """
        A proxy that rejects the user name and password fails the attempt:
        authentication failed.
        """
        fake, d, _ = self.connect("socks5://me:secret@127.0.0.1:1080")
        fake.protocol.dataReceived(b"\x05\x02\x01\x01")
        self.assertEqual(self.failure(d), "SOCKS5: authentication failed")

    def test_needsAuthentication(self) -> None:
        """
        A proxy that accepts no method offered, when no credentials were given,
        needs authentication.
        """
        fake, d, _ = self.connect("socks5://127.0.0.1:1080")
        fake.protocol.dataReceived(b"\x05\xff")
        self.assertIn("SOCKS5: the proxy needs authentication", self.failure(d))

    def test_destinationRefused(self) -> None:
        """
        A connect reply with an error code fails the attempt in RFC 1928's
        words for that code.
        """
        fake, d, _ = self.connect("socks5://127.0.0.1:1080")
        fake.protocol.dataReceived(b"\x05\x00\x05\x05\x00\x01" + bytes(6))
        self.assertEqual(self.failure(d), "SOCKS5: connection refused by the destination")

    def test_notSocks(self) -> None:
        """
        An answer that is not SOCKS version 5 fails the attempt: the proxy does
        not speak SOCKS5.
        """
        fake, d, _ = self.connect("socks5://127.0.0.1:1080")
        fake.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertIn("does not speak SOCKS5", self.failure(d))


class ProxyServer:
    """
    The proxy's end: connects the handshake at once to a L{StringTransport}.
    """

    def __init__(self) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.8", 3128))
        self.protocol: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class Inner(Protocol):
    """
    The tunnel's protocol, built once the proxy connected us: records each
    read.
    """

    def __init__(self) -> None:
        self.reads: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)


HTTP_URL = "http://127.0.0.1:3128"


URLS = {"http": HTTP_URL, "socks5": "socks5://127.0.0.1:1080",
        "socks5-password": "socks5://me:pw@127.0.0.1:1080"}


class Handshake:
    """
    One attempt to connect to C{host}:C{port} through the proxy at C{url}.
    """

    def __init__(self, url: str, host: str = "relay.example", port: int = 9000) -> None:
        self.clock = Clock()
        self.proxy = ProxyServer()
        self.built: list[Inner] = []
        endpoint = ProxyEndpoint(self.clock, self.proxy, parseProxy(url), host, port)
        self.d = endpoint.connect(Factory.forProtocol(self.build))

    def build(self) -> Inner:
        self.built.append(Inner())
        return self.built[-1]

    def feed(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.proxy.protocol.dataReceived(chunk)

    def received(self) -> bytes:
        return b"".join(self.built[0].reads) if self.built else b""

    def verdict(self) -> tuple[str, bytes]:
        """
        Where the attempt is: C{waiting}, C{connected} with what the tunnel
        got, or C{refused} (consuming the L{Deferred}'s result).
        """
        results: list[Any] = []
        self.d.addBoth(results.append)
        if not results:
            return ("waiting", b"")
        if isinstance(results[0], Failure):
            return ("refused", type(results[0].value).__name__.encode())
        return ("connected", self.received())


_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


headerLines = st.lists(st.tuples(
    st.text(st.characters(codec="ascii", categories=["L", "N"], include_characters="-"),
            min_size=1, max_size=16),
    st.binary(max_size=40).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"")),
).map(lambda h: h[0].encode() + b": " + h[1]), max_size=5)


def httpHead(version: bytes, code: int, reason: str, headers: list[bytes]) -> bytes:
    """
    An HTTP answer up to its blank line (excluded).
    """
    return version + b" %d " % code + reason.encode() + b"".join(b"\r\n" + h for h in headers)


httpHeads = st.builds(httpHead, st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
                      st.integers(200, 299), st.text(_printable, max_size=30), headerLines)


#: Answers to CONNECT: random bytes, or answers (any status, sometimes
#: after a stray byte) then the tunnel's first bytes, mutated.
httpish = st.one_of(
    st.binary(max_size=100),
    mutated(
        st.tuples(
            st.sampled_from([b"", b"", b" ", b"\t", b"\r\n", b"X"]),
            st.one_of(httpHeads, st.builds(
                httpHead, st.sampled_from([b"HTTP/1.1", b"HTTP/2", b"HTTP/", b"HTTP", b"ICY"]),
                st.integers(0, 999), st.text(max_size=20), headerLines)),
            st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\r\n\r\n", b"\r\n", b"\n\n", b""]),
            st.binary(max_size=32),
        ).map(b"".join),
        [b"\r\n\r\n", b"\r\n", b"\r", b"\n", b" ", b"\t", b"\x00", b"\x1b[2J", b"\xff",
         b"HTTP/1.1 ", b"200", b"407", b"X: " + b"a" * 16400 + b"\r\n"],
    ),
)


@st.composite
def socksReplies(draw: Any, codes: Any = None) -> bytes:
    """
    A SOCKS5 connect reply (success, or one of C{codes}), its bound address
    of any kind: IPv4, IPv6, or a name of 0 to 255 bytes.
    """
    code = 0 if codes is None else draw(codes)
    kind = draw(st.sampled_from([1, 3, 4]))
    if kind == 1:
        address = draw(st.ip_addresses(v=4)).packed
    elif kind == 4:
        address = draw(st.ip_addresses(v=6)).packed
    else:
        name = draw(st.binary(max_size=255))
        address = bytes([len(name)]) + name
    return bytes([5, code, 0, kind]) + address + struct.pack("!H", draw(ports))


#: SOCKS5 answers: random bytes, or a method choice (and authentication
#: answer) and a reply, then the tunnel's first bytes, mutated.
socksish = st.one_of(
    st.binary(max_size=100),
    mutated(
        st.tuples(
            st.sampled_from([b"\x05\x00", b"\x05\x00", b"\x05\x02\x01\x00", b"\x05\x02\x01\x01",
                             b"\x05\xff", b"\x05\x01", b"\x04\x00"]),
            socksReplies(st.sampled_from([0, 0, 0, 1, 2, 5, 8, 9, 0xFF])),
            st.binary(max_size=32),
        ).map(b"".join),
        [b"\x05", b"\x00", b"\x01", b"\x03", b"\x04", b"\xff", b"\x05\x00", b"\x01\x00"],
    ),
)


class ProxyAnswerPropertyTests(SynchronousTestCase):
    """
    The handshakes of L{ProxyEndpoint}, fed the proxy's answer (from
    whatever listens where C{--proxy} points).
    """

    def attempt(self, url: str, host: str = "relay.example") -> Handshake:
        """
        A new attempt.  One that an example leaves refused and unread (it
        failed, or hypothesis gave it up) has its failure consumed at the
        end, so that only the property's own failure is reported.
        """
        attempt = Handshake(url, host)
        self.addCleanup(attempt.d.addErrback, lambda _: None)
        return attempt

    def assertConnectedAt(self, attempt: Handshake, answer: bytes, trailing: bytes,
                          data: st.DataObject) -> None:
        """
        C{answer} then C{trailing}, cut anywhere: the tunnel's protocol is
        built, and the L{Deferred} fires with it, once the answer's last
        byte arrived and not before; the tunnel gets C{trailing}, once, in
        order; the handshake's timeout is cancelled.
        """
        fed = 0
        for chunk in chunksOf(data, answer + trailing):
            attempt.feed([chunk])
            fed += len(chunk)
            if fed < len(answer):
                self.assertNoResult(attempt.d)
                self.assertEqual(attempt.built, [])
            else:
                self.assertEqual(len(attempt.built), 1)
                self.assertEqual(attempt.received(), trailing[: fed - len(answer)])
        self.assertIs(self.successResultOf(attempt.d), attempt.built[0])
        self.assertNotIn(b"", attempt.built[0].reads)
        self.assertFalse(attempt.proxy.transport.disconnecting)
        self.assertEqual(attempt.clock.getDelayedCalls(), [])

    def assertVerdict(self, attempt: Handshake) -> None:
        """
        The attempt is waiting, connected, or refused by a L{ProxyError}
        whose message is one printable line; a refusal closed the
        connection, and only a success built the tunnel's protocol.
        """
        if not attempt.d.called:
            self.assertNoResult(attempt.d)
            self.assertEqual(attempt.built, [])
        elif attempt.built:
            self.assertIs(self.successResultOf(attempt.d), attempt.built[0])
        else:
            error = self.failureResultOf(attempt.d, ProxyError).value
            self.assertTrue(all(c.isprintable() for c in str(error)), repr(str(error)))
            self.assertTrue(attempt.proxy.transport.disconnecting)
            self.assertEqual(attempt.clock.getDelayedCalls(), [])

    @properties(150)
    @given(httpHeads, st.binary(max_size=64), st.data())
    def test_httpConnected(self, head: bytes, trailing: bytes, data: st.DataObject) -> None:
        """
        A 2xx answer to CONNECT, with any reason and headers, then the
        first bytes of the tunnel, cut anywhere: connected once the blank
        line arrived, and the tunnel gets the bytes after it.
        """
        attempt = self.attempt(HTTP_URL)
        self.assertConnectedAt(attempt, head + b"\r\n\r\n", trailing, data)

    @properties(150)
    @given(st.booleans(), st.one_of(st.just("relay.example"), st.ip_addresses().map(str)),
           socksReplies(), st.binary(max_size=64), st.data())
    def test_socks5Connected(self, password: bool, host: str, reply: bytes, trailing: bytes,
                             data: st.DataObject) -> None:
        """
        A SOCKS5 proxy's method choice (none, or user name and password
        then their acceptance) and successful connect reply with a bound
        address of any kind, then the first bytes of the tunnel, cut
        anywhere: connected once the reply's last byte arrived, the tunnel
        gets the bytes after it, and the requests were those of RFC 1928
        (and RFC 1929) for C{host}.
        """
        attempt = self.attempt(URLS["socks5-password" if password else "socks5"], host)
        answer = (b"\x05\x02\x01\x00" if password else b"\x05\x00") + reply
        self.assertConnectedAt(attempt, answer, trailing, data)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            target = b"\x03" + bytes([len(host)]) + host.encode()
        else:
            target = (b"\x01" if address.version == 4 else b"\x04") + address.packed
        request = b"\x05\x01\x00" + target + b"\x23\x28"
        greeting = b"\x05\x02\x02\x00\x01\x02me\x02pw" if password else b"\x05\x01\x00"
        self.assertEqual(attempt.proxy.transport.value(), greeting + request)

    @properties(300)
    @given(httpish, st.data())
    def test_httpAnyAnswer(self, stream: bytes, data: st.DataObject) -> None:
        """
        Any answer to CONNECT, cut anywhere: nothing raises out of
        C{dataReceived}; the attempt waits, connects (the tunnel getting
        what followed the blank line), or fails with a L{ProxyError} whose
        message has no control characters.
        """
        chunks = chunksOf(data, stream)
        attempt = self.attempt(HTTP_URL)
        attempt.feed(chunks)
        if attempt.built:
            self.assertEqual(attempt.received(), stream.partition(b"\r\n\r\n")[2])
        self.assertVerdict(attempt)

    @properties(300)
    @given(st.booleans(), socksish, st.data())
    def test_socks5AnyAnswer(self, password: bool, stream: bytes, data: st.DataObject) -> None:
        """
        Any SOCKS5 answer, cut anywhere, with or without credentials to
        offer: nothing raises out of C{dataReceived}; the attempt waits,
        connects (the tunnel getting the end of the stream), or fails with
        a L{ProxyError} whose message has no control characters.
        """
        chunks = chunksOf(data, stream)
        attempt = self.attempt(URLS["socks5-password" if password else "socks5"])
        attempt.feed(chunks)
        if attempt.built:
            self.assertTrue(stream.endswith(attempt.received()))
        self.assertVerdict(attempt)

    @properties(400)
    @given(st.sampled_from(sorted(URLS)), st.data())
    def test_verdictWhateverTheSplit(self, kind: str, data: st.DataObject) -> None:
        """
        The same answer, in one read or cut in several, has the same verdict:
        both attempts wait, both are refused, or both connect and give the
        tunnel the same bytes.
        """
        stream = data.draw(httpish if kind == "http" else socksish, label="stream")
        chunks = chunksOf(data, stream, modes=("cuts", "cuts", "bytes"))
        whole, split = self.attempt(URLS[kind]), self.attempt(URLS[kind])
        whole.feed([stream])
        split.feed(chunks)
        self.assertEqual(split.verdict(), whole.verdict(),
                         f"{stream!r} in reads of {[len(chunk) for chunk in chunks]} bytes")

    def assertAnswer(self, size: int, trailing: bytes, data: st.DataObject,
                     verdict: tuple[str, bytes]) -> None:
        """
        A 200 answer of C{size} bytes before its blank line, then
        C{trailing}, cut anywhere (around the blank line), has C{verdict}.
        """
        head = b"HTTP/1.1 200 Connection established\r\nX-Padding: "
        head += b"a" * (size - len(head))
        chunks = chunksOf(data, head + b"\r\n\r\n" + trailing, near=size)
        attempt = self.attempt(HTTP_URL)
        attempt.feed(chunks)
        self.assertEqual(attempt.verdict(), verdict,
                         f"{size} bytes before the blank line, in reads of "
                         f"{[len(chunk) for chunk in chunks]} bytes")

    @properties(60)
    @given(st.one_of(st.integers(MAX_HTTP_ANSWER - 4, MAX_HTTP_ANSWER),
                     st.integers(50, MAX_HTTP_ANSWER)),
           st.binary(max_size=16), st.data())
    def test_httpAnswerWithinLimit(self, size: int, trailing: bytes,
                                   data: st.DataObject) -> None:
        """
        A 200 answer of at most C{MAX_HTTP_ANSWER} bytes before its blank
        line connects, whatever the split.
        """
        self.assertAnswer(size, trailing, data, ("connected", trailing))

    @properties(60)
    @given(st.one_of(st.integers(MAX_HTTP_ANSWER + 1, MAX_HTTP_ANSWER + 4),
                     st.integers(MAX_HTTP_ANSWER + 1, MAX_HTTP_ANSWER + 2000)),
           st.binary(max_size=16), st.data())
    def test_httpAnswerOverLimit(self, size: int, trailing: bytes, data: st.DataObject) -> None:
        """
        A 200 answer longer than C{MAX_HTTP_ANSWER} bytes before its blank
        line is refused, whatever the split (in one read too).
        """
        self.assertAnswer(size, trailing, data, ("refused", b"ProxyError"))
