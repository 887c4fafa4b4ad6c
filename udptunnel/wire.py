"""
The wire, pure (no Twisted): each datagram as a 2-byte big-endian length
and the datagram, back to back, both ways, with no preamble; byte for byte
what Debian's udptunnel 1.1 and mullvad's udp-over-tcp speak, and DNS over
TCP's framing.
"""

from __future__ import annotations

#: The largest datagram IPv4 or IPv6 can carry, and so the largest frame:
#: every length a 16-bit prefix can express.  Also the read buffer of every
#: UDP socket (Twisted's default of 8192 would truncate larger datagrams
#: silently).
MAX_DATAGRAM = 65535
