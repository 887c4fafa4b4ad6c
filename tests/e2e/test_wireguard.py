"""
A WireGuard full tunnel through udptunnel, as the how-to sets it up
(docs/howto/wireguard-full-tunnel.rst), in network namespaces this test
makes: a client host whose WireGuard (C{wg-quick}, C{AllowedIPs =
0.0.0.0/0}) routes everything unmarked into the VPN, a router that drops
UDP, and a relay host with the WireGuard server behind C{udptunnel server
--sessions}.  The relay is reachable only through the client's default
route, so the tunnel's own link must carry WireGuard's mark to get there.

Every address here exists only inside the namespaces the test makes
(198.18.0.0/15, for benchmarks, and 10.99.0.0/24 inside the VPN).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

from tests.support.ends import FaultTestCase
from tests.support.net import waitFor
from tests.support.processes import TWISTD
from tests.support.system import Topology, run, skipUnlessAble, whyNoNamespaces

CLIENT_ADDRESS = "198.18.1.1"
ROUTER_CLIENT_SIDE = "198.18.1.2"
ROUTER_RELAY_SIDE = "198.18.2.1"
RELAY_ADDRESS = "198.18.2.2"
VPN_SERVER = "10.99.0.1"
VPN_CLIENT = "10.99.0.2"
#: WireGuard's own mark, as wg-quick sets it for a full tunnel.
MARK = 51820
#: The pings that must all come back with the mark.
PINGS = 200


def whyNoWireGuard() -> str | None:
    """
    Why WireGuard cannot be set up here (its tools, a TUN device for the
    userspace implementation, ping), or C{None}.
    """
    for tool, package in (("wg", "wireguard-tools"), ("wg-quick", "wireguard-tools"),
                          ("ping", "iputils-ping"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({package})"
    if shutil.which("wireguard-go") is None and not os.path.exists("/sys/module/wireguard"):
        return "neither the wireguard kernel module nor wireguard-go is here"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun for wireguard-go"
    return None


class FullTunnelTests(FaultTestCase):
    """
    udptunnel's client beside a WireGuard full tunnel on one host.
    """

    def setUp(self) -> None:
        super().setUp()
        skipUnlessAble(whyNoNamespaces())
        skipUnlessAble(whyNoWireGuard())
        self.build()

    def build(self) -> None:
        """
        The three hosts, the WireGuard server on the relay (behind
        C{udptunnel server --sessions --peer 127.0.0.1:51820}) and the
        client's full tunnel, up, with C{wg-quick}.
        """
        spaces = self.spaces = Topology()
        self.addCleanup(self.removeSpaces)
        self.client = spaces.add("wgclient")
        router = spaces.add("wgrouter")
        self.relay = spaces.add("wgrelay")
        spaces.link(self.client, "eth0", f"{CLIENT_ADDRESS}/30",
                    router, "eth0", f"{ROUTER_CLIENT_SIDE}/30")
        spaces.link(router, "eth1", f"{ROUTER_RELAY_SIDE}/30",
                    self.relay, "eth0", f"{RELAY_ADDRESS}/30")
        spaces.ip(self.client, "route", "add", "default", "via", ROUTER_CLIENT_SIDE)
        spaces.ip(self.relay, "route", "add", "default", "via", ROUTER_RELAY_SIDE)
        spaces.execute(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        spaces.execute(router, "iptables", "-A", "FORWARD", "-p", "udp", "-j", "DROP")

        clientKey, serverKey = self.key("client"), self.key("server")
        tag = self.client.rsplit("-", 1)[1]
        serverInterface, clientInterface = f"wgs{tag}", f"wgc{tag}"
        added = spaces.execute(self.relay, "ip", "link", "add", serverInterface,
                               "type", "wireguard", check=False)
        if added.returncode != 0:  # no kernel module: the userspace one
            self.wireguardGo(self.relay, serverInterface)
        spaces.execute(self.relay, "wg", "set", serverInterface, "private-key", serverKey,
                       "listen-port", "51820", "peer", self.public(clientKey),
                       "allowed-ips", f"{VPN_CLIENT}/32")
        spaces.ip(self.relay, "addr", "add", f"{VPN_SERVER}/24", "dev", serverInterface)
        spaces.ip(self.relay, "link", "set", serverInterface, "up")

        config = self.path(f"{clientInterface}.conf")
        with open(os.open(config, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
            file.write(f"[Interface]\nPrivateKey = {self.read(clientKey)}\n"
                       f"Address = {VPN_CLIENT}/24\nMTU = 1380\n\n"
                       f"[Peer]\nPublicKey = {self.public(serverKey)}\n"
                       "Endpoint = 127.0.0.1:51820\nAllowedIPs = 0.0.0.0/0\n")
        up = subprocess.run(["ip", "netns", "exec", self.client, "wg-quick", "up", config],
                            env={**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION":
                                 "wireguard-go"},
                            capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(up.returncode, 0, up.stderr)
        rules = spaces.execute(self.client, "ip", "rule").stdout
        self.assertIn(f"not from all fwmark {hex(MARK)} lookup {MARK}", rules)

    def key(self, name: str) -> str:
        path = self.path(f"{name}.key")
        key = run("wg", "genkey").stdout.strip()
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
            file.write(key + "\n")
        return path

    def read(self, path: str) -> str:
        with open(path) as file:
            return file.read().strip()

    def public(self, keyPath: str) -> str:
        return subprocess.run(["wg", "pubkey"], input=self.read(keyPath), text=True,
                              capture_output=True, check=True).stdout.strip()

    def wireguardGo(self, space: str, interface: str) -> None:
        """
        The userspace WireGuard of C{interface} in C{space}, in the
        foreground, stopped by its PID when the test ends.
        """
        process = subprocess.Popen(["ip", "netns", "exec", space, "wireguard-go", interface],
                                   env={**os.environ, "WG_PROCESS_FOREGROUND": "1"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self.reap, process)  # type: ignore[arg-type]
        waitFor(lambda: interface in run("ip", "-n", space, "link").stdout,
                "wireguard-go's interface")

    def removeSpaces(self) -> None:
        """
        Stop what runs in the namespaces (the wireguard-go that wg-quick
        left running in the background: we started it, in a namespace of
        ours), then remove them.
        """
        for space in self.spaces.names:
            pids = run("ip", "netns", "pids", space, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.spaces.remove()

    def tunnelEnds(self, *clientOptions: str) -> subprocess.Popen[bytes]:
        """
        The relay's C{server --sessions} in front of the WireGuard server,
        and the client host's C{client}, the WireGuard client's endpoint,
        with C{clientOptions}.
        """
        server = self.spawn("server", "ip", "netns", "exec", self.relay, TWISTD, "-n",
                            "--pidfile=", "udptunnel", "server", "--sessions", "--tcp", "9999",
                            "--peer", "127.0.0.1:51820")
        self.waitForOutput(server, "listening for the TCP link")
        return self.spawn("client", "ip", "netns", "exec", self.client, TWISTD, "-n",
                          "--pidfile=", "udptunnel", "client", "--tcp", f"{RELAY_ADDRESS}:9999",
                          "--udp", "127.0.0.1:51820", *clientOptions)

    def ping(self, count: int, interval: str, deadline: int) -> tuple[int, int]:
        """
        Ping the WireGuard server's VPN address from the client host:
        how many were sent, and how many came back.
        """
        result = self.spaces.execute(self.client, "ping", "-q", "-n", "-c", str(count),
                                     "-i", interval, "-w", str(deadline), VPN_SERVER,
                                     check=False)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", result.stdout)
        self.assertIsNotNone(match, result.stdout + result.stderr)
        assert match is not None
        return int(match.group(1)), int(match.group(2))

    def test_withTheMark(self) -> None:
        """
        With C{--fwmark 51820} the link takes the ordinary route around the
        VPN, which then carries every ping: all of L{PINGS} come back
        (after one that waits for WireGuard's handshake), and C{ss} shows
        the mark on the link's socket.
        """
        client = self.tunnelEnds("--fwmark", str(MARK))
        self.waitForOutput(client, "link up")
        self.assertNotEqual(self.ping(1, "0.5", 20)[1], 0, "no reply even after 20 s")
        self.assertEqual(self.ping(PINGS, "0.01", 30), (PINGS, PINGS))
        sockets = self.spaces.execute(self.client, "ss", "-tnie", "state", "established",
                                      "dst", RELAY_ADDRESS).stdout
        self.assertIn(f"fwmark:{hex(MARK)}", sockets)
        self.assertIn("sockets towards the network marked 51820 (--fwmark)", self.output(client))

    def test_withoutTheMark(self) -> None:
        """
        Without it the link's own packets are routed into WireGuard, which
        sends them to the tunnel that is not up: the link never comes up,
        and no ping comes back.
        """
        client = self.tunnelEnds()
        self.waitForOutput(client, "UDP bound on")
        sent, received = self.ping(10, "0.1", 2)
        self.assertGreaterEqual(sent, 10)
        self.assertEqual(received, 0)
        self.assertNotIn("link up", self.output(client))
