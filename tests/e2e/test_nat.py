"""
The tutorial's "An application that insists on talking to the POP itself"
(docs/tutorial/seed.rst), its rules as written there, with the installed daemons, in network namespaces this test
makes: a NAT box that cannot reach the POP by UDP, a relay that can (UDP is
dropped on the link between them, so only the tunnel's TCP crosses), the
POP, and a LAN behind the NAT box (a switch, an application host and a
second host for the tunnel server).

The application uses a I{connected} UDP socket to C{POP_IP:5072}, as tunnel
clients do: the kernel drops any reply that does not come from exactly
that address, so a reply the NAT box failed to rewrite is lost, not merely
mislabelled.

Every address here exists only inside the namespaces the test makes
(10.13.0.0/16 and 198.51.100.0/24, a documentation block).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

from tests.support import REPOSITORY
from tests.support.ends import FaultTestCase
from tests.support.net import waitFor
from tests.support.system import Topology, skipUnlessAble, whyNoNamespaces

#: Where the rules come from.
TUTORIAL = os.path.join("docs", "tutorial", "seed.rst")
NATBOX_LAN = "10.13.1.1"
LAN_HOST = "10.13.1.2"
TUNNEL_HOST = "10.13.1.3"
NATBOX_WAN = "10.13.2.1"
RELAY_WAN = "10.13.2.2"
RELAY_POP = "198.51.100.1"
POP_IP = "198.51.100.2"
POP = (POP_IP, 5072)
#: The POP sees datagrams from the relay's fixed port.
RELAY_EXIT = (RELAY_POP, 34559)
#: Datagrams per exchange, and how long each reply may take (and how long
#: one that must not arrive is waited for).
COUNT = 5
REPLY_TIMEOUT = 2.0
#: The NAT box's UDP connection tracking timeouts in the test that needs it
#: to forget: as short as they go.
CONNTRACK_TIMEOUT = 1


_iptablesVerdict: list[str | None] = []


def whyNoIptables() -> str | None:
    """
    Why iptables' nat table cannot be used in a namespace here, or C{None}
    if it can (it tries, once per run).
    """
    if _iptablesVerdict:
        return _iptablesVerdict[0]
    reason = None
    if shutil.which("iptables") is None:
        reason = "iptables is not installed"
    else:
        spaces = Topology()
        try:
            probe = spaces.add("iptprobe")
            spaces.execute(probe, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp",
                           "-d", POP_IP, "--dport", "5072", "-j", "REDIRECT",
                           "--to-ports", "5073")
        except (AssertionError, OSError, subprocess.SubprocessError) as e:
            reason = f"iptables cannot NAT in a network namespace: {e}"
        finally:
            spaces.remove()
    _iptablesVerdict.append(reason)
    return reason


class NATTests(FaultTestCase):
    """
    Each documented rule set, as the tutorial gives it, addresses substituted.
    """

    def setUp(self) -> None:
        super().setUp()
        skipUnlessAble(whyNoNamespaces())
        skipUnlessAble(whyNoIptables())

    def build(self, lan: bool = False) -> Topology:
        """
        The NAT box, the relay and the POP; with C{lan}, a switch behind the
        NAT box's C{lan0} with two hosts, C{lan} (10.13.1.2, the
        application's) and C{tunnel} (10.13.1.3).  UDP is dropped on the
        relay's side of the NAT box's link: only TCP crosses there.
        """
        spaces = Topology()
        self.addCleanup(spaces.remove)  # after the processes in them are reaped
        self.natbox = spaces.add("natbox")
        self.relay = spaces.add("relay")
        self.pop = spaces.add("pop")
        spaces.link(self.natbox, "wan0", f"{NATBOX_WAN}/24", self.relay, "wan0", f"{RELAY_WAN}/24")
        spaces.link(self.relay, "pop0", f"{RELAY_POP}/24", self.pop, "eth0", f"{POP_IP}/24")
        spaces.ip(self.natbox, "route", "add", "default", "via", RELAY_WAN)
        spaces.ip(self.relay, "route", "add", "10.13.1.0/24", "via", NATBOX_WAN)
        for chain, direction in (("INPUT", "-i"), ("FORWARD", "-i"), ("OUTPUT", "-o")):
            spaces.execute(self.relay, "iptables", "-A", chain, direction, "wan0",
                           "-p", "udp", "-j", "DROP")
        if lan:
            switch = spaces.add("switch")
            spaces.ip(switch, "link", "add", "br0", "type", "bridge")
            spaces.ip(switch, "link", "set", "br0", "up")
            self.lan = spaces.add("lan")
            self.tunnel = spaces.add("tunnel")
            for host, address, port in ((self.natbox, f"{NATBOX_LAN}/24", "p1"),
                                        (self.lan, f"{LAN_HOST}/24", "p2"),
                                        (self.tunnel, f"{TUNNEL_HOST}/24", "p3")):
                end = "lan0" if host == self.natbox else "eth0"
                spaces.link(host, end, address, switch, port, None)
                spaces.ip(switch, "link", "set", port, "master", "br0")
                if host != self.natbox:
                    spaces.ip(host, "route", "add", "default", "via", NATBOX_LAN)
            spaces.execute(self.natbox, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.spaces = spaces
        return spaces

    def iptables(self, space: str, rule: str) -> None:
        """
        Add C{rule} in C{space}: a rule of the tutorial as written there
        after C{iptables} (checked), its names (C{POP_IP}, C{TUNNELHOST},
        C{ROUTER_LAN_IP}) replaced by the addresses of this topology.
        """
        with open(os.path.join(REPOSITORY, TUTORIAL)) as file:
            self.assertIn(f"    iptables {rule}\n", file.read(), f"not in {TUTORIAL}")
        for name, address in (("POP_IP", POP_IP), ("TUNNELHOST", TUNNEL_HOST),
                              ("ROUTER_LAN_IP", NATBOX_LAN)):
            rule = rule.replace(name, address)
        self.spaces.execute(space, "iptables", *rule.split())

    def tunnelEnds(self, serverSpace: str, serverAddress: str) -> None:
        """
        The walkthrough's two ends, as the tutorial starts them: the server
        (UDP 5073, TCP 9999) in C{serverSpace}, the client on the relay,
        sending to the POP from UDP 34559; once the link is up.
        """
        server = self.end("server", "udptunnel", "server", "--udp", "5073", "--tcp", "9999",
                          netns=serverSpace)
        self.end("client", "udptunnel", "client", "--tcp", f"{serverAddress}:9999",
                 "--udp", "34559", "--peer", f"{POP_IP}:5072", netns=self.relay)
        self.waitForOutput(server, "link up")

    def sockets(self, appSpace: str) -> tuple[socket.socket, socket.socket]:
        """
        The application's socket in C{appSpace}, connected to the POP, and
        the POP's, bound to C{POP_IP:5072}.
        """
        app = self.spaces.socket(appSpace, bind=("0.0.0.0", 0))
        self.addCleanup(app.close)
        app.connect(POP)
        pop = self.spaces.socket(self.pop, bind=POP)
        self.addCleanup(pop.close)
        return app, pop

    def exchange(self, app: socket.socket, pop: socket.socket) -> list[tuple[str, int]]:
        """
        Send L{COUNT} datagrams from C{app} to the POP, answer each from the
        POP, and return where each reply came from (as the application's
        socket saw it) for those that arrived.
        """
        sources = []
        for i in range(COUNT):
            request = b"request %d" % i
            app.send(request)
            pop.settimeout(REPLY_TIMEOUT)
            data, seenFrom = pop.recvfrom(65535)
            self.assertEqual((data, seenFrom), (request, RELAY_EXIT),
                             "the POP got something else than the request, from the relay")
            pop.sendto(b"reply %d" % i, seenFrom)
            reply = self.receive(app, b"reply %d" % i)
            if reply is not None:
                sources.append(reply)
        return sources

    def push(self, app: socket.socket, pop: socket.socket) -> list[tuple[str, int]]:
        """
        The POP speaks first: L{COUNT} datagrams to the relay's exit, in a
        row (the first is what it sends first after a quiet spell); where
        each that reached C{app} came from, once L{REPLY_TIMEOUT} passed
        without one more.  They travel in order, through the tunnel's TCP:
        those that arrived must be the first ones, in order.
        """
        for i in range(COUNT):
            pop.sendto(b"push %d" % i, RELAY_EXIT)
        arrived = []
        for _ in range(COUNT):
            app.settimeout(REPLY_TIMEOUT)
            try:
                arrived.append(app.recvfrom(65535))
            except TimeoutError:
                break
        self.assertEqual([data for data, _ in arrived],
                         [b"push %d" % i for i in range(len(arrived))])
        return [source for _, source in arrived]

    def receive(self, app: socket.socket, expected: bytes) -> tuple[str, int] | None:
        app.settimeout(REPLY_TIMEOUT)
        try:
            data, source = app.recvfrom(65535)
        except TimeoutError:
            return None
        self.assertEqual(data, expected)
        return source

    def test_applicationOnTheNATBox(self) -> None:
        """
        The application runs on the NAT box: C{REDIRECT} in C{OUTPUT}.  The
        datagrams reach the server at 127.0.0.1:5073; it answers from there,
        and connection tracking rewrites that to C{POP_IP:5072}.
        """
        self.build()
        self.tunnelEnds(self.natbox, NATBOX_WAN)
        self.iptables(self.natbox, "-t nat -A OUTPUT -p udp -d POP_IP --dport 5072 "
                                   "-j REDIRECT --to-ports 5073")
        app, pop = self.sockets(self.natbox)
        self.assertEqual(self.exchange(app, pop), [POP] * COUNT)

    def test_applicationOnALANHost(self) -> None:
        """
        The application runs on a host behind the NAT box: C{REDIRECT} in
        C{PREROUTING} on C{lan0}.
        """
        self.build(lan=True)
        self.tunnelEnds(self.natbox, NATBOX_WAN)
        self.iptables(self.natbox, "-t nat -A PREROUTING -i lan0 -p udp -d POP_IP "
                                   "--dport 5072 -j REDIRECT --to-ports 5073")
        app, pop = self.sockets(self.lan)
        self.assertEqual(self.exchange(app, pop), [POP] * COUNT)

    def test_serverOnAnotherLANHost(self) -> None:
        """
        The tunnel server runs on another host of the LAN: the NAT box
        DNATs to it and SNATs to its own LAN address, so the replies come
        back through it, and the application and the server share the LAN.
        """
        self.build(lan=True)
        self.tunnelEnds(self.tunnel, TUNNEL_HOST)
        self.iptables(self.natbox, "-t nat -A PREROUTING -i lan0 -p udp -d POP_IP "
                                   "--dport 5072 -j DNAT --to-destination TUNNELHOST:5073")
        self.iptables(self.natbox, "-t nat -A POSTROUTING -o lan0 -p udp -d TUNNELHOST "
                                   "--dport 5073 -j SNAT --to-source ROUTER_LAN_IP")
        app, pop = self.sockets(self.lan)
        self.assertEqual(self.exchange(app, pop), [POP] * COUNT)

    def test_explicitSNATForReplies(self) -> None:
        """
        Connection tracking forgets a quiet UDP exchange (here after 1 s, as
        after 30 s by default): what the POP then sends first reaches the
        application from 127.0.0.1:5073, and its connected socket drops it.
        The tutorial's explicit SNAT for the replies rewrites those too, on the
        NAT box and towards the LAN, while the rest still works.
        """
        self.build(lan=True)
        self.tunnelEnds(self.natbox, NATBOX_WAN)
        self.iptables(self.natbox, "-t nat -A OUTPUT -p udp -d POP_IP --dport 5072 "
                                   "-j REDIRECT --to-ports 5073")
        self.iptables(self.natbox, "-t nat -A PREROUTING -i lan0 -p udp -d POP_IP "
                                   "--dport 5072 -j REDIRECT --to-ports 5073")
        for timeout in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
            self.spaces.execute(self.natbox, "sysctl", "-q", "-w",
                                f"net.netfilter.{timeout}={CONNTRACK_TIMEOUT}")
        app, pop = self.sockets(self.natbox)
        self.assertEqual(self.exchange(app, pop), [POP] * COUNT)
        self.forget()
        self.assertEqual(self.push(app, pop), [], "without the SNAT rule, the kernel "
                         "should drop what the POP sends after a quiet spell")

        self.iptables(self.natbox, "-t nat -A POSTROUTING -p udp --sport 5073 "
                                   "-j SNAT --to-source POP_IP:5072")
        self.forget()
        self.assertEqual(self.push(app, pop), [POP] * COUNT)
        self.assertEqual(self.exchange(app, pop), [POP] * COUNT)
        # And for an application on the LAN, through the same rules.
        lanApp = self.spaces.socket(self.lan, bind=("0.0.0.0", 0))
        self.addCleanup(lanApp.close)
        lanApp.connect(POP)
        self.assertEqual(self.exchange(lanApp, pop), [POP] * COUNT)
        self.forget()
        self.assertEqual(self.push(lanApp, pop), [POP] * COUNT)

    def udpTracked(self) -> list[str]:
        """
        The UDP flows the NAT box's connection tracking remembers (its
        listing leaves out those whose timeout has passed).
        """
        table = self.spaces.execute(self.natbox, "cat", "/proc/net/nf_conntrack").stdout
        return [line for line in table.splitlines() if " udp " in f" {line} "]

    def forget(self) -> None:
        """
        Wait until the NAT box's connection tracking forgot the exchanges
        (their timeout is L{CONNTRACK_TIMEOUT}): no UDP flow is left in its
        table.
        """
        left: list[str] = []

        def forgotten() -> bool:
            left[:] = self.udpTracked()
            return not left

        try:
            waitFor(forgotten, "the NAT box to forget its UDP flows")
        except AssertionError as e:
            raise AssertionError(f"{e}; still tracked: {left}") from None
