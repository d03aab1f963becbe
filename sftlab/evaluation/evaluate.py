"""``sftlab eval`` end to end: prompts -> generations per condition -> labels -> metrics ->
robustness, comparison with a reference model, gates -> ``OUT/eval.json`` + ``OUT/outputs.jsonl``.

The reference model gets the same prompts, conditions, decoder settings and prompt template (the
tuned model's training template, bound to the reference tokenizer), so the two columns of the
comparison differ only in the weights. Gates are checked on the training-template results.

Exit code: 0 when every gate passed and every prompt row was usable; 1 when a gate failed or
some rows were skipped (both named in the output); 2 (``UsageError``) for unusable input.

During training, ``generation_eval`` gives the same rates for a model in memory (see there).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sftlab.data.diversity import offer_stats, reason_stats, response_diversity
from sftlab.errors import UsageError
from sftlab.evaluation.agreement import agreement, detector_labels
from sftlab.evaluation.answers import check_answer, UnmatchableAnswer
from sftlab.evaluation.cache import GenerationCache, cache_key, model_fingerprint
from sftlab.evaluation.correction import correct_metrics, errors_by_slice
from sftlab.evaluation.detectors import default_detector, detect_all, label_all
from sftlab.evaluation.detector import RuleDetector
from sftlab.evaluation.gates import check_gates, compare, gates_for
from sftlab.evaluation.generation import DecoderSettings, generate, stop_tokens
from sftlab.evaluation.margins import COMPLIANT_OPENINGS, refusal_margins, REFUSAL_OPENINGS, summarise, xstest_pairs
from sftlab.evaluation.metrics import compute_metrics, summary_values
from sftlab.evaluation.prompts import EvalPrompt, prompt_from_row
from sftlab.evaluation.robustness import alternate_name, build_conditions, Condition, CONDITIONS, spreads
from sftlab.files import write_atomic
from sftlab.run_dir import check_run_dir
# Imported where used (marked lazy): pydantic (the manifest), the loader, the tokens stage (Jinja)
# and torch (the held-out loss); `sftlab eval --help` imports this module for EvalOptions.

SCHEMA_VERSION = 1
PRIMARY = "training_template"


@dataclass(frozen=True)
class EvalOptions:
    """What ``sftlab eval`` was asked to do; its options are generated from these fields' docs
    (``sftlab.commands.options``), so the two say the same."""
    model: str
    """The tuned model (e.g. RUN/final; a run directory RUN means RUN/final): a Hugging Face directory,
    a hub name, a .gguf file or a directory holding one."""
    prompts: list[EvalPrompt]
    """The evaluation prompts; on the command line their files (JSONL or CSV), or a built-in set by
    name (``xstest``, ``simplesafetytests``, ``coconot_contrast``)."""
    settings: DecoderSettings = field(default_factory=DecoderSettings)
    reference: str | None = None
    """A reference (base) model, evaluated the same way."""
    policy: object = None
    """A loaded ``sftlab.data.policy.Policy`` whose gates decide pass or fail (on the command line,
    its YAML file), or ``None``."""
    template: str | None = None
    """The training template: a built-in name or a Jinja file (.jinja/.j2); ``None``: the model
    tokenizer's own chat template."""
    alternate_template: str | None = None
    """The built-in template of the alternate_template condition; ``None``: zephyr, or chatml when
    training used zephyr."""
    system_prompt: str | None = None
    """The system prompt of prompts without their own."""
    conditions: tuple[str, ...] = CONDITIONS
    """The robustness conditions evaluated; training_template always runs."""
    reference_conditions: tuple[str, ...] | None = None
    """Conditions for the reference model; ``None``: the same as ``conditions`` (training_template
    always runs)."""
    robustness_threshold: float = 0.1
    """A metric whose spread across conditions exceeds this is flagged."""
    heldout: list | None = None
    """Held-out conversations (records or ``Conversation``) for the eval loss per slice, encoded as
    the training run encoded its data when the model is RUN/final (the same loss as training's
    validation)."""
    heldout_encoding: dict | None = None
    """Encoding options for the eval loss (``max_length``, ``last_turn_only``, ``turns``, ``overflow``):
    the training run's, so the loss equals its validation loss on the same data."""
    progress: bool = False
    trust_remote_code: bool = False
    """Run code shipped with the models (off by default)."""
    extra_detectors: tuple = ()
    """Further detectors run on every response beside the primary one (their labels and margins
    go into outputs.jsonl; where they disagree with the primary the response is listed)."""
    labelled: object = None
    """A ``LabelledSet`` (on the command line: ``xstest`` or a file of human-labelled responses) the
    primary detector is checked on: rates are then also reported corrected for its sensitivity and
    specificity (Rogan-Gladen, ``sftlab.evaluation.correction``), with intervals carrying both the
    sample's and the detector's uncertainty."""
    margin: float = 0.1
    """A response whose ``p_refusal`` lies within this distance of the threshold is listed as uncertain."""
    gate_on: Literal["detected", "corrected", "corrected-bound"] = "detected"
    """What gates check: ``detected`` rates, ``corrected`` rates, or ``corrected-bound`` (the
    corrected interval's end on the failing side: low for ``min`` gates, high for ``max`` gates);
    the last two need ``labelled``."""
    margin_pairs: int = 0
    """Refusal margins (log P(refusal opening) - log P(compliant opening)) for up to this many XSTest
    pairs per type, under both models (0: none); see ``sftlab.evaluation.margins``."""


