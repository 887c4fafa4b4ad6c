"""
The Prometheus exposition: names, labels and which series exist.
"""

from __future__ import annotations

import os
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY
from tests.support.fakes import (
    Connections,
    FakeLink,
    FakeUDPTransport,
    makeRelay,
    scrape,
)
from udptunnel.ops.metrics import LABEL_VALUES, RelayCollector
from udptunnel.tunnel.stats import DROP_REASONS

#: Where the code names a label value that may first appear when it is
#: counted: a drop's reason, a pending connection's.
COUNTED = (
    ("udptunnel_dropped_datagrams", re.compile(r'_drop\(\s*"([^"]+)"')),
    ("udptunnel_pending_closed", re.compile(r'pendingClosed\(\s*\w+,\s*"([^"]+)"')),
)


class SeriesTests(SynchronousTestCase):
    def test_everyDropReasonFromTheStart(self) -> None:
        """
        Every reason of L{DROP_REASONS} has its series of dropped datagrams,
        at 0, before any drop.
        """
        text = scrape(makeRelay())
        for reason in DROP_REASONS:
            self.assertIn(f'udptunnel_dropped_datagrams_total{{reason="{reason}"}} 0.0', text)

    def test_serverHasNoClientCounters(self) -> None:
        """
        A server exposes the refused links, takeovers and closed pending links,
        at 0, and no C{udptunnel_connect_attempts}.
        """
        text = scrape(makeRelay(role="server"))
        self.assertNotIn("udptunnel_connect_attempts", text)
        self.assertIn('udptunnel_links_total{event="refused"} 0.0', text)
        self.assertIn('udptunnel_link_takeovers_total{reason="first-frame"} 0.0', text)
        self.assertIn('udptunnel_pending_closed_total{reason="evicted"} 0.0', text)

    def test_clientHasNoServerCounters(self) -> None:
        """
        A client exposes its connect attempts, and none of a server's series:
        refused or replaced links, takeovers, phantom changes.
        """
        text = scrape(makeRelay(role="client", udpPeer=("192.0.2.1", 5072)))
        self.assertIn("udptunnel_connect_attempts_total 0.0", text)
        self.assertNotIn('event="refused"', text)
        self.assertNotIn('event="replaced"', text)
        self.assertNotIn("udptunnel_link_takeovers", text)
        self.assertNotIn("udptunnel_phantom_changes", text)

    def test_fixedPeerInfo(self) -> None:
        """
        A fixed UDP peer is labelled C{mode="fixed"} with its address and port,
        an IPv6 host in brackets.
        """
        text = scrape(makeRelay(udpPeer=("2001:db8::1", 5072)))
        self.assertIn('udptunnel_peer_info{address="[2001:db8::1]:5072",mode="fixed"} 1.0', text)

    def test_phantomPeerInfoHasNoPort(self) -> None:
        """
        The ephemeral port would make a new series at each restart of the
        application: the label carries the host only.
        """
        relay = makeRelay()
        relay.linkMade(FakeLink())
        relay.datagramsReceived([(b"x", ("::ffff:127.0.0.1", 40001))])
        relay.datagramsReceived([(b"x", ("::ffff:127.0.0.1", 40002))])
        text = scrape(relay)
        self.assertIn('udptunnel_peer_info{address="127.0.0.1",mode="phantom"} 1.0', text)
        self.assertEqual(text.count("udptunnel_peer_info{"), 1)
        self.assertIn("udptunnel_phantom_changes_total 1.0", text)

    def test_pendingGauge(self) -> None:
        """
        A link connected while another is up counts in
        C{udptunnel_pending_links}.
        """
        relay = makeRelay()
        relay.linkMade(FakeLink())
        relay.linkConnected(FakeLink())
        self.assertIn("udptunnel_pending_links 1.0", scrape(relay))


