#!/usr/bin/env python3
"""
What restarts of the server leave behind in a client with sessions:
resident memory and descriptors of a C{client --sessions} serving a number
of applications while its server is killed and started again, many times.

    .venv/bin/python benchmarks/restart_footprint.py [--apps 50] [--restarts 30]

It starts the installed twistd's two ends on loopback,

    APPS sockets --UDP--> client --sessions ==TCP==> server --sessions --UDP--> echo

sends from every application for two seconds (each its own session, each
datagram echoed back), then kills the server (SIGKILL: its sessions end
without a word) and starts it again, and prints the client's VmRSS and
descriptor count at each round.  Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from run import LO, freePort, memoryKiB, spawn, stop


def echo(sock: socket.socket, running: threading.Event) -> None:
    sock.settimeout(0.1)
    while running.is_set():
        try:
            data, source = sock.recvfrom(65535)
        except OSError:
            continue
        sock.sendto(data, source)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=30)
    parser.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable),
                                                         "twistd"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="udptunnel-restarts-"))
    taken: set[int] = set()
    tcp, udp = freePort(socket.SOCK_STREAM, taken), freePort(socket.SOCK_DGRAM, taken)
    pop = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pop.bind((LO, 0))
    running = threading.Event()
    running.set()
    threading.Thread(target=echo, args=(pop, running), daemon=True).start()
    serverArgv = [args.twistd, "-n", "--pidfile=", "udptunnel", "server", "--sessions",
                  "--tcp", f"tcp:{tcp}:interface={LO}", "--peer", f"{LO}:{pop.getsockname()[1]}"]
    server = spawn(serverArgv, work / "server.log", work)
    time.sleep(1.5)
    client = spawn([args.twistd, "-n", "--pidfile=", "udptunnel", "client", "--sessions",
                    "--tcp", f"{LO}:{tcp}", "--udp", f"{LO}:{udp}"], work / "client.log", work)
    time.sleep(1.5)
    apps = []
    for _ in range(args.apps):
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        app.bind((LO, 0))
        app.setblocking(False)
        apps.append(app)
    print("restart  client RSS MiB  descriptors")
    try:
        for restart in range(args.restarts + 1):
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                for app in apps:
                    app.sendto(b"x" * 100, (LO, udp))
                    try:
                        app.recv(65535)
                    except OSError:
                        pass
                time.sleep(0.02)
            rss = memoryKiB(client.pid)["VmRSS"] / 1024
            descriptors = len(os.listdir(f"/proc/{client.pid}/fd"))
            print(f"{restart:7d}  {rss:14.1f}  {descriptors:11d}", flush=True)
            server.send_signal(signal.SIGKILL)
            server.wait()
            server = spawn(serverArgv, work / "server.log", work)
            time.sleep(1)
    finally:
        running.clear()
        stop([client, server])
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
