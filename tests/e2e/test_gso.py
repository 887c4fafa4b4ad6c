"""
Through the installed twistd, the frames of one write arrive as datagrams,
segmented.
"""

from __future__ import annotations

import socket
import subprocess

from tests.support.net import TIMEOUT, receive
from tests.support.processes import TWISTD, TwistdTestCase
from tests.support.streams import FRAMES, bigBuffers
from tests.support.system import whyNoGSO


class TwistdSegmentsTests(TwistdTestCase):
    """
    Through the installed twistd: the test plays the server and writes a
    read's worth of frames in one TCP write; the client's peer receives
    each as its own datagram, in order, with its size.
    """

    skip = whyNoGSO()

    def test_framesOfOneWriteArriveAsDatagrams(self) -> None:
        """
        The frames of one TCP write, empty and 1400-byte ones included, come out
        of the client's fixed UDP port as one datagram each, in order and with
        their sizes, and nothing more; the client keeps running.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        pop = bigBuffers(self.udpSocket())
        udp = self.udpSocket()
        clientUDP = udp.getsockname()[1]
        udp.close()
        client = self.spawn("client", TWISTD, "-n", "--pidfile=", *self.clientCommand(
            listener.getsockname()[1], clientUDP, pop.getsockname()[1]))
        connection, _ = listener.accept()
        self.addCleanup(connection.close)
        self.waitForOutput(client, "link up")
        connection.sendall(b"".join(len(f).to_bytes(2, "big") + f for f in FRAMES))
        got = [receive(pop, TIMEOUT, skipProbes=False) for _ in FRAMES]
        self.assertEqual([g[0] if g else None for g in got], FRAMES)
        self.assertEqual({g[1] for g in got if g}, {("127.0.0.1", clientUDP)})
        self.assertIsNone(receive(pop, 0.2, skipProbes=False))
        self.assertEqual(client.poll(), None, subprocess.list2cmdline(client.args))
