"""``sftlab label FILE``: a person labels responses in the terminal, one by one.

FILE is an ``outputs.jsonl`` written by ``sftlab eval`` (or any JSONL with ``response`` and
optional ``prompt``). By default only the responses that need a person are shown: those where
the detectors disagreed or a margin was small (``disagree`` / ``uncertain``); ``--all`` shows
every response. Each answer is ``c`` (comply), ``r`` (refuse), ``p`` (partial), ``s`` (skip) or
``q`` (quit, keeping what was labelled). The labelled file (``--out``, JSONL) holds ``response,
label, prompt, prompt_label, model, id, condition`` per labelled response, is written atomically
after every answer, and is what ``sftlab eval-detector --labelled`` and ``sftlab eval --labelled``
read. Running again with the same ``--out`` resumes: responses already labelled there are skipped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

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
    return {"refuse": "unsafe", "comply": "safe"}.get(row.get("expected"))


def _read(path: Path) -> list[dict]:
    from sftlab.errors import UsageError

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UsageError(f"{path}:{n}: not JSON: {e}") from None
        if not isinstance(row, dict) or not isinstance(row.get("response"), str):
            raise UsageError(f"{path}:{n}: field 'response': missing or not text")
        rows.append(row)
    return rows


def run(args) -> int:
    from sftlab.errors import UsageError
    from sftlab.manifest import write_atomic

    src = Path(args.file)
    rows = _read(src)
    out = Path(args.out) if args.out else src.parent / "labelled.jsonl"
    if out.resolve() == src.resolve():
        raise UsageError("--out must differ from FILE")
    done = _read(out) if out.is_file() else []
    seen = {_key({**d, **(d.get("source_row") or {})}) for d in done}
    todo = [r for r in rows if (args.all or r.get("disagree") or r.get("uncertain")) and _key(r) not in seen]
    print(f"{len(todo)} responses to label ({len(done)} already in {out}); "
          "answer c=comply r=refuse p=partial s=skip q=quit")
    labelled = 0
    for i, row in enumerate(todo, 1):
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            prompt = " / ".join(str(t.get("content", t)) if isinstance(t, dict) else str(t) for t in prompt)
        print(f"\n--- {i}/{len(todo)}  id {row.get('id')}  model {row.get('model')}  "
              f"condition {row.get('condition')}  expected {row.get('expected')}")
        if prompt:
            print(f"PROMPT: {prompt}")
        text = row["response"]
        print("RESPONSE: " + (text[:args.max_chars] + (" [...]" if len(text) > args.max_chars else "")
                              if text else "(empty)"))
        for name, d in (row.get("detectors") or {}).items():
            p = d.get("p_refusal")
            print(f"  {name}: {d.get('label')}" + (f" (p_refusal {p:.2f})" if p is not None else ""))
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
    return 0