class SessionSeriesTests(SynchronousTestCase):
    def test_clientSessions(self) -> None:
        """
        A client with sessions exposes the sessions open, opened and evicted,
        and the session links up, instead of the single link's C{udptunnel_link_up};
        the datagram of the session whose link is up counts as sent to the tunnel.
        """
        from udptunnel.tunnel.clientsessions import ClientSessions


        connections = Connections()
        client = ClientSessions(Clock(), connections.connect)
        client.udpStarted(FakeUDPTransport())
        client.datagramsReceived([(b"x", ("127.0.0.1", 1)), (b"y", ("127.0.0.1", 2))])
        connections.succeed(0)
        text = scrape(client)
        self.assertIn("udptunnel_sessions_open 2.0", text)
        self.assertIn("udptunnel_session_links_up 1.0", text)
        self.assertIn('udptunnel_sessions_total{event="opened"} 2.0', text)
        self.assertIn('udptunnel_sessions_total{event="evicted"} 0.0', text)
        self.assertNotIn('event="refused"', text)
        self.assertNotIn("udptunnel_link_up ", text)
        self.assertIn("udptunnel_to_tunnel_datagrams_total 1.0", text)

    def test_serverSessions(self) -> None:
        """
        A server with sessions counts a session per link made, exposes its
        refused sessions and the fixed peer it relays to.
        """
        from udptunnel.tunnel.serversessions import ServerSessions

        server = ServerSessions(Clock(), ("192.0.2.1", 53), lambda protocol: FakeUDPTransport())
        link = FakeLink()
        server.linkConnected(link)
        server.linkMade(link)
        text = scrape(server)
        self.assertIn("udptunnel_sessions_open 1.0", text)
        self.assertIn('udptunnel_sessions_total{event="refused"} 0.0', text)
        self.assertIn('udptunnel_peer_info{address="192.0.2.1:53",mode="fixed"} 1.0', text)


class OneRequestTests(SynchronousTestCase):
    def test_connectionCarriesOneRequest(self) -> None:
        """
        The answer says C{Connection: close} and the connection closes after
        it, even when the request asked to keep it: a connection's life
        (its deadline) is one request's.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from udptunnel.ops.metrics import metricsSite

        site = metricsSite(makeRelay())
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert channel is not None
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        answer = transport.value()
        self.assertIn(b"udptunnel_links_total", answer)
        self.assertIn(b"\r\nConnection: close\r\n", answer)
        self.assertTrue(transport.disconnecting)


class LabelValuesTests(SynchronousTestCase):
    """
    L{LABEL_VALUES}, which the manual's reference of the metrics is made
    from, says what every label value means.
    """

    def test_everySeriesFromTheStart(self) -> None:
        """
        Every label value a server or a client shows from the first scrape
        has its meaning.
        """
        missing = []
        for relay in (makeRelay(role="server"), makeRelay(role="client")):
            for family in RelayCollector(relay).collect():
                if family.name not in LABEL_VALUES:
                    continue
                for sample in family.samples:
                    missing += [f"{family.name} {value}" for value in sample.labels.values()
                                if value not in LABEL_VALUES[family.name]]
        self.assertEqual(missing, [])

    def test_everyValueTheCodeCounts(self) -> None:
        """
        Every reason the code passes when it drops a datagram or closes a
        pending connection has its meaning: those that have no series until
        they happen (C{queue-full}) too.
        """
        missing = []
        found = 0
        for directory, _subdirectories, names in os.walk(os.path.join(REPOSITORY, "udptunnel")):
            for name in names:
                if not name.endswith(".py"):
                    continue
                with open(os.path.join(directory, name)) as file:
                    text = file.read()
                for family, pattern in COUNTED:
                    for value in pattern.findall(text):
                        found += 1
                        if value not in LABEL_VALUES[family]:
                            missing.append(f"{name}: {family} {value}")
        self.assertEqual(missing, [])
        self.assertGreater(found, 15)  # the patterns still find the calls
