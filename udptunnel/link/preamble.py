"""
Handshake profiles: what a connection carries before the first frame.

The classic wire (Debian's udptunnel 1.1, mullvad's udp-over-tcp) has no
preamble.  Marco d'Itri's udptunnel (rfc1036/udptunnel, the one often put in
front of WireGuard) has its client send 32 fixed bytes once, right after
connecting; its server compares them and hangs up on a mismatch, and sends
nothing of the kind itself.  So the profile is one-sided: the connecting end
sends the preamble, the listening end requires and strips it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The 32 bytes rfc1036/udptunnel's client sends first.
RFC1036_PREAMBLE = b"udptunnel by md." + bytes.fromhex("00000001030610152128364555667891")

#: What C{--handshake} accepts, and the preamble of each.
PROFILES = {"none": b"", "rfc1036": RFC1036_PREAMBLE}


class HandshakeMismatch(Exception):
    """
    The peer's first bytes were not the preamble the profile requires: the
    connection is closed, and the relay counts it (pending closed,
    C{handshake}) rather than as a link that failed.
    """


@dataclass(frozen=True)
class Handshake:
    """
    One end's part in a profile.

    @ivar send: bytes to write before any frame (a connecting end's).
    @ivar expect: bytes the peer must send before any frame (a listening
        end's); the connection becomes the link only after them.
    """

    send: bytes = b""
    expect: bytes = b""
    #: The preambles of the other profiles, with their names, that a
    #: listening end watches for in its first bytes: a peer that sends one
    #: wants that C{--handshake}, and is told so instead of read as frames.
    foreign: tuple[tuple[str, bytes], ...] = ()


#: The classic wire: nothing before the first frame.
NO_HANDSHAKE = Handshake()


def handshakeFor(profile: str, connecting: bool) -> Handshake:
    """
    The part of C{profile} (a key of L{PROFILES}) that a connecting
    (client) or listening (server) end plays.
    """
    preamble = PROFILES[profile]
    if connecting:
        return Handshake(send=preamble)
    foreign = tuple((name, other) for name, other in PROFILES.items()
                    if other and name != profile)
    return Handshake(expect=preamble, foreign=foreign)


def checkPreamble(expected: bytes, received: bytes) -> bool | None:
    """
    Whether C{received} (all the bytes so far) is C{expected}: C{True} once
    all of it arrived and matched, C{False} as soon as a byte differs (no
    need to wait for the rest of a wrong preamble), C{None} while the bytes
    so far match but are too few.
    """
    if received[: len(expected)] != expected[: len(received)]:
        return False
    return True if len(received) >= len(expected) else None
