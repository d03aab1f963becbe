"""The demo's hand-labelled set: draw its prompts, turn ``sftlab eval``'s outputs into rows to
label, attach the labels.

    python scripts/demo_label_sample.py prompts RUN/suite/heldout_prompts.jsonl PROMPTS.jsonl
    sftlab eval --model RUN/final --reference BASE --prompts PROMPTS.jsonl --out EVAL \\
        --max-new-tokens 20 --batch-size 16 --conditions training_template --detector learned --detector rules
    python scripts/demo_label_sample.py rows EVAL/outputs.jsonl ROWS.jsonl
    python scripts/demo_label_sample.py attach ROWS.jsonl LABELS.tsv LABELLED.jsonl

``prompts`` draws 100 prompts (seed 0) that a demo run holds out: every harmful and benign prompt
of the held-out suite of ``sftlab demo --quick`` (12 + 12), ``XSTEST`` safe and as many unsafe
XSTest prompts, ``SST`` SimpleSafetyTests prompts and ``COCONOT`` of CoCoNot's contrast set; the
eval answers each with both models (200 responses). ``rows`` keeps ``sftlab label``'s fields
(``id, model, condition, prompt, prompt_label, response``) and the set (``prompts``); ``attach``
adds each row's ``label`` (and ``note``) from ``LABELS.tsv`` (``index<TAB>label<TAB>note`` per
row, in ``ROWS.jsonl``'s order).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

XSTEST, SST, COCONOT = 20, 16, 20
MODELS = {"tuned": "smollm2-135m-demo-tuned", "reference": "smollm2-135m-instruct-q4"}
KEEP = ("id", "prompts", "model", "condition", "prompt", "prompt_label", "response")


def draw(heldout: str, seed: int = 0) -> list[dict]:
    from sftlab.evaluation.prompts import load_prompt_set

    rng = random.Random(seed)
    out = []
    for name, source, n in (("suite", heldout, None), ("xstest", "xstest", XSTEST),
                            ("simplesafetytests", "simplesafetytests", SST),
                            ("coconot_contrast", "coconot_contrast", COCONOT)):
        prompts = [p for p in load_prompt_set(source).prompts if p.expected in ("refuse", "comply")]
        for expected in ("refuse", "comply"):
            pool = [p for p in prompts if p.expected == expected]
            for p in (pool if n is None else rng.sample(pool, min(n, len(pool)))):
                out.append({"id": p.id, "prompt": p.text, "slice": name, "expected": p.expected})
    return out


def rows(outputs: list[dict]) -> list[dict]:
    return [{"id": r["id"], "prompts": r["slice"], "model": MODELS[r["model"]], "condition": r["condition"],
             "prompt": r["prompt"], "prompt_label": "unsafe" if r["expected"] == "refuse" else "safe",
             "response": r["response"]} for r in outputs]


def attach(rows: list[dict], labels_tsv: str) -> list[dict]:
    labels = {}
    for line in labels_tsv.splitlines():
        if line.strip() and not line.startswith("#"):
            index, label, *note = line.split("\t")
            labels[int(index)] = (label.strip(), note[0].strip() if note else "")
    missing = [i for i in range(len(rows)) if i not in labels]
    if missing:
        raise SystemExit(f"no label for rows {missing[:10]}")
    return [{**{k: r[k] for k in KEEP}, "label": labels[i][0], **({"note": labels[i][1]} if labels[i][1] else {})}
            for i, r in enumerate(rows)]


def _read(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def _write(path: str, items: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv[:1] == ["prompts"] and len(argv) == 3:
        _write(argv[2], draw(argv[1]))
    elif argv[:1] == ["rows"] and len(argv) == 3:
        _write(argv[2], rows(_read(argv[1])))
    elif argv[:1] == ["attach"] and len(argv) == 4:
        _write(argv[3], attach(_read(argv[1]), Path(argv[2]).read_text(encoding="utf-8")))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
