"""
C{python -m udptunnel status [URL] [--json]}: what a running tunnel does.

The tunnel itself runs under twistd (C{twistd udptunnel server|client|run}).
"""

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["status"]:
        from .statuscmd import main as status

        return status(argv[1:])
    print("Usage: python -m udptunnel status [URL] [--json]\n"
          "(run a tunnel with: twistd udptunnel server|client|run ...)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
