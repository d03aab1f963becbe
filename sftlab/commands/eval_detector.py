"""``sftlab eval-detector``: how well a refusal detector agrees with labelled responses."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "eval-detector", help="measure a refusal detector's agreement with labelled responses",
        description="Label every response with the detector and compare with the human labels: "
                    "accuracy over comply/refuse/partial, precision and recall of refusal (full or "
                    "partial) and Cohen's kappa on refusal vs comply, and the confusion matrix. "
                    "Labelled data: JSONL/CSV with response + label (comply|refuse|partial), or the "
                    "XSTest completion-annotation layout (prompt, completion, final_label). "
                    "Exit 0: done; 1: some rows were skipped; 2: unusable input.")
    p.add_argument("--labelled", required=True, metavar="FILE", help="labelled responses (JSONL or CSV)")
    p.add_argument("--detector", default="rules", metavar="rules|DIR",
                   help="the built-in rules (default) or a sequence-classification model directory")
    p.add_argument("--label-map", metavar="MAP", help="classifier classes to labels: LABEL_0=comply,...")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: n, accuracy, precision, recall, kappa, confusion, bad_rows")
    p.set_defaults(func=run)


def run(args) -> int:
    from sftlab.errors import UsageError
    from sftlab.evaluation.agreement import agreement, load_labelled
    from sftlab.evaluation.classifier import label_all, load_detector, parse_label_map

    data = load_labelled(args.labelled)
    if not data.responses:
        raise UsageError(f"{args.labelled}: no usable labelled row"
                         + (f" ({data.bad_rows[0]['line']}: {data.bad_rows[0]['reason']})" if data.bad_rows else ""))
    detector = load_detector(args.detector, parse_label_map(args.label_map), args.trust_remote_code)
    result = agreement(data.labels, label_all(detector, data.responses))
    result.update(detector=detector.describe().get("name"), bad_rows=data.bad_rows)
    if args.json:
        print(json.dumps(result))
    else:
        for b in data.bad_rows:
            print(f"skipped {b['file']}:{b['line']}: {b['reason']}", file=sys.stderr)
        print(f"detector {result['detector']} on {result['n']} labelled responses")
        for key in ("accuracy", "precision", "recall", "kappa"):
            print(f"  {key:<10} {result[key] if result[key] is not None else 'n/a'}")
        print("  confusion (rows: label, columns: detector)")
        print(f"  {'':<8}" + "".join(f"{c:>9}" for c in ("comply", "refuse", "partial")))
        for gold, row in result["confusion"].items():
            print(f"  {gold:<8}" + "".join(f"{row[c]:>9}" for c in ("comply", "refuse", "partial")))
    return 1 if data.bad_rows else 0
