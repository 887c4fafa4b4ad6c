"""
Datagram streams driven by threads, for tests against processes: numbered,
checksummed datagrams whatever arrives must match, an echo peer, many
applications exchanging at once, and floods.

Nothing here sends anywhere but to the addresses it is given, every loop is
bounded in count and in time, and nothing is left running: each object that
starts a thread stops and joins it in C{stop}, which the tests register as a
cleanup.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import threading
import time
import zlib

from tests.support.net import LOCAL

#: Every datagram of a L{Stream} starts with this.
MAGIC = b"UTF1"


#: MAGIC, sequence number, CRC-32 of the sequence number and the body.
HEADER = struct.Struct("!4sQI")


#: Body sizes a stream cycles through: empty, tiny, typical, and larger than
#: one TCP segment and than Twisted's default UDP read buffer (8192).
SIZES = (0, 1, 200, 1000, 1400, 4000, 12000)


#: Receive buffer of the test's own sockets, so they do not drop bursts.
BUFFER = 4 << 20


def datagram(seq: int, size: int) -> bytes:
    """
    Datagram number C{seq}: a header with a checksum, then C{size} bytes
    that depend on C{seq}.
    """
    body = random.Random(seq).randbytes(size)
    crc = zlib.crc32(struct.pack("!Q", seq) + body)
    return HEADER.pack(MAGIC, seq, crc) + body


def check(data: bytes) -> int | None:
    """
    The sequence number of an intact L{datagram}, or C{None} if C{data} is
    not one or was damaged.
    """
    if len(data) < HEADER.size:
        return None
    magic, seq, crc = HEADER.unpack_from(data)
    if magic != MAGIC or zlib.crc32(data[4:12] + data[HEADER.size :]) != crc:
        return None
    return int(seq)


def bigBuffers(sock: socket.socket) -> socket.socket:
    """
    Give C{sock} a large receive buffer (capped by C{net.core.rmem_max}).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    return sock


