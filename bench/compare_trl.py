#!/usr/bin/env python3
"""sftlab and Hugging Face TRL (SFTTrainer) side by side, on the same data, model and settings.

What it measures, for both, with max_length 1024, packing with examples kept apart (sftlab:
best-fit-decreasing rows + block-diagonal mask; TRL: packing=True, strategy "bfd", padding-free
with position_ids), assistant-only loss (TRL: assistant_only_loss=True with the tokenizer's
{% generation %} template; sftlab: the built-in "chatml" template, which gives the same ids and
masks), fp32 on the CPU, one process for data preparation:

- preparation: chat template + assistant masks + packing, conversations/s and tokens/s, from
  records already in memory (reading the JSONL is timed apart, as "load");
- packing efficiency (example tokens / (rows x max_length)) at 1024 and 4096, and the share of
  the data's tokens that did not make it into a row (TRL truncates long examples, sftlab drops
  whole early turns and quarantines what still does not fit);
- training: real (non-pad) tokens/s of the real training loops (``sftlab.train.loop.train`` and
  ``SFTTrainer.train``) over ``--steps`` optimizer steps after ``--warmup`` steps, one 1,024-token
  row x gradient accumulation 4 (the same tokens per optimizer step), and the peak RSS of the
  process, each run in its own subprocess so that memory is not shared;
- training FLOP utilisation (MFU) of each side against the machine's limit: model FLOP/s counted
  by ``sftlab.train.throughput`` (PaLM's accounting from the model's shape: 6 FLOPs per weight and
  token plus attention within each packed example; the output head at the trained targets, the
  only logits the objective needs, on both sides), divided by the FLOP/s of a timed fp32
  ``torch.mm`` at the model's hidden size, measured in this run before, between and after the
  training runs (the highest is the peak); both sides use the same FLOP count and the same peak;
- the initial loss on the same held-out tokens (held-out conversations that fit in max_length
  without truncation), same weights: both objectives must agree.

Inputs come from ../shared/bench (make_data.py: 20,000 + 500 held-out conversations, seed 0;
make_model.py: 8k byte-level BPE tokenizer + random Llama, hidden 256, 4 layers) and are
generated into --work when missing. Each configuration runs --repeat times (at least 2); the
table shows medians. Timings are printed, never asserted. TRL is a bench-only dependency
(``pip install -e '.[bench]'``); sftlab itself never imports it.

    .venv/bin/python bench/compare_trl.py --out bench-results.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "bench"
GOALS = {"prep_vs_tokenizer": 1.15, "packing": 0.995, "train_cpu": 2.0, "rss": 1.0}
"""preparation time within 1.15x of the tokenizer alone (the goal is at 1M conversations, `scaling.py
--store`), training real tokens per CPU-second >= 2.0x TRL, training peak RSS <= TRL."""


# -- inputs --------------------------------------------------------------------------------------

def ensure_inputs(work: Path, num: int = 20_000) -> tuple[Path, Path]:
    """``(data dir with train.jsonl + heldout.jsonl, model dir)``, generated when missing."""
    data = work / ("data" if num == 20_000 else f"data-{num}")
    model = work / "tiny-llama"
    if not (data / "train.jsonl").exists():
        subprocess.run([sys.executable, str(SHARED / "make_data.py"), "--out-dir", str(data), "-n", str(num)],
                       check=True, stdout=subprocess.DEVNULL)
    if not (model / "tokenizer.json").exists():
        base = ensure_inputs(work)[0] if num != 20_000 else data  # the tokenizer is trained on the 20k set
        subprocess.run([sys.executable, str(SHARED / "make_model.py"), "--data", str(base / "train.jsonl"),
                        "--out", str(model)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return data, model


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# -- workers: each runs in its own process -------------------------------------------------------

def prep_sftlab(a) -> dict:
    """load_files, then ``repeat`` x (encode_all + pack) at max_length; efficiency at each length."""
    from transformers import AutoTokenizer

    from sftlab.tokens.encoding import encode_all
    from sftlab.data.loading import load_files
    from sftlab.tokens.packing import pack, packing_efficiency

    tok = AutoTokenizer.from_pretrained(a.model)
    t0 = time.perf_counter()
    convs = load_files([Path(a.data) / "train.jsonl"]).conversations
    load_s = time.perf_counter() - t0
    times, cpu, efficiency, kept = [], [], {}, {}
    for _ in range(a.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        examples, quarantined = encode_all(convs, tok, "chatml", max_length=a.max_length, num_proc=a.num_proc)
        rows = pack(examples, a.max_length)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    tokens, peak = sum(len(e) for e in examples), peak_rss_mib()  # before the extra encodings below
    floor = tokenizer_floor(tok, convs, a.repeat)
    for length in a.lengths:
        exs = examples if length == a.max_length else encode_all(convs, tok, "chatml", max_length=length)[0]
        rows_l = rows if length == a.max_length else pack(exs, length)
        efficiency[length], kept[length] = packing_efficiency(rows_l, length), sum(len(r) for r in rows_l)
    return {"impl": "sftlab", "load_s": load_s, "prep_s": times, "prep_cpu_s": cpu,
            "conversations": len(convs), "examples": len(examples), "quarantined": len(quarantined),
            "tokens": tokens, "rows": len(rows),
            "efficiency": efficiency, "tokens_in_rows": kept, "peak_rss_mib": peak, "tokenizer_s": floor}


def tokenizer_floor(tok, convs, repeat: int) -> list[float]:
    """Seconds the tokenizer alone takes on every rendered conversation, in one batch call: what
    any preparation that tokenizes the same text with this tokenizer must spend at least."""
    from sftlab.tokens.templates import get_template

    template = get_template("chatml", tok)
    texts = [template.render([{"role": m.role, "content": m.content} for m in c.messages]) for c in convs]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        times.append(time.perf_counter() - t0)
    return times


def trl_config(out: str, *, max_length: int = 1024, steps: int = 1, num_proc: int | None = None, **extra):
    """SFTConfig for TRL's fastest configuration at 1,024 tokens x accumulation 4 on the CPU;
    ``extra`` overrides any field (the GPU benchmark sets bf16, batch and accumulation)."""
    from trl import SFTConfig

    fields = dict(output_dir=out, max_length=max_length, packing=True, packing_strategy="bfd",
                  padding_free=True, assistant_only_loss=True, per_device_train_batch_size=1,
                  gradient_accumulation_steps=4, max_steps=steps, learning_rate=2e-5, max_grad_norm=1.0,
                  lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, bf16=False, fp16=False,
                  use_cpu=True, dataset_num_proc=num_proc, save_strategy="no", report_to="none",
                  logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    return SFTConfig(**{**fields, **extra})


def _trl_trainer(model_dir, args, train_ds, eval_ds=None, trainer_cls=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return (trainer_cls or SFTTrainer)(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                       processing_class=tok)


def prep_trl(a) -> dict:
    """Dataset from the records, then ``repeat`` x SFTTrainer's own preparation (template,
    assistant masks, labels, BFD packing), the code path its constructor runs."""
    import datasets

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.Dataset.from_list(read_jsonl(Path(a.data) / "train.jsonl"))
    load_s = time.perf_counter() - t0
    times, cpu, efficiency, kept = [], [], {}, {}
    with tempfile.TemporaryDirectory() as out:
        num_proc = a.num_proc if a.num_proc > 1 else None
        trainer = _trl_trainer(a.model, trl_config(out, max_length=a.max_length, num_proc=num_proc),
                               ds.select(range(64)))
        for _ in range(a.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            packed = trainer._prepare_dataset(ds, trainer.processing_class, trainer.args, True, None, "train")
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        peak = peak_rss_mib()
        for length in a.lengths:
            if length != a.max_length:
                args = trl_config(out, max_length=length, num_proc=num_proc)
                p = trainer._prepare_dataset(ds, trainer.processing_class, args, True, None, "train")
            else:
                p = packed
            n = sum(sum(s) for s in p["seq_lengths"])
            efficiency[length], kept[length] = n / (len(p) * length), n
    return {"impl": "trl", "load_s": load_s, "prep_s": times, "prep_cpu_s": cpu, "conversations": len(ds),
            "examples": len(ds), "quarantined": 0, "tokens": kept[a.max_length], "rows": len(packed),
            "efficiency": efficiency, "tokens_in_rows": kept, "peak_rss_mib": peak}


def data_tokens(a) -> dict:
    """Tokens of every training conversation, untruncated (the same ids TRL gets)."""
    from transformers import AutoTokenizer

    from sftlab.tokens.encoding import encode_all
    from sftlab.data.loading import load_files

    tok = AutoTokenizer.from_pretrained(a.model)
    examples, _ = encode_all(load_files([Path(a.data) / "train.jsonl"]).conversations, tok, "chatml")
    return {"tokens": sum(len(e) for e in examples), "longest": max(len(e) for e in examples)}


def train_sftlab(a) -> dict:
    """``sftlab.train.loop.train`` on the whole training file; steps timed from the loop's calls
    for each step's micro-batches (the start of step k+1 ends step k)."""
    from sftlab.train.config import TrainConfig
    from sftlab.train.loop import TrainData, _trained_tokens, train

    marks: list[tuple[float, float, int, int, int]] = []  # wall, cpu, real tokens, squared lengths, targets
    original = TrainData.micro_batches

    def observed(self, rows, s, rank, world):
        wall, cpu = time.perf_counter(), time.process_time()
        batches = original(self, rows, s, rank, world)
        marks.append((wall, cpu, sum(int(b["seq_lengths"].sum()) for b in batches),
                      sum(int((b["seq_lengths"].long() ** 2).sum()) for b in batches),
                      sum(_trained_tokens(b) for b in batches)))
        return batches

    TrainData.micro_batches = observed
    with tempfile.TemporaryDirectory() as out:
        steps = a.warmup + a.steps + 1  # the start of the extra step ends the last timed one
        cfg = TrainConfig.model_validate({
            "model": {"path": str(a.model), "dtype": "float32"}, "out": str(Path(out) / "run"),
            "data": {"train": [str(Path(a.data) / "train.jsonl")]}, "template": "chatml",
            "encoding": {"max_length": a.max_length}, "log": {"progress": False, "trackers": []},
            "optim": {"lr": 2e-5, "micro_batch_size": 1, "grad_accum": a.grad_accum, "max_steps": steps,
                      "max_grad_norm": 1.0}})
        t0 = time.perf_counter()
        train(cfg)
        total_s = time.perf_counter() - t0
    timed = marks[a.warmup:a.warmup + a.steps + 1]
    seconds, cpu = timed[-1][0] - timed[0][0], timed[-1][1] - timed[0][1]
    tokens, square_lengths = sum(m[2] for m in timed[:-1]), sum(m[3] for m in timed[:-1])
    return {"impl": "sftlab", "tokens": tokens, "square_lengths": square_lengths,
            "targets": sum(m[4] for m in timed[:-1]), "seconds": seconds, "cpu_s": cpu,
            "tokens_per_s": tokens / seconds, "steps": a.steps, "warmup": a.warmup, "process_s": total_s,
            "peak_rss_mib": peak_rss_mib()}


