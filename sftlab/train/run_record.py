"""What a training run records in its manifest (run.json): the sections written before the first
step (:func:`record_manifest`), the segment each invocation adds (:func:`start_segment`), and how
the run ended (:func:`finish_manifest`, :func:`stop_on_nan`, :func:`stop_on_signal`: the outcome
with its exit code and the rule that decided it)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from sftlab.manifest import config_hash, environment, read_run_json, tokenizer_fingerprint, update_manifest
from sftlab.train.checkpoint import latest_checkpoint, verify_checkpoint
from sftlab.train.config import TrainConfig
from sftlab.train.metrics import read_metrics
from sftlab.train.data import TrainData, gen_eval_settings, heldout_encoding
from sftlab.train.rundir import segments


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def start_segment(run: Path, old: dict | None, start: int, changed: list[dict]) -> None:
    recorded = read_run_json(run, missing_ok=True, damaged_ok=True) or {}
    update_manifest(run, segments=segments(old, start, recorded, changed))


def stop_on_nan(step: int, loss: float, grad_norm: float | None, run: Path, metrics, main: bool) -> int:
    last = latest_checkpoint(run)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
    message = (f"step {step}: the loss is {loss} (gradient norm {grad_norm}); training stopped before "
               f"this step changed any weight; {where}. Lower optim.lr or check the data of this "
               "step, then rerun with --resume.")
    metrics.write({"step": step, "error": message})
    metrics.close()
    if main:
        print(f"sftlab train: {message}", file=sys.stderr)
        update_manifest(run, outcome={"train": train_outcome(
            run, step - 1, f"non-finite loss at step {step}", (1, "stopped on a NaN/inf loss"))})
    return 1


def stop_on_signal(run: Path, step: int, stop: str, signum, metrics, main: bool) -> int:
    """After a stop signal: check the checkpoint just written, record why the run stopped; 128 + signum."""
    code = 128 + int(signum)
    metrics.close()
    if main:
        last = latest_checkpoint(run)
        problems = verify_checkpoint(last) if last is not None else ["no checkpoint was written"]
        saved = (f"{last} written and verified" if not problems
                 else f"{last} fails its check ({'; '.join(problems[:2])})")
        segs = (read_run_json(run, missing_ok=True, damaged_ok=True) or {}).get("segments") or []
        if segs:
            segs[-1]["to_step"] = step
        update_manifest(run, segments=segs, outcome={"train": train_outcome(
            run, step, stop, (code, f"{stop}; checkpoint {saved}; continue with --resume"))})
        print(f"sftlab train: {stop}; checkpoint {saved}", file=sys.stderr)
    return code


# -- manifest ------------------------------------------------------------------------------------

def record_manifest(run: Path, cfg: TrainConfig, data: TrainData, model, tokenizer, template,
                    role_tokens: dict, base: tuple = (None, {})) -> None:
    """Write the run's data, template, tokenizer, masking, packing, mixture and config sections;
    ``base`` is ``weights_sha256`` of the base model (its hash and per-file stamps)."""
    trained = int(data.table.trained.sum())
    total = int(data.table.lengths.sum())
    source = getattr(model, "sftlab_source", None) or {}
    sections = dict(
        kind="train", data={"splits": data.splits, "failed_checks": data.failed_checks,
                            "store": data.store_info},
        template={**template.describe(), "role_tokens": role_tokens},
        tokenizer=tokenizer_fingerprint(tokenizer),
        masking={"mode": "last_turn" if cfg.encoding.last_turn_only else "all_assistant_turns",
                 "max_length": cfg.encoding.max_length, "last_turn_only": cfg.encoding.last_turn_only,
                 "reasoning": cfg.encoding.reasoning, "trained_tokens": trained, "total_tokens": total,
                 "trained_token_share": round(trained / total, 6) if total else None,
                 "turns": cfg.encoding.turns, "overflow": cfg.encoding.overflow,
                 "mask_source": cfg.encoding.mask_source, "heldout_encoding": heldout_encoding(cfg),
                 **data.table.encoding_summary()},
        packing={**data.epoch_rows(0).stats(cfg.row_length, cfg.packing.mode),
                 "attention": ("causal SDPA per example" if getattr(model, "sftlab_packed_attention", False)
                               else "block-diagonal mask")},
        mixture={**data.mixture.describe(data.slices),
                 "sampling": {"weights": cfg.mixture.sampling_weights, "temperature": cfg.mixture.temperature}},
        model={"base": cfg.model.path, "dtype": cfg.model.dtype, "gguf_file": cfg.model.gguf_file,
               "lora": cfg.lora.model_dump() if cfg.lora.enabled else None,
               "neftune": {"alpha": cfg.optim.neftune_alpha, "length": "per example",
                           "scale": "alpha / sqrt(L * hidden_size)"} if cfg.optim.neftune_alpha else None,
               "notes": source.get("notes") or source.get("note"), "source": source or None,
               "base_sha256": base[0], "base_files": base[1] or None},
        config=cfg.to_dict(), config_sha256=config_hash(cfg.to_dict()), seed=cfg.seed, **environment())
    if data.policy is not None:
        sections["policy"] = {**data.policy.manifest_entry(), "path": cfg.data.policy}
    if data.gen_prompts:
        sections["decoding"] = [{"purpose": "gen_eval", "prompts": list(cfg.eval.prompts), **gen_eval_settings(cfg)}]
    update_manifest(run, **sections)


def train_outcome(run: Path, step: int, stop: str | None, exit_rule: tuple[int, str] | None) -> dict:
    """The manifest's ``outcome.train``: steps, why it stopped, the last logged train loss, the last
    eval loss per slice, and the exit code with the rule that decided it."""
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r and "step" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    out = {"steps": step, "stopped": stop or "done", "final_train_loss": losses[-1] if losses else None,
           "eval_loss": evals[-1] if evals else None}
    if exit_rule is not None:
        out.update(exit_code=exit_rule[0], exit_reason=exit_rule[1])
    return out


def finish_manifest(run: Path, cfg: TrainConfig, step: int, stop: str | None,
                    exit_rule: tuple[int, str] | None = None) -> None:
    realised = [{"epoch": r["epoch"], "slices": r["realised_mixture"]}
                for r in read_metrics(run / "metrics.jsonl") if "realised_mixture" in r]
    segs = (read_run_json(run, missing_ok=True, damaged_ok=True) or {}).get("segments") or []
    if segs:
        segs[-1]["to_step"] = step
    update_manifest(run, mixture={"realised": realised}, segments=segs,
                    outcome={"train": train_outcome(run, step, stop, exit_rule)},
                    artifacts={"final": "final", "metrics": "metrics.jsonl", "curves": "curves.png",
                               "checkpoints": "checkpoints", "quarantine": "data/quarantine.jsonl",
                               "stats": "data/stats.json",
                               "training": {"steps": step, "stopped": stop or "done"}})
