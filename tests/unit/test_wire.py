"""
The wire's codec (L{udptunnel.wire}), alone: what the encoder writes the
decoder reads back, in any split; a prefix over the limit stops the parsing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from udptunnel.wire import MAX_DATAGRAM, FrameDecoder, encodeFrames

datagrams = st.lists(st.binary(max_size=600), max_size=20)


class CodecTests(SynchronousTestCase):
    def test_format(self) -> None:
        """
        Each datagram is a 2-byte big-endian length and the datagram, back
        to back: empty ones and the largest included.
        """
        self.assertEqual(encodeFrames([b"ab", b"", b"c"]), b"\x00\x02ab\x00\x00\x00\x01c")
        big = b"x" * MAX_DATAGRAM
        self.assertEqual(encodeFrames([big])[:2], b"\xff\xff")

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(datagrams, st.data())
    def test_roundTripInAnySplit(self, sent: list[bytes], data: st.DataObject) -> None:
        """
        Fed the encoded stream in reads of any sizes, the decoder returns
        the datagrams, each as soon as its last byte arrived, and keeps
        nothing once all is read.
        """
        stream = encodeFrames(sent)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        decoder = FrameDecoder()
        got: list[bytes] = []
        for start, stop in zip([0, *cuts], [*cuts, len(stream)]):
            got += decoder.feed(stream[start:stop])
            self.assertEqual(got, sent[:len(got)])
            self.assertEqual(encodeFrames(got) + decoder.pending, stream[:stop])
        self.assertEqual(got, sent)
        self.assertEqual(decoder.pending, b"")
        self.assertIsNone(decoder.exceeded)

    def test_overTheLimit(self) -> None:
        """
        The frames before a prefix over the limit come out; the prefix and
        what follows stay unparsed, and the length is said.
        """
        decoder = FrameDecoder()
        stream = encodeFrames([b"ok", b"x" * 101, b"never"])
        self.assertEqual(decoder.feed(stream[:3], 100), [])
        self.assertEqual(decoder.feed(stream[3:], 100), [b"ok"])
        self.assertEqual(decoder.exceeded, 101)
        self.assertEqual(decoder.pending, stream[4:])
