"""The sub-commands of ``sftlab``, one module each, and :func:`execute`, which runs a parsed one.

Each command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to
a function ``(args) -> int`` returning the exit code: 0 done and every check passed; 1 done but
something was quarantined or a check or gate failed; 2 the input is unusable (one-line reason, no
traceback; with ``--json``, ``{"error": ...}`` on stdout). ``sftlab.cli`` builds the parser of
every command; ``sftlab demo`` runs the commands it needs through :func:`execute` as well.
"""
from __future__ import annotations

import errno
import json
import sys

from sftlab.errors import UsageError
from sftlab.files import inputs_scope
from sftlab.terminal import terminal_safe


def execute(args) -> int:
    """Run the command ``args`` (parsed) names; its exit code, with unusable input (``UsageError``),
    a full disk and exhausted memory reported in one line on stderr and exit code 2."""
    try:
        with inputs_scope():  # no command writes over a file it read
            return int(args.func(args) or 0)
    except UsageError as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(e)}))
        else:  # a path or record id may carry escapes
            print(f"sftlab {args.command}: error: {terminal_safe(e)}".replace("\n", "\\n"), file=sys.stderr)
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
