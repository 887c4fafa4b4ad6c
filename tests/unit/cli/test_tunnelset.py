"""
L{udptunnel.cli.tunnelset}: a config file's tunnels in one process, on real
loopback sockets, and their reload.
"""

from __future__ import annotations

import socket
import textwrap
import threading
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from tests.support.fakes import captureLogEvents
from tests.support.net import TIMEOUT, Echo, Recorder, freePort, waitUntil
from tests.support.options import writeFile
from udptunnel import tap
from udptunnel.cli.tunnelset import TunnelSet
from udptunnel.ops.metrics import TunnelsCollector


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
        self.app = Recorder()
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

    def bindUDP(self, port: int) -> None:
        """
        Bind a UDP socket to C{port} on 127.0.0.1 (and close it): raises
        L{OSError} while a tunnel has the port.
        """
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with probe:
            probe.bind(("127.0.0.1", port))

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

        # Removed: the client (relay) is stopped, and its UDP port is free
        # again (taken while it runs).
        [relayUDP] = dict(top.tunnels())["relay"].udpSockets()
        relayPort = relayUDP.getHost().port
        self.assertRaises(OSError, self.bindUDP, relayPort)
        self.rewrite(self.seedText().split("[tunnel.relay]")[0])
        yield top.reload()
        self.assertEqual([name for name, _ in top.tunnels()], ["natbox"])
        self.bindUDP(relayPort)
        self.rewrite("")
        yield top.reload()  # an empty file is an error: nothing changes
        self.assertEqual([name for name, _ in top.tunnels()], ["natbox"])

    @inlineCallbacks
    def test_badFileChangesNothing(self) -> Any:
        """
        A reload of a file with an error logs one line, the file's error, and
        changes nothing: the same tunnels run on and carry datagrams.
        """
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
        """
        A reload that changes C{metrics} alone changes no tunnel, nor the
        endpoint, and says the endpoint stays as it was until a restart.
        """
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
        """
        The set's state is each tunnel's state after its name, in the file's
        order.
        """
        top = self.start()
        yield self.roundTrip(top)
        yield waitUntil(lambda: "natbox: link up" in top.state(), "the state", TIMEOUT)
        self.assertRegex(top.state(), r"^natbox: link up.*; relay: link up")
