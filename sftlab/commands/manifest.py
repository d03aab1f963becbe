"""``sftlab manifest RUN [--diff RUN2] [--json]``: show a run manifest, or what differs between two."""
from __future__ import annotations

import argparse
import json
from typing import Any

from sftlab.errors import UsageError

HELP = """Show RUN/run.json grouped by section, or with --diff RUN2 every field that differs
(dotted paths, old -> new). Exit codes: 0 shown / identical, 1 the manifests differ,
2 a manifest is missing or invalid."""


def register(subparsers) -> None:
    p = subparsers.add_parser("manifest", help="show a run manifest (run.json) or diff two",
                              description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory (or a run.json file)")
    p.add_argument("--diff", metavar="RUN2", help="second run directory (or run.json) to compare")
    p.add_argument("--ignore", metavar="FIELD", action="append", default=[],
                   help="with --diff: leave out a field and everything under it "
                        "(dotted path, e.g. created or hardware); repeatable")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: the manifest, or {identical, differences}")
    p.set_defaults(func=run)


def _load(path: str) -> dict[str, Any]:
    # lazy, here and below: pydantic (the manifest's schema) would cost every command's start-up
    from sftlab.manifest import ManifestError, read_manifest

    try:
        return read_manifest(path).to_dict()
    except (FileNotFoundError, ManifestError) as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    old = _load(args.run)
    if args.diff is None:
        if args.json:
            print(json.dumps(old, ensure_ascii=False))
        else:
            _print_manifest(old)
        return 0
    from sftlab.manifest import diff_manifests  # lazy: see _load

    new = _load(args.diff)
    differences = diff_manifests(old, new, ignore=args.ignore)
    if args.json:
        print(json.dumps({"identical": not differences, "differences": differences},
                         ensure_ascii=False))
    else:
        _print_diff(args.run, args.diff, differences)
    return 1 if differences else 0


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _print_manifest(manifest: dict[str, Any]) -> None:
    # lazy: rich loads only to print a table, not for `sftlab --help`
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from sftlab.manifest import flatten  # lazy: see _load

    console = Console()
    scalars = {k: v for k, v in manifest.items() if not isinstance(v, (dict, list))}
    head = Table(title="run manifest", show_header=False, title_justify="left")
    head.add_column("field", style="cyan", no_wrap=True)
    head.add_column("value", overflow="fold")
    for key, value in scalars.items():
        head.add_row(Text(key), Text(_fmt(value)))
    console.print(head)
    for section, value in manifest.items():
        if section in scalars:
            continue
        table = Table(title=section, show_header=False, title_justify="left")
        table.add_column("field", style="cyan", no_wrap=True)
        table.add_column("value", overflow="fold")
        for path, leaf in flatten(value).items():
            table.add_row(Text(path or "(empty)"), Text(_fmt(leaf)))
        console.print(table)


def _print_diff(a: str, b: str, differences: list[dict[str, Any]]) -> None:
    if not differences:
        print(f"identical: {a} and {b}")
        return
    print(f"{len(differences)} field(s) differ between {a} and {b}:")
    for d in differences:
        old = "(missing)" if d.get("missing") == "old" else _fmt(d["old"])
        new = "(missing)" if d.get("missing") == "new" else _fmt(d["new"])
        print(f"  {d['path']}: {old} -> {new}")
