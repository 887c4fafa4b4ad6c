"""
Exact option names only, for every command line of ours.

Twisted's option parser rests on C{getopt}, which takes any unique prefix
of a long option: C{server --proxy} quietly meant C{--proxy-protocol}, and
a server started so refused every plain client.  A prefix that happens to
be unique today may name another option tomorrow, so we take none: each
C{--name} must be an option's whole name.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from twisted.python import usage


def checkExactNames(options: usage.Options, argv: list[str],
                    elsewhere: Mapping[str, str] | None = None) -> None:
    """
    Refuse an abbreviated or unknown long option in C{argv}, walking it as
    C{getopt} will (a value-taking option consumes the next argument; the
    first argument that is no option ends the options, as does C{--}).

    @param elsewhere: options that C{options} does not have but a sibling
        command does, each with that command's name, for a better hint.
    @raise usage.UsageError: naming the option, with a suggestion.
    """
    long = {name.rstrip("="): name.endswith("=") for name in options.longOpt}
    short = _shortOptions(options.shortOpt)
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--" or not argument.startswith("-") or argument == "-":
            return
        if argument.startswith("--"):
            name, equals, _ = argument[2:].partition("=")
            if name not in long:
                raise usage.UsageError(unknownOption(name, long, elsewhere or {}))
            if long[name] and not equals:
                index += 1  # its value
        elif _shortTakesNext(argument[1:], short):
            index += 1
        index += 1


def unknownOption(name: str, known: Mapping[str, object] | list[str],
                  elsewhere: Mapping[str, str]) -> str:
    """
    The error for C{--name}: where it belongs, or what it may stand for.
    """
    candidates = [option for option in known if option.startswith(name)]
    candidates += difflib.get_close_matches(name, sorted(known), n=1)
    hints = []
    if name in elsewhere:
        hints.append(f"it is an option of '{elsewhere[name]}'")
    if candidates:
        hints.append(f"did you mean --{candidates[0]}?")
    return f"unknown option --{name}" + (f" ({'; '.join(hints)})" if hints else "")


def _shortOptions(spec: str) -> dict[str, bool]:
    """
    C{getopt}'s short option string as {letter: whether it takes a value}.
    """
    short = {}
    for index, letter in enumerate(spec):
        if letter != ":":
            short[letter] = spec[index + 1: index + 2] == ":"
    return short


def _shortTakesNext(cluster: str, short: Mapping[str, bool]) -> bool:
    """
    Whether a cluster of short options (C{-nc}) ends with one whose value
    is the next argument.  An unknown letter is left to C{getopt}'s error.
    """
    for index, letter in enumerate(cluster):
        if short.get(letter):
            return index == len(cluster) - 1
        if letter not in short:
            return False
    return False
