"""Throughput: model FLOPs from the model's shape, the peak from a datasheet or a measured matmul,
MFU and tokens/s per step in metrics.jsonl, the progress bar and the report; time per phase."""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from sftlab.cli import main
from sftlab.demo.tiny import build_tiny
from sftlab.train.throughput import MAX_REMEASURES, PhaseTimes, Throughput, gpu_peak, measured_peak, step_flops

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flops_come_from_the_models_shape():
    tok, model = build_tiny(vocab_size=300, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    v, d, kv, i = len(tok), 64, 2 * 16, 128
    per_layer = d * d + d * kv + d * kv + d * d + 3 * d * i  # q, k, v, o; gate, up, down
    speed = Throughput(model, "cpu")
    assert speed.matmul_weights == 2 * per_layer + v * d  # + the output head, not the embedding lookup
    assert speed.frozen_weights == 0 and (speed.layers, speed.hidden) == (2, 64)
    # a step of two examples, 3 and 5 tokens: 6 N per token + 12 L d sum(len^2) (PaLM appendix B)
    n = speed.matmul_weights
    assert speed.flops(tokens=8, square_lengths=9 + 25) == 6 * n * 8 + 12 * 2 * 64 * 34
    for p in model.model.layers.parameters():
        p.requires_grad_(False)  # frozen weights: no weight gradient, 4 instead of 6 per token
    frozen = Throughput(model, "cpu")
    assert frozen.frozen_weights == 2 * per_layer
    assert frozen.flops(8, 34) == (6 * v * d + 4 * 2 * per_layer) * 8 + 12 * 2 * 64 * 34
    assert speed.peak > 0 and speed.peak_source.startswith("CPU: measured float32 matmul at hidden size 64")
    assert speed.mfu(8, 34, seconds=1.0) == pytest.approx(speed.flops(8, 34) / speed.peak, rel=1e-12)
    assert step_flops(matmul_weights=10, frozen_weights=4, layers=1, hidden=2, tokens=3,
                      square_lengths=5) == (6 * 6 + 4 * 4) * 3 + 12 * 2 * 5
    # the output head counts at the trained targets only (the logits the objective needs)
    assert (speed.head_weights, speed.head_frozen) == (v * d, False)
    assert speed.flops(8, 34, trained=3) == 6 * (n - v * d) * 8 + 6 * v * d * 3 + 12 * 2 * 64 * 34
    model.lm_head.weight.requires_grad_(False)  # LoRA's case: the head frozen too
    lora_like = Throughput(model, "cpu")
    assert lora_like.head_frozen and lora_like.frozen_weights == 2 * per_layer + v * d
    assert lora_like.flops(8, 34, trained=3) == 4 * 2 * per_layer * 8 + 4 * v * d * 3 + 12 * 2 * 64 * 34


def test_the_flop_count_matches_what_torch_counts_for_a_response_only_step():
    """torch's own FLOP counter over one real training step (sftlab's collate, objective and
    backward), 2 of 6 examples' responses trained: the matrix products it runs are the model FLOPs
    :class:`Throughput` counts, the head at the trained targets only (counting it at every
    position read a LoRA run's MFU above 100 %)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sftlab.model.objective import micro_batch_loss, step_normaliser
    from sftlab.tokens.encoding import encode_all
    from sftlab.tokens.packing import collate, pack
    from sftlab.data.formats import to_conversation

    tok, model = build_tiny(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64)
    convs = [to_conversation({"messages": [
        {"role": "user", "content": f"Please write out the sentence number {i} in full, word by word."},
        {"role": "assistant", "content": f"Sentence {i}: the quick brown fox jumps.", "train": i < 2}]})
        for i in range(6)]
    examples, _ = encode_all(convs, tok, "chatml", max_length=None)
    batch = collate(pack(examples, 1024), tok.pad_token_id)
    speed = Throughput(model, "cpu")
    tokens, trained = int(batch["seq_lengths"].sum()), int(step_normaliser([batch]))
    assert 0 < trained < tokens / 4
    with FlopCounterMode(display=False) as counter:
        micro_batch_loss(model, batch, step_normaliser([batch])).backward()
    linear = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))
    head, rows = speed.head_weights, batch["input_ids"].shape[0]
    # beyond the model FLOPs torch also counts the one position a row whose logits the model's
    # forward keeps (6 per head weight: forward and backward) and the chunked loss recomputing
    # the trained targets' logits in its backward (2 per head weight and target; recomputation is
    # not a model FLOP)
    assert linear == speed.flops(tokens, 0, trained=trained) + 6 * head * rows + 2 * head * trained
    assert speed.flops(tokens, 0) - speed.flops(tokens, 0, trained=trained) == 6 * head * (tokens - trained)


def test_a_step_faster_than_the_measured_peak_times_it_again():
    """A peak read low (timed while the CPU served other work) is timed again when a step beats
    it, at most MAX_REMEASURES times, and the run records how often; a step under it costs nothing."""
    _, model = build_tiny(vocab_size=64, hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32)
    speed = Throughput(model, "cpu")
    true_peak = speed.peak
    speed.peak = 1.0  # as if timed on a busy machine
    flops = speed.flops(100, 100 * 100, trained=50)
    assert speed.mfu(100, 100 * 100, seconds=flops / 0.5, trained=50) == pytest.approx(0.5)  # under 1 FLOP/s
    assert speed.remeasured == 0 and speed.peak == 1.0
    fast = speed.mfu(100, 100 * 100, seconds=flops / 1e6, trained=50)  # a step at 1 MFLOP/s beats it
    assert speed.remeasured == 1 and speed.peak > 1e6 and fast == pytest.approx(1e6 / speed.peak)
    assert speed.peak > true_peak / 100  # the machine's own figure again, within what load can do
    speed.peak = 1.0
    for _ in range(5):
        speed.mfu(100, 100 * 100, seconds=flops / 1e30, trained=50)  # beyond any CPU: counted, not hidden
    assert speed.remeasured == MAX_REMEASURES and speed.describe()["peak_remeasured"] == MAX_REMEASURES


def test_gpu_peaks_are_datasheet_values_by_name():
    assert gpu_peak("NVIDIA H100 80GB HBM3") == (989.4, "datasheet: H100 SXM bf16 dense")
    assert gpu_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert gpu_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpu_peak("NVIDIA H200")[0] == 989.4
    assert gpu_peak("NVIDIA L4")[0] == 121.0 and gpu_peak("NVIDIA L40S")[0] == 362.0
    assert gpu_peak("Some Future GPU") is None
    assert measured_peak(32, seconds=0.01) > 0


def test_phase_times_do_not_count_nested_phases_twice():
    t = PhaseTimes()
    with t("train"):
        with t("eval"):
            sum(range(20000))
        with t("save"):
            pass
    assert set(t.seconds) == {"train", "eval", "save"} and all(v >= 0 for v in t.seconds.values())
    before = {"timing": {"phases_s": {"train": 10.0, "load": 1.0}}}
    described = t.describe(before, resumed=True)
    assert described["phases_s"]["train"] == pytest.approx(10.0 + t.seconds["train"], abs=1e-3)
    assert described["phases_s"]["load"] == 1.0 and "load" not in described["this_invocation_s"]
    assert t.describe(before, resumed=False)["phases_s"] == described["this_invocation_s"]


def test_a_run_logs_tokens_per_s_mfu_and_phase_times(tmp_path, capsys):
    tok, model = build_tiny(vocab_size=400, hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    rows = [{"messages": [{"role": "user", "content": f"Say {w} {i}"}, {"role": "assistant", "content": f"{w} {i}!"}]}
            for i, w in enumerate(("hello", "yes", "no", "fox", "dog", "the", "quick", "brown") * 2)]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"path": str(tmp_path / "base")}, "template": "chatml",
           "data": {"train": [str(tmp_path / "chats.jsonl")], "eval_split": 0.25},
           "encoding": {"max_length": 64}, "out": str(tmp_path / "run"), "log": {"progress": True, "trackers": []},
           "optim": {"lr": 1e-2, "max_steps": 3, "micro_batch_size": 2, "warmup_steps": 0}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 0
    err = capsys.readouterr().err
    run = tmp_path / "run"
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        assert s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1
    # every state of the bar shows the loss of the step it counts, never the one before
    shown = re.findall(r"(\d)/3 \[[^\]]*loss=([0-9.]+), mfu=[0-9.]+%", err)
    assert shown and all(f"{steps[int(k) - 1]['loss']:.4f}" == loss for k, loss in shown), (shown, err[-500:])
    manifest = json.loads((run / "run.json").read_text())
    phases = manifest["timing"]["phases_s"]
    assert set(phases) == {"load", "prepare", "train", "eval", "save"} and all(v >= 0 for v in phases.values())
    assert manifest["throughput"]["peak_source"].startswith("CPU: measured")
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "median MFU" in html and "Wall-clock time per phase" in html and "median tokens/s" in html
