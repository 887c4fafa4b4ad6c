"""
L{udptunnel.cli.statuscmd}: C{python -m udptunnel status}, its command line
and what it prints.
"""

from __future__ import annotations

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import phantomRelay
from tests.support.processes import lastLine
from udptunnel.cli.statuscmd import duration, render, size, statusURL
from udptunnel.ops.status import statusDocument


class RenderTests(SynchronousTestCase):
    """
    L{render}: a status document as text, and the units it reads in.
    """

    def test_table(self) -> None:
        """
        A single-link tunnel is a block headed by its name: its role, its link
        (the remote address and for how long), its transfer both ways, and its
        drops last; every value starts in the same column.
        """
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

    def test_route(self) -> None:
        """
        A tunnel with C{--fwmark} or C{--bind-device} shows them on a line
        of their own; one without has no such line.
        """
        relay, _, _ = phantomRelay()
        self.assertNotIn("route:", render(statusDocument([("seed", relay)])))
        relay.fwmark, relay.bindDevice = 51820, "eth1"
        document = statusDocument([("seed", relay)])
        (tunnel,) = document["tunnels"]
        self.assertEqual((tunnel["fwmark"], tunnel["bindDevice"]), (51820, "eth1"))
        self.assertIn("  route:    fwmark 51820, device eth1", render(document).splitlines())

    def test_sessionsTable(self) -> None:
        """
        A tunnel with sessions shows how many are open, a session per source,
        only the drops that happened, then a table of its sessions, a row each,
        columns aligned, C{(connecting)} for a session with no link yet.
        """
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
        """
        Sizes read in binary units, with two decimals past bytes; durations to
        the second in days, hours and minutes, or to a tenth under a minute; an
        endpoint's root, C{/metrics} or C{/status} URL gives its C{/status} URL.
        """
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
        """
        C{--help} and C{--version}, alone or after C{status}, print the usage or
        the version, and exit with status 0.
        """
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
        """
        No command, or one that does not exist, prints the usage to standard
        error, and exits with status 1.
        """
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
        """
        A prefix of an option is refused, offering its whole name, with status 1.
        """
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
