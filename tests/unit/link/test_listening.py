"""
Where a listener says it listens.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import succeed
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakes import captureLogEvents
from udptunnel.link.listening import AnnouncingEndpoint, describeAddress


class DescribeTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        """
        An IPv4 address is shown as C{host:port}.
        """
        self.assertEqual(describeAddress(IPv4Address("TCP", "127.0.0.1", 9999)), "127.0.0.1:9999")

    def test_ipv6InBrackets(self) -> None:
        """
        An IPv6 address is shown with its host in brackets: C{[::]:9999}.
        """
        self.assertEqual(describeAddress(IPv6Address("TCP", "::", 9999)), "[::]:9999")

    def test_unixPath(self) -> None:
        """
        A Unix socket's address is shown as its path, decoded from bytes.
        """
        self.assertEqual(describeAddress(UNIXAddress(b"/run/u.sock")), "/run/u.sock")


class FakePort:
    def getHost(self) -> IPv6Address:
        return IPv6Address("TCP", "::1", 9100)


class FakeEndpoint:
    def listen(self, factory: object) -> object:
        return succeed(FakePort())


class AnnounceTests(SynchronousTestCase):
    def test_logsOnceListening(self) -> None:
        """
        Once the wrapped endpoint listens, L{AnnouncingEndpoint} logs its format
        once, with the port's address as people write it (C{[::1]:9100}), and
        gives the wrapped endpoint's port.
        """
        events = captureLogEvents(self)
        endpoint = AnnouncingEndpoint(FakeEndpoint(), "serving metrics on http://{address}/")  # type: ignore[arg-type]
        port = self.successResultOf(endpoint.listen(Factory()))
        self.assertIsInstance(port, FakePort)
        lines = [e for e in events if e.get("log_format", "").startswith("serving metrics")]
        self.assertEqual([e["address"] for e in lines], ["[::1]:9100"])
