"""
Restarting either end under traffic, with its sockets held by a supervisor
(as a systemd C{.socket} unit holds them): the installed twistd of each end
gets its sockets by socket activation (C{LISTEN_FDS}), is stopped with
SIGTERM and started again, while an application sends round trips through
the tunnel to an echo.  With the graceful stop and the hold queue, what is
in flight survives; with C{--hold 0}, what arrives while a link is down is
lost.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time

from tests.support.net import freePort
from tests.support.processes import TWISTD, TwistdTestCase

#: Round trips a second, and when each end restarts (seconds into the run).
RATE = 500
DURATION = 4.0
SERVER_RESTART = 1.0
CLIENT_RESTART = 2.4
#: How long the last replies may take.
SETTLE = 2.0


class Echo(threading.Thread):
    """
    The POP: returns every datagram to its sender, until stopped.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.sock.sendto(data, source)


class Supervised:
    """
    An end whose sockets this test holds and passes to each process it
    starts (descriptors 3 and on, C{LISTEN_FDS}), as systemd does.
    """

    def __init__(self, test: TwistdTestCase, name: str, sockets: list[socket.socket],
                 argv: list[str]) -> None:
        self.test, self.name, self.sockets, self.argv = test, name, sockets, argv
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        fds = [sock.fileno() for sock in self.sockets]
        moves = " ".join(f"{3 + i}<&{fd}" for i, fd in enumerate(fds))
        script = f'exec {moves}; LISTEN_PID=$$ exec "$@"'
        env = dict(os.environ, LISTEN_FDS=str(len(fds)),
                   LISTEN_FDNAMES=":".join(f"{self.name}{i}" for i in range(len(fds))))
        path = self.test.path(f"{self.name}{self.starts}.out")
        with open(path, "wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", script, "bash", TWISTD, "-n", "--pidfile=", *self.argv],
                pass_fds=fds, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.test.directory)
        self.test.outputs[self.process.pid] = path
        self.test.addCleanup(self.test.reap, self.process)

    def restart(self) -> None:
        """
        SIGTERM, wait for the exit (the graceful stop), start again.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(15)
        self.start()


class RestartTests(TwistdTestCase):
    """
    One restart of each end, under 500 round trips a second.
    """

    def run_(self, *options: str, sessions: bool = False, apps: int = 1,
             settle: float = SETTLE) -> tuple[int, int, list[bytes]]:
        """
        The run, with C{apps} applications taking turns: how many round
        trips were sent, how many came back, and any reply that was not one
        of the requests, or came twice.  The single link's application
        talks to the server end (phantom); with C{sessions}, the
        applications talk to the client end, each a session of its own,
        and the server's session sockets are its own (not held).  A reply
        later than C{settle} seconds after the last request counts as lost.
        """
        echo = Echo()
        echo.start()
        self.addCleanup(setattr, echo, "running", False)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", freePort()))
        tcp.listen(128)
        serverUDP = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        serverUDP.bind(("127.0.0.1", 0))
        clientUDP = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        clientUDP.bind(("127.0.0.1", 0))
        for sock in (tcp, serverUDP, clientUDP):
            self.addCleanup(sock.close)
        peer = f"127.0.0.1:{echo.sock.getsockname()[1]}"
        if sessions:
            server = Supervised(self, "server", [tcp], [
                "udptunnel", "server", "--sessions", "--tcp", "systemd:domain=INET:index=0",
                "--peer", peer, *options])
            client = Supervised(self, "client", [clientUDP], [
                "udptunnel", "client", "--sessions", "--tcp",
                f"127.0.0.1:{tcp.getsockname()[1]}", "--udp", "systemd:0", *options])
            destination = clientUDP.getsockname()
        else:
            server = Supervised(self, "server", [tcp, serverUDP], [
                "udptunnel", "server", "--tcp", "systemd:domain=INET:index=0",
                "--udp", "systemd:1", *options])
            client = Supervised(self, "client", [clientUDP], [
                "udptunnel", "client", "--tcp", f"127.0.0.1:{tcp.getsockname()[1]}",
                "--udp", "systemd:0", "--peer", peer, *options])
            destination = serverUDP.getsockname()
        server.start()
        client.start()
        sockets = []
        for _ in range(apps):
            app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(app.close)
            app.bind(("127.0.0.1", 0))
            app.setblocking(False)
            self.warmUp(app, destination)
            sockets.append(app)

        sent = 0
        replies: list[bytes] = []
        start = time.monotonic()
        restarts = [(SERVER_RESTART, server), (CLIENT_RESTART, client)]
        while (now := time.monotonic() - start) < DURATION:
            while sent < now * RATE:
                sockets[sent % apps].sendto(struct.pack("!I", sent), destination)
                sent += 1
            if restarts and now >= restarts[0][0]:
                restarts.pop(0)[1].restart()
                continue
            for app in sockets:
                self.drain(app, replies)
            time.sleep(0.001)
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and len(replies) < sent:
            for app in sockets:
                self.drain(app, replies)
            time.sleep(0.01)
        numbers = [struct.unpack("!I", reply)[0] if len(reply) == 4 else -1
                   for reply in replies]
        wrong = [reply for reply, number in zip(replies, numbers)
                 if not 0 <= number < sent]
        wrong += [struct.pack("!I", n) for n in set(numbers) if numbers.count(n) > 1]
        return sent, len(set(numbers) - {-1}), wrong

    def warmUp(self, app: socket.socket, destination: tuple[str, int]) -> None:
        """
        Probe until one comes back: both ends up, the link up.
        """
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            app.sendto(b"warm-up", destination)
            time.sleep(0.1)
            try:
                while app.recv(65535) != b"warm-up":
                    pass
                return
            except BlockingIOError:
                continue
        raise AssertionError("the tunnel never came up")

    def drain(self, app: socket.socket, replies: list[bytes]) -> None:
        while True:
            try:
                data = app.recv(65535)
            except BlockingIOError:
                return
            if data != b"warm-up":
                replies.append(data)

    def test_nothingLost(self) -> None:
        """
        Across a restart of the server and then of the client, at least
        99.9% of the round trips come back, none altered or twice.
        """
        sent, back, wrong = self.run_()
        self.assertEqual(wrong, [])
        self.assertGreaterEqual(back, sent * 0.999, f"{back} of {sent} came back")

    def test_sessions(self) -> None:
        """
        The same with C{--sessions} on both ends and ten applications, each
        a session: at least 99.9% come back.  (The server drains each
        session's link; the client's sessions end with their connections
        and are opened again by the next datagram, queued while they
        connect.)
        """
        sent, back, wrong = self.run_(sessions=True, apps=10, settle=1.0)
        self.assertEqual(wrong, [])
        self.assertGreaterEqual(back, sent * 0.999, f"{back} of {sent} came back")

    def test_withoutTheHoldQueue(self) -> None:
        """
        With C{--hold 0} (datagrams without a link dropped, as before the
        hold queue), the same restarts lose round trips: what the first
        test measures is the feature's.
        """
        sent, back, wrong = self.run_("--hold", "0", settle=0.5)
        self.assertEqual(wrong, [])
        self.assertLess(back, sent * 0.999, f"{back} of {sent} came back")
