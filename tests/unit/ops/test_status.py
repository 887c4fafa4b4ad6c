"""
L{udptunnel.ops.status}: the C{/status} document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import APP, Connections, FakeUDPTransport, phantomRelay
from udptunnel.ops.status import FIELDS, statusDocument
from udptunnel.tunnel.clientsessions import ClientSessions
from udptunnel.tunnel.single import Relay


class DocumentTests(SynchronousTestCase):
    def test_singleLink(self) -> None:
        """
        A single-link tunnel's status has its name, role and kind, the link up
        with its remote and age, the phantom peer last seen, the traffic both
        ways, and the link and drop counts.
        """
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
        """
        With the link lost, the status says it is down, counts the lost link
        and the datagram dropped for want of a link, and is plain JSON.
        """
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
        """
        A fixed UDP peer is shown with C{peerMode} C{fixed}; a client's link
        counts have no C{refused}.
        """
        relay = Relay(Clock(), udpPeer=("192.0.2.53", 5072), role="client")
        relay.udpStarted(FakeUDPTransport())
        (tunnel,) = statusDocument([(None, relay)])["tunnels"]
        self.assertEqual(tunnel["udp"]["peer"], "192.0.2.53:5072")
        self.assertEqual(tunnel["udp"]["peerMode"], "fixed")
        self.assertNotIn("refused", tunnel["links"])  # a client refuses nobody


def fieldPaths(value: Any, path: str = "") -> Iterator[str]:
    """
    The paths of L{FIELDS} that a document's C{value} at C{path} has: an
    object's keys by name, or as C{*} where the list names none of them;
    a list's items as C{[]}.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            named = f"{path}.{key}" if path else key
            inner = named if named in FIELDS or f"{path}.*" not in FIELDS else f"{path}.*"
            yield inner
            if inner == named:
                yield from fieldPaths(item, named)
    elif isinstance(value, list):
        for item in value:
            yield from fieldPaths(item, path + "[]")


class FieldsTests(SynchronousTestCase):
    def test_everyFieldListed(self) -> None:
        """
        L{FIELDS}, which the manual's reference is made from, names every
        field of the documents of a single link (up and down), a fixed
        peer's, and a client's sessions with one session, and nothing
        else.
        """
        up, _clock, _link = phantomRelay()
        down = Relay(Clock(), udpPeer=("192.0.2.53", 5072), role="client")
        down.udpStarted(FakeUDPTransport())
        sessions = ClientSessions(Clock(), Connections().connect, random=lambda: 0.5)
        sessions.udpStarted(FakeUDPTransport())
        sessions.datagramsReceived([(b"query", APP)])
        document = statusDocument([("up", up), (None, down), ("sessions", sessions)])
        self.assertEqual(sorted(set(fieldPaths(document))), sorted(FIELDS))
