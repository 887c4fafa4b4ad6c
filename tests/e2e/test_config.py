"""
The installed twistd running a config file, as a user would, and
C{python -m udptunnel status} against it, or against a tunnel given on the
command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from tests.support.ends import FourTunnels
from tests.support.net import TIMEOUT, freePort, receive
from tests.support.processes import (
    STOPPED_BY_SIGTERM,
    TWISTD,
    lastLine,
    notifySocket,
    waitForNotice,
)


class RunTests(FourTunnels):
    """
    The installed twistd running a config file, as a user would.
    """

    def test_fourTunnelsAndReloads(self) -> None:
        """
        Four tunnels relay at once; names are in the log lines and the
        metrics; SIGUSR2 restarts only the changed tunnel (the seed link
        stays up and its phantom peer known); a bad file changes nothing.
        """
        config, process, app = self.startFourTunnels()
        output = self.output(process)
        self.assertIn("[udptunnel.natbox#info] link up", output)
        self.assertIn("[udptunnel.relay#info] link up", output)
        self.assertIn("udptunnel dns-relay TCP starting on", output)
        metrics = self.scrape()
        self.assertIn('udptunnel_link_up{tunnel="natbox"} 1.0', metrics)
        self.assertIn('udptunnel_sessions_open{tunnel="dns-stub"} 3.0', metrics)
        self.assertIn('udptunnel_sessions_open{tunnel="dns-relay"} 3.0', metrics)
        self.waitForOutput(process, "[udptunnel.natbox#info] to tunnel ")  # the stats line

        # A changed tunnel: only it restarts.
        self.writeConfig(self.fourTunnels(dnsSessions=100))
        process.send_signal(signal.SIGUSR2)
        self.waitForOutput(process, "reload: restarting dns-relay")
        self.waitForOutput(process, "udptunnel dns-relay TCP starting on", count=2)
        self.pop.sendto(b"after the reload", ("127.0.0.1", self.relayUDP))
        self.assertEqual(receive(app, TIMEOUT), (b"after the reload", ("127.0.0.1", self.seedUDP)))
        self.queries(2)  # the stub's sessions reconnect to the new server
        output = self.output(process)
        self.assertEqual(output.count("[udptunnel.natbox#info] link up"), 1, output)
        self.assertEqual(output.count("[udptunnel.relay#info] link up"), 1, output)

        # A bad file: nothing changes.
        self.writeConfig(self.fourTunnels().replace("max-sessions", "max-sesions"))
        process.send_signal(signal.SIGUSR2)
        self.waitForOutput(process, "nothing changed")
        self.assertIn(f"reload: {config}: [tunnel.dns-relay]: unknown key 'max-sesions' (did "
                      "you mean 'max-sessions'?)", self.output(process))
        self.assertRelays(app, self.pop, self.seedUDP, self.relayUDP)

        self.assertIn(self.stop(process), STOPPED_BY_SIGTERM)
        output = self.output(process)
        for name in ("natbox", "relay", "dns-stub", "dns-relay"):
            self.assertIn(f"[udptunnel.{name}#info] tunnel stopped: ", output)
        self.assertNotIn("Traceback", output)

    def test_badFileAtStart(self) -> None:
        """
        A bad file is one line naming the file, the tunnel and the key,
        with status 1, under twistd -n and when daemonising.
        """
        config = self.writeConfig('[tunnel.dns]\nrole = "client"\ntcp = "127.0.0.1:1"\n'
                                  'udp = "127.0.0.1:99999"\n')
        for daemon in ([], ["--pidfile=run.pid", "--logfile=run.log"]):
            done = self.command(TWISTD, *(daemon or ["-n", "--pidfile="]), "udptunnel", "run",
                                "--config", config)
            self.assertEqual(done.returncode, 1, done)
            self.assertNotIn("Traceback", done.stdout + done.stderr)
            self.assertEqual(lastLine(done.stderr),
                             (f"twistd udptunnel run: {config}: [tunnel.dns] udp: port "
                              "must be a number from 0 to 65535, not '99999'"))

    def test_check(self) -> None:
        """
        C{--check} checks the file and starts nothing: status 0, a first line
        with the count of tunnels and the metrics endpoint, then each tunnel as
        its command line; a file without a tunnel is status 1, one line saying
        what to give.
        """
        config = self.writeConfig(self.fourTunnels())
        done = self.command(TWISTD, "udptunnel", "run", "--config", config, "--check")
        self.assertEqual(done.returncode, 0, done)
        lines = done.stdout.splitlines()
        self.assertEqual(lines[0], f"{config}: 4 tunnel(s), metrics on "
                                   f"tcp:{self.metrics}:interface=127.0.0.1")
        self.assertEqual(lines[3], f"  dns-stub: udptunnel client --tcp 127.0.0.1:{self.dnsTCP} "
                                   f"--udp 127.0.0.1:{self.dnsUDP} --sessions")
        bad = self.writeConfig("[tunnel]\n")
        done = self.command(TWISTD, "udptunnel", "run", "--config", bad, "--check")
        self.assertEqual((done.returncode, lastLine(done.stderr)),
                         (1, (f"twistd udptunnel run: {bad}: no tunnel: give one "
                              "[tunnel.NAME] table per tunnel")))

    def test_notifiesReload(self) -> None:
        """
        Under systemd (C{NOTIFY_SOCKET}): READY=1 with every tunnel in
        STATUS=, then RELOADING=1 and READY=1 around a reload.
        """
        notices, notify = notifySocket(self, "reload")
        config = self.writeConfig(self.fourTunnels())
        with open(self.path("run.out"), "wb") as out:
            process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "udptunnel", "run", "--config", config],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=dict(os.environ, NOTIFY_SOCKET=notify))
        self.outputs[process.pid] = self.path("run.out")
        self.addCleanup(self.reap, process)
        ready = next(m for m in waitForNotice(notices, "READY=1") if "READY=1" in m)
        self.assertRegex(ready, r"STATUS=natbox: link (up|down).*; relay: .*; dns-stub: "
                                r".*; dns-relay: ")
        self.writeConfig(self.fourTunnels(dnsSessions=5))
        process.send_signal(signal.SIGUSR2)
        seen = waitForNotice(notices, "RELOADING=1")
        reloading = next(i for i, m in enumerate(seen) if "RELOADING=1" in m)
        self.assertRegex(seen[reloading], r"MONOTONIC_USEC=\d+")
        # READY=1 follows, perhaps read in the same batch.
        after = seen[reloading + 1:]
        if not any("READY=1" in m for m in after):
            after += waitForNotice(notices, "READY=1")
        self.assertTrue(next(m for m in after if "READY=1" in m).startswith("READY=1\nSTATUS="))
        self.assertIn(self.stop(process), STOPPED_BY_SIGTERM)


def statusCommand(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "udptunnel", "status", *argv],
                          capture_output=True, text=True, timeout=60, check=False)


class CommandTests(FourTunnels):
    """
    C{python -m udptunnel status} against the installed twistd running a
    config file with a few sessions.
    """

    def test_statusOfLiveDaemon(self) -> None:
        """
        The status of a live daemon lists its four tunnels in order, with their
        peers, roles and one row per session (three on each end of the DNS
        tunnel); C{--json} gives the same as a document: the link up, and the
        stub's sessions with their links and their traffic.
        """
        _, _, app = self.startFourTunnels()
        url = f"http://127.0.0.1:{self.metrics}/"
        done = statusCommand(url)
        self.assertEqual(done.returncode, 0, done)
        text = done.stdout
        self.assertEqual([line for line in text.splitlines() if line.startswith("tunnel: ")],
                         ["tunnel: natbox", "tunnel: relay", "tunnel: dns-stub",
                          "tunnel: dns-relay"])
        self.assertIn(f"  udp:      127.0.0.1:{self.seedUDP} <-> 127.0.0.1:"
                      f"{app.getsockname()[1]} (phantom)", text)
        self.assertIn("  role:     client, sessions (3 open)", text)
        sessionRows = [line for line in text.splitlines()
                       if line.startswith("  127.0.0.1:")]
        self.assertEqual(len(sessionRows), 6, text)  # 3 on each end of the DNS tunnel
        document = json.loads(statusCommand(url, "--json").stdout)
        byName = {tunnel["name"]: tunnel for tunnel in document["tunnels"]}
        self.assertTrue(byName["natbox"]["link"]["up"])
        stub = byName["dns-stub"]
        self.assertEqual(len(stub["sessions"]), 3)
        self.assertTrue(all(s["link"] for s in stub["sessions"]))
        self.assertEqual(sum(s["toTunnel"]["datagrams"] for s in stub["sessions"]), 3)
        self.assertEqual(stub["traffic"]["fromTunnel"]["datagrams"], 3)
        relayEnd = byName["dns-relay"]
        self.assertEqual({s["local"] is not None for s in relayEnd["sessions"]}, {True})

    def test_nothingAnswers(self) -> None:
        """
        Where nothing listens: status 1, one line saying that the C{/status} URL
        cannot be reached and why, and nothing on stdout.
        """
        port = freePort()
        done = statusCommand(f"http://127.0.0.1:{port}/")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr.strip(), f"udptunnel status: cannot reach "
                                              f"http://127.0.0.1:{port}/status: Connection "
                                              "refused")
        self.assertEqual(done.stdout, "")

    def test_somethingElseAnswers(self) -> None:
        """
        An HTTP server that is not udptunnel's, given as a bare C{HOST:PORT}:
        status 1, saying that its answer is not a udptunnel status.
        """
        class NotUs(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"<html>hello</html>")

            def log_message(self, *args: Any) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), NotUs)
        self.addCleanup(server.server_close)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, TIMEOUT)
        self.addCleanup(server.shutdown)
        done = statusCommand(f"127.0.0.1:{server.server_address[1]}")
        self.assertEqual(done.returncode, 1)
        self.assertIn("not a udptunnel status", lastLine(done.stderr))

    def test_badCommandLine(self) -> None:
        """
        An unknown option: status 1, the usage, and a last line naming the
        option; no traceback.
        """
        done = statusCommand("--frobnicate")
        self.assertEqual(done.returncode, 1)
        self.assertNotIn("Traceback", done.stderr)
        self.assertIn("Usage: python -m udptunnel status", done.stderr)
        self.assertIn("frobnicate", lastLine(done.stderr))


class CommandLineTunnelTests(FourTunnels):
    """
    C{python -m udptunnel status} against a tunnel given on the command
    line rather than in a config file.
    """
    def test_statusOfOneTunnel(self) -> None:
        """
        The tunnel of a command line (no name) has its status too, at the
        same endpoint as its metrics.
        """
        metrics = freePort()
        process = self.spawn("server", TWISTD, "-n", "--pidfile=", "udptunnel", "server",
                             "--udp", f"127.0.0.1:{self.seedUDP}",
                             "--tcp", f"tcp:{self.seedTCP}:interface=127.0.0.1",
                             "--metrics", f"tcp:{metrics}:interface=127.0.0.1")
        self.waitForOutput(process, "serving metrics on")
        done = statusCommand(f"http://127.0.0.1:{metrics}/metrics")
        self.assertEqual(done.returncode, 0, done)
        lines = done.stdout.splitlines()
        self.assertEqual(lines[:3], ["tunnel: (command line)", "  role:     server, single link",
                                     "  link:     down"])
        self.assertIn(f"  udp:      127.0.0.1:{self.seedUDP} <-> none learned yet (phantom)",
                      lines)
