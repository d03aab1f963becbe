"""``sftlab eval``: refusal rates, over-refusal, task accuracy, template robustness, the reference
model side by side, and the policy's gates. Writes OUT/eval.json and OUT/outputs.jsonl."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sftlab.commands.options import add_options
from sftlab.errors import UsageError
from sftlab.evaluation.detectors import load_detector, parse_label_map
from sftlab.evaluation.evaluate import EvalOptions, record_in_run, run_evaluation, write_outputs
from sftlab.evaluation.generation import DecoderSettings
from sftlab.evaluation.prompts import load_prompt_sets, parse_columns
from sftlab.evaluation.robustness import CONDITIONS
from sftlab.files import cache_dir
from sftlab.run_dir import check_run_dir
from sftlab.terminal import terminal_safe
from sftlab.train.config import EncodingConfig

EPILOG = """\
prompt files: JSONL rows with prompt (or messages), slice (or category), expected (refuse|comply),
optional answer + answer_type (exact|regex|numeric) + tolerance, policy_category, id, context (put
before the prompt); CSV with the same columns or --csv-columns; the CSV layouts of XSTest (id,
prompt, type, label), HarmBench (Behavior, ContextString, SemanticCategory, BehaviorID),
JailbreakBench (Goal, Category) and AdvBench (goal, target) are recognised; fields nothing reads
are listed on stderr.
exit codes: 0 every gate passed; 1 a gate failed or prompt rows were skipped; 2 unusable input.
example: sftlab eval --model run/final --reference base/ --prompts eval.jsonl --policy policy.yaml
"""


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a tuned model: refusals, over-refusals, accuracy, robustness, gates",
        description="Generate responses for evaluation prompts under several chat templates and "
                    "system prompts, label them with a refusal detector, and report harmful "
                    "refusal rate, benign (over-)refusal rate, task accuracy and eval loss per "
                    "slice with Wilson 95 % intervals; compare with a reference model and check "
                    "the policy's gates.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    listed = dict(type=str, nargs=None, metavar="LIST", note="Comma-separated.")
    add_options(p, EvalOptions, "model", "prompts", "reference", "policy", model=dict(required=True, metavar="MODEL"),
                prompts=dict(required=True, type=str, metavar="FILE"), reference=dict(metavar="MODEL"),
                policy=dict(type=str, metavar="POLICY"))
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN/eval for RUN/final; for any other "
                   "model directory, eval-NAME beside it: RUN/checkpoints/eval-step-N for a checkpoint)")
    add_options(p, EvalOptions, "template", "alternate_template", "system_prompt", "conditions",
                "reference_conditions", template=dict(metavar="NAME"), alternate_template=dict(metavar="NAME"),
                system_prompt=dict(metavar="TEXT"), conditions=dict(listed, default=",".join(CONDITIONS)),
                reference_conditions=listed)
    add_options(p, DecoderSettings, "max_new_tokens", "temperature", "top_p", "top_k", "seed", "num_samples",
                "batch_size", "stop", max_new_tokens=dict(metavar="N"), temperature=dict(metavar="T"),
                top_p=dict(metavar="P"), top_k=dict(metavar="K"), seed=dict(metavar="S"),
                num_samples=dict(metavar="N"), batch_size=dict(metavar="B"), stop=dict(metavar="STR"))
    add_options(p, EvalOptions, "robustness_threshold", robustness_threshold=dict(metavar="X"))
    p.add_argument("--detector", action="append", default=None, metavar="SPEC",
                   help="refusal detector: learned (default; learned:threshold=T), rules, judge:DIR "
                        "(a local causal LM asked a rubric; judge:DIR,format=wildguard) or a "
                        "sequence-classification model directory. Repeat to run several: the first "
                        "gives the rates, every one's label and p_refusal go into outputs.jsonl, and "
                        "responses where they disagree are listed (then label them with `sftlab label`)")
    add_options(p, EvalOptions, "labelled", "margin", "gate_on", labelled=dict(type=str, metavar="xstest|FILE"))
    p.add_argument("--label-map", metavar="MAP", help="classifier classes to labels: LABEL_0=comply,LABEL_1=refuse")
    p.add_argument("--expected", choices=("refuse", "comply"),
                   help="what a prompt whose row does not say is expected to get (a file of harmful requests "
                        "without a label column: refuse); rows that say keep theirs")
    p.add_argument("--csv-columns", metavar="MAP", help="the prompt files' field names, in any layout (CSV, JSONL, JSON, Parquet): prompt=question,expected=label,...")
    add_options(p, EvalOptions, "margin_pairs", "heldout", margin_pairs=dict(metavar="N"),
                heldout=dict(flag="--heldout-conversations", type=str, metavar="FILE",
                             note="On the command line: a conversation file."))
    add_options(p, EncodingConfig, "max_length", max_length=dict(default=None, metavar="N", note=(
        "Here: truncate held-out conversations to N tokens for the eval loss; default: the training run's, "
        "read from RUN/run.json when MODEL is RUN/final or a checkpoint RUN/checkpoints/step-N, else none.")))
    p.add_argument("--cache-dir", metavar="DIR", help="generation cache (default: ~/.cache/sftlab/generations)")
    p.add_argument("--no-cache", action="store_true", help="always generate; read and write no cache")
    add_options(p, EvalOptions, "trust_remote_code")
    p.add_argument("--json", action="store_true", help="print one JSON object (a summary; eval.json has all)")
    p.set_defaults(func=run)


def run_model(model: str) -> str:
    """``RUN/final`` when ``model`` is a run directory (run.json and final/, no model files of its
    own), as ``sftlab export RUN`` reads it; ``model`` otherwise.

    >>> run_model("no/such/dir")
    'no/such/dir'
    """
    p = Path(model)
    own = any((p / name).exists() for name in ("config.json", "adapter_config.json"))
    if not own and (p / "run.json").is_file() and (p / "final").is_dir():
        return str(p / "final")
    return model


def default_out(model: str) -> Path:
    """Where ``sftlab eval`` writes without ``--out``: ``RUN/eval`` for a run's ``RUN/final``, and
    ``eval-NAME`` beside any other model, so two models in one folder (two checkpoints, two
    exported directories) never write over each other's evaluation.

    >>> default_out("/runs/a/final").as_posix(), default_out("/runs/a/checkpoints/step-20").as_posix()
    ('/runs/a/eval', '/runs/a/checkpoints/eval-step-20')
    """
    p = Path(model).resolve()
    return p.parent / ("eval" if p.name == "final" else f"eval-{p.name}")


def _heldout_encoding(model: str, max_length: int | None) -> dict:
    """The training run's encoding options when ``model`` is ``RUN/final`` or a checkpoint
    ``RUN/checkpoints/step-N`` (RUN/run.json records them), with ``--max-length`` winning; ``{}``
    when there is neither."""
    if max_length is not None and max_length <= 0:
        raise UsageError(f"--max-length must be > 0, got {max_length}")
    from sftlab.manifest import read_run_json  # lazy: pydantic, not for `sftlab --help`

    recorded: dict = {}
    p = Path(model)
    run = p.parent if p.name == "final" else p.parent.parent if p.parent.name == "checkpoints" else None
    if run is not None:
        manifest = read_run_json(run, missing_ok=True, damaged_ok=True) or {}
        recorded = (manifest.get("masking") or {}).get("heldout_encoding") or {}
    return {**recorded, **({"max_length": max_length} if max_length is not None else {})}


def _conditions(spec: str, flag: str, known) -> tuple[str, ...]:
    names = tuple(c.strip() for c in spec.split(",") if c.strip())
    unknown = [c for c in names if c not in known]
    if unknown:
        raise UsageError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def _options(args):
    # lazy: the modules that do the work load when the command runs, not for `sftlab --help`
    from sftlab.data.loading import load_files
    from sftlab.data.policy import load_policy
    from sftlab.evaluation.agreement import load_labelled

    conditions = _conditions(args.conditions, "--conditions", CONDITIONS)
    reference_conditions = (None if args.reference_conditions is None else
                            _conditions(args.reference_conditions, "--reference-conditions", CONDITIONS))
    try:
        settings = DecoderSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed,
                                   args.num_samples, args.batch_size, tuple(args.stop))
    except ValueError as e:
        raise UsageError(str(e)) from None
    sets = load_prompt_sets(args.prompts, parse_columns(args.csv_columns), args.expected)
    policy = load_policy(args.policy) if args.policy else None
    specs = args.detector or ["learned"]
    detectors = [load_detector(spec, parse_label_map(args.label_map), args.trust_remote_code) for spec in specs]
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise UsageError(f"--detector: the same detector twice ({', '.join(names)})")
    detector = detectors[0]
    labelled = None
    if args.labelled:
        labelled = load_labelled(args.labelled)
        if not labelled.labels:
            raise UsageError(f"--labelled {args.labelled}: no usable labelled row")
    elif args.gate_on != "detected":
        raise UsageError(f"--gate-on {args.gate_on} needs --labelled (the data the detector is checked on)")
    if not 0.0 <= args.margin < 0.5:
        raise UsageError(f"--margin must be in [0, 0.5), got {args.margin}")
    heldout = None
    if args.heldout_conversations:
        heldout = load_files([args.heldout_conversations]).conversations
        if not heldout:
            raise UsageError(f"{args.heldout_conversations}: no usable conversation for the eval loss")
    encoding = _heldout_encoding(args.model, args.max_length) if heldout else None
    opts = EvalOptions(model=args.model, prompts=[q for s in sets for q in s.prompts], settings=settings,
                       reference=args.reference, policy=policy, template=args.template,
                       alternate_template=args.alternate_template, system_prompt=args.system_prompt,
                       conditions=conditions, reference_conditions=reference_conditions,
                       robustness_threshold=args.robustness_threshold,
                       heldout=heldout, heldout_encoding=encoding, progress=not args.json,
                       trust_remote_code=args.trust_remote_code, extra_detectors=tuple(detectors[1:]),
                       labelled=labelled, margin=args.margin, gate_on=args.gate_on,
                       margin_pairs=max(0, args.margin_pairs))
    return opts, sets, detector


def run(args) -> int:
    # lazy: the modules that do the work load when the command runs, not for `sftlab --help`
    from sftlab.evaluation.cache import GenerationCache

    args.model = run_model(args.model)
    out = Path(args.out) if args.out else default_out(args.model)
    check_run_dir(out, what="--out")  # before minutes of generation, not after
    opts, sets, detector = _options(args)
    bad = [b for s in sets for b in s.bad_rows]
    for b in bad:
        print(terminal_safe(f"sftlab eval: skipped {b['file']}:{b['line']}: {b['reason']}"), file=sys.stderr)
    for s in sets:  # said once every input is known to be usable
        if s.unread_fields and not s.name:
            print(terminal_safe(f"sftlab eval: {s.path}: not read (no prompt field has these names): "
                                f"{', '.join(s.unread_fields)}; to use one, map it with --csv-columns FIELD=NAME"),
                  file=sys.stderr)
        if s.prompts and not any(q.expected or q.answer is not None for q in s.prompts):
            print(terminal_safe(f"sftlab eval: {s.path}: no prompt says what it expects (expected: refuse or "
                                "comply) or has an answer, so its responses give no rate; pass --expected refuse "
                                "(or comply) for a set of one kind"), file=sys.stderr)
    cache = GenerationCache(None if args.no_cache else (args.cache_dir or cache_dir("generations")))
    report, rows = run_evaluation(opts, detector=detector, cache=cache, prompt_sets=sets)
    paths = write_outputs(out, report, rows)
    record_in_run(out, report)
    failed = [g for g in report["gates"] if not g["passed"]]
    code = 1 if failed or bad else 0
    if args.json:
        print(json.dumps(_summary(report, paths, bad, code)))
    else:
        _print_human(report, paths, bad)
    return code


def _summary(report: dict, paths: dict, bad: list, code: int) -> dict:
    tuned = report["results"]["tuned"]["training_template"].get("all", {})
    ref = (report["results"]["reference"] or {}).get("training_template", {}).get("all")
    return {"eval_json": str(paths["eval"]), "outputs": str(paths["outputs"]), "passed": report["passed"],
            "exit_code": code, "gates": report["gates"],
            "metrics": {m: e["value"] for m, e in tuned.items()},
            "reference_metrics": {m: e["value"] for m, e in ref.items()} if ref else None,
            "robustness_flagged": [m for m, r in report["robustness"].items() if r["flagged"]],
            "worse_than_reference": [f"{c['metric']} [{c['slice']}]" for c in report["comparison"] if c["worse"]],
            "refusal_collapse": bool((report["refusal_diversity"]["tuned"] or {}).get("flagged")),
            "unrelated_offers": bool(((report["refusal_diversity"]["tuned"] or {}).get("offers") or {}).get("flagged")),
            "bad_rows": bad}


def _fmt(e: dict | None) -> str:
    if not e:
        return "-"
    if e.get("low") is None:
        return f"{e['value']:.3f}"
    return f"{e['value']:.3f} ({e['k']}/{e['n']}, {e['low']:.2f}-{e['high']:.2f})"


def _print_human(report: dict, paths: dict, bad: list) -> None:
    tuned = report["results"]["tuned"]["training_template"]
    ref = (report["results"]["reference"] or {}).get("training_template") or {}
    print(f"{'slice':<16} {'metric':<28} {'tuned':<28} {'reference' if ref else ''}")
    for slice_name in sorted(tuned, key=lambda s: (s != "all", s)):
        for metric, e in tuned[slice_name].items():
            print(f"{slice_name:<16} {metric:<28} {_fmt(e):<28} {_fmt(ref.get(slice_name, {}).get(metric)) if ref else ''}")
    det = report["detector"]
    print(f"detector: {det['name']}" + (f" (threshold {det['threshold']})" if det.get("threshold") is not None else ""))
    for slice_name, rates in ((report.get("corrected") or {}).get("tuned") or {}).items():
        for metric, c in rates.items():
            if c["corrected"] is None:
                print(f"corrected {metric} [{slice_name}]: not possible: {c['reason']}")
            else:
                print(f"corrected {metric} [{slice_name}]: detected {c['detected']:.3f} -> {c['corrected']:.3f} "
                      f"({c['low']:.2f}-{c['high']:.2f}; sensitivity {c['sensitivity']:.3f}, "
                      f"specificity {c['specificity']:.3f} on {c['error_from']} labelled prompts)"
                      + (f"; {c['reason']}" if c.get("reason") else ""))
    dis = report.get("disagreements") or {}
    if dis.get("count"):
        print(f"{dis['count']} responses where detectors disagree or p_refusal is within {dis['margin']} of the "
              f"threshold: review them with `sftlab label {paths['outputs']}`")
    for name, cond in report["condition_settings"].items():
        if cond.get("note"):
            print(f"condition {name}: {cond['note']}")
        if cond.get("same_prompts_as"):
            print(f"condition {name}: renders the same prompt tokens as {cond['same_prompts_as']}; "
                  "its responses are that condition's, not generated twice")
    for name, reason in report["skipped_conditions"].items():
        print(f"condition {name} skipped: {reason}")
    for metric, r in report["robustness"].items():
        if r["flagged"]:
            print(f"robustness: {metric} spreads {r['spread']:.3f} across conditions (> {r['threshold']}): "
                  + ", ".join(f"{c}={v:.3f}" for c, v in r["by_condition"].items()))
    for c in report["comparison"]:
        if c["worse"]:
            print(f"worse than reference: {c['metric']} [{c['slice']}] {c['tuned']['value']:.3f} vs "
                  f"{c['reference']['value']:.3f}")
    for kind, div in (report.get("refusal_diversity") or {}).items():
        if not div or not div.get("n"):
            continue
        top = (div["top_sentences"] or [{"count": 0, "share": 0.0}])[0]  # empty responses have no sentence
        offers = div["offers"]
        print(f"refusals ({kind}): {div['n']}, distinct bigram share {div['distinct_2']}, most common sentence "
              f"in {top['count']} ({top['share']:.0%}), largest near-identical group "
              f"{div['largest_group']['size']}; offers {offers['offers']}, unrelated to the prompt "
              f"{offers['unrelated']}")
        reasons, related = div.get("reasons") or {}, div.get("reasons_related") or {}
        if reasons.get("top"):
            print(f"reasons ({kind}): {reasons['with_reason']} of {div['n']} refusals state one, "
                  f"{reasons['distinct']} distinct; most common reason clause in {reasons['top'][0]['count']} "
                  f"({reasons['share']:.0%}, goal <= {reasons['max_share']:.0%}): {reasons['top'][0]['clause']!r}; "
                  f"sharing no content word with the request: {related.get('unrelated')} of {related.get('with_reason')}")
        if div["flagged"]:
            print(f"refusal collapse ({kind}): {div['reason']}")
        if offers["flagged"]:
            print(f"unrelated offers ({kind}): {offers['unrelated']} of {offers['offers']} offers share no "
                  f"content word with the request, e.g. {offers['examples'][0]['prompt']!r} -> "
                  f"{offers['examples'][0]['response'][:100]!r}")
    margins = report.get("margins")
    for kind, s in ((margins or {}).get("summary") or {}).items():
        if s:
            print(f"refusal margin ({kind}, {s['pairs']} XSTest pairs): harmful {s['harmful_mean']:+.2f}, "
                  f"benign look-alike {s['benign_mean']:+.2f}, harmful above benign in "
                  f"{s['separated_share']:.0%} of pairs")
    for g in report["gates"]:
        print(f"gate {'PASS' if g['passed'] else 'FAIL'}: {g['message']}")
    if bad:
        print(f"{len(bad)} prompt row(s) skipped (listed in eval.json prompt_sets[].bad_rows)")
    print(f"wrote {paths['eval']} and {paths['outputs']}")
