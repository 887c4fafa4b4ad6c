"""
The relay: the one service that owns the tunnel's state and decisions.

It knows the UDP socket and the active TCP link and decides, per datagram,
whether and where it goes.  The protocols in L{udptunnel.protocols} only
parse and forward; the listener or the reconnecting client that produces
links are child services, so the UDP socket outlives every TCP connection.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import StartupError
from .access import AddressFilter
from .addresses import showAddress
from .interfaces import IDatagramSocket, ILink, IRelay
from .stats import RateLimitedLog, TunnelStats


@implementer(IPushProducer)
class _UDPReadingProducer:
    """
    Pauses reading of the UDP socket while a TCP link's send buffer is full,
    so the excess is dropped by the kernel instead of queued here.

    It is registered on the TCP transport instead of the UDP port itself,
    because Twisted calls C{stopProducing} on the producer when the
    connection is lost and that would close the UDP port.
    """

    def __init__(self, relay: Relay, link: ILink) -> None:
        self._relay = relay
        self._link = link

    def pauseProducing(self) -> None:
        self._relay.pauseReading(self._link)

    def resumeProducing(self) -> None:
        self._relay.resumeReading(self._link)

    def stopProducing(self) -> None:
        self._relay.resumeReading(self._link)


@implementer(IRelay)
class Relay(MultiService):
    """
    Joins one UDP socket to at most one TCP link at a time.

    @ivar peer: the fixed destination C{(IP literal, port)} of datagrams
        coming out of the tunnel, or C{None} in phantom mode, where they go
        to C{learned}, the source of the newest datagram that came in.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        peer: tuple[str, int] | None = None,
        exitOnStartupError: bool = False,
        allow: AddressFilter | None = None,
        udpAllow: AddressFilter | None = None,
        idleTimeout: float = 0,
        statsInterval: float = 0,
        onLinkEnded: Callable[[float], object] | None = None,
    ) -> None:
        """
        @param allow: who may connect the TCP link (C{None}: anybody).
        @param udpAllow: in phantom mode, who may send into the tunnel and so
            be learned as the reply address (C{None}: anybody).
        @param idleTimeout: close the link after this many seconds without a
            datagram either way (0: never).
        @param statsInterval: log the counters this often, when they changed
            (0: only at shutdown).
        @param onLinkEnded: called with the lifetime in seconds of each link
            that ends (0 for a connection that never became the link), so
            the client can back off from a server that drops it at once.
        """
        super().__init__()
        self.peer = peer
        self.learned: tuple[str, int] | None = None
        self.link: ILink | None = None
        self.udp: IDatagramSocket | None = None
        self.stats = TunnelStats()
        self.allow = allow
        self.udpAllow = udpAllow
        self._exitOnStartupError = exitOnStartupError
        self._clock = clock
        self._warn = RateLimitedLog(self.log, clock)
        self._paused = False
        self._linkGone: list[Deferred[None]] = []
        self._timers: list[tuple[LoopingCall, float]] = []
        self._onLinkEnded = onLinkEnded
        self._linkSince = 0.0
        if idleTimeout > 0:
            self._idle = _IdleWatch(self, idleTimeout)
            self._every(min(idleTimeout / 4, 1.0), self._idle.check)
        if statsInterval > 0:
            self._lastSummary = ""
            self._every(statsInterval, self._logStatsIfChanged)

    def _every(self, interval: float, call: Any) -> None:
        timer = LoopingCall(call)
        timer.clock = self._clock
        self._timers.append((timer, interval))

    # Starting and stopping

    def privilegedStartService(self) -> None:
        self._startChildren(super().privilegedStartService)

    def startService(self) -> None:
        # twist never calls privilegedStartService: the children bind here.
        self._startChildren(super().startService)
        for timer, interval in self._timers:
            timer.start(interval, now=False)

    def _startChildren(self, start: Any) -> None:
        """
        Turn a failure to bind into a one-line error: a L{StartupError}, which
        a daemonising twistd reports through its parent, or in the foreground
        a L{SystemExit}, so the user sees the reason instead of a traceback.
        """
        try:
            start()
        except (CannotListenError, OSError, OverflowError, ValueError) as e:
            message = _describeBindError(e)
            if self._exitOnStartupError:
                raise SystemExit(f"udptunnel: cannot start: {message}") from None
            self.log.critical("cannot start: {message}", message=message)
            raise StartupError(message) from None

    def stopService(self) -> Deferred[Any]:
        for timer, _ in self._timers:
            if timer.running:
                timer.stop()
        link, self.link = self.link, None
        gone: Deferred[None] = succeed(None)
        if link is not None:
            gone = Deferred()
            self._linkGone.append(gone)
            link.abort()
        stopped = DeferredList([gone, super().stopService()])
        return stopped.addCallback(self._logSummary)

    def _logSummary(self, ignored: object) -> None:
        self.log.info("tunnel stopped: {summary}", summary=self.stats.summary())

    def _logStatsIfChanged(self) -> None:
        summary = self.stats.summary()
        if summary != self._lastSummary:
            self._lastSummary = summary
            self.log.info("{summary}; link {link}, peer {peer}", summary=summary,
                          link=self.link.peer if self.link else "down",
                          peer=showAddress(self.peer or self.learned))

    # The UDP side

    def udpStarted(self, transport: IDatagramSocket) -> None:
        self.udp = transport
        self.log.info(
            "UDP bound on {host}:{port}, {mode}",
            host=transport.getHost().host,
            port=transport.getHost().port,
            mode=f"peer {showAddress(self.peer)}" if self.peer else "phantom mode",
        )

    def udpStopped(self) -> None:
        self.udp = None

    def datagramsReceived(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        peer = self.peer
        carried = []
        for data, addr in datagrams:
            if peer is not None:
                if addr != peer:
                    self._drop("foreign-source", "datagram from {source}", source=showAddress(addr))
                    continue
            elif addr != self.learned:
                # Checked only when the source changes: the learned address
                # was allowed already, so steady traffic pays nothing here.
                if self.udpAllow is not None and not self.udpAllow.allows(addr[0]):
                    self._drop("udp-not-allowed", "datagram from {source}", source=showAddress(addr))
                    continue
                self._learn(addr)
            carried.append(data)
        if not carried:
            return
        link = self.link
        if link is None:
            self._drop("no-link", "no TCP link", count=len(carried))
            return
        link.sendFrames(carried)
        self.stats.toTunnelDatagrams += len(carried)
        self.stats.toTunnelBytes += sum(map(len, carried))

    def _learn(self, addr: tuple[str, int]) -> None:
        if self.learned is None:
            self.log.info("phantom peer learned: {peer}", peer=showAddress(addr))
        else:
            self.log.info(
                "phantom peer changed: {old} -> {peer}",
                old=showAddress(self.learned),
                peer=showAddress(addr),
            )
        self.learned = addr

    # The TCP side

    def linkConnected(self, link: ILink) -> bool:
        """
        Whether a new connection may go on to become the link: with
        C{--allow}, only from the allowed networks (a Unix socket's peer has
        no address and is guarded by the file's permissions instead).
        """
        host = link.peerHost
        if self.allow is None or host is None or self.allow.allows(host):
            return True
        self.stats.linksRefused += 1
        self._warn.warn("refused", "refused TCP connection from {peer}: not in --allow",
                        peer=link.peer)
        return False

    def linkMade(self, link: ILink) -> None:
        old, self.link = self.link, link
        self._linkSince = self._clock.seconds()
        self.stats.linksUp += 1
        self._resume()
        if old is not None:
            # A client that reconnects after a network change must not be
            # locked out by its own half-dead connection: newest wins.
            self.stats.linksReplaced += 1
            self.log.info(
                "link from {peer} replaces link from {old}", peer=link.peer, old=old.peer
            )
            old.abort()
        self.log.info("link up: {peer}", peer=link.peer)
        link.attachProducer(_UDPReadingProducer(self, link))

    def framesReceived(self, link: ILink, frames: list[bytes]) -> None:
        if link is not self.link:
            self._drop("replaced-link", "frame from a replaced link", count=len(frames))
            return
        destination = self.peer or self.learned
        if destination is None:
            self._drop("no-address", "no phantom peer learned yet", count=len(frames))
            return
        udp = self.udp
        if udp is None:
            self._drop("no-socket", "UDP socket closed", count=len(frames))
            return
        sendTo = udp.sendTo
        sent = size = 0
        for data in frames:
            try:
                sendTo(data, destination)
            except OSError as e:
                self._sendFailed(e, len(data), destination)
            else:
                sent += 1
                size += len(data)
        self.stats.fromTunnelDatagrams += sent
        self.stats.fromTunnelBytes += size

    def _sendFailed(self, error: OSError, size: int, destination: tuple[str, int]) -> None:
        """
        The UDP side never blocks: a datagram the kernel refuses is dropped
        and counted by reason.
        """
        if error.errno == errno.EMSGSIZE:
            self._drop("oversize", "{size}-byte datagram too big for {peer}",
                       size=size, peer=showAddress(destination))
        else:
            reason = errno.errorcode.get(error.errno or 0, "send-error")
            self._drop(reason, "sending to {peer}: {error}",
                       peer=showAddress(destination), error=error)

    def linkLost(self, link: ILink, reason: Failure) -> None:
        lifetime = None
        if link is self.link:
            self.link = None
            self.stats.linksLost += 1
            self._resume()
            self.log.info(
                "link down: {peer} ({why})", peer=link.peer, why=reason.getErrorMessage()
            )
            lifetime = self._clock.seconds() - self._linkSince
        elif not link.established:
            lifetime = 0.0
            self.stats.linksFailed += 1
            self._warn.warn("failed", "connection with {peer} ended before it became "
                            "the link: {why}", peer=link.peer, why=reason.getErrorMessage())
        if lifetime is not None and self._onLinkEnded is not None:
            self._onLinkEnded(lifetime)
        gone, self._linkGone = self._linkGone, []
        for d in gone:
            d.callback(None)

    # Flow control

    # Only the active link's producer steers reading: a replaced link that
    # ends (stopProducing) must not resume reads the new link has paused.

    def pauseReading(self, link: ILink) -> None:
        if link is self.link and self.udp is not None and not self._paused:
            self._paused = True
            self.udp.stopReading()

    def resumeReading(self, link: ILink) -> None:
        if link is self.link:
            self._resume()

    def _resume(self) -> None:
        if self._paused and self.udp is not None:
            self._paused = False
            self.udp.startReading()

    # Helpers

    def _drop(self, reason: str, format: str, count: int = 1, **fields: Any) -> None:
        self.stats.drops[reason] += count
        self._warn.warn(reason, "dropped datagram (" + reason + "): " + format, **fields)


class _IdleWatch:
    """
    Closes the link when no datagram crossed it either way for C{timeout}
    seconds.  It compares counters on a timer rather than stamping the time
    of each datagram, so the idle timeout costs the traffic nothing.
    """

    def __init__(self, relay: Relay, timeout: float) -> None:
        self._relay = relay
        self._timeout = timeout
        self._seen = -1
        self._since = 0.0

    def check(self) -> None:
        relay = self._relay
        stats = relay.stats
        carried = stats.toTunnelDatagrams + stats.fromTunnelDatagrams + stats.linksUp
        now = relay._clock.seconds()
        if carried != self._seen:
            self._seen, self._since = carried, now
        elif relay.link is not None and now - self._since >= self._timeout:
            relay.log.info("link {peer} idle for {timeout} s: closing it",
                           peer=relay.link.peer, timeout=self._timeout)
            relay.link.close()
            self._since = now


def _describeBindError(error: Exception) -> str:
    if isinstance(error, CannotListenError):
        where = f"{error.interface or '*'}:{error.port}"
        socketError = error.socketError
        why = getattr(socketError, "strerror", None) or str(socketError)
        return f"cannot listen on {where}: {why}"
    return str(error)
