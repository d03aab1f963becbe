"""FSDP2 on two CPU processes (gloo), launched with configs/accelerate/fsdp-cpu-2proc.yaml: the
losses of one process at the same tokens per step, a sharded checkpoint that a SIGTERM leaves and a
resume continues bit-exactly, final/ consolidated; LoRA with a merged final model; the rows of
every step the same at 1, 2 and 4 processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training import ROOT, _config, _env, _losses, _metrics, assets  # noqa: F401  (assets: fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
FSDP = ROOT / "configs" / "accelerate" / "fsdp-cpu-2proc.yaml"


def _runs(assets: Path, tmp_path: Path, names: dict[str, int], optim=None, **sections) -> dict[str, Path]:
    """Configs of 10-step runs, 2 rows per step: ``{name: grad_accum}`` (2 for one process, 1 for
    two); seven held-out records, so the two processes hold unequal shares of a slice."""
    heldout = tmp_path / "heldout7.jsonl"
    heldout.write_text("".join((assets / "heldout.jsonl").read_text().splitlines(keepends=True)[:7]))
    return {name: _config(assets, tmp_path / name, data={"eval": [str(heldout)]},
                          optim={"micro_batch_size": 1, "grad_accum": accum, "max_steps": 10, **(optim or {})},
                          eval={"every_n_steps": 4}, checkpointing={"every_n_steps": 4, "keep_last": 2}, **sections)
            for name, accum in names.items()}


def _start(cfg: Path, tmp_path: Path, *, sharded: bool, resume: bool = False) -> subprocess.Popen:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP)] if sharded \
        else [sys.executable]
    return subprocess.Popen([*launch, "-m", "sftlab", "train", str(cfg), *(["--resume"] if resume else [])],
                            env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, code: int = 0) -> None:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == code, err[-3000:]


def _terminate_after_step(proc: subprocess.Popen, run: Path, step: int) -> Path:
    """SIGTERM to the launcher (which passes it to both processes) once ``step`` is logged; the
    run stops after its current step with a checkpoint of it: exit 143. Returns that checkpoint."""
    from sftlab.train.checkpoint import latest_checkpoint, verify_checkpoint

    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 180
    while not (metrics.is_file() and f'"step": {step},' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _finish(proc, 143)
    ckpt = latest_checkpoint(run)
    assert step <= int(ckpt.name.removeprefix("step-")) < 10 and not (run / "final").exists()
    assert verify_checkpoint(ckpt) == []
    return ckpt


def _relative(a: list, b: list) -> float:
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 11))
    return max(abs(x - y) / abs(x) for (_, x), (_, y) in zip(a, b))


def test_fsdp_on_two_cpu_processes_matches_one_and_resumes_bit_exactly(assets, tmp_path):
    from transformers import AutoModelForCausalLM

    from sftlab.train.checkpoint import latest_checkpoint, verify_checkpoint, weights_mismatch

    runs = _runs(assets, tmp_path, {"one": 2, "straight": 1, "term": 1})
    procs = {"one": _start(runs["one"], tmp_path, sharded=False),
             **{name: _start(runs[name], tmp_path, sharded=True) for name in ("straight", "term")}}
    ckpt = _terminate_after_step(procs["term"], tmp_path / "term", 3)
    names = {p.name for p in ckpt.iterdir()}
    assert {"sharding.json", "model-shard-0-of-2.safetensors", "model-shard-1-of-2.safetensors",
            "optimizer-shard-0-of-2.safetensors", "optimizer-shard-1-of-2.safetensors"} <= names
    assert "model.safetensors" not in names and "optimizer.safetensors" not in names
    shards = [load_file(ckpt / f"model-shard-{r}-of-2.safetensors") for r in (0, 1)]
    full = AutoModelForCausalLM.from_pretrained(assets / "model").state_dict()
    for name, piece in shards[0].items():  # each process holds half of every weight (dim 0)
        assert torch.cat([piece, shards[1][name]]).shape == full[name].shape, name
        assert piece.shape[0] == full[name].shape[0] // 2, name
    resumed = _start(runs["term"], tmp_path, sharded=True, resume=True)
    _finish(procs["one"])
    _finish(procs["straight"])
    _finish(resumed)

    # the loss curve of one process at the same tokens per step; held-out losses too
    assert _relative(_losses(tmp_path / "one"), _losses(tmp_path / "straight")) < 1e-5
    evals = [[r["eval_loss"]["all"] for r in _metrics(tmp_path / n) if "eval_loss" in r] for n in ("one", "straight")]
    assert len(evals[0]) == 3 and evals[1] == pytest.approx(evals[0], rel=1e-5)
    # killed, resumed: the losses and final weights of the run never stopped, bit for bit
    assert _losses(tmp_path / "term") == _losses(tmp_path / "straight")
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    again = load_file(tmp_path / "term" / "final" / "model.safetensors")
    assert again.keys() == straight.keys() and all(torch.equal(again[k], straight[k]) for k in straight)
    # final/ is consolidated: a plain model transformers loads, the weights of one process's run
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "final")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert json.loads((tmp_path / "straight" / "final" / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"]
    single = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert all(torch.allclose(straight[k], single[k], rtol=1e-5, atol=1e-6) for k in single)
    # the checksums cover the shards; another number of processes is refused before loading
    ckpt = latest_checkpoint(tmp_path / "term")
    piece = ckpt / "optimizer-shard-1-of-2.safetensors"
    data = bytearray(piece.read_bytes())
    data[-1] ^= 1
    piece.write_bytes(bytes(data))
    assert any("optimizer-shard-1-of-2.safetensors was changed" in p for p in verify_checkpoint(ckpt))
    assert "FSDP shards of 2 processes and this run has 1" in weights_mismatch(ckpt, model, 1)


def test_fsdp_lora_on_two_cpu_processes_matches_one_resumes_and_merges(assets, tmp_path):
    from transformers import AutoModelForCausalLM

    runs = _runs(assets, tmp_path, {"one": 2, "two": 1, "term": 1},
                 lora={"enabled": True, "r": 4, "merge_on_save": True}, optim={"lr": 1e-2})
    procs = {"one": _start(runs["one"], tmp_path, sharded=False),
             **{name: _start(runs[name], tmp_path, sharded=True) for name in ("two", "term")}}
    _terminate_after_step(procs["term"], tmp_path / "term", 2)  # the adapter's shards, the base read again
    procs["resumed"] = _start(runs["term"], tmp_path, sharded=True, resume=True)
    for name in ("one", "two", "resumed"):
        _finish(procs[name])
    assert _relative(_losses(tmp_path / "one"), _losses(tmp_path / "two")) < 1e-5
    assert _losses(tmp_path / "term") == _losses(tmp_path / "two")
    step = json.loads(((tmp_path / "two" / "checkpoints" / "step-10" / "sharding.json")).read_text())
    assert step["world_size"] == 2 and step["params"] and all("lora_" in name for name in step["params"])
    merged = [load_file(tmp_path / n / "final" / "model.safetensors") for n in ("one", "two", "term")]
    assert merged[0].keys() == merged[1].keys() and not any("lora" in k for k in merged[1])
    assert all(torch.allclose(merged[1][k], merged[0][k], rtol=1e-5, atol=1e-6) for k in merged[0])
    assert all(torch.equal(merged[2][k], merged[1][k]) for k in merged[1])
    AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    assert (tmp_path / "two" / "final" / "adapter" / "adapter_model.safetensors").is_file()


def test_every_step_takes_the_same_rows_at_one_two_and_four_processes():
    """The epoch plan does not depend on the world size: at the same global batch (micro-batch x
    accumulation x processes) the rows of step s over all processes are the same rows."""
    from sftlab.tokens.encoding import EncodedExample
    from sftlab.train.config import load_config
    from sftlab.train.data import TrainData

    examples = [EncodedExample([i] * (2 + i % 5), [0.0] + [1.0] * (1 + i % 5), slice="ab"[i % 2], trained_tokens=1)
                for i in range(1, 30)]
    seen = {}
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        cfg = load_config(None, ["model.path=m", "data.train=[t]", "out=o", "packing.mode=padded", "seed=5",
                                 "optim.micro_batch_size=1", f"optim.grad_accum={accum}", "mixture.temperature=2"])
        data = TrainData(cfg, examples, {}, pad_id=0)
        plan = []
        for epoch in (0, 1):
            rows = data.epoch_rows(epoch)
            for s in range(data.steps_in_epoch(epoch, world)):
                ids = [b["input_ids"][i, 0].item() for rank in range(world)
                       for b in data.micro_batches(rows, s, rank, world) for i in range(len(b["input_ids"]))]
                plan.append(sorted(i for i in ids if i))  # 0: the weight-0 row of a rank left without one
        seen[world] = plan
    assert seen[1] == seen[2] == seen[4] and len(seen[1]) == 16


def test_a_deepspeed_config_on_cpu_processes_is_refused_not_run_as_ddp(monkeypatch):
    """accelerate ignores a DeepSpeed config on CPU processes (MULTI_CPU, then DDP): sftlab says so
    instead of training something else than the config asks."""
    from accelerate import Accelerator

    from sftlab.errors import UsageError
    from sftlab.train.config import load_config
    from sftlab.train.sharding import shard

    accelerator = Accelerator(cpu=True)
    cfg = load_config(None, ["model.path=m", "data.train=[t]", "out=o"])
    model = torch.nn.Linear(2, 2)
    assert shard(model, accelerator, cfg) is model  # nothing asked: nothing changes
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UsageError, match="DeepSpeed, which accelerate does not turn on for CPU processes"):
        shard(model, accelerator, cfg)
