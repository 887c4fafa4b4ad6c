"""
Several tunnels from a config file (C{udptunnel run --config FILE}): the
file's checks (the command line's own, errors naming file, tunnel and key),
the names in logs and metrics, and reloads on real loopback sockets.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import urllib.request
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from udptunnel import tap
from udptunnel.cli.configfile import ConfigError, describeConfig, loadConfig
from udptunnel.cli.tunnelset import TunnelSet
from udptunnel.ops.metrics import TunnelsCollector

from .fakes import captureLogEvents
from .test_integration import TIMEOUT, Collector, Echo, freePort, waitUntil
from .test_systemd import _waitForNotice as waitForNotice
from .test_systemd import notifySocket
from .test_twistd import STOPPED_BY_SIGTERM, TWISTD, TwistdTestCase, lastLine, receive


def writeFile(testCase: Any, text: str, name: str = "tunnels.toml") -> str:
    directory = tempfile.mkdtemp()
    testCase.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, name)
    with open(path, "w") as file:
        file.write(textwrap.dedent(text))
    return path


def load(testCase: Any, text: str) -> Any:
    return loadConfig(writeFile(testCase, text))


GOOD = """\
    metrics = "tcp:0:interface=127.0.0.1"

    [tunnel.seed]
    role = "server"
    udp = 5073
    tcp = "tcp:9999:interface=127.0.0.1"
    allow = ["127.0.0.0/8", "::1/128"]
    stats-interval = 0.5

    [tunnel.dns]
    role = "client"
    tcp = "127.0.0.1:853"
    udp = "127.0.0.1:5353"
    sessions = true
    max-sessions = 10
    """


class ParseTests(SynchronousTestCase):
    """
    A file is read table by table by the command line's own reader.
    """

    def test_goodFile(self) -> None:
        """
        Each table becomes its role's tunnel, with the same values the
        command line would give (numbers, lists, flags, defaults).
        """
        config = load(self, GOOD)
        self.assertEqual(list(config.tunnels), ["seed", "dns"])
        self.assertEqual(config.metrics, "tcp:0:interface=127.0.0.1")
        seed, dns = config.tunnels["seed"], config.tunnels["dns"]
        self.assertEqual((seed.role, dns.role), ("server", "client"))
        self.assertEqual(seed.config.udp.port, 5073)
        self.assertEqual(len(seed.config.allow), 2)
        self.assertEqual(seed.config.statsInterval, 0.5)
        self.assertTrue(dns.config.sessions)
        self.assertEqual(dns.config.maxSessions, 10)
        self.assertEqual(dns.config.sessionIdle, 180)  # the command line's default
        self.assertFalse(seed.config.sessions)

    def test_sameAsCommandLine(self) -> None:
        """
        A table and the command line it stands for give the same tunnel.
        """
        config = load(self, GOOD)
        line = tap.ClientOptions()
        line.parseOptions(["--tcp", "127.0.0.1:853", "--udp", "127.0.0.1:5353",
                           "--sessions", "--max-sessions", "10"])
        self.assertEqual(config.tunnels["dns"].config, replace(line.config, name="dns"))

    def test_plainTwisted(self) -> None:
        """
        C{plain-twisted} is the process's, at the top of the file.
        """
        self.assertFalse(load(self, GOOD).process().plainTwisted)
        self.assertTrue(load(self, "plain-twisted = true\n" + GOOD).process().plainTwisted)

    def test_falseFlag(self) -> None:
        config = load(self, """\
            [tunnel.a]
            role = "server"
            tcp = 9999
            udp = 5073
            sessions = false
            """)
        self.assertFalse(config.tunnels["a"].config.sessions)

    def test_equalTablesCompareEqual(self) -> None:
        """
        What a reload compares: a tunnel with the same table is the same.
        """
        one, two = load(self, GOOD), load(self, GOOD)
        self.assertEqual(one.tunnels["seed"], two.tunnels["seed"])
        changed = load(self, GOOD.replace("max-sessions = 10", "max-sessions = 11"))
        self.assertEqual(one.tunnels["seed"], changed.tunnels["seed"])
        self.assertNotEqual(one.tunnels["dns"], changed.tunnels["dns"])


#: Bad files and what their error must say (besides the file's path).
BAD = [
    ("not TOML", "[tunnel.a\n", ["not valid TOML"]),
    ("too large", "#" * (1024 * 1024 + 1), ["larger than 1024 KiB", "not a config file?"]),
    ("no tunnel", 'metrics = 9100\n', ["no tunnel", "[tunnel.NAME]"]),
    ("plain-twisted not a flag", 'plain-twisted = "yes"\n[tunnel.a]\nrole = "server"\ntcp = 1\n'
     'udp = 2\n', ["plain-twisted: expected true or false"]),
    ("plain-twisted in a tunnel", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\n'
     'plain-twisted = true\n', ["[tunnel.a] plain-twisted: one for the whole process"]),
    ("unknown top key", 'metric = 9100\n[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\n',
     ["unknown key 'metric'", "did you mean 'metrics'"]),
    ("unknown key", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nsesions = true\n',
     ["[tunnel.a]", "unknown key 'sesions'", "did you mean 'sessions'", "udptunnel server"]),
    ("no role", '[tunnel.a]\ntcp = 1\nudp = 2\n', ["[tunnel.a] role: expected", "missing"]),
    ("bad role", '[tunnel.a]\nrole = "relay"\ntcp = 1\n', ["[tunnel.a] role:", "'relay'"]),
    ("flag not bool", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nsessions = "yes"\n',
     ["[tunnel.a] sessions: expected true or false, not 'yes'"]),
    ("list for one", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = [2, 3]\n',
     ["[tunnel.a] udp: expected a string or a number, not a list"]),
    ("bool for value", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = true\n',
     ["[tunnel.a] udp: expected a string or a number, not true"]),
    ("bad value", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 70000\n',
     ["[tunnel.a] udp:", "70000"]),
    ("bad number", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nkeepalive-count = 0\n',
     ["[tunnel.a] keepalive-count:", "from 1 to"]),
    ("bad list item", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nallow = ["10.0.0.0/33"]\n',
     ["[tunnel.a] allow:"]),
    ("required missing", '[tunnel.a]\nrole = "client"\nudp = 2\n',
     ["[tunnel.a] tcp is required"]),
    ("metrics in a tunnel", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nmetrics = 9100\n',
     ["[tunnel.a] metrics: one for the whole process", "top of the file"]),
    ("bad metrics", 'metrics = "nope:x"\n[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\n',
     ["metrics: 'nope:x' is not a port, HOST:PORT or an endpoint description"]),
    ("bad name", '[tunnel."a b"]\nrole = "server"\ntcp = 1\nudp = 2\n',
     ['[tunnel.a b]', "letters, digits"]),
    ("combination", '[tunnel.a]\nrole = "server"\ntcp = 1\nsessions = true\n',
     ["[tunnel.a] server sessions needs peer"]),
    ("help is no key", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nhelp = true\n',
     ["unknown key 'help'"]),
    ("a name with control characters", '[tunnel."a\\u001b[2J"]\nrole = "server"\n',
     ["[tunnel.a\\x1b[2J]", "letters, digits"]),
    ("two tunnels on one UDP port",
     ('[tunnel.a]\nrole = "server"\ntcp = 9001\nudp = "127.0.0.1:5073"\n'
     '[tunnel.b]\nrole = "client"\ntcp = "127.0.0.1:9"\nudp = "127.0.0.1:5073"\n'
     'peer = "127.0.0.1:53"\n'),
     ["tunnel a and tunnel b would both bind UDP 127.0.0.1:5073"]),
    ("a wildcard and an address on one UDP port",
     ('[tunnel.a]\nrole = "server"\ntcp = 9001\nudp = 5073\n'
     '[tunnel.b]\nrole = "server"\ntcp = 9002\nudp = "127.0.0.1:5073"\n'),
     ["tunnel a and tunnel b would both bind UDP 0.0.0.0:5073"]),
    ("two servers on one TCP port",
     ('[tunnel.a]\nrole = "server"\ntcp = "tcp:9001:interface=127.0.0.1"\nudp = 5073\n'
     '[tunnel.b]\nrole = "server"\ntcp = "tcp:9001"\nudp = 5074\n'),
     ["tunnel a and tunnel b would both bind TCP 127.0.0.1:9001"]),
    ("the metrics on a tunnel's TCP port",
     ('metrics = 9001\n[tunnel.a]\nrole = "server"\ntcp = "tcp:9001:interface=127.0.0.1"\n'
     'udp = 5073\n'),
     ["the metrics endpoint and tunnel a would both bind TCP 127.0.0.1:9001"]),
]


class BadFileTests(SynchronousTestCase):
    """
    Every check of the command line applies to the file, and its error
    names the file, the tunnel and the key.
    """

    def test_badFiles(self) -> None:
        for what, text, expected in BAD:
            path = writeFile(self, text)
            with self.assertRaises(ConfigError, msg=what) as caught:
                loadConfig(path)
            message = str(caught.exception)
            self.assertTrue(message.startswith(path + ": "), (what, message))
            self.assertNotIn("\n", message, what)
            for part in expected:
                self.assertIn(part, message, what)

    def test_portsThatDoNotClash(self) -> None:
        """
        Different ports, different addresses, or a TCP and a UDP port of
        the same number are no clash; nor are ephemeral ports.
        """
        path = writeFile(self, (
            '[tunnel.a]\nrole = "server"\ntcp = "tcp:5073:interface=127.0.0.1"\n'
            'udp = "127.0.0.1:5073"\n'
            '[tunnel.b]\nrole = "server"\ntcp = "tcp:5074:interface=127.0.0.1"\n'
            'udp = "127.0.0.2:5073"\n'
            '[tunnel.c]\nrole = "client"\ntcp = "127.0.0.1:5073"\nudp = "127.0.0.1:0"\n'
            'peer = "127.0.0.1:53"\n'
            '[tunnel.d]\nrole = "client"\ntcp = "127.0.0.1:5073"\nudp = "127.0.0.1:0"\n'
            'peer = "127.0.0.1:53"\n'))
        self.assertEqual(list(loadConfig(path).tunnels), ["a", "b", "c", "d"])

    def test_missingFile(self) -> None:
        path = os.path.join(os.path.dirname(writeFile(self, "")), "missing.toml")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(str(caught.exception), f"{path}: cannot read: No such file or directory")

    def test_sameCheckAsCommandLine(self) -> None:
        """
        The file's error is the command line's, in the file's words.
        """
        with self.assertRaises(usage.UsageError) as line:
            tap.ClientOptions().parseOptions(["--tcp", "127.0.0.1:1", "--peer", "127.0.0.1:2",
                                              "--sessions"])
        path = writeFile(self, '[tunnel.c]\nrole = "client"\ntcp = "127.0.0.1:1"\n'
                               'peer = "127.0.0.1:2"\nsessions = true\n')
        with self.assertRaises(ConfigError) as file:
            loadConfig(path)
        self.assertIn("client --sessions opens a connection per UDP source", str(line.exception))
        self.assertEqual(str(file.exception),
                         f"{path}: [tunnel.c] " + str(line.exception).replace("--", ""))

    def test_optionsRefuseBadFile(self) -> None:
        """
        C{run --config} with a bad file: the option parser raises the
        file's error (twistd turns it into one line and status 1).
        """
        path = writeFile(self, '[tunnel.a]\nrole = "server"\n')
        with self.assertRaises(ConfigError):
            tap.Options().parseOptions(["run", "--config", path])
        with self.assertRaises(usage.UsageError):
            tap.Options().parseOptions(["run"])


def runOptions(path: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(["run", "--config", path])
    return options


class ReloadTests(TestCase):
    """
    A config file's tunnels in one process, on real loopback sockets:
    what a reload stops, starts, restarts, and what it leaves alone.
    """

    timeout = 60

    def setUp(self) -> None:
        self.pop = Echo()
        self.popPort = reactor.listenUDP(0, self.pop, interface="127.0.0.1")
        self.addCleanup(self.popPort.stopListening)
        self.app = Collector()
        self.appPort = reactor.listenUDP(0, self.app, interface="127.0.0.1")
        self.addCleanup(self.appPort.stopListening)
        self.udp, self.tcp = freePort(kind=socket.SOCK_DGRAM), freePort()
        self.path = writeFile(self, self.seedText())
        self.events = captureLogEvents(self)

    def seedText(self, extra: str = "") -> str:
        """
        The seed scenario in one file: the server (phantom) and the client
        (fixed peer, the POP), plus C{extra} tables.
        """
        return textwrap.dedent(f"""\
            [tunnel.natbox]
            role = "server"
            udp = "127.0.0.1:{self.udp}"
            tcp = "tcp:{self.tcp}:interface=127.0.0.1"

            [tunnel.relay]
            role = "client"
            tcp = "127.0.0.1:{self.tcp}"
            udp = "127.0.0.1:0"
            peer = "127.0.0.1:{self.popPort.getHost().port}"
            """) + textwrap.dedent(extra)

    def withServer(self, name: str, udp: int) -> str:
        """
        The seed scenario's file and one more server, C{name}, on UDP port
        C{udp} (and an ephemeral TCP port).
        """
        return self.seedText(f"""
            [tunnel.{name}]
            role = "server"
            udp = "127.0.0.1:{udp}"
            tcp = "tcp:0:interface=127.0.0.1"
            """)

    def rewrite(self, text: str) -> None:
        with open(self.path, "w") as file:
            file.write(text)

    def start(self) -> TunnelSet:
        top = tap.makeService(runOptions(self.path), reactor)
        assert isinstance(top, TunnelSet)
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        return top

    def messages(self) -> list[str]:
        return [formatEvent(e) or "" for e in self.events]

    @inlineCallbacks
    def roundTrip(self, top: TunnelSet) -> Any:
        yield self.app.probe(("127.0.0.1", self.udp))

    @inlineCallbacks
    def test_reloadKeepsUnchangedTunnels(self) -> Any:
        """
        A reload that adds a tunnel and changes nothing else starts the new
        one and leaves the others alone: the same services, the same link,
        and the phantom peer still known, so the POP's datagram after the
        reload reaches the application, which sent nothing since.
        """
        top = self.start()
        yield self.roundTrip(top)
        before = dict(top.tunnels())
        natbox = before["natbox"]
        link = natbox.link  # type: ignore[attr-defined]
        self.assertIsNotNone(link)
        extraUDP = freePort(kind=socket.SOCK_DGRAM)
        self.rewrite(self.withServer("extra", extraUDP))
        yield top.reload()
        after = dict(top.tunnels())
        self.assertEqual(list(after), ["natbox", "relay", "extra"])
        self.assertIs(after["natbox"], natbox)
        self.assertIs(after["relay"], before["relay"])
        self.assertIs(natbox.link, link)  # type: ignore[attr-defined]
        self.assertTrue(after["extra"].running)
        self.assertIn("reload: starting extra", self.messages())

        # The POP speaks first after the reload: the phantom peer is kept.
        self.pop.send(b"after reload", next(iter(self.pop.sources)))
        yield self.app.waitFor(1)
        self.assertEqual(self.app.received[0], (b"after reload", ("127.0.0.1", self.udp)))

    @inlineCallbacks
    def test_reloadRestartsChangedTunnelOnItsPorts(self) -> Any:
        """
        A changed tunnel is stopped, then started again on the same ports
        (once the old sockets are closed); a removed one is stopped and its
        port freed; the unchanged one is not touched.
        """
        top = self.start()
        yield self.roundTrip(top)
        relay = dict(top.tunnels())["relay"]
        natbox = dict(top.tunnels())["natbox"]
        self.rewrite(self.seedText().replace('[tunnel.relay]', '[tunnel.relay]\n'
                                             'stats-interval = 60'))
        yield top.reload()
        now = dict(top.tunnels())
        self.assertIsNot(now["relay"], relay)
        self.assertFalse(relay.running)
        self.assertIs(now["natbox"], natbox)
        self.assertIn("reload: restarting relay", self.messages())
        yield self.roundTrip(top)  # the new client connects to the same server

        # Now the server changes (same UDP and TCP ports): restarted in place.
        self.rewrite(self.seedText().replace('[tunnel.natbox]', '[tunnel.natbox]\n'
                                             'stats-interval = 60'))
        yield top.reload()
        self.assertIsNot(dict(top.tunnels())["natbox"], natbox)
        yield self.roundTrip(top)

        # Removed: the server's UDP port is free again.
        self.rewrite(self.seedText().split("[tunnel.relay]")[0])
        yield top.reload()
        self.assertEqual([name for name, _ in top.tunnels()], ["natbox"])
        self.rewrite("")
        yield top.reload()  # an empty file is an error: nothing changes
        self.assertEqual([name for name, _ in top.tunnels()], ["natbox"])

    @inlineCallbacks
    def test_badFileChangesNothing(self) -> Any:
        top = self.start()
        yield self.roundTrip(top)
        before = dict(top.tunnels())
        self.rewrite(self.seedText() + '\n[tunnel.broken]\nrole = "server"\n')
        yield top.reload()
        self.assertEqual(dict(top.tunnels()), before)
        errors = [m for m in self.messages() if m.startswith("reload: ")]
        self.assertEqual(errors, [(f"reload: {self.path}: [tunnel.broken] tcp is required; "
                                   "nothing changed")])
        yield self.roundTrip(top)

    @inlineCallbacks
    def test_tunnelThatCannotStart(self) -> Any:
        """
        At a reload, a new tunnel whose port is taken is logged and left
        out; the others run on; a later reload tries it again.
        """
        top = self.start()
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        self.rewrite(self.withServer("late", port))
        yield top.reload()
        self.assertEqual([name for name, _ in top.tunnels()], ["natbox", "relay"])
        self.assertTrue(any(m.startswith("reload: tunnel late not started: ")
                            and f"tunnel late: cannot listen on 127.0.0.1:{port}" in m
                            for m in self.messages()), self.messages())
        yield self.roundTrip(top)
        busy.close()
        yield top.reload()
        self.assertEqual([name for name, _ in top.tunnels()], ["natbox", "relay", "late"])

    @inlineCallbacks
    def test_noReloadOnceStopping(self) -> Any:
        """
        A reload that arrives while the process stops starts nothing.
        """
        top = self.start()
        yield top.stopService()
        self.rewrite(self.seedText('[tunnel.late]\nrole = "server"\ntcp = 0\nudp = 0\n'))
        yield top.reload()
        self.assertEqual([name for name, _ in top.tunnels()], ["natbox", "relay"])
        self.assertFalse(any(service.running for _, service in top.tunnels()))

    @inlineCallbacks
    def test_readOffTheLoop(self) -> Any:
        """
        A reload whose read blocks (here: a loader that waits) leaves the
        event loop free: the tunnels carry round trips meanwhile; the read
        is given up at the deadline, with one line, and nothing changes; a
        reload asked for while it is still stuck says so and reads nothing.
        """
        from udptunnel.cli import tunnelset

        self.patch(tunnelset, "RELOAD_DEADLINE", 1.0)
        top = self.start()
        yield self.roundTrip(top)
        release = threading.Event()
        self.addCleanup(release.set)
        load = top._load
        top._load = lambda: (release.wait(30), load())[1]  # type: ignore[method-assign]
        before = dict(top.tunnels())
        reloading = top.reload()
        yield self.roundTrip(top)
        self.assertFalse(reloading.called)
        yield reloading
        self.assertEqual(dict(top.tunnels()), before)
        self.assertIn(f"reload: {self.path}: not read within 1 s (a FIFO nobody writes? a "
                      "hung mount?); nothing changed", self.messages())
        yield top.reload()
        self.assertIn(f"reload: {self.path}: the last read of the file has not returned (a "
                      "FIFO nobody writes? a hung mount?); nothing changed", self.messages())
        release.set()
        yield deferLater(reactor, 0.2, lambda: None)
        yield top.reload()  # the stuck read returned: reloads read again
        self.assertIn("reload: no tunnel changed", self.messages())

    @inlineCallbacks
    def test_metricsChangeWaitsForRestart(self) -> Any:
        top = self.start()
        self.rewrite('metrics = "tcp:0:interface=127.0.0.1"\n' + self.seedText())
        yield top.reload()
        self.assertIsNone(top.config.metrics)
        self.assertIn("reload: metrics changed from none to tcp:0:interface=127.0.0.1: the "
                      "endpoint stays none until a restart", self.messages())
        self.assertIn("reload: no tunnel changed", self.messages())

    @inlineCallbacks
    def test_namesInLogsAndMetrics(self) -> Any:
        """
        Every line of a tunnel's carries its name (the log namespace); the
        metrics carry it as a C{tunnel} label, the build once.
        """
        top = self.start()
        yield self.roundTrip(top)
        namespaces = {e.get("log_namespace") for e in self.events
                      if "link up" in (formatEvent(e) or "")}
        self.assertEqual(namespaces, {"udptunnel.natbox", "udptunnel.relay"})
        registry = CollectorRegistry(auto_describe=True)
        registry.register(TunnelsCollector(top.tunnels))
        text = generate_latest(registry).decode()
        self.assertIn('udptunnel_link_up{tunnel="natbox"} 1.0', text)
        self.assertIn('udptunnel_link_up{tunnel="relay"} 1.0', text)
        self.assertIn('udptunnel_peer_info{address="127.0.0.1",mode="phantom",tunnel="natbox"}',
                      text)
        self.assertEqual(text.count("# TYPE udptunnel_link_up "), 1)
        self.assertEqual(text.count("udptunnel_build_info{"), 1)
        self.assertIn('udptunnel_connect_attempts_total{tunnel="relay"}', text)
        self.assertNotIn('udptunnel_connect_attempts_total{tunnel="natbox"}', text)

    @inlineCallbacks
    def test_stateNamesTunnels(self) -> Any:
        top = self.start()
        yield self.roundTrip(top)
        yield waitUntil(lambda: "natbox: link up" in top.state(), "the state", TIMEOUT)
        self.assertRegex(top.state(), r"^natbox: link up.*; relay: link up")


class FourTunnels(TwistdTestCase):
    """
    A config file for the installed twistd: the seed scenario's two ends
    and a DNS-like tunnel with sessions (both ends), in one process.
    """

    def writeConfig(self, text: str) -> str:
        path = self.path("tunnels.toml")
        with open(path, "w") as file:
            file.write(textwrap.dedent(text))
        return path

    def fourTunnels(self, dnsSessions: int = 1024) -> str:
        return f"""\
            metrics = "tcp:{self.metrics}:interface=127.0.0.1"

            [tunnel.natbox]
            role = "server"
            udp = "127.0.0.1:{self.seedUDP}"
            tcp = "tcp:{self.seedTCP}:interface=127.0.0.1"
            stats-interval = 1

            [tunnel.relay]
            role = "client"
            tcp = "127.0.0.1:{self.seedTCP}"
            udp = "127.0.0.1:{self.relayUDP}"
            peer = "127.0.0.1:{self.pop.getsockname()[1]}"

            [tunnel.dns-stub]
            role = "client"
            tcp = "127.0.0.1:{self.dnsTCP}"
            udp = "127.0.0.1:{self.dnsUDP}"
            sessions = true

            [tunnel.dns-relay]
            role = "server"
            tcp = "tcp:{self.dnsTCP}:interface=127.0.0.1"
            udp = "127.0.0.1:0"
            peer = "127.0.0.1:{self.resolver.getsockname()[1]}"
            sessions = true
            max-sessions = {dnsSessions}
            """

    def setUp(self) -> None:
        super().setUp()
        self.pop, self.resolver = self.udpSocket(), self.udpSocket()
        self.metrics, self.seedTCP, self.dnsTCP = freePort(), freePort(), freePort()
        self.seedUDP, self.relayUDP, self.dnsUDP = (freePort(kind=socket.SOCK_DGRAM)
                                                    for _ in range(3))

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics",
                                    timeout=TIMEOUT) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def startFourTunnels(self) -> tuple[str, subprocess.Popen[bytes], socket.socket]:
        """
        The installed twistd running L{fourTunnels}, once the seed tunnel
        relayed a round trip and the DNS tunnel three queries: the config
        file, the process, and the seed's application socket.
        """
        config = self.writeConfig(self.fourTunnels())
        process = self.spawn("run", TWISTD, "-n", "--pidfile=", "udptunnel", "run",
                             "--config", config)
        self.waitForOutput(process, "4 tunnel(s) from")
        app = self.udpSocket()
        self.assertRelays(app, self.pop, self.seedUDP, self.relayUDP)
        self.queries(3)
        return config, process, app

    def queries(self, count: int) -> None:
        """
        C{count} applications, each on its own port, ask the "resolver"
        through the DNS tunnel, which answers each; every one gets its own
        answer (one session each).
        """
        apps = [self.udpSocket() for _ in range(count)]
        for index, app in enumerate(apps):
            app.sendto(b"query %d" % index, ("127.0.0.1", self.dnsUDP))
        for _ in range(count):
            got = receive(self.resolver, TIMEOUT)
            assert got is not None, "a query never reached the resolver"
            self.resolver.sendto(b"answer to " + got[0], got[1])
        for index, app in enumerate(apps):
            self.assertEqual(receive(app, TIMEOUT),
                             (b"answer to query %d" % index, ("127.0.0.1", self.dnsUDP)))



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


CONTRIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib")
#: The example files' host names, and what they resolve to in the tests.
HOSTS = {"natbox.example.net": "127.0.0.1", "relay.example.net": "127.0.0.1",
         "pop.example.net": "127.0.0.1"}


class ExampleTests(SynchronousTestCase):
    """
    The example files of C{contrib/config}, which README.rst shows.
    """

    def example(self, name: str) -> tuple[str, str]:
        with open(os.path.join(CONTRIB, "config", name)) as file:
            text = file.read()
        local = text
        for host, address in HOSTS.items():
            local = local.replace(host, address)
        return text, local

    def test_inReadme(self) -> None:
        with open(os.path.join(os.path.dirname(CONTRIB), "README.rst")) as file:
            readme = file.read()
        for name in ("natbox.toml", "relay.toml"):
            text, _ = self.example(name)
            indented = "\n".join("    " + line if line else "" for line in text.splitlines())
            self.assertIn(indented, readme, name)

    def test_commentsSayTheCommandLine(self) -> None:
        """
        Each tunnel's C{#   = udptunnel ...} comment is the command line
        C{--check} says its table stands for; and both files parse.
        """
        for name in ("natbox.toml", "relay.toml"):
            _, local = self.example(name)
            said = [line.split("=", 1)[1].strip() for line in local.splitlines()
                    if line.startswith("#   = udptunnel ")]
            config = loadConfig(writeFile(self, local))
            described = [line.split(": ", 1)[1]
                         for line in describeConfig(config).splitlines()[1:]]
            self.assertEqual(said, described, name)
            self.assertEqual(len(said), 2)

    def test_unitReloads(self) -> None:
        with open(os.path.join(CONTRIB, "systemd", "udptunnel-run.service")) as file:
            unit = file.read().replace("\\\n", " ")
        values = dict(line.split("=", 1) for line in unit.splitlines()
                      if "=" in line and not line.startswith("#"))
        self.assertIn("udptunnel run --config /etc/udptunnel/natbox.toml", values["ExecStart"])
        self.assertEqual(values["ExecReload"], "/bin/kill -USR2 $MAINPID")
        self.assertEqual(values["Type"], "notify")

    def test_workerTemplate(self) -> None:
        """
        The workers' template unit: its command line parses (instance 1),
        shares the port, and its instances run as one user.
        """
        with open(os.path.join(CONTRIB, "systemd", "udptunnel-client@.service")) as file:
            unit = file.read().replace("\\\n", " ")
        values = dict(line.split("=", 1) for line in unit.splitlines()
                      if "=" in line and not line.startswith("#"))
        argv = values["ExecStart"].replace("%i", "1").replace("relay.example.net", "127.0.0.1")
        words = argv.split()
        options = tap.Options()
        options.parseOptions(words[words.index("udptunnel") + 1:])
        client = options.subOptions
        self.assertTrue(client["sessions"] and client["reuse-port"])
        self.assertEqual(client["metrics"], "tcp:9101:interface=127.0.0.1")
        self.assertEqual(values["User"], "udptunnel-client")
