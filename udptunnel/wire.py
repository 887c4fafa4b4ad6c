"""
The wire, pure (no Twisted): each datagram as a 2-byte big-endian length
and the datagram, back to back, both ways, with no preamble; byte for byte
what Debian's udptunnel 1.1 and mullvad's udp-over-tcp speak, and DNS over
TCP's framing.
"""

from __future__ import annotations

import struct

_LENGTH = struct.Struct("!H")

#: The largest datagram IPv4 or IPv6 can carry, and so the largest frame:
#: every length a 16-bit prefix can express.  Also the read buffer of every
#: UDP socket (Twisted's default of 8192 would truncate larger datagrams
#: silently).
MAX_DATAGRAM = 65535


class FrameDecoder:
    """
    Splits a stream into frames: fed the bytes of each read, it returns the
    frames they completed, in order, and keeps the rest for the next.

    @ivar pending: the bytes received and not yet parsed into frames.
    @ivar exceeded: the length of a frame over the limit (L{feed}'s
        C{maxLength}) whose prefix has arrived, or C{None}; nothing from that
        prefix on is parsed.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.exceeded: int | None = None

    def feed(self, data: bytes, maxLength: int = MAX_DATAGRAM) -> list[bytes]:
        """
        The frames that C{data}, after what is pending, completes.  A length
        prefix over C{maxLength} stops the parsing there (L{exceeded}); by
        default every length a 16-bit prefix can express is a frame.
        """
        if self.pending:
            data = self.pending + data
        frames = []
        end = len(data)
        offset = 0
        while end - offset >= 2:
            length = data[offset] << 8 | data[offset + 1]
            if length > maxLength:
                self.exceeded = length
                break
            start = offset + 2
            stop = start + length
            if stop > end:
                break
            frames.append(data[start:stop])
            offset = stop
        self.pending = data[offset:] if offset else data
        return frames


def encodeFrames(datagrams: list[bytes]) -> bytes:
    """
    C{datagrams} as frames, back to back, in one string (one write).
    """
    pack = _LENGTH.pack
    parts = []
    for datagram in datagrams:
        parts.append(pack(len(datagram)))
        parts.append(datagram)
    return b"".join(parts)