def timed_trl_train(make_trainer, warmup: int, steps: int) -> dict:
    """Run ``make_trainer(trainer_cls).train()`` for ``warmup + steps`` optimizer steps; time the
    last ``steps`` from a step-end callback, counting real tokens and the squared lengths of the
    packed examples (where ``position_ids`` restart at 0) in ``compute_loss`` (TRL's padding-free
    batches hold no padding)."""
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    ends: list[tuple[float, float]] = []  # wall, cpu
    tokens_at: list[tuple[int, int, int, int]] = []  # step, real tokens, squared example lengths, targets

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the step's kernels are done before its end is stamped
            ends.append((time.perf_counter(), time.process_time()))

    class Counting(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kw):
            positions = inputs["position_ids"].flatten()
            starts = torch.cat([(positions == 0).nonzero().flatten(), torch.tensor([positions.numel()])])
            tokens_at.append((self.state.global_step, positions.numel(), int((starts.diff() ** 2).sum()),
                              int((inputs["labels"][:, 1:] != -100).sum())))
            return super().compute_loss(model, inputs, *args, **kw)

    trainer = make_trainer(Counting)
    trainer.add_callback(StepEnds())
    trainer.train()
    first, last = ends[warmup - 1], ends[warmup + steps - 1]
    seconds, cpu = last[0] - first[0], last[1] - first[1]
    timed = [(n, sq, t) for step, n, sq, t in tokens_at if warmup <= step < warmup + steps]
    tokens, square_lengths = sum(n for n, _, _ in timed), sum(sq for _, sq, _ in timed)
    return {"impl": "trl", "tokens": tokens, "square_lengths": square_lengths,
            "targets": sum(t for _, _, t in timed), "seconds": seconds, "cpu_s": cpu,
            "tokens_per_s": tokens / seconds,
            "steps": steps, "warmup": warmup}


