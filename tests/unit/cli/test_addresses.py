"""
L{udptunnel.cli.addresses}: C{--udp systemd:...}, and C{--udp} and C{--peer}
resolved together.
"""

from __future__ import annotations

import socket

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support.options import parse
from udptunnel.cli.addresses import parseSystemdUDP


class ParseTests(SynchronousTestCase):
    """
    C{--udp systemd:N} and C{systemd:NAME}.
    """

    def test_forms(self) -> None:
        """
        C{systemd:N} gives the index C{N}, C{systemd:NAME} the name C{NAME}; an
        address or a bare port is not a C{systemd:} form (C{None}).
        """
        self.assertEqual(parseSystemdUDP("systemd:1"), 1)
        self.assertEqual(parseSystemdUDP("systemd:udptunnel.socket"), "udptunnel.socket")
        self.assertIsNone(parseSystemdUDP("127.0.0.1:5073"))
        self.assertIsNone(parseSystemdUDP("5073"))

    def test_bad(self) -> None:
        """
        C{systemd:} with nothing after it, or with a stream endpoint's
        arguments, is refused with the forms it takes (C{systemd:N}).
        """
        for bad in ("systemd:", "systemd:domain=INET:index=1"):
            with self.assertRaises(ValueError) as caught:
                parseSystemdUDP(bad)
            self.assertIn("systemd:N", str(caught.exception))


class AddressFamilyTests(SynchronousTestCase):
    """
    --udp and --peer are resolved together; each error blames the option at
    fault.
    """

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, "server", "--tcp", "9999", *argv)
        self.assertIn(fragment, str(error))

    def test_udpUnresolvable(self) -> None:
        """
        A C{--udp} host that cannot be resolved is a usage error that blames
        C{--udp}.
        """
        self.assertUsageError("--udp: cannot resolve", "--udp", "nosuchhost.invalid:17073")

    def test_literalsOfTwoFamilies(self) -> None:
        """
        An IPv6 C{--udp} with an IPv4 C{--peer}, or the reverse, is a usage
        error that names each option's family.
        """
        self.assertUsageError("--udp is IPv6 and --peer IPv4",
                              "--udp", "[::1]:1", "--peer", "127.0.0.1:2")
        self.assertUsageError("--udp is IPv4 and --peer IPv6",
                              "--udp", "127.0.0.1:1", "--peer", "[::1]:2")

    def test_nameOnlyInTheOtherFamily(self) -> None:
        """
        A peer name with IPv4 addresses only, and an IPv6 --udp.
        """
        real = socket.getaddrinfo

        def getaddrinfo(host: str, port: int, family: int = 0, *rest: object) -> object:
            if host == "v4only.example":
                if family == socket.AF_INET6:
                    raise socket.gaierror(socket.EAI_ADDRFAMILY, "no IPv6")
                return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("192.0.2.1", port))]
            return real(host, port, family, *rest)  # type: ignore[arg-type]

        self.patch(socket, "getaddrinfo", getaddrinfo)
        self.assertUsageError("--peer: 'v4only.example' has no IPv6 address, and --udp is IPv6",
                              "--udp", "[::1]:1", "--peer", "v4only.example:2")
        plan = parse("server", "--tcp", "9999", "--udp", "1",
                     "--peer", "v4only.example:2").subOptions.config.udp
        self.assertEqual(plan.peer, ("192.0.2.1", 2))
