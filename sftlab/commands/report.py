"""``sftlab report RUN [--out report.html] [--json]``: the HTML report of a run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftlab.errors import UsageError

HELP = """Write one self-contained HTML page for a run directory (default RUN/report.html):
summary and policy gates, data statistics, loss-mask preview, packing and mixture,
training curves, evaluation (tuned vs reference per slice, template robustness, failure
samples) and the full run manifest. Opens offline: no script, no external resource.
Exit codes: 0 written and every gate and data check passed (or none was recorded), 1 written
but a policy gate or a data check (data/stats.json) failed, or run.json or eval/eval.json is
there but unreadable, 2 RUN has none of the run files."""


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="write the HTML report of a run",
                              description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory (run.json, metrics.jsonl, data/, eval/)")
    p.add_argument("--out", metavar="PATH", help="where to write the page (default: RUN/report.html)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"report", "passed" (gates), "data_checks_passed", "problems"}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: the modules that do the work load when the command runs, not for `sftlab --help`
    from sftlab.report import write_report
    from sftlab.report.inputs import FILES, found_any

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a directory (expected a run directory written by sftlab train)")
    if not found_any(run_dir):
        raise UsageError(f"{run_dir}: nothing to report, none of {', '.join(FILES)} is there")
    path, files = write_report(run_dir, args.out)
    passed = files.eval.get("passed") if files.eval else None
    data_passed = files.stats.get("passed") if files.stats else None
    passed, data_passed = (v if isinstance(v, bool) else None for v in (passed, data_passed))
    checks = (files.stats or {}).get("checks")
    failed = [c.get("name") for c in (checks if isinstance(checks, list) else [])
              if isinstance(c, dict) and c.get("passed") is False]
    if args.json:
        print(json.dumps({"report": str(path), "passed": passed, "data_checks_passed": data_passed,
                          "problems": files.problems, "unreadable": files.unreadable}))
    else:
        gates = {True: "all gates passed", False: "a gate FAILED"}.get(passed, "gates not evaluated")
        if files.eval and not files.eval.get("gates"):
            gates = "no gates checked"
        data = {True: "data checks passed", False: f"data checks FAILED: {', '.join(map(str, failed))}"}
        print(f"wrote {path} ({gates}; {data.get(data_passed, 'data checks not recorded')})")
        for problem in files.problems:
            print(f"  note: {problem}")
    if files.unreadable and not args.json:
        print(f"  FAILED: {', '.join(files.unreadable)} unreadable; the report could not show what they record")
    return 1 if passed is False or data_passed is False or files.unreadable else 0
