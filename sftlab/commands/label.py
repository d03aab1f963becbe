"""``sftlab label FILE``: a person labels responses in the terminal, one by one.

FILE is an ``outputs.jsonl`` written by ``sftlab eval`` (or any JSONL with ``response`` and
optional ``prompt``). By default only the responses that need a person are shown: those where
the detectors disagreed or a margin was small (``disagree`` / ``uncertain``); ``--all`` shows
every response. Each answer is ``c`` (comply), ``r`` (refuse), ``p`` (partial), ``s`` (skip) or
``q`` (quit, keeping what was labelled). The labelled file (``--out``, JSONL) holds ``response,
label, prompt, prompt_label, model, id, condition`` per labelled response, is written atomically
after every answer, and is what ``sftlab eval-detector --labelled`` and ``sftlab eval --labelled``
read. Running again with the same ``--out`` resumes: responses already labelled there are skipped.
Lines of FILE that cannot be shown (not JSON, not UTF-8, no ``response`` text) are skipped and
named by file:line; the exit code is then 1. Record text is shown with terminal control
sequences escaped.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.evaluation.prompts import _jsonl_rows
from sftlab.files import check_output_file, read_input, write_atomic
from sftlab.terminal import terminal_safe

KEYS = {"c": "comply", "r": "refuse", "p": "partial"}


def register(sub) -> None:
    p = sub.add_parser(
        "label", help="label responses by hand (those where detectors disagree) for eval-detector",
        description=__doc__.split("\n\n", 1)[1].replace("``", ""),  # reStructuredText literals as plain text
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="outputs.jsonl from sftlab eval (or JSONL with response)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="labelled file to write (default: FILE's folder/labelled.jsonl)")
    p.add_argument("--all", action="store_true", help="show every response, not only the flagged ones")
    p.add_argument("--max-chars", type=int, default=2000, metavar="N",
                   help="show at most N characters of each response (default: 2000)")
    p.set_defaults(func=run)


def _key(row: dict) -> str:
    return json.dumps([row.get("id"), row.get("model"), row.get("condition"), row.get("sample"),
                       row.get("response")], ensure_ascii=False)


def _prompt_label(row: dict) -> str | None:
    expected = row.get("expected")
    return {"refuse": "unsafe", "comply": "safe"}.get(expected) if isinstance(expected, str) else None


def _read(path: Path, *, own: bool = False) -> tuple[list[dict], int]:
    """``(rows, skipped)``: the rows of a JSONL file that have a ``response`` text; every other
    line (not JSON, not UTF-8, nested too deep, no response text) is skipped, named by
    file:line in one line on stderr, and counted. ``own``: the labelled file this command
    rewrites (not an input)."""

    data = read_input(path, max_bytes=1 << 30, note=not own)
    rows, bad = [], []
    for n, row, problem in _jsonl_rows(data.decode("utf-8", "surrogateescape")):
        if problem is None and not isinstance(row.get("response"), str):
            problem = "field 'response': missing or not text"
        if problem is None:
            rows.append(row)
        else:
            bad.append(f"{path}:{n}: {problem}")
    if bad:
        print(terminal_safe(f"sftlab label: skipped {len(bad)} line(s) of {path} ({'; '.join(bad[:3])}"
                            f"{' ...' if len(bad) > 3 else ''})"), file=sys.stderr)
    return rows, len(bad)


def _detector_line(name: object, d: object) -> str:
    """One detector's verdict; fields of the wrong type are shown as they are, not formatted."""
    d = d if isinstance(d, dict) else {"label": d}
    p = d.get("p_refusal")
    shown = f" (p_refusal {p:.2f})" if isinstance(p, (int, float)) and not isinstance(p, bool) else ""
    return f"  {name}: {d.get('label')}{shown}"


def run(args) -> int:
    src = Path(args.file)
    if not os.path.lexists(src):
        raise UsageError(f"{src}: no such file")
    rows, skipped = _read(src)
    out = Path(args.out) if args.out else src.parent / "labelled.jsonl"
    check_output_file(out, what="--out")  # not FILE itself (nor a link to it), nor a device
    done, _ = _read(out, own=True) if out.is_file() else ([], 0)
    seen = {_key({**d, **(d["source_row"] if isinstance(d.get("source_row"), dict) else {})}) for d in done}
    todo = [r for r in rows if (args.all or r.get("disagree") or r.get("uncertain")) and _key(r) not in seen]
    print(f"{len(todo)} responses to label ({len(done)} already in {out}); "
          "answer c=comply r=refuse p=partial s=skip q=quit")
    labelled = 0
    for i, row in enumerate(todo, 1):
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            prompt = " / ".join(str(t.get("content", t)) if isinstance(t, dict) else str(t) for t in prompt)
        show = lambda text: print(terminal_safe(text))  # record text never acts on the terminal
        show(f"\n--- {i}/{len(todo)}  id {row.get('id')}  model {row.get('model')}  "
             f"condition {row.get('condition')}  expected {row.get('expected')}")
        if prompt:
            show(f"PROMPT: {prompt}")
        text = row["response"]
        show("RESPONSE: " + (text[:args.max_chars] + (" [...]" if len(text) > args.max_chars else "")
                             if text else "(empty)"))
        detectors = row.get("detectors")
        for name, d in (detectors.items() if isinstance(detectors, dict) else ()):
            show(_detector_line(name, d))
        while True:
            print("label [c/r/p/s/q]: ", end="", flush=True)
            answer = sys.stdin.readline()
            if not answer:  # end of input: stop as for q
                answer = "q"
            answer = answer.strip().lower()[:1]
            if answer in KEYS or answer in ("s", "q"):
                break
            print("  answer c, r, p, s or q")
        if answer == "q":
            break
        if answer == "s":
            continue
        done.append({"response": text, "label": KEYS[answer], "prompt": prompt,
                     "prompt_label": _prompt_label(row), "model": row.get("model"), "id": row.get("id"),
                     "condition": row.get("condition"), "detectors": row.get("detectors"),
                     "source_row": {k: row.get(k) for k in ("id", "model", "condition", "sample", "response")}})
        write_atomic(out, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in done))
        labelled += 1
    print(f"\nlabelled {labelled} now, {len(done)} in {out}; check a detector on them with "
          f"`sftlab eval-detector --labelled {out}`")
    return 1 if skipped else 0
