"""
C{python -m udptunnel status [URL] [--json]}: what a running tunnel does.

The tunnel itself runs under twistd (C{twistd udptunnel server|client|run}).
"""

import sys

from udptunnel import __version__

USAGE = ("Usage: python -m udptunnel status [URL | [HOST:]PORT] [--json]\n"
         "       python -m udptunnel --help | --version\n"
         "(run a tunnel with: twistd udptunnel server|client|run ...; see "
         "python -m udptunnel status --help)")


def main(argv: list[str]) -> int:
    if argv[:1] == ["status"]:
        from udptunnel.cli.statuscmd import main as status

        return status(argv[1:])
    if argv in (["--help"], ["-h"]):
        print(USAGE)
        return 0
    if argv == ["--version"]:
        print(f"udptunnel {__version__}")
        return 0
    print(USAGE, file=sys.stderr)
    if argv:
        print(f"python -m udptunnel: unknown command {argv[0]!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