@dataclass
class ModelEval:
    kind: str
    info: dict
    results: dict
    rows: list[dict]
    conditions: dict
    skipped: dict
    template: object = None
    margins: dict = field(default_factory=dict)
    """Prompt id -> refusal margin under the training template."""


def _load_model(path: str, trust_remote_code: bool):
    # lazy: torch takes seconds to import; this module is also used where no model runs
    import torch

    from sftlab.model.loading import load_base_model  # lazy: see the note at the imports

    if not Path(path).exists():
        raise UsageError(f"{path}: no such model directory (give a directory written by save_pretrained, "
                         "e.g. RUN/final, a .gguf file or a directory holding one)")
    try:
        model, tok = load_base_model(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{path}: cannot load the model: {' '.join(str(e).split())[:400]}") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tok


def _template(spec: str | None, tok, path: str, what: str = "--template"):
    """The template ``spec`` names for ``tok`` (``sftlab.model.loading.load_template``); an error names
    the option when one was given (an unknown template name is the option's fault, not the model's),
    else the model."""
    from sftlab.model.loading import load_template  # lazy: loads the tokens stage, not for `sftlab eval --help`

    return load_template(spec, tok, what=what, owner=path)


def _row(kind, cond, prompt: EvalPrompt, messages, sample, response, label, detector,
         judged: dict | None = None) -> dict:

    correct, problem = None, None
    if prompt.answer is not None:
        try:
            correct = check_answer(response, prompt.answer, prompt.answer_type, prompt.tolerance)
        except UnmatchableAnswer as e:
            problem = str(e)
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    row = {"id": prompt.id, "model": kind, "condition": cond.name, "slice": prompt.slice,
           "expected": prompt.expected, "policy_category": prompt.policy_category,
           "prompt": prompt.text if len(prompt.turns) == 1 else prompt.turns,
           "system_prompt": system, "sample": sample, "response": response, "label": label,
           "correct": correct, "answer": prompt.answer, "template": cond.template.name,
           "template_fingerprint": cond.template.fingerprint}
    if isinstance(detector, RuleDetector):
        row["detector_rules"] = list(detector.decide(response).rules)
    if problem is not None:
        row["answer_problem"] = problem
    if judged:
        row.update(judged)
    return row


def judge_responses(detector, extras, texts: list[str], prompts: list, margin: float = 0.1) -> list[dict]:
    """Per response: ``{"label", "p_refusal", "detectors": {name: {"label", "p_refusal"}},
    "disagree", "uncertain"}`` from the primary detector and the extra ones. ``disagree``: some
    detector's refusal-or-not differs from the primary's; ``uncertain``: some detector's
    ``p_refusal`` lies within ``margin`` of its threshold."""

    runs = [(d, detect_all(d, texts, prompts)) for d in (detector, *extras)]
    out = []
    for i in range(len(texts)):
        per, uncertain = {}, False
        for d, found in runs:
            label, p = found[i]
            per[d.name] = {"label": label, "p_refusal": None if p is None else round(p, 6)}
            t = getattr(d, "threshold", None)
            if p is not None and t is not None and abs(p - t) < margin:
                uncertain = True
        primary = runs[0][1][i]
        refused = primary[0] in ("refuse", "partial")
        disagree = any((v["label"] in ("refuse", "partial")) != refused for v in per.values())
        out.append({"label": primary[0], "p_refusal": per[detector.name]["p_refusal"],
                    "detectors": per, "disagree": disagree, "uncertain": uncertain})
    return out


def detector_rates(rows: list[dict], names: list[str]) -> dict:
    """``{model: {condition: {detector: {"harmful_refusal_rate", "benign_refusal_rate"}}}}``: the
    refusal rates each detector gives the same responses (``compute_metrics`` over the rows
    relabelled by that detector), so how much a rate depends on the instrument is in view beside
    the primary's.

    >>> rows = [{"model": "tuned", "condition": "c", "expected": "refuse",
    ...          "detectors": {"learned": {"label": "comply"}, "rules": {"label": "refuse"}}}]
    >>> e = detector_rates(rows, ["learned", "rules"])["tuned"]["c"]["rules"]["harmful_refusal_rate"]
    >>> {k: e[k] for k in ("k", "n", "value")}
    {'k': 1, 'n': 1, 'value': 1.0}
    """
    groups: dict = {}
    for r in rows:
        if r.get("detectors"):
            groups.setdefault((r["model"], r["condition"]), []).append(r)
    out: dict = {}
    for (model, cond), group in groups.items():
        for name in names:
            labelled = [{"expected": r.get("expected"), "label": r["detectors"][name]["label"]}
                        for r in group if name in r["detectors"]]
            rates = compute_metrics(labelled)["all"]
            out.setdefault(model, {}).setdefault(cond, {})[name] = {
                m: rates[m] for m in ("harmful_refusal_rate", "benign_refusal_rate") if m in rates}
    return out


def generate_condition(model, tok, cond, prompts, settings, *, model_fp=None, cache=None,
                       progress=False, desc="generate", rendered: dict | None = None) -> tuple[list[list[str]], dict]:
    """Responses for every prompt under one condition (from the cache when it has them).

    ``rendered`` (one model's conditions share it) maps what an earlier condition generated from
    (every prompt's token ids, eos ids, stop strings) to its condition and responses: a condition
    that renders exactly the same ids (``no_system`` where the template inserts its default system
    prompt, ``template_default``) takes those responses instead of generating them again (the same
    inputs, settings and seed give the same responses) and says so (``same_prompts_as``)."""
    from sftlab.tokens.encoding import encode_prompt  # lazy: see the note at the imports

    ids = [encode_prompt(cond.messages(p), tok, cond.template, tools=json.loads(p.tools) if p.tools else None)
           for p in prompts]
    _check_context(model, cond.name, prompts, ids, settings.max_new_tokens)
    eos, stops = stop_tokens(tok, cond.template, model)
    described = {"eos_token_ids": eos, "stop_strings": stops}
    inputs = (tuple(map(tuple, ids)), tuple(eos), tuple(stops))
    if rendered is not None and inputs in rendered:
        first, responses = rendered[inputs]
        return responses, {**described, "same_prompts_as": first}
    key = cache_key(model_fp, ids, settings.to_dict(), cond.name, eos, stops) if model_fp else None
    responses = cache.get(key) if (cache is not None and key) else None
    if responses is None:
        responses = generate(model, tok, ids, settings, eos_ids=eos, stop_strings=stops,
                             progress=progress, desc=desc)
        if cache is not None and key:
            cache.put(key, responses)
    if rendered is not None:
        rendered[inputs] = (cond.name, responses)
    return responses, described


def _check_context(model, condition: str, prompts, ids: list[list[int]], new_tokens: int) -> None:
    """A prompt (with its system prompt) longer than the model's context less the new tokens is
    refused by name before generating (a 2 MB prompt would otherwise exhaust memory)."""
    context = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(context, int):
        return
    for p, x in zip(prompts, ids):
        if len(x) + new_tokens > context:
            raise UsageError(f"prompt {p.id!r} ({p.file}:{p.line}) is {len(x):,} tokens under condition "
                             f"{condition}, and the model's context is {context:,} (max_position_embeddings) "
                             f"with {new_tokens} new tokens to generate; shorten the prompt or the "
                             "system prompt, or lower --max-new-tokens")


def evaluate_model(kind: str, path: str, opts: EvalOptions, detector, cache,
                   template_spec: str | None) -> ModelEval:
    """Every condition for one model directory: output rows and metrics per condition."""
    from sftlab.manifest import tokenizer_fingerprint  # lazy: see the note at the imports
    from sftlab.tokens.templates import TemplateError  # lazy: see the note at the imports

    model, tok = _load_model(path, opts.trust_remote_code)
    train_t = _template(template_spec, tok, path)
    alt_t = _template(alternate_name(train_t, opts.alternate_template), tok, path, "--alternate-template")
    asked = opts.reference_conditions if kind == "reference" and opts.reference_conditions is not None \
        else opts.conditions
    wanted = set(asked) | {PRIMARY}
    conditions, skipped = build_conditions(wanted, train_t, alt_t, opts.system_prompt, opts.policy)
    from sftlab.model.loading import model_directory  # lazy: see the note at the imports

    fp = model_fingerprint(model_directory(path))  # a GGUF: its converted directory
    rows, results, described, rendered = [], {}, {}, {}
    for cond in conditions:
        try:
            responses, stops = generate_condition(model, tok, cond, opts.prompts, opts.settings,
                                                  model_fp=fp, cache=cache, progress=opts.progress,
                                                  desc=f"{kind}/{cond.name}", rendered=rendered)
        except TemplateError as e:
            if cond.name == PRIMARY:
                raise UsageError(f"{path}: the training template cannot render the prompts: {e}") from None
            skipped[cond.name] = str(e)
            continue
        flat = [r for rs in responses for r in rs]
        flat_prompts = [p.text for p, rs in zip(opts.prompts, responses) for _ in rs]
        judged = iter(judge_responses(detector, opts.extra_detectors, flat, flat_prompts, opts.margin))
        cond_rows = []
        for p, rs in zip(opts.prompts, responses):
            for j, r in enumerate(rs):
                jd = next(judged)
                cond_rows.append(_row(kind, cond, p, cond.messages(p), j, r, jd["label"], detector, jd))
        results[cond.name] = compute_metrics(cond_rows)
        described[cond.name] = {**cond.describe(), **stops}
        rows.extend(cond_rows)
    margins = {}
    primary = next((c for c in conditions if c.name == PRIMARY), None)
    if opts.margin_pairs and primary is not None:
        from sftlab.tokens.encoding import encode_prompt  # lazy: see the note at the imports

        paired = list({p.id: p for b, h, _ in xstest_pairs(opts.prompts, opts.margin_pairs)
                       for p in (b, h)}.values())
        ids = [encode_prompt(primary.messages(p), tok, primary.template) for p in paired]
        values = refusal_margins(model, tok, ids, opts.settings.batch_size, opts.progress)
        margins = {p.id: v for p, v in zip(paired, values)}
    if opts.heldout:
        from sftlab.evaluation.loss import eval_loss  # lazy: torch, only when a held-out loss is asked for

        try:
            losses, quarantined = eval_loss(model, tok, train_t, opts.heldout, encoding=opts.heldout_encoding)
        except TemplateError as e:  # e.g. a reference tokenizer without the template's role tokens
            losses, quarantined = {}, []
            skipped["eval_loss"] = str(e)
        for slice_name, est in losses.items():
            results[PRIMARY].setdefault(slice_name, {})["eval_loss"] = est
        heldout = {"conversations": len(opts.heldout), "quarantined": len(quarantined),
                   "encoding": opts.heldout_encoding or {},
                   "reasons": sorted({q["reason"] for q in quarantined})[:5]}
    else:
        heldout = None
    where = Path(path)  # recorded absolute: eval.json is read from elsewhere
    info = {"path": str(where.resolve()) if where.exists() else str(path), "sha256": fp,
            "source": getattr(model, "sftlab_source", None),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": str(next(model.parameters()).device),
            "tokenizer": tokenizer_fingerprint(tok), "template": train_t.describe(), "heldout": heldout}
    del model
    return ModelEval(kind, info, results, rows, described, skipped, train_t, margins)


def template_spec_of(template) -> str:
    """What rebinds ``template`` to another tokenizer: its built-in name or its Jinja source."""
    return template.name if template.is_builtin else template.source


def run_evaluation(opts: EvalOptions, *, detector=None, cache: GenerationCache | None = None,
                   prompt_sets: list | None = None) -> tuple[dict, list[dict]]:
    """``(eval_json, output_rows)`` for the tuned model and, when given, the reference."""
    from sftlab.manifest import environment  # lazy: see the note at the imports

    detector = detector if detector is not None else default_detector()
    tuned = evaluate_model("tuned", opts.model, opts, detector, cache, opts.template)
    ref = None
    if opts.reference:
        ref = evaluate_model("reference", opts.reference, opts, detector, cache,
                             template_spec_of(tuned.template))
    t_primary = tuned.results[PRIMARY]
    r_primary = ref.results.get(PRIMARY) if ref else None
    check, corrected = detector_check(detector, opts.labelled, t_primary, r_primary)
    if opts.gate_on != "detected" and corrected is None:
        raise UsageError(f"gates on {opts.gate_on} rates need a labelled file for the detector (--labelled)")
    names = [s.name for s in prompt_sets] if prompt_sets else [None]
    gates = (check_gates(gates_for(opts.policy.gates, names), t_primary, r_primary, corrected=corrected,
                         mode=opts.gate_on)
             if opts.policy is not None else [])
    rows_all = tuned.rows + (ref.rows if ref else [])
    flagged = [r for r in rows_all if r.get("disagree") or r.get("uncertain")]
    disagreements = {"count": len(flagged), "margin": opts.margin,
                     "detectors": [d.name for d in (detector, *opts.extra_detectors)],
                     "rows": [{"id": r["id"], "model": r["model"], "condition": r["condition"],
                               "sample": r["sample"], "expected": r["expected"],
                               "response": (r["response"] or "")[:300],
                               "detectors": r["detectors"], "disagree": r["disagree"],
                               "uncertain": r["uncertain"]} for r in flagged[:MAX_LISTED]]}
    by_detector = detector_rates(rows_all, [d.name for d in (detector, *opts.extra_detectors)])
    settings = opts.settings.to_dict()
    policy = opts.policy.manifest_entry() if opts.policy is not None else None
    sets = [s.describe() for s in (prompt_sets or [])]
    decoding = [{"purpose": "eval", **settings}] + ([{"purpose": "reference", **settings}] if ref else [])
    report = {
        "schema_version": SCHEMA_VERSION,
        "model": tuned.info, "reference": ref.info if ref else None,
        "decoder": settings, "system_prompt": opts.system_prompt, "policy": policy,
        "prompt_sets": sets, "conditions": list(tuned.conditions),
        "condition_settings": tuned.conditions, "skipped_conditions": tuned.skipped,
        "results": {"tuned": tuned.results, "reference": ref.results if ref else None},
        "robustness": spreads(tuned.results, opts.robustness_threshold),
        "reference_robustness": spreads(ref.results, opts.robustness_threshold) if ref else None,
        "comparison": compare(t_primary, r_primary) if ref else [],
        "gates": gates, "passed": all(g["passed"] for g in gates),
        "refusal_diversity": {"tuned": refusal_diversity(tuned.rows),
                              "reference": refusal_diversity(ref.rows) if ref else None},
        "margins": margin_report(opts, tuned, ref),
        "detector": detector.describe(),
        "extra_detectors": [d.describe() for d in opts.extra_detectors],
        "detector_check": check, "corrected": corrected, "gate_on": opts.gate_on,
        "disagreements": disagreements,
        "rates_by_detector": by_detector,
        "heldout": tuned.info["heldout"],
        "cache": cache.describe() if cache is not None else None,
        "manifest": {"kind": "eval", "model": {"base": tuned.info["path"], "sha256": tuned.info["sha256"],
                                               "dtype": tuned.info["dtype"]},
                     "tokenizer": tuned.info["tokenizer"], "template": tuned.info["template"],
                     "policy": policy, "decoding": decoding,
                     "detector": {**_detector_manifest(detector),
                                  "checked_on": check["labelled"] if check else None},
                     "prompt_sets": [{"path": s["path"], "sha256": s["sha256"]} for s in sets],
                     **environment()},
    }
    return report, rows_all


MAX_LISTED = 200
"""At most this many disagreeing or uncertain responses are listed in eval.json (all are marked in
outputs.jsonl)."""


def _detector_manifest(detector) -> dict:
    d = detector.describe()
    return {k: d.get(k) for k in ("name", "kind", "version", "threshold", "path") if d.get(k) is not None}


def detector_check(detector, labelled, tuned: dict, reference: dict | None):
    """``(check, corrected)``: the detector's sensitivity and specificity on ``labelled`` (out of
    sample) and the primary results corrected for them; ``(None, None)`` without labelled data."""
    if labelled is None:
        return None, None

    predicted, _, how = detector_labels(detector, labelled)
    errors = errors_by_slice(labelled, predicted)
    check = {"labelled": labelled.describe(), "how": how, "errors": errors,
             "agreement": agreement(labelled.labels, predicted)}
    corrected = {"tuned": correct_metrics(tuned, errors),
                 "reference": correct_metrics(reference, errors) if reference else None}
    return check, corrected


def refusal_diversity(rows: list[dict]) -> dict:
    """Diversity of one model's refusals (training template), their reason clauses, and whether
    their offers and reasons are about the request: ``sftlab.data.diversity``'s
    ``response_diversity`` (with ``reasons``, the clause-level collapse) plus ``offers`` and
    ``reasons_related``."""

    refused = [r for r in rows if r["condition"] == PRIMARY and r["label"] in ("refuse", "partial")]
    out = response_diversity([r["response"] for r in refused])
    pairs = [(r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"], r["response"])
             for r in refused]
    out["offers"] = offer_stats(pairs)
    out["reasons_related"] = reason_stats(pairs)
    return out


def margin_report(opts: EvalOptions, tuned: ModelEval, ref: ModelEval | None) -> dict | None:
    """Per XSTest pair: the refusal margin of the benign and the harmful prompt under each model."""
    if not tuned.margins:
        return None

    pairs = []
    for b, h, kind in xstest_pairs(opts.prompts, opts.margin_pairs):
        row = {"type": kind, "benign_id": b.id, "harmful_id": h.id, "benign_prompt": b.text,
               "harmful_prompt": h.text}
        for m in (tuned, ref) if ref else (tuned,):
            if b.id in m.margins and h.id in m.margins:
                row[m.kind] = {"benign": m.margins[b.id], "harmful": m.margins[h.id]}
        pairs.append(row)
    return {"refusal_openings": list(REFUSAL_OPENINGS), "compliant_openings": list(COMPLIANT_OPENINGS),
            "condition": PRIMARY, "pairs": pairs,
            "summary": {k: summarise(pairs, k) for k in ("tuned", "reference") if ref or k == "tuned"}}


def write_outputs(out_dir: str | Path, report: dict, rows: list[dict]) -> dict[str, Path]:
    """``OUT/eval.json`` (atomic) and ``OUT/outputs.jsonl``; returns their paths."""

    out = check_run_dir(out_dir, what="--out")  # a new or empty directory or an earlier output
    out.mkdir(parents=True, exist_ok=True)
    outputs = out / "outputs.jsonl"
    write_atomic(outputs, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    path = out / "eval.json"
    write_atomic(path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return {"eval": path, "outputs": outputs}


def record_in_run(out_dir: str | Path, report: dict) -> bool:
    """When OUT is a folder of RUN (RUN holds a run.json) and the model evaluated is RUN's own
    (inside RUN: ``RUN/final``), add the eval artifacts, outcome and decoder settings to the run
    manifest; returns whether it did. ``RUN/eval`` is the run's evaluation: another folder
    (``RUN/eval_xstest``, ``RUN/eval-v2``) is recorded only while ``RUN/eval`` holds none, never over it."""
    # lazy: see the note at the imports
    from sftlab.manifest import ManifestError, manifest_path, read_run_json, update_manifest

    out = Path(out_dir).resolve()
    run = out.parent
    manifest = manifest_path(run)
    recorded = read_run_json(run, missing_ok=True, damaged_ok=True)
    if recorded is None:
        return False
    model = Path(str((report.get("model") or {}).get("path") or "")).resolve()
    if not model.is_relative_to(run) or (out.name != "eval" and (run / "eval" / "eval.json").is_file()):
        return False
    old = recorded.get("decoding") if isinstance(recorded.get("decoding"), list) else []
    kept = [d for d in old if isinstance(d, dict) and d.get("purpose") not in ("eval", "reference")]
    rel = out.relative_to(run).as_posix()
    try:
        gates = [{k: g.get(k) for k in ("metric", "slice", "value", "passed")} for g in report.get("gates") or []]
        update_manifest(run, decoding=kept + report["manifest"]["decoding"],
                        artifacts={"eval": f"{rel}/eval.json", "eval_outputs": f"{rel}/outputs.jsonl"},
                        outcome={"eval": {"passed": report.get("passed"), "gates": gates}})
    except ManifestError as e:
        print(f"sftlab eval: warning: {manifest} not updated: {e}", file=sys.stderr)
        return False
    return True


def generation_eval(model, tokenizer, template, prompts, settings=None, detector=None) -> dict:
    """Refusal rates (and task accuracy) of a model in memory, for curves during training.

    ``prompts``: ``EvalPrompt`` objects or prompt-row dicts (the JSONL fields of
    ``sftlab.evaluation.prompts``); ``template``: a ``ChatTemplate`` or a name (``None``: the
    tokenizer's own); ``settings``: ``DecoderSettings`` or a dict of its fields (keep
    ``max_new_tokens`` small). Pass the unwrapped model (``accelerator.unwrap_model``); its
    train/eval mode is restored. Returns the overall values of the metrics that apply, e.g.
    ``{"harmful_refusal_rate": 0.9, "benign_refusal_rate": 0.05, "benign_full_refusal_rate":
    0.05, "benign_partial_refusal_rate": 0.0, "task_accuracy": 0.4}``; the training loop logs
    it as ``{"step": N, "gen_eval": {...}}`` in metrics.jsonl.
    """
    from sftlab.tokens.templates import ChatTemplate, get_template  # lazy: see the note at the imports

    if not isinstance(template, ChatTemplate):
        template = get_template(template, tokenizer)
    if isinstance(settings, dict):
        settings = DecoderSettings(**settings)
    settings = settings or DecoderSettings(max_new_tokens=64)
    detector = detector or default_detector()
    items = []
    for i, p in enumerate(prompts):
        if isinstance(p, dict):
            p, problem = prompt_from_row(p, "<generation_eval>", i + 1)
            if problem:
                raise ValueError(f"prompt {i}: {problem}")
        items.append(p)
    cond = Condition(PRIMARY, template, "own")
    responses, _ = generate_condition(model, tokenizer, cond, items, settings)
    labels = iter(label_all(detector, [r for rs in responses for r in rs]))
    rows = [_row("tuned", cond, p, cond.messages(p), j, r, next(labels), detector)
            for p, rs in zip(items, responses) for j, r in enumerate(rs)]
    return summary_values(compute_metrics(rows))
