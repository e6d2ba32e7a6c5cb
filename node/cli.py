"""The `allot` command line.

Subcommands arrive with the features they drive; today: `allot bench apply` (the in-process
state machine benchmark). The cluster commands (`allot up`, `allot serve`) come with the
replicated server.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from bench import ipam_apply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="allot", description="Allot: replicated IPAM and pod scheduling state store")
    parser.add_argument("--version", action="version", version=f"allot {metadata.version('allot')}")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark and print its numbers")
    bench.add_argument("suite", choices=("apply",), help="apply: in-process state machine throughput and costs")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the suite (see --help of the suite)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        ipam_apply.main(args.options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
