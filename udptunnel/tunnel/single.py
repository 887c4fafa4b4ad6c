"""
The relay: the one service that owns the tunnel's state and decisions.

It knows the UDP socket and the active TCP link and decides, per datagram,
whether and where it goes.  The protocols in L{udptunnel.link.protocol} only
parse and forward; the listener or the reconnecting client that produces
links are child services, so the UDP socket outlives every TCP connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from udptunnel.interfaces import IDatagramSocket, ILink, IRelay
from udptunnel.link.why import CLOSED_BY_PEER
from udptunnel.show import showAddress
from udptunnel.tunnel.access import AddressFilter
from udptunnel.tunnel.flow import PauseReading
from udptunnel.tunnel.hold import HoldQueue
from udptunnel.tunnel.pending import DEFAULT_LIMIT, DEFAULT_TIMEOUT, PendingLinks
from udptunnel.tunnel.service import TunnelService
from udptunnel.tunnel.session import Session

#: A waiting connection takes over a link from which no frame came for this
#: many seconds: long enough that a link carrying any steady traffic (even
#: one datagram a second) is never taken over by a silent stranger, short
#: enough that a client reconnecting after a network change, whose
#: application is quiet, gets the link back within seconds.
LINK_SILENT = 3.0
#: A client declares its link up once a frame came or it lasted this long.
CONFIRM_AFTER = 1.0

_TAKEOVER_WORDS = {
    "first-frame": "it sent its first frame",
    "link-silent": f"no frame on the old link for {LINK_SILENT:g} s",
    "no-link": "no link",
}


@implementer(IRelay)
class Relay(TunnelService):
    """
    Joins one UDP socket to at most one TCP link at a time.

    Every admitted TCP connection first waits in L{PendingLinks}; it becomes
    the link when there is none, when it sends its first frame, or when the
    current link has been silent (no frame from it) for L{LINK_SILENT}
    seconds.  So a client that reconnects after a network change takes over
    from its own half-dead connection, while a port scan, a health check or
    a silent stranger never closes a link that carries traffic.

    @ivar udpPeer: the fixed destination C{(IP literal, port)} of datagrams
        coming out of the tunnel, or C{None} in phantom mode, where they go
        to C{learnedPeer}, the source of the newest datagram that came in.
    @ivar link: the TCP connection that carries the frames, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        udpPeer: tuple[str, int] | None = None,
        exitOnStartupError: bool = False,
        allow: AddressFilter | None = None,
        udpAllow: AddressFilter | None = None,
        idleTimeout: float = 0,
        statsInterval: float = 0,
        onLinkEnded: Callable[..., object] | None = None,
        pendingTimeout: float = DEFAULT_TIMEOUT,
        maxPending: int = DEFAULT_LIMIT,
        role: str = "server",
        name: str | None = None,
        hold: tuple[float, int, int] | None = None,
    ) -> None:
        """
        @param allow: who may connect the TCP link (C{None}: anybody).
        @param udpAllow: in phantom mode, who may send into the tunnel and so
            be learned as the reply address (C{None}: anybody).
        @param idleTimeout: close the link after this many seconds without a
            datagram either way (0: never).
        @param statsInterval: log the counters this often, when they changed
            (0: only at shutdown).
        @param onLinkEnded: a client's reconnector (L{onLinkEnded}).
        @param pendingTimeout: seconds a connection may wait to become the
            link before it is closed.
        @param maxPending: connections that may wait at once (0: no cap).
        @param role: C{"client"} or C{"server"}.  A client's link is
            declared up only once it proved itself (a frame came, or it
            lasted L{CONFIRM_AFTER} seconds): a server that closes it at
            once (its C{--allow}, its TLS) refused it, and that is a failed
            attempt, not a link that came up and went down.
        @param hold: keep datagrams while there is no link, and send them
            on the next: their age, count and bytes bounds
            (L{udptunnel.tunnel.hold.HoldQueue}); C{None}: drop them.
        """
        super().__init__(clock, exitOnStartupError, statsInterval, role, name)
        self.udpPeer = udpPeer
        self.learnedPeer: tuple[str, int] | None = None
        #: The one session: the UDP peer (fixed, or learned) and the link.
        self.session = Session(None, udpPeer, self._drop, traffic=self.stats)
        if hold is not None:
            self.session.hold = HoldQueue(clock, self._drop, *hold)
        self.allow = allow
        self.udpAllow = udpAllow
        self._paused = False
        self._pending = PendingLinks(clock, self._pendingExpired, self._pendingEvicted,
                                     pendingTimeout, maxPending)
        self._ready: set[ILink] = set()
        self._lastFrameAt = 0.0
        self._confirm: IDelayedCall | None = None
        #: Called when each connection ends, with C{None} when it had been
        #: a link (it carried a frame, or lasted L{CONFIRM_AFTER}), else
        #: with why it came to nothing: what a client's reconnector needs
        #: to back off from a server that refuses it, and from it alone (a
        #: link the server replaced by a newcomer's is no failure of ours).
        #: The reconnector logs the failure; the relay does not.
        self.onLinkEnded = onLinkEnded
        #: When the current link became the link (the clock's seconds).
        self.linkSince = 0.0
        if idleTimeout > 0:
            self._idle = _IdleWatch(self, idleTimeout)
            self._every(min(idleTimeout / 4, 1.0), self._idle.check)

    @property
    def link(self) -> ILink | None:
        """
        The TCP connection that carries the frames, or C{None}.
        """
        return self.session.link

    @link.setter
    def link(self, link: ILink | None) -> None:
        self.session.link = link

    @property
    def udp(self) -> IDatagramSocket | None:
        """
        The UDP socket, or C{None} while it is closed (the session's).
        """
        return self.session.udp

    def stopService(self) -> Deferred[Any]:
        """
        Close the link and the waiting connections cleanly, then stop.
        """
        self._cancelConfirm()
        links = [link for link in (self.link, *self._pending) if link is not None]
        self._draining, self.link = self.link, None
        for link in list(self._pending):
            self._pending.remove(link)
        if self.session.hold is not None:
            held = self.session.hold.discard()
            if held:
                self.stats.drops["no-link"] += held
        return self.stopWith(links, drain=[self._draining] if self._draining else [])

    def state(self) -> str:
        # In the metrics' words: udptunnel_link_up, udptunnel_peer_info.
        link = f"link up {self.link.remote}" if self.link else "link down"
        mode = "fixed" if self.udpPeer else "phantom"
        return f"{link}, peer {showAddress(self.udpPeer or self.learnedPeer)} ({mode})"

    def udpSockets(self) -> list[IDatagramSocket]:
        return [self.udp] if self.udp is not None else []

    def linksUp(self) -> int:
        return int(self.link is not None)

    # The UDP side

    def udpStarted(self, transport: IDatagramSocket) -> None:
        self.session.udp = transport
        host = transport.getHost()
        self.log.info(
            "UDP bound on {address}, {mode}",
            address=showAddress((host.host, host.port)),
            mode=f"peer {showAddress(self.udpPeer)}" if self.udpPeer else "phantom mode",
        )

    def udpStopped(self) -> None:
        self.session.udp = None

    def datagramsReceived(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        peer = self.udpPeer
        carried = []
        for data, addr in datagrams:
            if peer is not None:
                if addr != peer:
                    self._drop("foreign-source", "datagram from {source}", source=showAddress(addr))
                    continue
            elif addr != self.learnedPeer:
                # Checked only when the source changes: the learned address
                # was allowed already, so steady traffic pays nothing here.
                if self.udpAllow is not None and not self.udpAllow.allows(addr[0]):
                    self._drop("udp-not-allowed", "datagram from {source}", source=showAddress(addr))
                    continue
                self._learn(addr)
            carried.append(data)
        if carried:
            self.session.toTunnel(carried)

    def _learn(self, addr: tuple[str, int]) -> None:
        """
        A new source on a phantom end.  The first is logged at once; changes
        are counted and their log lines rate-limited, as two applications
        sending to one phantom end change it at every datagram.
        """
        if self.learnedPeer is None:
            self.log.info("phantom peer learned: {peer}", peer=showAddress(addr))
        else:
            self.stats.phantomChanges += 1
            self._warn.info(
                "phantom-changed",
                "phantom peer changed: {old} -> {peer}",
                old=showAddress(self.learnedPeer),
                peer=showAddress(addr),
            )
        self.learnedPeer = self.session.peer = addr
        self.stateChanged()

    # The TCP side

    def linkConnected(self, link: ILink) -> bool:
        """
        Whether a new connection may go on to become the link: with
        C{--allow}, only from the allowed networks (a Unix socket's peer has
        no address and is guarded by the file's permissions instead).  An
        admitted connection starts waiting, with a deadline.
        """
        if not self.allowed(link):
            return False
        self._pending.add(link)
        return True

    def linkMade(self, link: ILink) -> None:
        """
        C{link} is ready to carry frames (its TLS handshake, if any, is
        done): it becomes the link now if there is none or the current one
        has gone silent, and otherwise waits for its first frame.
        """
        if link not in self._pending and link is not self.link:
            self._pending.add(link)  # never announced by linkConnected
        self._ready.add(link)
        self._considerTakeover(link)

    def _considerTakeover(self, link: ILink) -> None:
        if self.link is None:
            self._promote(link, "no-link")
            return
        silentFor = self.clock.seconds() - self._lastFrameAt
        if silentFor >= LINK_SILENT:
            self._promote(link, "link-silent")
        else:
            self._pending.checkLater(link, LINK_SILENT - silentFor, self._considerTakeover)

    def _promote(self, link: ILink, reason: str) -> None:
        self._pending.remove(link)
        self._ready.discard(link)
        old, self.link = self.link, link
        now = self.clock.seconds()
        self.linkSince = self._lastFrameAt = now
        self._cancelConfirm()
        self._resume()
        if old is not None:
            # A client that reconnects after a network change must not be
            # locked out by its own half-dead connection; the newcomer proved
            # itself (its first frame), or the old link went silent.
            self.stats.linksReplaced += 1
            self.stats.takeovers[reason] += 1
            self._warn.info(
                "link-replaced", "link from {remote} replaces link from {old} ({why})",
                remote=link.remote, old=old.remote, why=_TAKEOVER_WORDS[reason],
            )
            old.abort()
        if self.role == "client":
            self._confirm = self.clock.callLater(CONFIRM_AFTER, self._confirmLink, link)
        else:
            self._linkUp(link)
        link.attachProducer(PauseReading(self, link))
        self.session.releaseHeld()

    def _confirmLink(self, link: ILink) -> None:
        self._confirm = None
        if link is self.link:
            self._linkUp(link)

    def _linkUp(self, link: ILink) -> None:
        self.stats.linksUp += 1
        self._warn.info("link-up", "link up: {remote}", remote=link.remote)
        self.stateChanged()

    def _cancelConfirm(self) -> None:
        confirm, self._confirm = self._confirm, None
        if confirm is not None and confirm.active():
            confirm.cancel()

    #: The link a stop is draining: its last frames still go out.
    _draining: ILink | None = None

    def framesReceived(self, link: ILink, frames: list[bytes]) -> None:
        if link is self._draining:
            self.session.fromTunnel(frames)
            return
        if link is not self.link:
            if link not in self._ready:
                self._drop("replaced-link", "frame from a replaced link", count=len(frames))
                return
            self._promote(link, "first-frame")
        if self._confirm is not None:
            self._cancelConfirm()
            self._linkUp(link)
        self._lastFrameAt = self.clock.seconds()
        self.session.fromTunnel(frames)

    def carriesPlainly(self, link: ILink) -> bool:
        """
        Whether C{link}'s frames and the datagrams into it need nothing of
        the relay but to be carried and counted (the compiled pump may carry
        them, L{udptunnel.tunnel.lanes}): it is the link, confirmed, not a
        stop's draining one.
        """
        return link is self.link and self._confirm is None

    def framesSeenAt(self, when: float) -> None:
        """
        Frames from the link arrived by another path than L{framesReceived}
        (the compiled pump), the last at C{when}: the link is not silent.
        """
        self._lastFrameAt = max(self._lastFrameAt, when)

    def linkLost(self, link: ILink, reason: Failure) -> None:
        why = self.whyLost(link, reason)
        failure: str | None = why
        if link is self.link:
            self.link = None
            self._resume()
            if self._confirm is not None:
                # Closed before it carried a frame or lasted CONFIRM_AFTER.
                self._cancelConfirm()
                self.stats.linksFailed += 1
                failure = closedAtOnce(why)
                if self.onLinkEnded is None:
                    self._warn.warn("closed-at-once", "connection to {remote}: {failure}",
                                    remote=link.remote, failure=failure)
            else:
                failure = None
                self.stats.linksLost += 1
                self._warn.info("link-down", "link down: {remote} ({why})",
                                remote=link.remote, why=why)
            self.stateChanged()
            self._promoteWaiting()
        elif self._pending.remove(link):
            ready = link in self._ready
            self._ready.discard(link)
            self.waitingLost(link, reason, why, ready, quiet=self.onLinkEnded is not None)
        if self.onLinkEnded is not None:
            self.onLinkEnded(failure, closedByPeer=why == CLOSED_BY_PEER)
        self.linkGone(link)

    def _promoteWaiting(self) -> None:
        """
        The link is gone: the newest connection that is ready takes it at
        once (a client that reconnected, whose application is quiet).
        """
        newcomer = self._pending.newest(lambda link: link in self._ready)
        if newcomer is not None:
            self._promote(newcomer, "no-link")

    # Pending connections that never became the link

    def _pendingExpired(self, link: ILink) -> None:
        self._ready.discard(link)
        why = f"not the link after {self._pending.timeout:g} s"
        self.pendingClosed(link, "timeout", why)
        self.closeHere(link, abort=True, why=why)

    def _pendingEvicted(self, link: ILink) -> None:
        self._ready.discard(link)
        why = f"{self._pending.limit} connections waiting, it was the oldest"
        self.pendingClosed(link, "evicted", why)
        self.closeHere(link, abort=True, why=why)

    def pendingCount(self) -> int:
        """
        How many connections are waiting to become the link.
        """
        return len(self._pending)

    def forgetWaiting(self, link: ILink) -> None:
        self._pending.remove(link)
        self._ready.discard(link)

    def closeLink(self) -> None:
        """
        Close the link cleanly (the idle timeout).
        """
        if self.link is not None:
            self.closeHere(self.link)

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
        now = relay.clock.seconds()
        if carried != self._seen:
            self._seen, self._since = carried, now
        elif relay.link is not None and now - self._since >= self._timeout:
            relay.log.info("link {remote} idle for {timeout} s: closing it",
                           remote=relay.link.remote, timeout=self._timeout)
            relay.closeLink()
            self._since = now


def closedAtOnce(why: str) -> str:
    """
    What a client says of a connection its server closed before it carried
    anything: the server refused it, and the likely reasons.
    """
    how = "" if why == CLOSED_BY_PEER else f" ({why})"
    return (f"closed by the server before it carried anything{how}: refused by its "
            "--allow, --max-sessions or TLS, a --handshake mismatch, or busy?")
