"""
The status of running tunnels: C{/status} on the metrics endpoint and
C{python -m udptunnel status}, from fakes to the installed twistd.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from udptunnel.cli.statuscmd import duration, render, size, statusURL
from udptunnel.ops.status import statusDocument
from udptunnel.tunnel.single import Relay

from .fakes import FakeLink, FakeUDPTransport
from .test_config import FourTunnels
from .test_twistd import TIMEOUT, TWISTD, freePort, lastLine

APP = ("127.0.0.1", 40001)


def phantomRelay() -> tuple[Relay, Clock, FakeLink]:
    clock = Clock()
    relay = Relay(clock)
    relay.udpStarted(FakeUDPTransport())
    link = FakeLink("192.0.2.1:40000")
    clock.advance(100)
    relay.linkMade(link)
    relay.datagramsReceived([(b"hello", APP), (b"again", APP)])
    relay.framesReceived(link, [b"reply"])
    clock.advance(61.5)
    return relay, clock, link


class DocumentTests(SynchronousTestCase):
    def test_singleLink(self) -> None:
        relay, _clock, _link = phantomRelay()
        relay.datagramsReceived([(b"x", ("127.0.0.1", 40002))])  # a flip of the phantom
        (tunnel,) = statusDocument([(None, relay)])["tunnels"]
        self.assertEqual(tunnel["name"], None)
        self.assertEqual((tunnel["role"], tunnel["kind"]), ("server", "single-link"))
        self.assertEqual(tunnel["link"], {"up": True, "remote": "192.0.2.1:40000", "age": 61.5})
        self.assertEqual(tunnel["udp"]["peer"], "127.0.0.1:40002")
        self.assertEqual(tunnel["udp"]["peerMode"], "phantom")
        self.assertEqual(tunnel["traffic"]["toTunnel"], {"datagrams": 3, "bytes": 11})
        self.assertEqual(tunnel["traffic"]["fromTunnel"], {"datagrams": 1, "bytes": 5})
        self.assertEqual(tunnel["links"]["up"], 1)
        self.assertEqual(tunnel["drops"]["no-link"], 0)

    def test_linkDownAndDrops(self) -> None:
        relay, _clock, link = phantomRelay()
        relay.linkLost(link, Failure(ConnectionDone()))
        relay.datagramsReceived([(b"lost", APP)])
        (tunnel,) = statusDocument([("seed", relay)])["tunnels"]
        self.assertEqual(tunnel["name"], "seed")
        self.assertEqual(tunnel["link"], {"up": False})
        self.assertEqual(tunnel["drops"]["no-link"], 1)
        self.assertEqual(tunnel["links"]["lost"], 1)
        self.assertEqual(json.loads(json.dumps(tunnel)), tunnel)

    def test_fixedPeer(self) -> None:
        relay = Relay(Clock(), udpPeer=("192.0.2.53", 5072), role="client")
        relay.udpStarted(FakeUDPTransport())
        (tunnel,) = statusDocument([(None, relay)])["tunnels"]
        self.assertEqual(tunnel["udp"]["peer"], "192.0.2.53:5072")
        self.assertEqual(tunnel["udp"]["peerMode"], "fixed")
        self.assertNotIn("refused", tunnel["links"])  # a client refuses nobody


class RenderTests(SynchronousTestCase):
    def test_table(self) -> None:
        relay, _, _ = phantomRelay()
        text = render(statusDocument([("seed", relay)]))
        lines = text.splitlines()
        self.assertEqual(lines[0], "tunnel: seed")
        self.assertEqual(lines[1], "  role:     server, single link")
        self.assertEqual(lines[2], "  link:     up, 192.0.2.1:40000, for 1 min 1 s")
        self.assertIn("  transfer: 10 B (2 datagrams) into the tunnel, 5 B (1 datagram) "
                      "out of it", lines)
        self.assertEqual(lines[-1], "  drops:    none")
        # Keys aligned: every value starts in the same column.
        self.assertEqual({line.index(":") + 1 + len(line.split(":", 1)[1]) -
                          len(line.split(":", 1)[1].lstrip()) for line in lines[1:]}, {12})

    def test_sessionsTable(self) -> None:
        document = {"tunnels": [{
            "name": "dns", "role": "client", "kind": "sessions",
            "udp": {"local": "127.0.0.1:53", "peer": None, "peerMode": "per-session"},
            "traffic": {"toTunnel": {"datagrams": 2, "bytes": 2048},
                        "fromTunnel": {"datagrams": 2, "bytes": 3 << 20}},
            "links": {"up": 2, "lost": 0, "failed": 0, "sessionsOpen": 2}, "pending": 0,
            "drops": {"no-link": 0, "queue-full": 4},
            "sessions": [
                {"peer": "127.0.0.1:40001", "link": "192.0.2.1:9953", "age": 3725.0,
                 "toTunnel": {"datagrams": 1, "bytes": 1024},
                 "fromTunnel": {"datagrams": 1, "bytes": 3 << 20}},
                {"peer": "127.0.0.1:40002", "link": None, "age": 0.25,
                 "toTunnel": {"datagrams": 1, "bytes": 1024},
                 "fromTunnel": {"datagrams": 0, "bytes": 0}},
            ]}]}
        lines = render(document).splitlines()
        self.assertIn("  role:     client, sessions (2 open)", lines)
        self.assertIn("  udp:      127.0.0.1:53, a session per source", lines)
        self.assertIn("  drops:    queue-full 4", lines)
        table = lines[lines.index("") + 1:]
        self.assertEqual(len(table), 3)
        self.assertTrue(table[0].startswith("  session peer     link"))
        self.assertIn("1 h 2 min 5 s", table[1])
        self.assertIn("3.00 MiB (1 datagram)", table[1])
        self.assertIn("(connecting)", table[2])
        # Columns aligned: the link column starts at the same place in each row.
        self.assertEqual(len({row.index(part) for row, part in zip(
            table, ("link", "192.0.2.1", "(connecting)"))}), 1)

    def test_units(self) -> None:
        self.assertEqual([size(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 30)],
                         ["0 B", "1023 B", "1.00 KiB", "1.50 KiB", "5.00 MiB", "3.00 GiB"])
        self.assertEqual([duration(s) for s in (0.25, 59.9, 60, 3725, 90061)],
                         ["0.2 s", "59.9 s", "1 min 0 s", "1 h 2 min 5 s", "1 d 1 h 1 min 1 s"])
        self.assertEqual(statusURL("http://127.0.0.1:9100/"), "http://127.0.0.1:9100/status")
        self.assertEqual(statusURL("http://h:9100/metrics"), "http://h:9100/status")
        self.assertEqual(statusURL("http://h:9100/status"), "http://h:9100/status")


class CommandLineTests(SynchronousTestCase):
    """
    C{python -m udptunnel [status]}'s command line, in-process: help and
    version exit 0, a bad target is a usage error (status 1) and never a
    traceback, and what the endpoint says reaches the terminal escaped.
    """

    def udptunnel(self, *argv: str) -> tuple[int | str | None, str, str]:
        """
        C{python -m udptunnel ARGV}: its exit status, output and errors.
        """
        from udptunnel.__main__ import main

        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            status: int | str | None = main(list(argv))
        except SystemExit as e:
            status = e.code
        return status, out.getvalue(), err.getvalue()

    def test_helpAndVersion(self) -> None:
        from udptunnel import __version__

        for argv in (["--help"], ["status", "--help"]):
            status, out, _ = self.udptunnel(*argv)
            self.assertIn(status, (0, None), argv)
            self.assertIn("python -m udptunnel status", out)
        for argv in (["--version"], ["status", "--version"]):
            status, out, _ = self.udptunnel(*argv)
            self.assertIn(status, (0, None), argv)
            self.assertEqual(out, f"udptunnel {__version__}\n", argv)

    def test_noCommand(self) -> None:
        for argv in ([], ["frobnicate"]):
            status, _, err = self.udptunnel(*argv)
            self.assertEqual(status, 1)
            self.assertIn("Usage: python -m udptunnel status", err)

    def test_badTargets(self) -> None:
        """
        Each is a usage error naming the target, with status 1.
        """
        for target, fragment in (("http://[::1", "not a valid URL"),
                                 ("http://127.0.0.1:abc/", "not a valid URL"),
                                 ("ftp://h/", "not an http:// URL"),
                                 ("70000", "65535"), ("h:p:q", "HOST:PORT"),
                                 ("http://:9100/", "with a host")):
            status, out, err = self.udptunnel("status", target)
            self.assertEqual(status, 1, target)
            self.assertIn(fragment, lastLine(err), target)
            self.assertNotIn("Traceback", err)
            self.assertEqual(out, "")

    def test_exactOptionNames(self) -> None:
        status, _, err = self.udptunnel("status", "--jso", "9100")
        self.assertEqual(status, 1)
        self.assertIn("did you mean --json?", err)

    def test_targets(self) -> None:
        """
        A bare port is on 127.0.0.1 (where C{--metrics PORT} listens), as is
        C{HOST:PORT}'s host; a URL stays as it is.
        """
        from udptunnel.cli.statuscmd import endpointURL

        self.assertEqual(endpointURL("9100"), "http://127.0.0.1:9100/")
        self.assertEqual(endpointURL("relay:9100"), "http://relay:9100/")
        self.assertEqual(endpointURL("[::1]:9100"), "http://[::1]:9100/")
        self.assertEqual(endpointURL("http://h:9/metrics"), "http://h:9/metrics")

    def test_renderEscapes(self) -> None:
        """
        Control characters in the document (a PROXY header's address, a
        tunnel name) reach the terminal as escapes, never raw.
        """
        relay, _, link = phantomRelay()
        link.remote = "[::1%\x1b[2J\x1b[31mESC]:5555"
        text = render(statusDocument([("seed\nFORGED", relay)]))
        self.assertNotIn("\x1b", text)
        self.assertIn("[::1%\\x1b[2J\\x1b[31mESC]:5555", text)
        self.assertIn("tunnel: seed\\nFORGED", text)


def statusCommand(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "udptunnel", "status", *argv],
                          capture_output=True, text=True, timeout=60, check=False)


class CommandTests(FourTunnels):
    """
    C{python -m udptunnel status} against the installed twistd running a
    config file with a few sessions.
    """

    def test_statusOfLiveDaemon(self) -> None:
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
        port = freePort()
        done = statusCommand(f"http://127.0.0.1:{port}/")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr.strip(), f"udptunnel status: cannot reach "
                                              f"http://127.0.0.1:{port}/status: Connection "
                                              "refused")
        self.assertEqual(done.stdout, "")

    def test_somethingElseAnswers(self) -> None:
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
        done = statusCommand("--frobnicate")
        self.assertEqual(done.returncode, 1)
        self.assertNotIn("Traceback", done.stderr)
        self.assertIn("Usage: python -m udptunnel status", done.stderr)
        self.assertIn("frobnicate", lastLine(done.stderr))



class CommandLineTunnelTests(FourTunnels):
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