def train_trl(a) -> dict:
    """``SFTTrainer.train`` on the whole training file (``timed_trl_train``)."""
    import datasets

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.Dataset.from_list(read_jsonl(Path(a.data) / "train.jsonl"))
    with tempfile.TemporaryDirectory() as out:
        args = trl_config(out, max_length=a.max_length, steps=a.warmup + a.steps,
                          gradient_accumulation_steps=a.grad_accum)
        result = timed_trl_train(lambda cls: _trl_trainer(a.model, args, ds, trainer_cls=cls), a.warmup, a.steps)
    return {**result, "process_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def heldout_loss(a) -> dict:
    """Both objectives on the same weights and the same held-out tokens: the held-out
    conversations whose whole encoding fits in max_length (no truncation on either side)."""
    import datasets
    import torch
    from transformers import AutoTokenizer

    from sftlab.tokens.encoding import encode_all
    from sftlab.data.loading import load_files
    from sftlab.model.objective import micro_batch_loss, step_normaliser
    from sftlab.tokens.packing import collate, pack

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(a.model)
    path = Path(a.data) / "heldout.jsonl"
    examples, _ = encode_all(load_files([path]).conversations, tok, "chatml", max_length=None)
    keep = {str(e.id) for e in examples if len(e) <= a.max_length}
    examples = [e for e in examples if str(e.id) in keep]
    records = [r for r in read_jsonl(path) if str(r["meta"]["id"]) in keep]
    ds = datasets.Dataset.from_list(records)
    with tempfile.TemporaryDirectory() as out:
        args = trl_config(out, max_length=a.max_length, per_device_eval_batch_size=1)  # one row per forward
        trainer = _trl_trainer(a.model, args, ds, ds)
        model = trainer.model.eval()
        with torch.no_grad():
            batches = [collate([r], tok.pad_token_id) for r in pack(examples, a.max_length)]
            weight = float(step_normaliser(batches))
            ours = sum(float(micro_batch_loss(model, b, 1.0)) for b in batches) / weight
            theirs_sum, count = 0.0, 0
            for inputs in trainer.get_eval_dataloader():
                count += int((inputs["labels"][:, 1:] != -100).sum())
                theirs_sum += float(trainer.compute_loss(model, inputs, num_items_in_batch=1))
    theirs = theirs_sum / count
    return {"conversations": len(examples), "sftlab_loss": ours, "trl_loss": theirs, "sftlab_trained": weight,
            "trl_trained": count, "relative_difference": abs(ours - theirs) / abs(theirs)}


def matmul_peak(a) -> dict:
    """The model's shape for the FLOP count and the machine's measured fp32 matmul FLOP/s at its
    hidden size, with torch's default threads (as the training processes run):
    ``sftlab.train.throughput.Throughput`` on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.train.throughput import Throughput

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    return {**Throughput(model, "cpu", torch.float32).describe(), "threads": torch.get_num_threads()}


WORKERS = {"prep-sftlab": prep_sftlab, "prep-trl": prep_trl, "train-sftlab": train_sftlab,
           "train-trl": train_trl, "loss": heldout_loss, "data-tokens": data_tokens,
           "peak": matmul_peak}


# -- orchestration -------------------------------------------------------------------------------

def run_worker(name: str, a, env: dict | None = None) -> dict:
    """Run one worker in a fresh Python process and return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(result),
               "--data", str(a.data), "--model", str(a.model), "--max-length", str(a.max_length),
               "--repeat", str(a.repeat), "--num-proc", str(a.num_proc), "--warmup", str(a.warmup),
               "--steps", str(a.steps), "--grad-accum", str(a.grad_accum), "--lengths", *map(str, a.lengths)]
        print(f"[compare_trl] {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not result.exists():
            raise SystemExit(f"worker {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(result.read_text())


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment() -> dict:
    import platform
    from importlib.metadata import version

    pkgs = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "trl")
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "packages": {p: version(p) for p in pkgs}}