class Tally:
    """
    What one end of a L{Stream} received: datagrams that passed their
    checksum, those that did not, and when the last intact one came.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intact = 0
        self.corrupt: list[bytes] = []
        self.lastSeq = -1
        self.lastArrival = 0.0

    def add(self, data: bytes) -> int | None:
        seq = check(data)
        with self.lock:
            if seq is None:
                self.corrupt.append(data[:64])
            else:
                self.intact += 1
                self.lastSeq = seq
                self.lastArrival = time.monotonic()
        return seq

    def snapshot(self) -> tuple[int, int]:
        """
        The count of intact datagrams and the highest sequence number seen.
        """
        with self.lock:
            return self.intact, self.lastSeq


class Stream:
    """
    An application socket C{app} sends checksummed, numbered datagrams to
    C{entry} (the tunnel's entry) from a thread, every C{interval} seconds;
    a second thread reads the POP socket C{pop} and checks each datagram,
    echoing it back to where it came from (the tunnel's exit) when C{echo}
    is true; a third reads and checks the echoes on C{app}.

    A refused send (the ICMP port-unreachable of a tunnel end that was
    killed) is counted and ignored, like any other error on these sockets.
    Every thread stops after C{limit} seconds or C{maxCount} datagrams, or
    at L{stop}.
    """

    def __init__(
        self,
        app: socket.socket,
        entry: tuple[str, int],
        pop: socket.socket,
        echo: bool = True,
        interval: float = 0.002,
        limit: float = 120.0,
        maxCount: int = 200_000,
    ) -> None:
        self.app, self.entry, self.pop = bigBuffers(app), entry, bigBuffers(pop)
        self.echo = echo
        self.interval = interval
        self.limit = limit
        self.maxCount = maxCount
        self.sent = 0
        self.sendErrors = 0
        self.forward = Tally()
        self.back = Tally()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Stream:
        deadline = time.monotonic() + self.limit
        for target in (self._send, self._serve, self._collect):
            thread = threading.Thread(target=target, args=(deadline,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)
        self._threads = []

    def _running(self, deadline: float) -> bool:
        return not self._stopping.is_set() and time.monotonic() < deadline

    def _send(self, deadline: float) -> None:
        while self._running(deadline) and self.sent < self.maxCount:
            try:
                self.app.sendto(datagram(self.sent, SIZES[self.sent % len(SIZES)]), self.entry)
            except OSError:
                self.sendErrors += 1
            self.sent += 1
            time.sleep(self.interval)

    def _serve(self, deadline: float) -> None:
        self._receive(self.pop, self.forward, deadline, self.echo)

    def _collect(self, deadline: float) -> None:
        self._receive(self.app, self.back, deadline, False)

    def _receive(self, sock: socket.socket, tally: Tally, deadline: float,
                 echo: bool) -> None:
        sock.settimeout(0.1)
        for _ in range(10 * self.maxCount):
            if not self._running(deadline):
                return
            try:
                data, source = sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            tally.add(data)
            if echo:
                try:
                    sock.sendto(data, source)
                except OSError:
                    pass

    def waitForMore(self, tally: Tally, count: int, timeout: float, what: str) -> float:
        """
        Wait until C{tally} has C{count} more intact datagrams than now;
        return how long that took, or fail after C{timeout} seconds.
        """
        start = time.monotonic()
        target = tally.snapshot()[0] + count
        while tally.snapshot()[0] < target:
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {count} more datagrams "
                    f"{what} (got {tally.snapshot()[0] - target + count}; sent "
                    f"{self.sent} in all, {self.sendErrors} send errors)"
                )
            time.sleep(0.02)
        return time.monotonic() - start


def roundTrip(
    app: socket.socket,
    entry: tuple[str, int],
    pop: socket.socket,
    exitAddress: tuple[str, int],
    token: bytes,
    timeout: float,
) -> None:
    """
    Send C{token} from C{app} to C{entry} every 0.2 s until it reaches C{pop}
    (other datagrams are skipped), then a reply from C{pop} to
    C{exitAddress} until it reaches C{app}; fail after C{timeout} seconds.
    """
    for sender, receiver, to, data in (
        (app, pop, entry, token),
        (pop, app, exitAddress, b"reply to " + token),
    ):
        deadline = time.monotonic() + timeout
        arrived = False
        while not arrived:
            if time.monotonic() > deadline:
                raise AssertionError(f"{data!r} did not get through in {timeout} s")
            try:
                sender.sendto(data, to)
            except OSError:
                pass
            arrived = _await(receiver, data, 0.2)


def _await(sock: socket.socket, data: bytes, timeout: float) -> bool:
    """
    Whether C{data} arrives on C{sock} within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            received, _ = sock.recvfrom(65535)
        except (TimeoutError, OSError):
            continue
        if received == data:
            return True
    return False


def flood(
    sock: socket.socket, destination: tuple[str, int], size: int, seconds: float,
    maxCount: int = 20_000_000,
) -> threading.Thread:
    """
    Send C{size}-byte datagrams from C{sock} to C{destination} as fast as
    possible for C{seconds} (at most C{maxCount}), in a thread returned
    started; its C{sent} attribute counts them once it is done.
    """
    payload = os.urandom(size)

    def run() -> None:
        deadline = time.monotonic() + seconds
        sent = 0
        while sent < maxCount:
            if sent % 256 == 0 and time.monotonic() > deadline:
                break
            try:
                sock.sendto(payload, destination)
            except OSError:
                pass
            sent += 1
        thread.sent = sent  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def request(app: int, round: int) -> bytes:
    """
    What application C{app} sends in round C{round}: its number first, so
    a reply that reached the wrong application names the right one.
    """
    return b"app %d round %d " % (app, round) + bytes(range(app % 256)) * 3


class EchoThread:
    """
    The peer: a UDP socket on 127.0.0.1 that sends every datagram back to
    where it came from, from a thread that stops after C{limit} seconds or
    C{maxCount} datagrams, or at L{stop}.
    """

    def __init__(self, limit: float = 120.0, maxCount: int = 1_000_000) -> None:
        self.sock = bigBuffers(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.sock.bind((LOCAL, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.echoed = 0
        self.errors: list[str] = []
        self.sources: set[tuple[str, int]] = set()
        self._deadline = time.monotonic() + limit
        self._maxCount = maxCount
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (not self._stopping.is_set() and time.monotonic() < self._deadline
               and self.echoed < self._maxCount):
            try:
                data, source = self.sock.recvfrom(65535)
            except OSError:
                continue
            try:
                self.sock.sendto(data, source)
            except OSError as e:
                self.errors.append(repr(e))
                continue
            self.sources.add(source)
            self.echoed += 1

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        self.sock.close()


def exchange(
    sockets: list[socket.socket], entry: tuple[str, int], round: int,
    timeout: float, resend: float | None = None, first: int = 0,
) -> list[list[bytes]]:
    """
    Application C{first + i} sends L{request}C{(first + i, round)} from
    C{sockets[i]} to C{entry}, all at once; return what each socket
    received, once every one has had its own reply or after C{timeout}
    seconds.  With C{resend}, a socket still waiting sends again every
    C{resend} seconds (for a tunnel that is coming back).
    """
    replies: list[list[bytes]] = [[] for _ in sockets]
    index = {sock.fileno(): i for i, sock in enumerate(sockets)}
    waiting = set(range(len(sockets)))

    def send(which: set[int]) -> None:
        for i in which:
            try:
                sockets[i].sendto(request(first + i, round), entry)
            except OSError:
                pass  # refused: the ICMP error of an earlier send

    send(waiting)
    start = time.monotonic()
    deadline, nextSend = start + timeout, start + (resend or timeout)
    for _ in range(100 * len(sockets) + 10_000):
        now = time.monotonic()
        if not waiting or now >= deadline:
            break
        if resend is not None and now >= nextSend:
            send(waiting)
            nextSend = now + resend
        ready, _, _ = select.select(sockets, [], [], min(deadline, nextSend) - now)
        for sock in ready:
            try:
                data = sock.recv(65535)
            except OSError:
                continue
            i = index[sock.fileno()]
            replies[i].append(data)
            if data == request(first + i, round):
                waiting.discard(i)
    return replies


def appSockets(count: int, host: str = LOCAL) -> list[socket.socket]:
    """
    C{count} UDP sockets, each bound to its own ephemeral port of C{host}
    (a loopback address).
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind((host, 0))
            sock.setblocking(False)
    except BaseException:
        closeAll(sockets)
        raise
    return sockets


def closeAll(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
#: A read's frames as a test sends them: runs, a 0-byte one, a shorter last
#: segment, more than 64 of a size, distinct contents so order shows.
FRAMES = (
    [bytes([i]) * 1400 for i in range(50)]
    + [b"short" * 100, b""]
    + [bytes([i]) * 64 for i in range(70)]
    + [b"end"]
)


#: The runs FRAMES leave in: 46 x 1400 bytes (the most in 65507), 4 more
#: and the 500-byte one; the empty one alone; 64 x 64, then 6 and b"end".
RUNS = [46, 5, 64, 7]
