"""``sftlab demo``: tune a small pretrained model under the built-in policy, offline, with a report.

The demo runs the same commands a user types (validate, stats, eval, report): :func:`run_command`
parses each with that command's own parser and runs it as ``sftlab`` does (``execute``).
"""
from __future__ import annotations

import argparse

from sftlab.commands import eval as eval_command
from sftlab.commands import execute, report, stats, validate

USED = {"validate": validate, "stats": stats, "eval": eval_command, "report": report}
"""The commands the demo runs, by the name a user types."""


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="tune SmolLM2-135M-Instruct under the built-in policy and write a report",
        description="The whole contract in one command: the built-in policy and a seeded instruction "
                    "suite are validated and summarised, the model is tuned (LoRA), evaluated against "
                    "its reference on held-out prompts under several templates, and a manifest and an "
                    "HTML report are written. It ends with a summary: what improved, and which gates "
                    "the tuned model misses and why. Exit 0 when the run completed, whatever the gates "
                    "say (they are reported); with --strict, exit 1 when a gate fails.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="fewer steps and prompts (about 5 minutes on 2 CPU cores)")
    size.add_argument("--tiny", action="store_const", dest="mode", const="tiny",
                      help="a tiny model built from scratch: the pipeline in about a minute (no real effect)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/demo-MODE)")
    p.add_argument("--seed", type=int, default=0, help="seed of the suite and the training run")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a policy gate fails (a check, as `sftlab eval --policy` is; not with --tiny)")
    p.set_defaults(func=run, mode="full")


def run(args) -> int:
    from sftlab.demo.run import run_demo  # lazy: loaded when the demo runs, not for `sftlab --help`

    return run_demo(args.mode, args.out, seed=args.seed, resume=args.resume, strict=args.strict,
                    command=run_command)


def run_command(argv: list[str]) -> int:
    """The exit code of ``sftlab ARGV`` for a command the demo uses, run in this process.

    >>> run_command(["validate", "/no/such/file.jsonl"])
    2
    """
    parser = argparse.ArgumentParser(prog="sftlab")
    USED[argv[0]].register(parser.add_subparsers(dest="command"))
    return execute(parser.parse_args(argv))
