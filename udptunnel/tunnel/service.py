"""
What every arrangement of the tunnel shares: the service that binds its
children with a one-line error on failure, the counters and their periodic
line, rate-limited drops, the guard against our own bugs, and a clean stop
that closes the connections it is given.

The single-link L{udptunnel.tunnel.single.Relay} and the session-keeping
L{udptunnel.tunnel.sessions} services are its subclasses; they decide where each
datagram goes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from udptunnel import StartupError, __version__
from udptunnel.interfaces import IDatagramSocket, ILink
from udptunnel.link.why import CLOSED_BY_PEER, CLOSED_HERE, describeLoss, refusedBy
from udptunnel.ratelimit import RateLimitedLog
from udptunnel.show import printable
from udptunnel.tunnel.access import AddressFilter
from udptunnel.tunnel.stats import TunnelStats

#: Seconds a stop waits for connections to close cleanly before aborting.
CLOSE_GRACE = 2.0
#: The name of a tunnel's UDP socket's service among its children: a stop
#: closes it last, once the links are gone.
UDP_SERVICE = "udp"


class TunnelService(MultiService):
    """
    The base of the services that own a tunnel's state.

    @ivar stats: the tunnel's counters.
    @ivar role: C{"client"} or C{"server"}.
    @ivar name: the tunnel's name in a config file (C{[tunnel.NAME]}), or
        C{None} for the one tunnel of a command line.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        exitOnStartupError: bool = False,
        statsInterval: float = 0,
        role: str = "server",
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.stats = TunnelStats()
        self.role = role
        #: The clock of the tunnel's timers and ages (the reactor).
        self.clock = clock
        if name is not None:
            # One process, several tunnels: every line says which one, as
            # the log system ("[udptunnel.dns#info]") and in JSON logs as
            # log_namespace.  Also the service's name in its parent.
            self.setName(name)
            self.log = Logger(namespace=f"udptunnel.{name}", source=self)
        self._exitOnStartupError = exitOnStartupError
        self._warn = RateLimitedLog(self.log, clock)
        self._timers: list[tuple[LoopingCall, float]] = []
        self._stopping: list[tuple[ILink, Deferred[None]]] = []
        self._closedHere: dict[ILink, str] = {}
        self._tracebacks: set[str] = set()
        #: Called with no arguments when L{state} may have changed (a link up
        #: or down, a peer learned, a session opened or ended): the sd_notify
        #: STATUS line (L{udptunnel.ops.notify}) watches it.
        self.stateObservers: list[Callable[[], object]] = []
        if statsInterval > 0:
            self._lastSummary = ""
            self._every(statsInterval, self._logStatsIfChanged)

    def _every(self, interval: float, call: Any) -> None:
        timer = LoopingCall(call)
        timer.clock = self.clock
        self._timers.append((timer, interval))

    def stateChanged(self) -> None:
        """
        Tell the L{stateObservers} that L{state} may have changed.
        """
        for observer in self.stateObservers:
            observer()

    # What subclasses tell

    def state(self) -> str:
        """
        The state for the stats line (the link, the peer, the sessions).
        """
        raise NotImplementedError()

    def udpSockets(self) -> list[IDatagramSocket]:
        """
        The tunnel's UDP sockets, whose kernel drops are counted.
        """
        raise NotImplementedError()

    #: The fixed UDP peer, or C{None} (phantom, or a peer per session).
    udpPeer: tuple[str, int] | None = None

    def pendingCount(self) -> int:
        """
        Connections waiting to become a link.
        """
        raise NotImplementedError()

    def linksUp(self) -> int:
        """
        TCP links carrying frames now.
        """
        raise NotImplementedError()

    def sessionCount(self) -> int | None:
        """
        Sessions open, or C{None} for the single link.
        """
        return None

    #: Who may connect (C{--allow}); C{None}: anybody.
    allow: AddressFilter | None = None
    #: Who may send into a phantom end (C{--udp-allow}); C{None}: anybody.
    udpAllow: AddressFilter | None = None
    #: The mark (C{--fwmark}; 0: none) and the device (C{--bind-device};
    #: empty: none) of the sockets that face the network: the builder sets
    #: them on the sockets, the tunnel only says them.
    fwmark: int = 0
    bindDevice: str = ""

    def allowed(self, link: ILink) -> bool:
        """
        Whether C{--allow} admits C{link}; a refusal is counted and logged
        (rate-limited).  A Unix socket's peer has no address and is guarded
        by the file's permissions instead.
        """
        host = link.remoteHost
        if self.allow is None or host is None or self.allow.allows(host):
            return True
        self.stats.linksRefused += 1
        self._warn.warn("refused", "refused TCP connection from {remote}: not in --allow",
                        remote=link.remote)
        return False

    def linkIdentified(self, link: ILink) -> bool:
        """
        C{--allow} judges the client a PROXY header named; a refused
        connection stops waiting (L{forgetWaiting}).
        """
        if self.allowed(link):
            return True
        self.forgetWaiting(link)
        return False

    def forgetWaiting(self, link: ILink) -> None:
        """
        Take C{link} off the connections waiting to become a link.
        """
        raise NotImplementedError()

    # Connections: who closed them, and those that never became a link

    #: What an admitted connection waits to become, in the log lines.
    becomes = "the link"

    def closeHere(self, link: ILink, abort: bool = False, why: str = CLOSED_HERE) -> None:
        """
        Close C{link} (at once, with C{abort}), remembering that we did, and
        why: its loss then reads C{why}, not "closed by the peer".
        """
        self._closedHere[link] = why
        if abort:
            link.abort()
        else:
            link.close()

    def whyLost(self, link: ILink, reason: Failure) -> str:
        """
        Why C{link} ended, in our words (L{describeLoss}).
        """
        return describeLoss(reason, self._closedHere.pop(link, None))

    def waitingLost(self, link: ILink, reason: Failure, why: str, ready: bool = False,
                    quiet: bool = False) -> bool:
        """
        Count and log a connection that ended while it waited to become a
        link: refused for what it sent first (L{refusedBy}); closed by a
        peer of a listening end that never got that far, or that was ready
        and only waited for its turn (a port scan, a balancer's health
        check: C{peer-closed}); or else a failure (a TLS handshake that
        failed, a connection lost), which is returned as C{True}, and
        logged unless C{quiet} (a client's reconnector says it instead).
        """
        refusal = refusedBy(reason)
        if refusal is not None:
            self.pendingClosed(link, refusal, why)
        elif ready or (self.role == "server" and why == CLOSED_BY_PEER):
            self.pendingClosed(link, "peer-closed", why)
        else:
            self.stats.linksFailed += 1
            if not quiet:
                self._warn.warn("failed", "connection with {remote} ended before it became "
                                + self.becomes + ": {why}", remote=link.remote, why=why)
            return True
        return False

    def pendingClosed(self, link: ILink, reason: str, why: str) -> None:
        """
        Count and log (rate-limited) a connection that ended before it
        became the link (or a session), for C{reason}.
        """
        self.stats.pendingClosed[reason] += 1
        self._warn.warn("pending-" + reason, "closed TCP connection from {remote}, which never "
                        "became " + self.becomes + ": {why}", remote=link.remote, why=why)

    # Starting and stopping

    def privilegedStartService(self) -> None:
        self._announce()
        self._startChildren(super().privilegedStartService)

    _announced = False

    def _announce(self) -> None:
        """
        Which version runs, as the first line (what a bug report needs),
        from whichever start comes first (twist has no privileged one).
        """
        if not self._announced:
            self._announced = True
            self.log.info("udptunnel {version} {role} starting", version=__version__,
                          role=self.role)
            if self.allow is not None:
                self.log.info("TCP connections only from {networks} (--allow)",
                              networks=str(self.allow))
            if self.udpAllow is not None:
                self.log.info("UDP datagrams only from {networks} (--udp-allow)",
                              networks=str(self.udpAllow))
            if self.fwmark or self.bindDevice:
                route = [f"marked {self.fwmark} (--fwmark)"] if self.fwmark else []
                if self.bindDevice:
                    route.append(f"bound to {self.bindDevice} (--bind-device)")
                self.log.info("sockets towards the network {route}", route=", ".join(route))

    def startService(self) -> None:
        self._announce()
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
            self._undoStart()
            if self.name is not None:
                message = f"tunnel {self.name}: {message}"
            if self._exitOnStartupError:
                raise SystemExit(f"udptunnel: cannot start: {message}") from None
            self.log.critical("cannot start: {message}", message=message)
            raise StartupError(message) from None

    def _undoStart(self) -> None:
        """
        Close what a start that failed halfway had opened (the UDP socket
        bound before the TCP port that was taken), so that the ports are
        free for the next try (a config file's reload).  A child that never
        started may fail to stop: that is no news, and not logged.
        """
        self.running = 0
        for child in reversed(list(self)):
            maybeDeferred(child.stopService).addErrback(lambda _: None)

    def stopWith(self, links: list[ILink], drain: Collection[ILink] = ()) -> Deferred[Any]:
        """
        Stop the timers, reading the UDP sockets (what arrives from now on
        stays in the kernel's buffer, for the next process where systemd
        holds the socket), and the children but the UDP sockets (so no new
        connection starts); close C{links} cleanly (a FIN, so each peer
        logs a clean close rather than a reset), those of C{drain} by half:
        their peers' last frames still go out as datagrams; close the UDP sockets
        once the links are gone, aborting those still open after
        L{CLOSE_GRACE} seconds so that a stop never hangs on a dead peer;
        then log the summary.
        """
        for timer, _ in self._timers:
            if timer.running:
                timer.stop()
        self._warn.flushAll()
        for udp in self.udpSockets():
            udp.stopReading()
        Service.stopService(self)
        children = list(self)
        last = [child for child in children if child.name == UDP_SERVICE]
        now = [maybeDeferred(child.stopService) for child in reversed(children)
               if child not in last]
        self._closedHere.update(dict.fromkeys(links, "closed here: stopping"))
        waits = []
        for link in links:
            gone: Deferred[None] = Deferred()
            self._stopping.append((link, gone))
            waits.append(gone)
            if link in drain:
                link.drain()
            else:
                link.close()
        linksGone = DeferredList(waits)
        if waits:
            abortLater = self.clock.callLater(CLOSE_GRACE, self._abortAll, links)
            linksGone.addCallback(lambda _: _cancel(abortLater))
        udpClosed = linksGone.addCallback(
            lambda _: DeferredList([maybeDeferred(child.stopService) for child in last]))
        stopped = DeferredList([udpClosed, *now])
        return stopped.addCallback(self._logSummary)

    def linkGone(self, link: ILink) -> None:
        """
        C{link} is closed: a stop waiting for it may go on.
        """
        for entry in [e for e in self._stopping if e[0] is link]:
            self._stopping.remove(entry)
            entry[1].callback(None)

    def _abortAll(self, links: list[ILink]) -> None:
        for link in links:
            if any(link is waiting for waiting, _ in self._stopping):
                link.abort()

    # The counters

    def _logSummary(self, ignored: object) -> None:
        self.log.info("tunnel stopped: {summary}", summary=self.summary())

    def summary(self) -> str:
        """
        The counters in one line, with the kernel's own drops on our UDP
        sockets read now.
        """
        self._readKernelDrops()
        return self.stats.summary(server=self.role == "server")

    def _logStatsIfChanged(self) -> None:
        summary = self.summary()
        if summary != self._lastSummary:
            self._lastSummary = summary
            self.log.info("{summary}; {state}", summary=summary, state=self.state())

    def _readKernelDrops(self) -> None:
        total, found = 0, False
        for udp in self.udpSockets():
            drops = udp.kernelDrops()
            if drops is not None:
                total += drops
                found = True
        if found:
            self.stats.kernelDrops = max(self.stats.kernelDrops, total)

    def _drop(self, reason: str, format: str, count: int = 1, **fields: Any) -> None:
        self.stats.drops[reason] += count
        self._warn.warn(reason, "dropped datagram (" + reason + "): " + format, **fields)

    # Faults of our own

    def internalError(self, where: str, failure: Failure) -> None:
        """
        Code of ours raised while handling traffic (a bug): count it and
        log it (the traceback once per place, then rate-limited lines), and
        go on with the next datagram or frame.  The link and the UDP socket
        stay up: a bug that a datagram triggers must not turn into a
        reconnect storm or a deaf socket.
        """
        self.stats.internalErrors[where] += 1
        if where not in self._tracebacks:
            self._tracebacks.add(where)
            self.log.failure("internal error while {where}; the tunnel goes on "
                             "(please report this)", failure, where=where)
        else:
            self._warn.warn("internal-error-" + where, "internal error while {where}: {error}",
                            where=where, error=printable(failure.getErrorMessage()))


def _cancel(call: IDelayedCall) -> None:
    if call.active():
        call.cancel()


def _describeBindError(error: Exception) -> str:
    if isinstance(error, CannotListenError):
        where = f"{error.interface or '*'}:{error.port}"
        socketError = error.socketError
        why = getattr(socketError, "strerror", None) or str(socketError)
        return f"cannot listen on {where}: {why}"
    return str(error)
