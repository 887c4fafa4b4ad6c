"""
What the property tests share: hypothesis settings that make a run
repeatable, and strategies for cutting and mutating byte streams.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def properties(examples: int) -> settings:
    """
    Hypothesis settings for one property: C{examples} of them, the same on
    every run (derandomized, no example database), and no deadline (a
    65535-byte frame fed one byte at a time takes a while).
    """
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def chunksOf(data: st.DataObject, stream: bytes, near: int | None = None,
             modes: tuple[str, ...] = ("cuts", "cuts", "bytes", "whole")) -> list[bytes]:
    """
    C{stream} cut where hypothesis says: at drawn points (most often), one
    byte at a time, or in one chunk (as C{modes} allow).  With C{near}, the
    points are drawn around that offset instead (within 8 bytes), and never
    one byte at a time (for long streams whose interesting offset is known).
    """
    if near is not None:
        modes = tuple(mode for mode in modes if mode != "bytes")
    how = data.draw(st.sampled_from(modes), label="split")
    if how == "whole":
        return [stream]
    if how == "bytes":
        return [stream[i : i + 1] for i in range(len(stream))] or [b""]
    if near is None:
        where = st.integers(0, len(stream))
    else:
        where = st.integers(max(0, near - 8), min(len(stream), near + 8))
    cuts = data.draw(st.lists(where, min_size=1, max_size=40), label="cuts")
    points = sorted({0, len(stream), *cuts})
    return [stream[a:b] for a, b in itertools.pairwise(points)] or [b""]


def joined(parts: Any) -> st.SearchStrategy[bytes]:
    """
    The concatenation of the byte strings C{parts} (a strategy of them).
    """
    return parts.map(b"".join)


@st.composite
def mutated(draw: Any, valid: Any, tokens: list[bytes]) -> bytes:
    """
    Bytes drawn from C{valid}, with up to three mutations: one of
    C{tokens} or a few random bytes inserted, bytes deleted, a byte
    replaced, each anywhere.
    """
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        at = draw(st.integers(0, len(data)))
        if how == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(tokens), st.binary(min_size=1, max_size=4)))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at : at + 1] = bytes([draw(st.integers(0, 255))])
    return bytes(data)


ports = st.integers(0, 0xFFFF)
