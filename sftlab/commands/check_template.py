"""``sftlab check-template``: verify a tokenizer's template masks on a built-in probe set."""
from __future__ import annotations

import json

from sftlab.commands.options import add_options
from sftlab.errors import UsageError
from sftlab.train.config import TrainConfig


def register(sub) -> None:
    p = sub.add_parser(
        "check-template", help="verify masks and control tokens of a chat template on a probe set",
        description="Render a built-in probe set (system prompt, multi-turn, content spelling "
                    "special tokens, non-ASCII text, content a filter would change; tool schemas, a tool call with "
                    "its result, and reasoning) and report, per assistant turn, what the generation "
                    "prompt ends with, what the model must generate (the template's rendering of the turn "
                    "after its prompt) and what is trained, and whether any control token came from "
                    "content; for a template with {% generation %} markers, each run of tokens the markers and "
                    "sftlab train differently, per turn. Every probe is listed: a capability the template has no "
                    "format for (tools, reasoning) as unsupported, a shape it refuses (a system prompt) as skipped; "
                    "neither is reported as passed. Exit 1 on any difference from the contract, and when a "
                    "required probe could not be checked (marker differences are reported, not failed).")
    add_options(p, TrainConfig, "tokenizer", "template", tokenizer=dict(required=True, metavar="TOKENIZER"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom tokenizer code (off by default)")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: the modules that do the work load when the command runs, not for `sftlab --help`
    from sftlab.model.loading import load_tokenizer_and_template
    from sftlab.tokens.masks import check_template
    from sftlab.tokens.templates import TemplateError

    tok, template = load_tokenizer_and_template(args.tokenizer, args.template,
                                                trust_remote_code=args.trust_remote_code)
    try:
        results = check_template(tok, template)
    except TemplateError as e:
        raise UsageError(str(e)) from None
    bad = [r for r in results if r["status"] == "mismatch"]
    summary = {s: [r["probe"] for r in results if r["status"] in group]
               for s, group in (("checked", ("ok", "expanded")), ("failed", ("mismatch",)),
                                ("unsupported", ("unsupported",)), ("skipped", ("skipped",)))}
    if args.json:
        print(json.dumps({"template": template.describe(), "ok": not bad, "probes": results, **summary}))
        return 1 if bad else 0
    print(f"template {template.name}  fingerprint {template.fingerprint[:16]}  "
          f"stop {list(template.end_of_turn) or 'NONE'}")
    for r in results:
        print(f"[{r['status'].upper():11}] {r['probe']}" + (f": {r['reason']}" if r.get("reason") else ""))
        for t in r["turns"]:
            mark = "exact" if t["exact"] else "MISMATCH"
            how = " (own example: the template re-renders this turn later)" if t["expanded"] else ""
            print(f"    assistant #{t['message_index']}: {mark}{how}")
            print(f"      prompt ends with : {t['prompt_ends_with']!r}")
            print(f"      must generate    : {t['must_generate']!r}")
            print(f"      trained          : {t['trained_text']!r}")
            if t["after_stop"]:
                print(f"      after the stop   : {t['after_stop']!r} (not trained)")
            for line in t.get("markers", ()):
                print(f"      markers differ   : {line}")
        if "markers" in r and not r["markers"]:
            print("    generation markers: the same trained tokens")
        if r.get("control_tokens_from_content"):
            print(f"    control tokens from content: {r['control_tokens_from_content']}")
    print(f"checked: {', '.join(summary['checked']) or 'nothing'}")
    if summary["unsupported"]:
        print(f"not supported (records that need it are refused): {', '.join(summary['unsupported'])}")
    if summary["skipped"]:
        print(f"not checked (the template refuses the probe): {', '.join(summary['skipped'])}")
    print("OK for what was checked" if not bad else f"{len(bad)} probe(s) failed")
    return 1 if bad else 0