def measure(a) -> dict:
    """Every worker run; training runs alternate between sftlab and TRL to spread load changes."""
    res: dict = {"load_average_before": load_average(), "environment": environment(),
                 "settings": {k: getattr(a, k) for k in ("num", "max_length", "repeat", "num_proc", "warmup",
                                                          "steps", "grad_accum", "lengths")}}
    res["data_tokens"] = run_worker("data-tokens", a)
    res["prep"] = {"sftlab": run_worker("prep-sftlab", a), "trl": run_worker("prep-trl", a),
                   "sftlab_1thread": run_worker("prep-sftlab", a, env={"TOKENIZERS_PARALLELISM": "false",
                                                                        "RAYON_NUM_THREADS": "1"})}
    runs: dict = {"sftlab": [], "trl": []}
    peaks = [run_worker("peak", a)]  # before, between and after the training runs
    for _ in range(a.repeat):
        for impl in ("sftlab", "trl"):
            runs[impl].append(run_worker(f"train-{impl}", a))
        peaks.append(run_worker("peak", a))
    res["train"], res["peak"] = runs, peaks
    res["loss"] = run_worker("loss", a)
    res["load_average_after"] = load_average()
    return res


def summarise(res: dict) -> dict:
    """Medians and ratios (sftlab / TRL) of the raw runs; model FLOPs from the one shape and the
    highest measured matmul FLOP/s (``sftlab.train.throughput``) for both sides."""
    from sftlab.train.throughput import step_flops

    med = statistics.median
    out: dict = {}
    for impl in ("sftlab", "trl", "sftlab_1thread"):
        p = res["prep"][impl]
        s = med(p["prep_s"])
        out[impl] = {"load_s": p["load_s"], "prep_conv_s": p["conversations"] / s, "prep_tok_s": p["tokens"] / s,
                     "floor_conv_s": p["conversations"] / med(p["tokenizer_s"]) if "tokenizer_s" in p else None,
                     "prep_conv_cpu_s": p["conversations"] / med(p["prep_cpu_s"]),
                     **{f"eff_{n}": e for n, e in p["efficiency"].items()}}
    data_tokens = res["data_tokens"]["tokens"]
    shape = res["peak"][0]
    peak = max(p["peak_flops_per_s"] for p in res["peak"])
    out["peak"] = {"flops_per_s": peak, "measured": [p["peak_flops_per_s"] for p in res["peak"]],
                   "source": shape["peak_source"]}
    for impl in ("sftlab", "trl"):
        kept = res["prep"][impl]["tokens_in_rows"]
        out[impl]["lost"] = {n: 1 - k / data_tokens for n, k in kept.items()}
        runs = res["train"][impl]
        out[impl]["train_tok_s"] = med(r["tokens_per_s"] for r in runs)
        out[impl]["train_tok_cpu_s"] = med(r["tokens"] / r["cpu_s"] for r in runs)
        out[impl]["train_rss"] = med(r["peak_rss_mib"] for r in runs)
        flops = [step_flops(matmul_weights=shape["matmul_weights"], frozen_weights=shape["frozen_weights"],
                            layers=shape["layers"], hidden=shape["hidden_size"], tokens=r["tokens"],
                            square_lengths=r["square_lengths"], head_weights=shape["head_weights"],
                            head_frozen=shape["head_frozen"], head_tokens=r["targets"]) for r in runs]
        out[impl]["train_flop_s"] = med(f / r["seconds"] for f, r in zip(flops, runs))
        out[impl]["train_flop_cpu_s"] = med(f / r["cpu_s"] for f, r in zip(flops, runs))
        out[impl]["mfu"] = out[impl]["train_flop_s"] / peak
        out[impl]["prep_rss"] = res["prep"][impl]["peak_rss_mib"]
    s, t = out["sftlab"], out["trl"]
    out["ratios"] = {"prep": s["prep_conv_s"] / t["prep_conv_s"],
                     "prep_1thread": out["sftlab_1thread"]["prep_conv_s"] / t["prep_conv_s"],
                     "prep_cpu": s["prep_conv_cpu_s"] / t["prep_conv_cpu_s"],
                     "train": s["train_tok_s"] / t["train_tok_s"],
                     "train_cpu": s["train_tok_cpu_s"] / t["train_tok_cpu_s"], "rss": s["train_rss"] / t["train_rss"],
                     "flop_s": s["train_flop_s"] / t["train_flop_s"],
                     "flop_cpu_s": s["train_flop_cpu_s"] / t["train_flop_cpu_s"],
                     "prep_vs_tokenizer": s["floor_conv_s"] / s["prep_conv_s"]}
    return out


