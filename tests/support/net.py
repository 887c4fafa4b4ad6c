"""
Loopback sockets and the waits around them: one free-port helper, polling
bounded in time (blocking, or on the reactor), one datagram recorder, an
echo, and the frame format written out by hand (independent of
L{udptunnel.wire}, which it checks).
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater

from udptunnel.udp.port import bindUDP


def freePort(kind: socket.SocketKind = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """
    A port number that was free a moment ago on C{host}, found by binding
    port 0 and closing the socket again: for the options that need a port
    number before the service starts (and keep it across restarts).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
#: Generous bounds for anything asynchronous: the machine is shared and slow.
TIMEOUT = 15.0


#: How often a readiness probe is resent.
PROBE_INTERVAL = 0.2


#: Readiness probes start with this; the other datagrams never do.
PROBE = b"udptunnel-probe "


def waitFor(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """
    Poll C{predicate} every 50 ms until it is true; fail after C{timeout}
    seconds, saying what was awaited.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def receive(
    sock: socket.socket, timeout: float, skipProbes: bool = True
) -> tuple[bytes, tuple[str, int]] | None:
    """
    The next datagram on C{sock} and its source, or C{None} after
    C{timeout} seconds; late readiness probes are skipped unless
    C{skipProbes} is false.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            return None
        if not (skipProbes and data.startswith(PROBE)):
            return data, source


UDP = socket.SOCK_DGRAM


LOCAL = "127.0.0.1"


def metric(text: str, name: str, labels: str = "") -> float | None:
    """
    The value of sample C{name}{C{labels}} in a Prometheus text exposition.
    """
    sample = re.escape(name + (f"{{{labels}}}" if labels else ""))
    found = re.search(rf"(?m)^{sample} (\S+)$", text)
    return float(found.group(1)) if found else None


def frame(data: bytes) -> bytes:
    """
    C{data} as it travels on the TCP link: a 2-byte big-endian length first.
    """
    return struct.pack("!H", len(data)) + data


def unframe(stream: bytes) -> tuple[list[bytes], bytes]:
    """
    The complete frames in C{stream}, and what is left of an incomplete one.
    """
    frames = []
    while len(stream) >= 2:
        (size,) = struct.unpack_from("!H", stream)
        if len(stream) < 2 + size:
            break
        frames.append(stream[2 : 2 + size])
        stream = stream[2 + size :]
    return frames, stream


def pattern(index: int, size: int) -> bytes:
    """
    C{size} bytes that differ from those of every other C{index}, so a
    datagram delivered twice, out of order or with another's bytes shows.
    """
    return bytes((index * 37 + j * 7 + j // 251) % 256 for j in range(size))


def waitUntil(
    predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT
) -> Deferred[None]:
    """
    Poll C{predicate} every 10 ms until it is true; fail, saying C{what} was
    awaited, after C{timeout} seconds.
    """

    @inlineCallbacks
    def poll() -> Any:
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            yield deferLater(reactor, 0.01, lambda: None)

    return poll()


class Recorder(DatagramProtocol):
    """
    The one datagram recorder: records what it receives and from where,
    readiness probes apart from everything else.  Behind Twisted's UDP port
    it is called per datagram; behind L{udptunnel.udp.port.DatagramSocket},
    per read, and it also records how many datagrams each read delivered.
    """

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.probes: list[tuple[bytes, tuple[str, int]]] = []
        self.reads: list[int] = []
        self.probeRounds = 0

    def datagramsReceived(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.reads.append(len(datagrams))
        for data, addr in datagrams:
            self.datagramReceived(data, addr)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(PROBE):
            self.probes.append((data, addr))
        else:
            self.received.append((data, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None, "not listening"
        self.transport.write(data, addr)

    @inlineCallbacks
    def probe(self, destination: tuple[str, int], timeout: float = TIMEOUT) -> Any:
        """
        Send a probe to C{destination} every L{PROBE_INTERVAL} seconds until
        one comes back (the tunnel is up end to end), or fail after
        C{timeout} seconds.  Each call tags its probes, so a late probe of an
        earlier call cannot pass for one of this call.

        @return: a L{Deferred} firing with the address the probe came back
            from.
        """
        self.probeRounds += 1
        tag = PROBE + b"%d:" % (self.probeRounds,)
        deadline = reactor.seconds() + timeout
        attempt = 0
        while True:
            for data, source in self.probes:
                if data.startswith(tag):
                    return source
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"no probe came back through {destination} in {timeout} s"
                )
            attempt += 1
            self.send(tag + b"%d" % (attempt,), destination)
            yield deferLater(reactor, PROBE_INTERVAL, lambda: None)

    def waitFor(self, count: int) -> Deferred[None]:
        """
        Wait until C{count} datagrams other than probes have arrived.
        """
        return waitUntil(
            lambda: len(self.received) >= count, f"{count} datagrams at {self}"
        )


class Echo(Recorder):
    """
    The remote service (the "POP server"): returns every datagram to its
    sender and remembers who sent it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sources: set[tuple[str, int]] = set()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.add(addr)
        self.send(data, addr)


def readExactly(sock: socket.socket, count: int) -> bytes:
    """
    C{count} bytes from C{sock} (fewer if it closes), within L{TIMEOUT}.
    """
    sock.settimeout(TIMEOUT)
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def readFrame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", readExactly(sock, 2))
    return readExactly(sock, length)


def closedByPeer(sock: socket.socket) -> bool:
    """
    Whether the peer closes C{sock} (EOF or reset) within L{TIMEOUT}.
    """
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def udpSocket(testCase: Any, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    testCase.addCleanup(sock.close)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock


def pausedUDPPort(testCase: Any, interface: str = "127.0.0.1") -> tuple[Any, Recorder]:
    """
    The tunnel's UDP port on C{interface}, recording into a L{Recorder}, not
    reading by itself: the test calls C{doRead} when it has sent.
    """
    protocol = Recorder()
    port = bindUDP(interface, 0, protocol, reactor)
    port.startListening()
    port.stopReading()
    testCase.addCleanup(port.stopListening)
    return port, protocol


class Sink(DatagramProtocol):
    def datagramsReceived(self, datagrams: list[tuple[bytes, Any]]) -> None:
        pass
