"""``sftlab train CONFIG.yaml [key=value ...] [--resume] [--json]``: fine-tune a model."""
from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

from sftlab.train.config import config_reference_text, load_config
from sftlab.train.metrics import read_metrics

HELP = """Fine-tune a causal language model on conversations with the response-only objective,
as CONFIG.yaml says. Overrides use dotted keys with YAML values, e.g. optim.lr=1e-4
lora.enabled=true data.train=[a.jsonl,b.jsonl]. Runs on one process, or under
`accelerate launch` on several (DDP, CPU gloo or GPUs).

Writes RUN/run.json, RUN/metrics.jsonl, RUN/data/quarantine.jsonl, RUN/checkpoints/step-N,
RUN/final (a Hugging Face model directory) and RUN/curves.png, where RUN is the config's `out`.
Exit codes: 0 trained (records quarantined within data.max_quarantined_share, default 0); 1
trained but a data check failed or more records were quarantined than data.max_quarantined_share
allows, or stopped on a NaN/inf loss (the last good checkpoint stays; rerun with --resume);
2 unusable config or data; 143 / 130 stopped by SIGTERM / SIGINT (after the current step and a
verified checkpoint of it; the command to continue is printed). The summary names the rule that
decided the exit code."""


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune a model (full or LoRA) from a YAML config",
                              description=HELP, epilog="config keys:\n" + config_reference_text(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG.yaml", help="training config (YAML); keys listed below")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override a config key (dotted path), value parsed as YAML")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in the run directory")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue although the config, data, template or tokenizer "
                        "differ from the checkpoint's (refused otherwise); run.json records each "
                        "segment of steps with what it used")
    p.add_argument("--fallback-checkpoint", action="store_true",
                   help="with --resume: when the newest checkpoint fails its checksums, resume from "
                        "the newest intact one (refused otherwise)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with the run's outcome on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from sftlab.train.loop import train  # lazy: torch and accelerate, kept off `sftlab --help`

    code = train(cfg, resume=args.resume, allow_changes=args.allow_changes,
                 fallback_checkpoint=args.fallback_checkpoint, config_path=args.config)
    if int(os.environ.get("RANK", "0")) == 0:
        summary, out = _summary(cfg.out, code), cfg.out
        if code in (130, 143):  # stopped by a signal
            summary["resume_command"] = resume_command(args)
        if args.json:
            print(json.dumps(summary))
        elif code in (0, 1) and "error" not in summary:
            stopped = "" if summary["stopped"] in (None, "done") else f" ({summary['stopped']})"
            loss = "n/a" if summary["loss"] is None else f"{summary['loss']:.4f}"
            print(f"trained {summary['steps']} steps{stopped}: loss {loss}, "
                  f"{summary['quarantined']} quarantined; model in {summary['final']}")
            if summary.get("adapter_base"):
                print(f"{summary['final']} holds a LoRA adapter, not a full model: its base model is "
                      f"recorded as {summary['adapter_base']!r}; sftlab eval and peft's "
                      "AutoPeftModelForCausalLM load it from any directory; set lora.merge_on_save: true "
                      "for a standalone model")
            if summary["failed_checks"]:
                print(f"data checks failed: {', '.join(summary['failed_checks'])} (see {out}/data/stats.json)")
        if not args.json and summary.get("exit_reason"):
            print(f"exit {code}: {summary['exit_reason']}")
        if not args.json and "resume_command" in summary:
            print(f"continue with: {summary['resume_command']}")
    return code


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run: the same config and overrides, with ``--resume``."""

    flags = ["--resume"] + ["--allow-changes"] * args.allow_changes + ["--json"] * args.json
    command = shlex.join(["sftlab", "train", args.config, *args.overrides, *flags])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"{command} (under the same launcher, e.g. accelerate launch ... -m sftlab train ...)"
    return command


def _count_lines(path) -> int:
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _summary(out: str, code: int) -> dict:
    run_dir = Path(out)
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    errors = [r["error"] for r in records if "error" in r]
    quarantine = run_dir / "data" / "quarantine.jsonl"
    summary = {"run": str(run_dir), "exit_code": code,
               "final": str(run_dir / "final") if (run_dir / "final").is_dir() else None,
               "steps": steps[-1]["step"] if steps else 0,
               "loss": steps[-1]["loss"] if steps else None,
               "eval_loss": evals[-1]["eval_loss"] if evals else None,
               "quarantined": _count_lines(quarantine)}
    # lazy: the manifest's schema (pydantic) loads when the command runs, not for `sftlab --help`
    from sftlab.manifest import read_run_json

    m = read_run_json(run_dir, missing_ok=True, damaged_ok=True) or {}
    summary["stopped"] = ((m.get("artifacts") or {}).get("training") or {}).get("stopped")
    summary["failed_checks"] = [c["name"] for c in (m.get("data") or {}).get("failed_checks") or []]
    outcome = (m.get("outcome") or {}).get("train") or {}
    summary["exit_reason"] = outcome.get("exit_reason") if outcome.get("exit_code") == code else None
    adapter = run_dir / "final" / "adapter_config.json"
    if adapter.is_file():
        summary["adapter_base"] = json.loads(adapter.read_text()).get("base_model_name_or_path")
    if errors:
        summary["error"] = errors[-1]
    return summary