def table(res: dict, summary: dict) -> str:
    s, t, r, one = summary["sftlab"], summary["trl"], summary["ratios"], summary["sftlab_1thread"]
    pk = summary["peak"]
    lengths = [str(n) for n in res["settings"]["lengths"]]
    n = res["settings"]["repeat"]
    loss = res["loss"]
    rows = [("load JSONL -> records (s)", f"{s['load_s']:.2f}", f"{t['load_s']:.2f}", "", ""),
            ("preparation conversations/s", f"{s['prep_conv_s']:,.0f}", f"{t['prep_conv_s']:,.0f}",
             f"{r['prep']:.2f}x", ""),
            ("  tokenizer thread pool off", f"{one['prep_conv_s']:,.0f}", f"{t['prep_conv_s']:,.0f}",
             f"{r['prep_1thread']:.2f}x", ""),
            ("  per CPU-second (all threads)", f"{s['prep_conv_cpu_s']:,.0f}", f"{t['prep_conv_cpu_s']:,.0f}",
             f"{r['prep_cpu']:.2f}x", ""),
            ("  tokenizer alone, same text", f"{s['floor_conv_s']:,.0f}", f"{t['prep_conv_s']:,.0f}",
             f"{s['floor_conv_s'] / t['prep_conv_s']:.2f}x", ""),
            ("  sftlab time / tokenizer time", "", "", f"{r['prep_vs_tokenizer']:.2f}x",
             f"<={GOALS['prep_vs_tokenizer']:.2f}x @1M"),
            ("  tokenizer alone, 1 thread", f"{one['floor_conv_s']:,.0f}", f"{t['prep_conv_s']:,.0f}",
             f"{one['floor_conv_s'] / t['prep_conv_s']:.2f}x", ""),
            ("preparation tokens/s (into rows)", f"{s['prep_tok_s']:,.0f}", f"{t['prep_tok_s']:,.0f}",
             f"{s['prep_tok_s'] / t['prep_tok_s']:.2f}x", "")]
    for L in lengths:
        rows.append((f"packing efficiency @{L}", f"{100 * s['eff_' + L]:.2f} %", f"{100 * t['eff_' + L]:.2f} %",
                     "", f">= {100 * GOALS['packing']:.1f} %"))
        rows.append((f"  data tokens not in rows @{L}", f"{100 * s['lost'][L]:.2f} %",
                     f"{100 * t['lost'][L]:.2f} %", "", ""))
    rows += [("training real tokens/s", f"{s['train_tok_s']:,.0f}", f"{t['train_tok_s']:,.0f}",
              f"{r['train']:.2f}x", ""),
             ("  per CPU-second (all threads)", f"{s['train_tok_cpu_s']:,.0f}", f"{t['train_tok_cpu_s']:,.0f}",
              f"{r['train_cpu']:.2f}x", f">= {GOALS['train_cpu']:.1f}x"),
             ("  model GFLOP/s (PaLM accounting)", f"{s['train_flop_s'] / 1e9:,.2f}",
              f"{t['train_flop_s'] / 1e9:,.2f}", f"{r['flop_s']:.2f}x", ""),
             ("  GFLOP per CPU-second", f"{s['train_flop_cpu_s'] / 1e9:,.2f}",
              f"{t['train_flop_cpu_s'] / 1e9:,.2f}", f"{r['flop_cpu_s']:.2f}x", ""),
             ("  MFU vs measured matmul peak", f"{100 * s['mfu']:.1f} %", f"{100 * t['mfu']:.1f} %",
              f"{s['mfu'] / t['mfu']:.2f}x", "reported"),
             ("  measured matmul peak (GFLOP/s)", f"{pk['flops_per_s'] / 1e9:,.2f}",
              f"{pk['flops_per_s'] / 1e9:,.2f}", "", ""),
             ("peak RSS, training process (MiB)", f"{s['train_rss']:,.0f}", f"{t['train_rss']:,.0f}",
              f"{r['rss']:.2f}x", "<= 1.00x"),
             ("peak RSS, preparation process (MiB)", f"{s['prep_rss']:,.0f}", f"{t['prep_rss']:,.0f}",
              f"{s['prep_rss'] / t['prep_rss']:.2f}x", ""),
             (f"initial held-out loss ({loss['conversations']} conv.)", f"{loss['sftlab_loss']:.6f}",
              f"{loss['trl_loss']:.6f}", f"rel. diff {loss['relative_difference']:.1e}", ""),
             ("  trained tokens in it", f"{loss['sftlab_trained']:,.0f}", f"{loss['trl_trained']:,}", "", "")]
    env = res["environment"]
    cfg = res["settings"]
    head = (f"sftlab vs TRL {env['packages']['trl']} SFTTrainer: {res['prep']['sftlab']['conversations']:,} "
            f"conversations, rows of {cfg['max_length']} x accumulation {cfg['grad_accum']}, fp32, "
            f"{env['cpus']} CPUs, {cfg['warmup']} + {cfg['steps']} steps, "
            f"medians of {n} runs; load average {res['load_average_before']} -> {res['load_average_after']}")
    widths = [38, 13, 13, 19, 14]
    lines = [head, "".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                           enumerate(zip(("metric", "sftlab", "TRL", "sftlab/TRL", "goal"), widths)))]
    for row in rows:
        lines.append("".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    lines.append(f"peak: {pk['source']}, highest of "
                 f"{', '.join(f'{x / 1e9:.2f}' for x in pk['measured'])} GFLOP/s (before, between, after the "
                 f"training runs)")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "sftlab-bench"),
                   help="where inputs are generated (default: %(default)s)")
    p.add_argument("--out", help="also write every raw run, the medians and the ratios here as JSON")
    p.add_argument("--num", type=int, default=20_000,
                   help="training conversations to generate (default: %(default)s; others are for smoke runs)")
    p.add_argument("--max-length", type=int, default=1024, help="row length (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096],
                   help="row lengths whose packing efficiency is shown (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each configuration, >= 2 (default: %(default)s)")
    p.add_argument("--num-proc", type=int, default=1,
                   help="processes for data preparation, both libraries (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps before timing (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=4,
                   help="one row per micro-batch, this many per optimizer step (default: %(default)s)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        import torch

        torch.manual_seed(0)
        Path(a.result).write_text(json.dumps(WORKERS[a.worker](a), default=str))
        return 0
    if a.repeat < 2:
        raise SystemExit("--repeat must be at least 2 (medians of at least two runs)")
    if a.max_length not in a.lengths:
        a.lengths = [a.max_length, *a.lengths]
    a.data, a.model = ensure_inputs(Path(a.work), a.num)
    res = measure(a)
    res["summary"] = summary = summarise(res)
    print(table(res, summary))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
