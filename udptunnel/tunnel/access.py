"""
Address filters for C{--allow} (who may connect the TCP link) and
C{--udp-allow} (who may send into a phantom end).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parseNetwork(text: str) -> Network:
    """
    A CIDR block (C{10.0.0.0/8}, C{2001:db8::/32}) or a single address.
    A block with host bits set (C{10.0.0.1/8}) is refused rather than
    widened in silence: the user meant either the address or the block.
    """
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address or CIDR block") from None
    address = text.split("/", 1)[0]
    raise ValueError(f"{text!r} has host bits set: give the block {loose} or the address "
                     f"{address}") from None


class AddressFilter:
    """
    Whether an IP literal lies in one of some networks.  An IPv4 address
    seen through a dual-stack IPv6 socket (C{::ffff:192.0.2.1}) counts as
    the IPv4 address it is.
    """

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(network) for network in self.networks)
