"""
L{udptunnel._twisted.pumped} and the compiled pump it drives
(C{udptunnel/pump_c/}): what the pump moves by itself between real
loopback sockets, what it hands back to Python and when, and the fence's
dispatch of what it hands back.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import frame, pattern, readExactly, udpSocket, unframe
from tests.support.pump import requirePump
from udptunnel._twisted.pumped import pumpProblems, transportIdle


class Owner:
    """
    A pair's owner that records what is handed back to it.
    """

    lane = None

    def __init__(self) -> None:
        self.handed: list[tuple[str, Any]] = []

    def datagramsHanded(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.handed.append(("datagrams", datagrams))

    def framesHanded(self, frames: list[bytes]) -> None:
        self.handed.append(("frames", frames))

    def udpReadFailed(self, errno: int) -> None:
        self.handed.append(("read-error", errno))


class PumpTests(SynchronousTestCase):
    """
    The pump over a bare epoll: a UDP socket (the tunnel's), an application
    socket that sends to it, and a TCP connection over loopback whose far
    end stands for the other end of the tunnel.
    """

    def setUp(self) -> None:
        self.module = requirePump()
        self.epoll = select.epoll()
        self.addCleanup(self.epoll.close)
        self.udp = udpSocket(self)
        self.udp.setblocking(False)
        self.app = udpSocket(self)
        self.tcp, self.far = self.tcpPair()
        self.pump = self.module.Pump(self.epoll.fileno())
        for sock in (self.udp, self.tcp):
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def tcpPair(self) -> tuple[socket.socket, socket.socket]:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
        for sock in (near, far):
            self.addCleanup(sock.close)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        near.setblocking(False)
        return near, far

    def pair(self, up: bool = True, down: bool = True) -> tuple[Any, Owner]:
        owner = Owner()
        pair = self.module.Pair(self.udp.fileno(), self.tcp.fileno(), owner)
        pair.setSource(self.app.getsockname())
        pair.setDestination(self.app.getsockname())
        self.pump.add(pair)
        pair.up, pair.down = up, down
        return pair, owner

    def wait(self, timeout: float = 0.05) -> list[Any]:
        return self.pump.wait(timeout, 8)

    def appReceives(self, count: int) -> list[bytes]:
        self.app.settimeout(2)
        return [self.app.recv(65535) for _ in range(count)]

    def test_datagramsIntoTheLink(self) -> None:
        """
        Datagrams from the pair's source leave as frames in the TCP socket,
        in order, an empty one as a zero-length frame; Python hears nothing
        but the counters, and the pair is listed as touched once.
        """
        pair, owner = self.pair()
        sent = [pattern(i, size) for i, size in enumerate((64, 0, 1400, 3))]
        for data in sent:
            self.app.sendto(data, self.udp.getsockname())
        self.assertEqual(self.wait(), [])
        self.assertEqual(unframe(readExactly(self.far, sum(2 + len(d) for d in sent))),
                         (sent, b""))
        self.assertEqual(owner.handed, [])
        self.assertEqual(self.pump.takeTouched(), [pair])
        upDatagrams, upBytes, downDatagrams, downBytes, _ = pair.take()
        self.assertEqual((upDatagrams, upBytes, downDatagrams, downBytes),
                         (4, sum(map(len, sent)), 0, 0))
        self.assertEqual(pair.take()[:4], (0, 0, 0, 0))

    def test_framesOutOfTheLink(self) -> None:
        """
        Whole frames read from the TCP socket leave as datagrams to the
        pair's destination; with segmentation on, a run of equal ones still
        arrives as separate datagrams; the last frame's time is kept.
        """
        pair, _ = self.pair()
        pair.segments = True
        sent = [pattern(i, 100) for i in range(5)] + [b"", pattern(9, 30)]
        self.far.sendall(b"".join(frame(d) for d in sent))
        self.assertEqual(self.wait(), [])
        self.assertEqual(self.appReceives(len(sent)), sent)
        upDatagrams, _, downDatagrams, downBytes, lastFrame = pair.take()
        self.assertEqual((upDatagrams, downDatagrams, downBytes), (0, 7, 530))
        self.assertGreater(lastFrame, 0)

    def test_strangerHandedBack(self) -> None:
        """
        A datagram from another source, and every later one of that read
        (the pair's own too, to keep their order), is handed back as one
        list with its source; what came before went into the link.
        """
        pair, _ = self.pair()
        stranger = udpSocket(self)
        self.app.sendto(b"first", self.udp.getsockname())
        stranger.sendto(b"stranger", self.udp.getsockname())
        self.app.sendto(b"after", self.udp.getsockname())
        items = self.wait()
        self.assertEqual(unframe(readExactly(self.far, 7)), ([b"first"], b""))
        self.assertEqual(items, [(self.module.DATAGRAMS, pair, [
            (b"stranger", stranger.getsockname()), (b"after", self.app.getsockname())])])

    def test_disarmedLeftToPython(self) -> None:
        """
        A way the pair is not armed for is left to Python as the epoll
        event, unread; a descriptor the pump does not know too.
        """
        self.pair(up=False, down=False)
        self.app.sendto(b"x", self.udp.getsockname())
        self.far.sendall(frame(b"y"))
        items = sorted(self.wait())
        self.assertEqual(items, sorted([(self.udp.fileno(), select.EPOLLIN),
                                        (self.tcp.fileno(), select.EPOLLIN)]))
        self.assertEqual(self.udp.recv(10), b"x")

    def test_partialFrameHandedBack(self) -> None:
        """
        The whole frames of a read go out; the bytes of the partial one are
        handed back as stream bytes, and the way in is disarmed: the parser
        holds them now.
        """
        pair, _ = self.pair()
        self.far.sendall(frame(b"whole") + frame(b"partial")[:4])
        items = self.wait()
        self.assertEqual(self.appReceives(1), [b"whole"])
        self.assertEqual(items, [(self.module.STREAM, pair, frame(b"partial")[:4])])
        self.assertFalse(pair.down)

    def test_endOfStreamHandedBack(self) -> None:
        """
        The peer's close is handed back as empty stream bytes, for
        Twisted's connection to end as its own read would end it.
        """
        pair, _ = self.pair()
        self.far.shutdown(socket.SHUT_WR)
        self.assertEqual(self.wait(), [(self.module.STREAM, pair, b"")])

    def test_fullLinkRestHandedBack(self) -> None:
        """
        What the TCP socket does not take is handed back for Twisted to
        queue, and the way out is disarmed: nothing may overtake it.
        """
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        pair, _ = self.pair()
        rest = b""
        for burst in range(40):
            for i in range(20):
                self.app.sendto(pattern(burst * 20 + i, 1400), self.udp.getsockname())
            for item in self.wait(0.01):
                self.assertEqual(item[:2], (self.module.TCP_REST, pair))
                rest += item[2]
            if not pair.up:
                break
        self.assertFalse(pair.up)
        self.assertTrue(rest)

    def test_refusedSendHandedBack(self) -> None:
        """
        A frame the UDP socket refuses (too big for a datagram) is handed
        back with the frames after it, for the Python path to count each.
        """
        pair, _ = self.pair()
        tooBig = pattern(1, 65508)  # IPv4 carries at most 65507
        self.far.sendall(frame(b"before") + frame(tooBig) + frame(b"after"))
        items = self.wait()
        self.assertEqual(self.appReceives(1), [b"before"])
        self.assertEqual([item[:2] for item in items], [(self.module.FRAMES, pair)])
        self.assertTrue(items[0][2] == [tooBig, b"after"], "not the refused frame and the next")
        self.assertFalse(pair.down)

    def test_sharedSocketBySource(self) -> None:
        """
        A shared socket's datagrams go to the pair of their source, each
        into its own link; an unknown source's (or a forgotten pair's) are
        handed back to the shared socket's owner; a known pair's source
        cannot change under the pump.
        """
        other = udpSocket(self)
        stranger = udpSocket(self)
        otherNear, otherFar = self.tcpPair()
        self.epoll.register(otherNear.fileno(), select.EPOLLIN)
        shared = self.module.Pair(self.udp.fileno(), -1, Owner())
        self.pump.addShared(shared)
        pairs = []
        for tcp, source in ((self.tcp, self.app), (otherNear, other)):
            pair = self.module.Pair(self.udp.fileno(), tcp.fileno(), Owner())
            pair.shared = True
            pair.setSource(source.getsockname())
            self.pump.add(pair)
            pair.up = True
            pairs.append(pair)
        self.app.sendto(b"a1", self.udp.getsockname())
        other.sendto(b"b1", self.udp.getsockname())
        stranger.sendto(b"s", self.udp.getsockname())
        self.app.sendto(b"a2", self.udp.getsockname())
        items = self.wait()
        self.assertEqual(unframe(readExactly(self.far, 8)), ([b"a1", b"a2"], b""))
        self.assertEqual(unframe(readExactly(otherFar, 4)), ([b"b1"], b""))
        self.assertEqual(items, [(self.module.DATAGRAMS, shared,
                                  [(b"s", stranger.getsockname())])])
        with self.assertRaises(ValueError):
            pairs[0].setSource(stranger.getsockname())  # it is found by its source
        self.pump.remove(pairs[1])
        other.sendto(b"b2", self.udp.getsockname())
        self.assertEqual(self.wait(), [(self.module.DATAGRAMS, shared,
                                        [(b"b2", other.getsockname())])])

    def test_staleDescriptorDisarmed(self) -> None:
        """
        A pair whose descriptor another pair now has (its socket closed,
        the number reused) moves nothing any more.
        """
        stale, _ = self.pair()
        fresh = self.module.Pair(-1, self.tcp.fileno(), Owner())
        self.pump.add(fresh)
        self.assertFalse(stale.up)
        self.assertFalse(stale.down)
        self.assertIs(self.pump.pairOf(self.tcp.fileno()), fresh)
        self.assertIs(self.pump.pairOf(self.udp.fileno()), stale)

    def test_timeoutEmpty(self) -> None:
        """
        With nothing to do, a wait ends empty once its time is up.
        """
        self.pair()
        self.assertEqual(self.pump.wait(0.01, 8), [])
        self.assertEqual(self.pump.wait(0, 8), [])


class FenceTests(SynchronousTestCase):
    """
    What the fence checks of Twisted before the pump may run its wait.
    """

    def test_installedTwistedPasses(self) -> None:
        """
        Fails loudly when a Twisted release breaks what the pump's
        hand-backs rely on.
        """
        from twisted.internet.epollreactor import EPollReactor

        from udptunnel._twisted.dispatch import _closeReactor

        reactor = EPollReactor()
        self.addCleanup(_closeReactor, reactor)
        self.assertEqual(pumpProblems(reactor), [])

    def test_otherReactorsRefused(self) -> None:
        """
        Any reactor but the epoll reactor is named as the reason.
        """
        from twisted.internet.task import Clock

        self.assertEqual(pumpProblems(Clock()), ["the reactor is Clock, not the epoll reactor"])

    def test_transportIdle(self) -> None:
        """
        Only a connected Twisted TCP connection with nothing queued, not
        closing or half-closed, may be written to past Twisted.
        """
        from twisted.internet import tcp
        from twisted.internet.protocol import Protocol

        from udptunnel._twisted.writethrough import _StandInReactor

        mine, peer = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(peer.close)
        connection = tcp.Connection(mine, Protocol(), reactor=_StandInReactor())
        connection.connected = 1
        self.assertTrue(transportIdle(connection))
        connection.write(b"queued")
        self.assertFalse(transportIdle(connection))
        connection.doWrite()
        self.assertTrue(transportIdle(connection))
        connection._writeDisconnecting = True
        self.assertFalse(transportIdle(connection))
        self.assertFalse(transportIdle(object()))


class RecordingReactor:
    """
    What L{pumpedPoll} reads of the epoll reactor, recording the dispatch.
    """

    def __init__(self) -> None:
        self._selectables: dict[int, Any] = {}
        self.dispatched: list[tuple[Any, int, int]] = []
        self.disconnected: list[tuple[Any, Any, bool]] = []

    def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
        self.dispatched.append((selectable, fd, event))

    def _disconnectSelectable(self, selectable: Any, why: Any, isRead: bool) -> None:
        self.disconnected.append((selectable, why, isRead))


class RecordingConnection:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.written: list[bytes] = []

    def _dataReceived(self, data: bytes) -> Any:
        self.received.append(data)
        return "done" if not data else None

    def write(self, data: bytes) -> None:
        self.written.append(data)


class PumpedPollTests(SynchronousTestCase):
    """
    L{pumpedPoll}: the lanes prepared before the wait and collected after
    it, every event and hand-back dispatched in the pump's order, to the
    connection a pair was made for and no other.
    """

    def test_dispatch(self) -> None:
        """
        Events go to the reactor's own dispatch; stream bytes to the pair's
        connection as its own read would (its end disconnects it); what the
        socket did not take is written through Twisted; datagrams to the
        pair's owner; every pair touched is marked for its lane; a
        hand-back for a connection that is gone (its descriptor another
        connection's now) is dropped.
        """
        from types import SimpleNamespace

        from udptunnel._twisted.pumped import pumpedPoll

        module = SimpleNamespace(DATAGRAMS=1, STREAM=2, STREAM_LOST=3, TCP_REST=4, FRAMES=5,
                                 READ_ERROR=6)
        reactor = RecordingReactor()
        connection, stranger, other = RecordingConnection(), RecordingConnection(), object()
        reactor._selectables.update({5: connection, 6: stranger, 9: other})
        owner = Owner()
        owner.link = SimpleNamespace(transport=connection)  # type: ignore[attr-defined]
        pair = SimpleNamespace(tcpFd=5, owner=owner)
        gone = SimpleNamespace(tcpFd=6, owner=Owner())
        gone.owner.link = SimpleNamespace(transport=RecordingConnection())  # type: ignore[attr-defined]
        calls: list[Any] = []
        items = [(2, pair, b"frames"), (9, select.EPOLLIN), (4, pair, b"rest"),
                 (1, pair, [(b"d", ("127.0.0.1", 1))]), (4, gone, b"not yours"),
                 (2, pair, b"")]
        pump = SimpleNamespace(
            wait=lambda timeout, most: calls.append(("wait", timeout, most)) or items,
            pairOf=lambda fd: pair if fd == 9 else None)
        lanes = SimpleNamespace(prepare=lambda: calls.append("prepare"),
                                collect=lambda: calls.append("collect"),
                                dirtied=lambda p: calls.append(("dirtied", p)))
        pumpedPoll(reactor, pump, lanes, module)(None)
        self.assertEqual(calls[:3], ["prepare", ("wait", -1.0, 3), "collect"])
        self.assertEqual(connection.received, [b"frames", b""])
        self.assertEqual(connection.written, [b"rest"])
        self.assertEqual(stranger.written, [])
        self.assertEqual(reactor.dispatched, [(other, 9, select.EPOLLIN)])
        self.assertEqual(reactor.disconnected, [(connection, "done", True)])
        self.assertEqual(owner.handed, [("datagrams", [(b"d", ("127.0.0.1", 1))])])
        self.assertEqual(calls[3:], [("dirtied", p) for p in (pair, pair, pair, pair, gone, pair)])
