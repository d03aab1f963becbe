"""The ``sftlab`` command line: one sub-command per module in ``sftlab.commands``, run by
``sftlab.commands.execute`` (exit codes: 0 done and every check passed; 1 done but something was
quarantined or a check or gate failed; 2 the input is unusable)."""
from __future__ import annotations

import argparse
import os
import sys

from sftlab import __version__
from sftlab.commands import (check_template, convert, demo, eval_detector, execute, export, inspect, label,
                             manifest, prepare, report, stats, train, validate)
from sftlab.commands import eval as eval_command

# In the order of the data flow (DESIGN.md).
COMMANDS = (validate, stats, inspect, check_template, prepare, train, eval_command, eval_detector, label,
            manifest, report, export, convert, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftlab",
        description="Instruction tuning with exact response-only loss, inspectable masks, "
                    "sliced evaluation and a manifest for every artifact.")
    parser.add_argument("--version", action="version", version=f"sftlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. A closed stdout (``sftlab manifest RUN | head``)
    ends the command quietly with 141 (128 + SIGPIPE, as the shell reports a command killed by a
    closed pipe), without a traceback."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is caught
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by something without a file descriptor
        pass


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return execute(args)


if __name__ == "__main__":
    sys.exit(main())
