"""The command line of the helper's small wrappers (enter_cgroups, lazy_guard): their options,
then `--` and the command they run. Standard library only: they start on every restore."""
from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None
          ) -> tuple[argparse.Namespace, list[str]]:
    """The wrapper's options and the command after them (required)."""
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("a command to run is required after --")
    return args, command
