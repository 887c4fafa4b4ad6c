"""
Access control, mutual TLS and metrics, on real loopback sockets with both
ends in one process.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import ClientCreator
from twisted.logger import formatEvent
from twisted.web.client import Agent, readBody

from .certs import Authority
from .fakes import captureLogEvents
from .test_integration import (
    RawLink,
    TunnelTestCase,
    freePort,
    waitUntil,
)


class AllowTests(TunnelTestCase):
    @inlineCallbacks
    def test_strangerRefusedLinkKept(self) -> Any:
        """
        A connection from outside --allow is closed at once and counted; the
        client's link stays the link and keeps relaying.
        """
        server, _, app, _, serverUDP, tcpPort = self.startTunnel(("--allow", "127.0.0.1/32"))
        yield app.probe(serverUDP)
        link = server.link

        stranger = yield ClientCreator(reactor, RawLink).connectTCP(
            "127.0.0.1", tcpPort, bindAddress=("127.0.0.2", 0)
        )
        stranger.sendFrame(b"let me in")
        yield stranger.lost

        self.assertEqual(server.stats.linksRefused, 1)
        self.assertIs(server.link, link)
        yield app.probe(serverUDP)
        self.assertEqual(server.stats.linksUp, 1)


    @inlineCallbacks
    def test_refusedClientSaysSo(self) -> Any:
        """
        A client the server's --allow refuses never logs "link up": each
        attempt is a failed one, with the likely reason.
        """
        events = captureLogEvents(self)
        server, client, _, _, _, _ = self.startTunnel(("--allow", "127.0.0.2/32"))
        yield waitUntil(lambda: client.stats.linksFailed >= 2, "two refused attempts")
        self.assertEqual((client.stats.linksUp, client.stats.linksLost), (0, 0))
        self.assertGreaterEqual(server.stats.linksRefused, 2)
        lines = [formatEvent(e) for e in events]
        self.assertFalse([line for line in lines if line.startswith("link up")], lines)
        self.assertTrue([line for line in lines if "before it carried anything" in line], lines)


class TLSTestCase(TunnelTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.authority = Authority(directory)
        self.rogue = Authority(directory, "rogue-ca")

    def tlsOptions(self, authority: Authority, name: str, trusted: Authority) -> list[str]:
        cert, key = authority.issue(name)
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", trusted.path]

    def startPair(self, clientAuthority: Authority, clientTrusts: Authority) -> None:
        self.server, self.client, self.app, _, self.serverUDP, self.tcpPort = self.startTunnel(
            tuple(self.tlsOptions(self.authority, "server", self.authority)),
            tuple(self.tlsOptions(clientAuthority, "client", clientTrusts)),
        )


class MutualTLSTests(TLSTestCase):
    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        self.startPair(self.authority, self.authority)
        yield self.app.probe(self.serverUDP)
        self.app.send(b"x" * 65507, self.serverUDP)
        yield self.app.waitFor(1)
        self.assertEqual(self.app.received, [(b"x" * 65507, self.serverUDP)])

    @inlineCallbacks
    def test_clientFromOtherCANeverBecomesLink(self) -> Any:
        """
        A client whose certificate another CA signed fails the handshake:
        it never displaces the link of the good client.
        """
        self.startPair(self.authority, self.authority)
        yield self.app.probe(self.serverUDP)
        good = self.server.link
        self.startEnd(
            "client", "--tcp", f"127.0.0.1:{self.tcpPort}", "--udp", "127.0.0.1:0",
            "--peer", "127.0.0.1:9", *self.tlsOptions(self.rogue, "client", self.authority),
        )
        yield waitUntil(lambda: self.server.stats.linksFailed >= 2, "two failed handshakes")
        self.assertIs(self.server.link, good)
        self.assertEqual(self.server.stats.linksUp, 1)
        yield self.app.probe(self.serverUDP)

    @inlineCallbacks
    def test_clientRejectsUnknownServer(self) -> Any:
        """
        A client that trusts another CA does not accept the server: no link
        on either side.
        """
        self.startPair(self.authority, self.rogue)
        yield waitUntil(lambda: self.client.stats.linksFailed >= 2, "two failed handshakes")
        self.assertEqual(self.client.stats.linksUp, 0)
        self.assertEqual(self.server.stats.linksUp, 0)


class TLSLinesTests(TLSTestCase):
    @inlineCallbacks
    def test_nameMismatchSaysWhatToGive(self) -> Any:
        """
        A server whose certificate does not carry the name the client
        checks: each attempt is one line, saying so and what to give, with
        the next delay and the count of failures (not service_identity's
        repr, nor Twisted's "Scheduling retry 1" whose count never grew).
        """
        events = captureLogEvents(self)
        self.startPair(self.authority, self.authority)
        self.client.stopService()
        self.startEnd("client", "--tcp", f"127.0.0.1:{self.tcpPort}", "--udp", "127.0.0.1:0",
                      "--peer", "127.0.0.1:9", "--tls-name", "other.example",
                      *self.tlsOptions(self.authority, "client", self.authority))
        yield waitUntil(lambda: sum("2 failed in a row" in formatEvent(e) for e in events),
                        "two failed attempts")
        lines = [formatEvent(e) for e in events if "cannot connect" in formatEvent(e)]
        self.assertIn("TLS: the server's certificate is not for other.example (give "
                      "--tls-name with a name the certificate carries); next attempt in ",
                      lines[0])
        self.assertIn("(1 failed in a row)", lines[0])
        self.assertIn("(2 failed in a row)", lines[1])
        everything = " ".join(formatEvent(e) for e in events)
        self.assertNotIn("VerificationError", everything)
        self.assertNotIn("Scheduling retry", everything)


class MetricsTests(TunnelTestCase):
    @inlineCallbacks
    def test_scrape(self) -> Any:
        """
        The counters are served in Prometheus' text format.
        """
        metricsPort = freePort()
        server, _, app, _, serverUDP, _ = self.startTunnel(
            ("--metrics", f"tcp:{metricsPort}:interface=127.0.0.1")
        )
        yield app.probe(serverUDP)

        events = captureLogEvents(self)
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{metricsPort}/metrics".encode()
        )
        body = (yield readBody(response)).decode()

        self.assertEqual(response.code, 200)
        self.assertFalse(
            [e for e in events if "GET /metrics" in formatEvent(e)], "a scrape is no log line"
        )
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        carried = server.stats.toTunnelDatagrams
        self.assertGreaterEqual(carried, 1)
        self.assertIn(f"udptunnel_to_tunnel_datagrams_total {carried}.0", body)
        self.assertIn("udptunnel_link_up 1.0", body)
        self.assertIn('udptunnel_links_total{event="up"} 1.0', body)
        self.assertIn('mode="phantom"', body)

    @inlineCallbacks
    def test_headIsQuiet(self) -> Any:
        """
        A HEAD (what some health checkers send) gets the GET's headers and
        no body, and no warning in the log.
        """
        metricsPort = freePort()
        self.startTunnel(("--metrics", f"tcp:{metricsPort}:interface=127.0.0.1"))
        events = captureLogEvents(self)
        response = yield Agent(reactor).request(
            b"HEAD", f"http://127.0.0.1:{metricsPort}/metrics".encode()
        )
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, b""))
        self.assertGreater(int(response.headers.getRawHeaders(b"content-length")[0]), 100)
        self.assertEqual([formatEvent(e) for e in events if "HEAD" in formatEvent(e)], [])
