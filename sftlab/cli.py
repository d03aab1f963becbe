"""The ``sftlab`` command line: one sub-command per module in ``sftlab.commands``.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func`` to a function ``(args) -> int`` returning the exit code:
0 done and every check passed; 1 done but something was quarantined or a check or gate
failed; 2 the input is unusable (one-line reason, no traceback; with ``--json``,
``{"error": ...}`` on stdout).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys

from sftlab.errors import UsageError

# In the order of the data flow (DESIGN.md).
COMMANDS = ("validate", "stats", "inspect", "check_template", "prepare", "train", "eval", "eval_detector", "label",
            "manifest", "report", "export", "convert", "demo")


def build_parser() -> argparse.ArgumentParser:
    from sftlab import __version__

    parser = argparse.ArgumentParser(
        prog="sftlab",
        description="Instruction tuning with exact response-only loss, inspectable masks, "
                    "sliced evaluation and a manifest for every artifact.")
    parser.add_argument("--version", action="version", version=f"sftlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sftlab.commands.{name}").register(sub)
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
    import os

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
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(e)}))
        else:
            print(f"sftlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        print(f"sftlab {args.command}: error: the disk is full ({e.filename or e.strerror}); files are "
              "written atomically, so what was there before is whole: free space, then run again "
              "(sftlab train: with --resume)", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"sftlab {args.command}: error: out of memory; lower the sizes in the config "
              "(encoding.max_length, packing.max_length, batch sizes) or use a larger machine",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
