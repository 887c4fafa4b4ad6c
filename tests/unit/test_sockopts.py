"""
L{udptunnel.sockopts}: the mark and the device of the sockets that face
the network (C{--fwmark}, C{--bind-device}), and what is said when the
kernel refuses them.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from udptunnel.sockopts import (
    SO_BINDTODEVICE,
    SO_MARK,
    SocketSettings,
    checkSettings,
    routeSocket,
)


class RecordingSocket:
    """
    A socket that records each option set, or refuses the ones it is told
    to with an C{OSError} of the given errno.
    """

    def __init__(self, refuse: dict[int | None, int] | None = None) -> None:
        self.options: list[tuple[int, int, Any]] = []
        self.refuse = refuse or {}

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        if option in self.refuse:
            code = self.refuse[option]
            raise OSError(code, os.strerror(code))
        self.options.append((level, option, value))


class RouteSocketTests(SynchronousTestCase):
    def test_markAndDevice(self) -> None:
        """
        The mark is set as the kernel's unsigned 32 bits (a mark past a C
        int too), the device by its name.
        """
        sock = RecordingSocket()
        routeSocket(sock, SocketSettings(fwmark=0xFFFFFFF0, bindDevice="wg0"))  # type: ignore[arg-type]
        self.assertEqual(sock.options, [
            (socket.SOL_SOCKET, SO_MARK, struct.pack("=I", 0xFFFFFFF0)),
            (socket.SOL_SOCKET, SO_BINDTODEVICE, b"wg0"),
        ])

    def test_nothingByDefault(self) -> None:
        """
        Without either option nothing is set, and the settings say they
        route nothing.
        """
        sock = RecordingSocket()
        routeSocket(sock, SocketSettings())  # type: ignore[arg-type]
        self.assertEqual(sock.options, [])
        self.assertFalse(SocketSettings().routed)
        self.assertTrue(SocketSettings(fwmark=1).routed)
        self.assertTrue(SocketSettings(bindDevice="lo").routed)

    def test_withoutTheCapability(self) -> None:
        """
        A mark refused for want of privilege is an error that names the
        option, the value and the capability to give (and how, under
        systemd): a socket that cannot be marked must not be used.
        """
        sock = RecordingSocket({SO_MARK: errno.EPERM})
        with self.assertRaises(OSError) as caught:
            routeSocket(sock, SocketSettings(fwmark=51820))  # type: ignore[arg-type]
        message = str(caught.exception)
        self.assertIn("--fwmark: the kernel refuses SO_MARK=51820: Operation not permitted",
                      message)
        self.assertIn("CAP_NET_ADMIN", message)
        self.assertIn("AmbientCapabilities=CAP_NET_ADMIN", message)

    def test_noSuchDevice(self) -> None:
        """
        A device the kernel does not know is named, with what is wrong.
        """
        sock = RecordingSocket({SO_BINDTODEVICE: errno.ENODEV})
        with self.assertRaises(OSError) as caught:
            routeSocket(sock, SocketSettings(bindDevice="wg9"))  # type: ignore[arg-type]
        self.assertEqual(str(caught.exception),
                         "--bind-device: the kernel refuses SO_BINDTODEVICE=wg9: No such "
                         "device: no network interface has that name")


class CheckTests(SynchronousTestCase):
    def test_loopbackDevice(self) -> None:
        """
        Binding to the loopback interface is checked on a scratch socket,
        and passes: it exists everywhere.
        """
        checkSettings(SocketSettings(bindDevice="lo"))

    def test_missingDevice(self) -> None:
        """
        A device that does not exist is refused at parse time.
        """
        with self.assertRaises(ValueError) as caught:
            checkSettings(SocketSettings(bindDevice="nosuchif0"))
        self.assertIn("no network interface has that name", str(caught.exception))
