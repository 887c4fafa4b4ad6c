"""
The client's link through a proxy: HTTP C{CONNECT} (the corporate case) or
SOCKS5 (RFC 1928, with RFC 1929's user name and password: C{ssh -D}, Tor).

No well-kept library does this for Twisted (C{txsocksx} was last released in
2015 and speaks no HTTP; C{txtorcon}'s SOCKS client has no password and
pulls in a Tor controller), so it is here, small: an endpoint that connects
to the proxy, speaks one handshake, then hands the connection to the
tunnel's protocol.  TLS, when asked for, wraps this endpoint, so it runs end
to end inside the proxied connection and the proxy sees only ciphertext.

Each way the proxy can say no is a L{ProxyError} whose message is fit for
the client's C{cannot connect to ...: <why>} line; none carries the
credentials.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel.show import printable

#: How long the proxy may take to answer the handshake, in seconds, once the
#: TCP connection to it is up (the TCP connect has its own timeout).
HANDSHAKE_TIMEOUT = 30.0
#: The most an HTTP proxy's answer to CONNECT may be before its blank line.
MAX_HTTP_ANSWER = 16384

SCHEMES = ("http", "socks5")


class ProxyError(Exception):
    """
    The proxy could not or would not connect us; the message says why.
    """


class Proxy(NamedTuple):
    """
    A parsed C{--proxy} URL.  Its C{str} is what logs may show: no
    credentials.
    """

    scheme: str
    host: str
    port: int
    user: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        return str(self)


class _Handshake(Protocol):
    """
    Speaks to the proxy until it connects us, then becomes a pipe between
    the transport and the tunnel's protocol (built only then, so that the
    tunnel sees a connection that is already to its server).
    """

    failed: str | None = None
    #: An ITCPTransport (abortConnection) once connected.
    transport: Any

    def __init__(self, endpoint: ProxyEndpoint, factory: IProtocolFactory,
                 ready: Deferred[IProtocol]) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._ready: Deferred[IProtocol] | None = ready
        self._buffer = b""
        self._inner: IProtocol | None = None
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._timer = self._endpoint.reactor.callLater(
            HANDSHAKE_TIMEOUT, self._fail,
            f"the proxy did not answer within {HANDSHAKE_TIMEOUT:g} s")
        self.start()

    # The two kinds of proxy implement these.
    def start(self) -> None:
        raise NotImplementedError

    def answer(self, data: bytes) -> bytes | None:
        """
        Consume the proxy's answer so far; return the bytes after it once
        the proxy has connected us, or C{None} to wait for more.
        """
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self.failed is not None:
            return
        self._buffer += data
        try:
            rest = self.answer(self._buffer)
        except ProxyError as e:
            self._fail(str(e))
            return
        if rest is not None:
            self._connected(rest)

    def _connected(self, rest: bytes) -> None:
        self._stopTimer()
        inner = self._factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self._fail("the tunnel refused the connection")
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, why: str) -> None:
        self._stopTimer()
        if self.failed is None and self._ready is not None:
            self.failed = why
            ready, self._ready = self._ready, None
            self.transport.abortConnection()
            ready.errback(ProxyError(why))

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason or Failure(ConnectionDone()))
        else:
            self._fail("the proxy closed the connection before it connected us")

    def cancel(self) -> None:
        """
        Give up (the client is stopping): the L{Deferred} fails with
        L{CancelledError}, not as a refusal.
        """
        self._stopTimer()
        self._ready = None
        self.transport.abortConnection()


class _Connect(_Handshake):
    """
    HTTP C{CONNECT host:port}, with Basic credentials when given.
    """

    def start(self) -> None:
        proxy, target = self._endpoint.proxy, self._endpoint.target
        headers = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy.user is not None:
            token = base64.b64encode(f"{proxy.user}:{proxy.password}".encode()).decode()
            headers.append(f"Proxy-Authorization: Basic {token}")
        self.transport.write(("\r\n".join(headers) + "\r\n\r\n").encode())

    def answer(self, data: bytes) -> bytes | None:
        """
        The same verdict however the answer is split into reads: a head of
        at most L{MAX_HTTP_ANSWER} bytes (before its blank line), whose
        first line begins C{HTTP/}.
        """
        head, blank, rest = data.partition(b"\r\n\r\n")
        if not blank:
            # The blank line may have begun: up to 3 of its 4 bytes are here.
            if len(data) > MAX_HTTP_ANSWER + 3:
                raise ProxyError("the proxy's answer to CONNECT is too long")
            if not data.startswith(b"HTTP/"[: len(data)]):
                raise ProxyError(f"the proxy does not speak HTTP: {_printable(data)}")
            return None
        if len(head) > MAX_HTTP_ANSWER:
            raise ProxyError("the proxy's answer to CONNECT is too long")
        status = head.split(b"\r\n", 1)[0]
        parts = status.split(b" ", 2)
        if len(parts) < 2 or not status.startswith(b"HTTP/") or not parts[1].isdigit():
            raise ProxyError(f"the proxy does not speak HTTP: {_printable(status)}")
        code = int(parts[1])
        # 407 is the standard; tinyproxy answers 401 to a CONNECT.
        if code in (401, 407):
            if self._endpoint.proxy.user is None:
                raise ProxyError(f"proxy needs authentication: {_printable(status)}")
            raise ProxyError(f"proxy refused the credentials: {_printable(status)}")
        if not 200 <= code < 300:
            raise ProxyError(f"proxy refused: {_printable(status)}")
        return rest


#: RFC 1928's replies, by code.
_SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by the proxy's rules",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused by the destination",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}

_NO_AUTH, _PASSWORD, _NONE_ACCEPTABLE = 0, 2, 0xFF


class _Socks5(_Handshake):
    """
    SOCKS5: greeting, then user name and password if the proxy asks, then
    CONNECT.  A host name goes to the proxy as it is, for the proxy to
    resolve (what Tor needs).
    """

    _state = "method"

    def start(self) -> None:
        methods = [_NO_AUTH] if self._endpoint.proxy.user is None else [_PASSWORD, _NO_AUTH]
        self.transport.write(bytes([5, len(methods), *methods]))

    def answer(self, data: bytes) -> bytes | None:
        # Each step consumes its reply and may send the next request.
        for _ in range(3):
            if self._state == "method":
                if len(data) < 2:
                    return None
                data = self._method(data[:2]) + data[2:]
                self._buffer = data
            elif self._state == "auth":
                if len(data) < 2:
                    return None
                if data[1] != 0:
                    raise ProxyError("SOCKS5: authentication failed")
                data = data[2:]
                self._buffer = data
                self._request()
            else:
                return self._reply(data)
        return None

    def _method(self, reply: bytes) -> bytes:
        if reply[0] != 5:
            raise ProxyError(f"the proxy does not speak SOCKS5: {_printable(reply)}")
        method = reply[1]
        proxy = self._endpoint.proxy
        if method == _PASSWORD and proxy.user is not None:
            assert proxy.password is not None
            user, password = proxy.user.encode(), proxy.password.encode()
            self.transport.write(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
            self._state = "auth"
        elif method == _NO_AUTH:
            self._request()
        elif method == _NONE_ACCEPTABLE and proxy.user is None:
            raise ProxyError("SOCKS5: the proxy needs authentication (a user name and password)")
        elif method == _NONE_ACCEPTABLE:
            raise ProxyError("SOCKS5: the proxy accepts no authentication method we offer")
        else:
            raise ProxyError(f"SOCKS5: the proxy chose a method we did not offer ({method})")
        return b""

    def _request(self) -> None:
        host, port = self._endpoint.host, self._endpoint.port
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            name = host.encode("idna")
            address = bytes([3, len(name)]) + name
        else:
            address = bytes([1 if ip.version == 4 else 4]) + ip.packed
        self.transport.write(bytes([5, 1, 0]) + address + struct.pack("!H", port))
        self._state = "connect"

    def _reply(self, data: bytes) -> bytes | None:
        if len(data) < 5:
            return None
        if data[0] != 5:
            raise ProxyError(f"the proxy does not speak SOCKS5: {_printable(data[:8])}")
        if data[1] != 0:
            why = _SOCKS_REPLIES.get(data[1], f"error {data[1]}")
            raise ProxyError(f"SOCKS5: {why}")
        kind = data[3]
        length = {1: 4, 4: 16, 3: 1 + data[4]}.get(kind)
        if length is None:
            raise ProxyError(f"SOCKS5: bad address type {kind} in the proxy's reply")
        end = 4 + length + 2
        if len(data) < end:
            return None
        return data[end:]


def _printable(data: bytes) -> str:
    """
    The start of what a proxy said, safe for one log line.
    """
    return printable(data[:80].decode("latin-1"))


class _HandshakeFactory(Factory):
    noisy = False

    def __init__(self, endpoint: ProxyEndpoint, factory: IProtocolFactory,
                 ready: Deferred[IProtocol]) -> None:
        self.endpoint, self.factory, self.ready = endpoint, factory, ready
        self.handshake: _Handshake | None = None

    def buildProtocol(self, addr: Any) -> _Handshake:
        kind = _Connect if self.endpoint.proxy.scheme == "http" else _Socks5
        self.handshake = kind(self.endpoint, self.factory, self.ready)
        return self.handshake


@implementer(IStreamClientEndpoint)
class ProxyEndpoint:
    """
    Connects to C{host}:C{port} through C{proxy}, reached by C{toProxy}.
    The returned L{Deferred} fires with the tunnel's protocol once the
    proxy has connected us, or fails with L{ProxyError} saying why not.
    """

    def __init__(self, reactor: IReactorTime, toProxy: IStreamClientEndpoint,
                 proxy: Proxy, host: str, port: int) -> None:
        self.reactor, self.toProxy, self.proxy = reactor, toProxy, proxy
        self.host, self.port = host, port

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[Any] | None = None
        handshakes: list[_HandshakeFactory] = []

        def cancel(d: Deferred[IProtocol]) -> None:
            factory = handshakes[0]
            if factory.handshake is not None and factory.handshake.transport is not None:
                factory.handshake.cancel()
            elif connecting is not None:
                connecting.cancel()

        ready: Deferred[IProtocol] = Deferred(cancel)
        handshakes.append(_HandshakeFactory(self, protocolFactory, ready))
        connecting = self.toProxy.connect(handshakes[0])

        def proxyDown(reason: Failure) -> None:
            if not ready.called:
                ready.errback(reason)

        connecting.addErrback(proxyDown)
        return ready

    def __repr__(self) -> str:
        return f"{self.target} via {self.proxy}"
