"""
L{udptunnel.cli.schema}: every option once, with what the manual and the
parsers need.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from udptunnel.cli.schema import CLIENT, OPTIONS, SERVER, optionsOf


class SchemaTests(SynchronousTestCase):
    def test_everyValueNamed(self) -> None:
        """
        Every option that takes a value says what it is (C{SECONDS},
        C{HOST:PORT}): the manual's synopsis of it; a flag has none.
        """
        self.assertEqual([o.name for o in OPTIONS if not o.flag and not o.value], [])
        self.assertEqual([o.name for o in OPTIONS if o.flag and o.value], [])

    def test_oneOptionPerNameAndRole(self) -> None:
        """
        An end has each option once: C{--tcp} has a server's meaning and a
        client's, each in one role.
        """
        for role in (SERVER, CLIENT):
            names = [option.name for option in optionsOf(role)]
            self.assertEqual(sorted(names), sorted(set(names)))
