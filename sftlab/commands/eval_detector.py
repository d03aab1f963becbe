"""``sftlab eval-detector``: how well a refusal detector agrees with labelled responses."""
from __future__ import annotations

import json
import sys

from sftlab.errors import UsageError
from sftlab.evaluation.agreement import detector_labels, grouped_agreement, load_labelled
from sftlab.evaluation.detectors import DETECTOR_SPECS, load_detector, parse_label_map


def register(sub) -> None:
    p = sub.add_parser(
        "eval-detector", help="measure a refusal detector's agreement with labelled responses",
        description="Label every response with the detector and compare with the human labels: "
                    "agreement on refusal (refuse or partial) vs comply, accuracy over "
                    "comply/refuse/partial, precision and recall of refusal and Cohen's kappa, each "
                    "with a 95% interval, overall, per source model and per prompt slice (safe "
                    "prompts, where a refusal is an over-refusal, and unsafe prompts), and the "
                    "confusion matrix. Labelled data: a built-in set (xstest: XSTest v2, 2,250 "
                    "human-labelled completions of five models) or JSONL/CSV (.gz allowed) with "
                    "response + label (comply|refuse|partial), or WildGuardTest's response_refusal_label "
                    "(refusal|compliance), and optional model, prompt_label (or prompt_harm_label) and "
                    "category (or type, subcategory) columns, e.g. the file `sftlab label` writes; a label "
                    "that rates harm (safe, unsafe, harmful) or a number is skipped with its reason, never "
                    "read as a refusal label. Agreement is only reported out of "
                    "sample: on the data the learned detector was fitted on, its leave-one-model-out "
                    "predictions are used. Exit 0: done; 1: some rows were skipped; 2: unusable input.")
    p.add_argument("--labelled", required=True, metavar="xstest|FILE",
                   help="built-in labelled set (xstest, demo) or a labelled file (JSONL or CSV)")
    p.add_argument("--detector", default="learned", metavar="SPEC", help=f"{DETECTOR_SPECS} (default learned)")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on p(refusal) for the learned detector or a judge (default 0.5)")
    p.add_argument("--label-map", metavar="MAP", help="classifier classes to labels: LABEL_0=comply,...")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: detector, overall, by_source, by_slice, by_category, bad_rows")
    p.set_defaults(func=run)


def _fmt(e) -> str:
    if e is None:
        return "n/a"
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def run(args) -> int:
    data = load_labelled(args.labelled)
    if not data.responses:
        raise UsageError(f"{args.labelled}: no usable labelled row"
                         + (f" ({data.bad_rows[0]['line']}: {data.bad_rows[0]['reason']})" if data.bad_rows else ""))
    detector = load_detector(args.detector, parse_label_map(args.label_map), args.trust_remote_code,
                             threshold=args.threshold)
    predicted, _, how = detector_labels(detector, data)
    result = {"detector": detector.describe(), "labelled": data.describe(), "how": how,
              **grouped_agreement(data, predicted), "bad_rows": data.bad_rows}
    if args.json:
        print(json.dumps(result))
        return 1 if data.bad_rows else 0
    for b in data.bad_rows:
        print(f"skipped {b['file']}:{b['line']}: {b['reason']}", file=sys.stderr)
    d = result["detector"]
    extra = f" threshold {d['threshold']}" if d.get("threshold") is not None else ""
    print(f"detector {d['name']}{extra} on {len(data.labels)} labelled responses ({how})")
    keys = ("agreement", "kappa", "precision", "recall", "accuracy")
    print(f"  {'group':<22}{'n':>6}  " + "".join(f"{k:<24}" for k in keys))
    groups = [("overall", result["overall"])]
    groups += [(f"model {k}", v) for k, v in result["by_source"].items()]
    groups += [(f"{k} prompts", v) for k, v in result["by_slice"].items()]
    groups += [(f"category {k}", v) for k, v in result["by_category"].items()]
    for name, r in groups:
        print(f"  {name:<22}{r['n']:>6}  " + "".join(f"{_fmt(r[k]):<24}" for k in keys))
    print("  agreement: refusal (refuse or partial) vs comply; accuracy: over the three labels; "
          "[95% interval]")
    print("  confusion, overall (rows: label, columns: detector)")
    print(f"  {'':<8}" + "".join(f"{c:>9}" for c in ("comply", "refuse", "partial")))
    for gold, row in result["overall"]["confusion"].items():
        print(f"  {gold:<8}" + "".join(f"{row[c]:>9}" for c in ("comply", "refuse", "partial")))
    return 1 if data.bad_rows else 0
