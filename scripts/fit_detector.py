"""Fit sftlab's learned refusal detector and measure it out of sample.

    python scripts/fit_detector.py [--labelled xstest] [--out sftlab/evaluation/assets/refusal_lr.npz]
                                   [--opening-chars 80 --opening-share 0.5] [--C C] [--no-write]

1. Leave one source model out: for each model in the labelled set, fit on the others and label
   the held-out model's responses. Prints agreement and kappa per held-out model and pooled, for
   the learned detector and for the rules (which were not fitted on this data), and writes them
   as JSON (``--report``).
2. Fit on every row and write the weights (NumPy .npz, no pickle) that ship with sftlab.

Needs scikit-learn (fitting only; the detector itself runs on numpy).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftlab.evaluation.agreement import agreement, load_labelled  # noqa: E402
from sftlab.evaluation.detector import RuleDetector  # noqa: E402
from sftlab.evaluation.fitting import DEFAULT_C, fit_heads, leave_one_source_out  # noqa: E402
from sftlab.evaluation.learned import WEIGHTS, FeatureSpec, LearnedDetector, save_weights  # noqa: E402

VERSION = "2"
"""2: an opening block (FeatureSpec.opening_chars/opening_share); 1: the head alone."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelled", default="xstest", help="built-in name or labelled file with a model column")
    ap.add_argument("--out", default=str(WEIGHTS), help="where to write the fitted weights")
    ap.add_argument("--report", default=None, help="write the leave-one-model-out table as JSON here")
    ap.add_argument("--C", type=float, default=DEFAULT_C)
    ap.add_argument("--opening-chars", type=int, default=FeatureSpec.opening_chars,
                    help="characters of the first sentence read as the opening block (0: none, as in version 1)")
    ap.add_argument("--opening-share", type=float, default=FeatureSpec.opening_share,
                    help="the opening block's share of the features' L1 mass")
    ap.add_argument("--no-write", action="store_true", help="measure only; do not write weights")
    args = ap.parse_args(argv)

    data = load_labelled(args.labelled)
    spec = FeatureSpec(opening_chars=args.opening_chars,
                       opening_share=args.opening_share if args.opening_chars else 0.0)
    print(f"features {spec}, C={args.C}")
    with tempfile.TemporaryDirectory() as tmp:
        lomo = leave_one_source_out(data, tmp, spec, args.C, progress=True)
    rules = RuleDetector()
    rule_labels = [rules(t) for t in data.responses]
    # the model alone (``learned:rules=off``), from the same held-out probabilities
    model_labels = ["comply" if p < 0.5 else ("partial" if part else "refuse")
                    for p, part in zip(lomo["p_refusal"], lomo["partial"])]
    table = {}
    for src in sorted(set(data.sources)) + ["pooled"]:
        idx = [i for i, s in enumerate(data.sources) if src == "pooled" or s == src]
        gold = [data.labels[i] for i in idx]
        table[src] = {name: {k: agreement(gold, [pred[i] for i in idx])[k] for k in ("n", "agreement", "kappa", "accuracy")}
                      for name, pred in (("learned", lomo["predicted"]), ("model", model_labels),
                                         ("rules", rule_labels))}
    print("learned = the default detector (model + phrase rules); model = learned:rules=off")
    print(f"{'held-out model':<18}{'learned agr':>12}{'kappa':>8}{'model agr':>12}{'kappa':>8}"
          f"{'rules agr':>12}{'kappa':>8}")
    for src, row in table.items():
        print(f"{src:<18}" + "".join(f"{row[k]['agreement']:>12.3f}{row[k]['kappa']:>8.3f}"
                                    for k in ("learned", "model", "rules")))
    if args.report:
        Path(args.report).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    if args.no_write:
        return 0
    heads = fit_heads(data.responses, data.labels, spec, args.C)
    save_weights(args.out, spec, heads, {
        "version": VERSION, "regularisation": {"C": args.C, "penalty": "l2"},
        "fitted_on": {"labelled": data.path, "sha256": data.sha256, "n": len(data.labels)},
        "leave_one_model_out": {src: row["learned"] for src, row in table.items()}},
        out_of_sample={"p_refusal": lomo["p_refusal"],
                       "partial": lomo["partial"]})
    det = LearnedDetector(args.out)
    texts = data.responses
    t0 = time.perf_counter()
    det.label_all(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes); {rate:.0f} responses/s on one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
