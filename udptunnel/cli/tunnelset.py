"""
The tunnels of a config file in one process, and their reload.

A reload (on L{RELOAD_SIGNAL}) reads the file again and checks all of it
first: a file with an error changes nothing.  Then tunnels whose table is
gone are stopped, new ones started, and those whose table changed stopped
and started again once their sockets are closed (so a changed tunnel can
keep its ports); a tunnel whose table is the same is not touched, and keeps
its link, its sessions and its phantom peer.

SIGUSR2, because twistd's signals are taken: SIGUSR1 rotates its log file,
and SIGHUP reopens it (L{udptunnel.ops.logreopen}, for logrotate).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from udptunnel import StartupError
from udptunnel.cli.configfile import ConfigError, ConfigFile, Table
from udptunnel.tunnel.service import TunnelService

RELOAD_SIGNAL = signal.SIGUSR2
#: Seconds a reload may take to read and check the file (resolving the
#: peers' names included) before it is given up.
RELOAD_DEADLINE = 10.0


class ReadTimedOut(Exception):
    """
    The read of the file did not return in time.
    """


def readOffTheLoop(read: Callable[[], ConfigFile], reactor: Any,
                   deadline: float) -> tuple[threading.Thread, Deferred[ConfigFile]]:
    """
    Call C{read} in a daemon thread of its own, and give its result (or
    its exception) to the event loop; L{ReadTimedOut} after C{deadline}
    seconds.  A read stuck in the kernel cannot be interrupted: its thread
    is left to itself (a daemon thread does not keep the process from
    exiting), and its late result is dropped.
    """
    done: Deferred[ConfigFile] = Deferred()

    def settle(result: ConfigFile | Failure) -> None:
        if done.called:
            return
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure):
            done.errback(result)
        else:
            done.callback(result)

    def run() -> None:
        try:
            result: ConfigFile | Failure = read()
        except BaseException:  # noqa: BLE001 (handed to the loop, whatever it is)
            result = Failure()
        reactor.callFromThread(settle, result)

    timer = reactor.callLater(deadline, settle, Failure(ReadTimedOut()))
    thread = threading.Thread(target=run, name="udptunnel reload", daemon=True)
    thread.start()
    return thread, done


class TunnelSet(MultiService):
    """
    The parent of a config file's tunnels, and what a reload changes.

    Its C{state} and C{stateObservers} are those of its tunnels together,
    so that L{udptunnel.ops.notify} reports all of them in one C{STATUS=}.

    @ivar config: the file as last loaded.
    """

    log = Logger()

    def __init__(self, config: ConfigFile, load: Callable[[], ConfigFile],
                 build: Callable[[Table, bool], TunnelService], reactor: Any) -> None:
        """
        @param load: reads and checks the file again, or raises a
            L{ConfigError}.
        @param build: makes the service of one tunnel (not started); told
            whether the process is starting (C{True}) or reloading.
        """
        super().__init__()
        self.config = config
        self._load = load
        self._build = build
        self._reactor = reactor
        self._tunnels = MultiService()
        self._tunnels.setServiceParent(self)
        #: The running tunnels' services, by name (their tables are
        #: L{config}'s).
        self._live: dict[str, TunnelService] = {}
        self.stateObservers: list[Callable[[], object]] = []
        #: Told when a reload starts and when it has finished (the
        #: notifications' RELOADING=1 and READY=1).
        self.reloadObservers: list[Callable[[bool], object]] = []
        self._reloading: Deferred[None] | None = None
        #: The thread of the last read of the file.
        self._reader: threading.Thread | None = None
        self._again = False
        self._previousHandler: Any = None
        for tunnel in config.tunnels.values():
            self._add(tunnel, atStart=True)

    def tunnels(self) -> list[tuple[str, TunnelService]]:
        """
        The running tunnels and their names, in the file's order.
        """
        return list(self._live.items())

    def state(self) -> str:
        return "; ".join(f"{name}: {service.state()}" for name, service in self.tunnels())

    def stateChanged(self) -> None:
        for observer in self.stateObservers:
            observer()

    def _add(self, tunnel: Table, atStart: bool = False) -> TunnelService:
        """
        Make C{tunnel}'s service and add it (which starts it if we run).
        """
        service = self._build(tunnel, atStart)
        service.stateObservers.append(self.stateChanged)
        self._live[tunnel.name] = service
        service.setServiceParent(self._tunnels)
        return service

    # The signal

    def startService(self) -> None:
        # The handler first: READY=1 goes out as the children start, and a
        # SIGUSR2 right after it must reload, not kill (its default).
        self._previousHandler = signal.signal(RELOAD_SIGNAL, self._onSignal)
        super().startService()
        self.log.info("{count} tunnel(s) from {path}: {names}; reload with kill -USR2 {pid}",
                      count=len(self._live), path=self.config.path,
                      names=", ".join(self._live), pid=os.getpid())

    def stopService(self) -> Deferred[None]:
        signal.signal(RELOAD_SIGNAL, self._previousHandler or signal.SIG_DFL)
        return super().stopService()

    def _onSignal(self, signalNumber: int, frame: object) -> None:
        # No work in a signal handler: the reactor does it on its next turn.
        self._reactor.callFromThread(self.reload)

    # Reloading

    def reload(self) -> Deferred[None]:
        """
        Bring the running tunnels in step with the file; a reload asked for
        while one runs follows it (it may read a newer file).

        The file is read and checked off the event loop (L{readOffTheLoop}):
        a read that blocks (a FIFO nobody writes, a hung network mount, a
        peer's name that takes its time to resolve) must not stop the
        tunnels.  A read that has not returned after L{RELOAD_DEADLINE}
        seconds is given up, with one line, and changes nothing.
        """
        if not self.running:
            return succeed(None)  # stopping: nothing to bring in step
        if self._reloading is not None:
            self._again = True
            return self._reloading
        if self._reader is not None and self._reader.is_alive():
            self.log.error("reload: {path}: the last read of the file has not returned "
                           "(a FIFO nobody writes? a hung mount?); nothing changed",
                           path=self.config.path)
            return succeed(None)
        self._reader, read = readOffTheLoop(self._load, self._reactor, RELOAD_DEADLINE)
        reloading = self._reloading = read.addCallbacks(self._apply, self._unreadable)
        reloading.addErrback(lambda failure: self.log.failure("reload failed", failure))
        reloading.addBoth(self._reloaded)
        return reloading

    def _unreadable(self, failure: Failure) -> None:
        if failure.check(ConfigError):
            self.log.error("reload: {error}; nothing changed", error=str(failure.value))
        elif failure.check(ReadTimedOut):
            self.log.error("reload: {path}: not read within {deadline:g} s (a FIFO nobody "
                           "writes? a hung mount?); nothing changed",
                           path=self.config.path, deadline=RELOAD_DEADLINE)
        else:
            self.log.failure("reload: reading {path} failed; nothing changed", failure,
                             path=self.config.path)

    def _reloaded(self, result: object) -> None:
        self._reloading = None
        if self._again:
            self._again = False
            self.reload()

    def _apply(self, config: ConfigFile) -> Deferred[None]:
        old, new = self.config.tunnels, config.tunnels
        removed = [name for name in old if name not in new]
        added = [name for name in new if name not in old]
        changed = [name for name in new if name in old and new[name] != old[name]]
        if config.metrics != self.config.metrics:
            self.log.warn("reload: metrics changed from {old} to {new}: the endpoint stays "
                          "{old} until a restart", old=self.config.metrics or "none",
                          new=config.metrics or "none")
        if config.plainTwisted != self.config.plainTwisted:
            self.log.warn("reload: plain-twisted changed to {new}: it stays {old} until a "
                          "restart", old=self.config.plainTwisted, new=config.plainTwisted)
        # What the process has once stays as it started.
        config = ConfigFile(config.path, self.config.metrics, config.tunnels,
                            self.config.plainTwisted)
        self.config = config
        if not (removed or added or changed):
            self.log.info("reload: no tunnel changed")
            return succeed(None)
        self.log.info("reload: {summary}",
                      summary="; ".join(f"{what} {', '.join(names)}" for what, names in (
                          ("stopping", removed), ("restarting", changed),
                          ("starting", added)) if names))
        for observer in self.reloadObservers:
            observer(True)
        stops = [self._stop(name) for name in removed + changed]
        done: Deferred[Any] = DeferredList(stops)
        done.addCallback(lambda _: self._startAll([new[name] for name in new
                                                   if name in added or name in changed]))
        return done

    def _forget(self, name: str) -> TunnelService:
        """
        Take tunnel C{name} out of the running ones (not out of its parent).
        """
        service = self._live.pop(name)
        service.stateObservers.remove(self.stateChanged)
        return service

    def _stop(self, name: str) -> Deferred[Any]:
        stopped = self._forget(name).disownServiceParent()
        return stopped if stopped is not None else succeed(None)

    def _startAll(self, tunnels: list[Table]) -> None:
        if not self.running:
            return  # stopped while the old tunnels closed
        for tunnel in tunnels:
            try:
                self._add(tunnel)
            except (StartupError, SystemExit) as e:
                # The tunnel logged why; the others run on.  The next reload
                # tries it again (it is not running, so it counts as added).
                self.log.error("reload: tunnel {name} not started: {why}",
                               name=tunnel.name, why=str(e))
                self._discard(tunnel.name)
        # Keep the file's order, which the metrics and STATUS= follow.
        order = list(self.config.tunnels)
        self._live = dict(sorted(self._live.items(), key=lambda i: order.index(i[0])))
        self.stateChanged()
        for observer in self.reloadObservers:
            observer(False)

    def _discard(self, name: str) -> None:
        """
        Take out a tunnel that failed to start.  It closed what it had bound
        itself (L{TunnelService._undoStart}), so it is taken out of its
        parent without a stop, which would stop children that never started.
        """
        service = self._forget(name)
        # Not running, so not in the file as we know it: the next reload
        # sees it as added, and tries again.
        self.config.tunnels.pop(name)
        self._tunnels.services.remove(service)
        self._tunnels.namedServices.pop(name, None)
        service.parent = None


