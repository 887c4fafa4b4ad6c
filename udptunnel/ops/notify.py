"""
The systemd notification protocol (C{sd_notify}), for C{Type=notify}
services: C{READY=1} once the tunnel's sockets are bound and its services
started, C{STATUS=} with the link (or sessions) state when it changes,
C{WATCHDOG=1} while the event loop runs, C{STOPPING=1} at stop.

The protocol is one Unix datagram per message to C{NOTIFY_SOCKET}, a path
or (starting with C{@}) an abstract socket name; a few lines, so no library
for it.  Without C{NOTIFY_SOCKET} no L{NotifyService} is made and nothing
is sent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class Watched(Protocol):
    """
    What L{NotifyService} reports on: a tunnel (L{udptunnel.tunnel.service}), or a
    config file's tunnels together (L{udptunnel.cli.tunnelset}), which have
    C{reloadObservers} too.
    """

    stateObservers: list[Callable[[], object]]

    def state(self) -> str: ...

#: Seconds between two C{STATUS=} messages at most: a phantom end whose
#: source flips at every datagram must not send one a datagram.
STATUS_INTERVAL = 1.0


def notifyAddress(environ: Mapping[str, str]) -> str | bytes | None:
    """
    The address of C{NOTIFY_SOCKET} in C{environ}, as C{sendto} takes it
    (an abstract name as bytes with a leading NUL); C{None} when it is
    unset, or a kind of address other than a Unix socket (systemd's
    C{vsock:}), which is logged.
    """
    value = environ.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warn("NOTIFY_SOCKET={value!r}: not a Unix socket; not notifying systemd",
             value=value)
    return None


def watchdogInterval(environ: Mapping[str, str], pid: int) -> float | None:
    """
    How often to send C{WATCHDOG=1}: half of C{WATCHDOG_USEC}, as
    C{sd_watchdog_enabled(3)} advises; C{None} when the watchdog is off,
    or meant for another process (C{WATCHDOG_PID}).
    """
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """
    Sends messages to the service manager's socket, never blocking the
    event loop: a message the socket does not take at once is dropped (the
    next status or watchdog ping follows soon), and a failure is logged
    once.
    """

    def __init__(self, address: str | bytes) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        self._failed = False

    def send(self, message: str) -> None:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warn("cannot notify systemd ({what!r}): {error}",
                         what=message, error=e)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class NotifyService(Service):
    """
    Tells systemd how the tunnel C{relay} is doing.  It must be the relay's
    last child: children start in order, so when its C{startService} runs
    every socket is bound and every service started, and it is the first to
    stop.
    """

    def __init__(self, relay: Watched, notifier: Notifier, clock: IReactorTime,
                 watchdog: float | None = None) -> None:
        self._relay = relay
        self._notifier = notifier
        self._clock = clock
        self._watchdog = watchdog
        self._ping: LoopingCall | None = None
        self._sent: str | None = None
        self._lastAt: float | None = None
        self._pending: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._relay.stateObservers.append(self.stateChanged)
        getattr(self._relay, "reloadObservers", []).append(self.reloading)
        self._notifier.send(f"READY=1\nSTATUS={self._status()}")
        self._sent, self._lastAt = self._status(), self._clock.seconds()
        if self._watchdog is not None:
            self._ping = LoopingCall(self._notifier.send, "WATCHDOG=1")
            self._ping.clock = self._clock
            self._ping.start(self._watchdog, now=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.stateChanged in self._relay.stateObservers:
            self._relay.stateObservers.remove(self.stateChanged)
        reloads = getattr(self._relay, "reloadObservers", [])
        if self.reloading in reloads:
            reloads.remove(self.reloading)
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._notifier.send("STOPPING=1\nSTATUS=stopping")
        self._notifier.close()
        return succeed(None)

    def reloading(self, starting: bool) -> None:
        """
        A reload starts (C{RELOADING=1}, with the C{MONOTONIC_USEC} that
        C{Type=notify-reload} wants) or is done (C{READY=1} again).
        """
        if starting:
            self._notifier.send("RELOADING=1\nSTATUS=reloading\n"
                                f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        else:
            self._sent, self._lastAt = self._status(), self._clock.seconds()
            self._notifier.send(f"READY=1\nSTATUS={self._sent}")

    def _status(self) -> str:
        return self._relay.state()

    def stateChanged(self) -> None:
        """
        The relay's state may have changed: send it, at most once per
        L{STATUS_INTERVAL}, and only when it did change.  Deferred to a
        later reactor turn, so that a burst of changes (a link down, the
        next one promoted) sends where it ended.
        """
        if self._pending is not None:
            return
        since = self._clock.seconds() - (self._lastAt or 0.0)
        self._pending = self._clock.callLater(max(0.0, STATUS_INTERVAL - since),
                                              self._sendStatus)

    def _sendStatus(self) -> None:
        self._pending = None
        status = self._status()
        if status != self._sent:
            self._sent, self._lastAt = status, self._clock.seconds()
            self._notifier.send(f"STATUS={status}")


def notifyService(relay: Watched, clock: Any,
                  environ: Mapping[str, str] | None = None) -> NotifyService | None:
    """
    The L{NotifyService} for C{relay} when systemd asks for notifications
    (C{NOTIFY_SOCKET}), else C{None}.
    """
    if environ is None:
        environ = os.environ
    address = notifyAddress(environ)
    if address is None:
        return None
    return NotifyService(relay, Notifier(address), clock,
                         watchdogInterval(environ, os.getpid()))
