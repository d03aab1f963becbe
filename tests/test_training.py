"""End-to-end `sftlab train` on a tiny random Llama: the run directory, resume after SIGKILL,
SIGTERM and SIGINT, two processes equal one, NaN stop, early stopping, LoRA with a merged model."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftlab.train.checkpoint import latest_checkpoint, list_checkpoints
from sftlab.cli import main
from conftest import write_config

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "The answer is 5."}]


def _conversation(i: int, rng: random.Random) -> dict:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    slice_ = "math" if i % 3 else "chat"
    turns = [{"role": "user", "content": f"What is {a} + {b}?"},
             {"role": "assistant", "content": f"The answer is {a + b}."}]
    if i % 4 == 0:
        turns += [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "Sure, any time."}]
    return {"id": f"c{i}", "slice": slice_, "messages": turns}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per module


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_model):
    """The tiny model (conftest.py's ``tiny_model``), 40 training and 8 held-out conversations."""
    d = tmp_path_factory.mktemp("train_assets")
    rng = random.Random(0)
    rows = [_conversation(i, rng) for i in range(40)]
    heldout = [{"id": f"h{i}", "slice": "math" if i % 2 else "chat", "messages": [
        {"role": "user", "content": f"Multiply {i} by {i + 2}, please."},
        {"role": "assistant", "content": f"{i} times {i + 2} makes {i * (i + 2)}."}]} for i in range(8)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    shutil.copytree(tiny_model, d / "model")
    return d


def _config(assets: Path, out: Path, **sections) -> Path:
    return write_config({"model": {"path": str(assets / "model")}, "template": "chatml",
                         "data": {"train": [str(assets / "train.jsonl")], "eval": [str(assets / "heldout.jsonl")]},
                         "encoding": {"max_length": 96}, "seed": 3, "log": {"progress": False},
                         "optim": {"lr": 3e-3, "micro_batch_size": 2, "grad_accum": 2, "epochs": 2,
                                   "warmup_steps": 1},
                         "eval": {"every_n_steps": 2}, "checkpointing": {"every_n_steps": 2, "keep_last": 2}},
                        out, **sections)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in _metrics(run) if "loss" in r]


def _env() -> dict:
    # one thread per process and no GPU: the same float results in every process
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def test_end_to_end_run_directory(assets, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(_config(assets, run)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["exit_code"] == 0 and summary["quarantined"] == 0 and summary["steps"] >= 4

    records = _metrics(run)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert set(steps[0]) == {"step", "epoch", "loss", "lr", "tokens_per_s", "mfu", "trained_tokens", "grad_norm"}
    assert steps[-1]["loss"] < steps[0]["loss"]
    evals = [r for r in records if "eval_loss" in r]
    assert evals and set(evals[-1]["eval_loss"]) == {"all", "chat", "math"}
    assert [r["epoch"] for r in records if "realised_mixture" in r] == [0, 1]

    manifest = json.loads((run / "run.json").read_text())
    assert manifest["data"]["splits"]["train"]["records"] == 40
    assert manifest["data"]["splits"]["train"]["files"][0]["accepted"] == 40
    assert 0 < manifest["masking"]["trained_token_share"] < 1
    assert 0 < manifest["packing"]["efficiency"] <= 1
    assert manifest["template"]["name"] == "chatml" and len(manifest["config_sha256"]) == 64
    assert len(manifest["mixture"]["realised"]) == 2 and manifest["seed"] == 3

    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == [f"step-{summary['steps'] - 2}", f"step-{summary['steps']}"]
    assert {"model.safetensors", "optimizer.safetensors", "state.json", "run.json",
            "tokenizer.json"} <= {p.name for p in ckpts[-1].iterdir()}
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "data" / "quarantine.jsonl").read_text() == ""
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["records"] == 40 and stats["leakage"]["heldout_records"] == 8 and stats["passed"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.tokens.templates import get_template

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == get_template("chatml", tok).render(MESSAGES)
    eos = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    final = load_file(run / "final" / "model.safetensors")
    last = load_file(ckpts[-1] / "model.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)

    # a second run into the same directory must say --resume
    assert main(["train", str(_config(assets, run))]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_after_sigkill_sigterm_and_sigint_gives_the_same_weights(assets, tmp_path, alarm_after):
    # SIGKILL: resume from the last periodic checkpoint. SIGTERM (what SLURM, Kubernetes and
    # `timeout` send) and SIGINT (Ctrl-C): the step finishes, a verified checkpoint of it is written,
    # the lock goes, the command to continue is printed, exit 143 / 130. Every resumed run ends
    # with the weights and losses of the run that was never stopped.
    import shlex

    from sftlab.train.checkpoint import verify_checkpoint

    overrides = {"optim": {"max_steps": 24, "micro_batch_size": 1, "grad_accum": 4},
                 "eval": {"every_n_steps": 4}}
    cmd = [sys.executable, "-m", "sftlab", "train"]
    runs = {name: _config(assets, tmp_path / name, **overrides) for name in ("straight", "killed", "term", "int")}
    procs = {name: subprocess.Popen([*cmd, str(cfg), "seed=3"], env=_env(), cwd=tmp_path, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, cfg in runs.items()}
    with alarm_after(120, "waiting for the runs' second step"):  # a hang fails the case, not the suite
        for name, sig in (("killed", signal.SIGKILL), ("term", signal.SIGTERM), ("int", signal.SIGINT)):
            metrics = tmp_path / name / "metrics.jsonl"
            while not (metrics.is_file() and '"step": 2,' in metrics.read_text()):
                assert procs[name].poll() is None, "no step was logged"
                time.sleep(0.01)
            if name == "killed":  # SIGKILL: after a periodic checkpoint (every 2 steps) exists
                while latest_checkpoint(tmp_path / name) is None:
                    assert procs[name].poll() is None, "no checkpoint appeared"
                    time.sleep(0.01)
            procs[name].send_signal(sig)

    procs["killed"].communicate(timeout=120)
    assert procs["killed"].returncode == -signal.SIGKILL
    done = latest_checkpoint(tmp_path / "killed")
    assert not (tmp_path / "killed" / "final").exists() and done.name != "step-24", "killed too late"
    resume = {"killed": [str(runs["killed"]), "seed=3", "--resume"]}
    for name, code in (("term", 143), ("int", 130)):
        out, err = procs[name].communicate(timeout=120)
        assert procs[name].returncode == code, err[-2000:]
        run = tmp_path / name
        ckpt = latest_checkpoint(run)
        stopped = int(ckpt.name.removeprefix("step-"))
        assert 2 <= stopped < 24, "signalled too late"
        assert f"stopped by SIG{name.upper()} after step {stopped} of 24" in err and "written and verified" in err
        assert verify_checkpoint(ckpt) == [] and not (run / ".lock").exists() and not (run / "final").exists()
        outcome = json.loads((run / "run.json").read_text())["outcome"]["train"]
        assert outcome["exit_code"] == code and outcome["steps"] == stopped
        command = shlex.split(out.strip().splitlines()[-1].removeprefix("continue with: "))
        assert command == ["sftlab", "train", str(runs[name]), "seed=3", "--resume"]
        resume[name] = command[2:]
    resumed = {name: subprocess.Popen([*cmd, *args], env=_env(), cwd=tmp_path, text=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for name, args in resume.items()}
    assert procs["straight"].wait(timeout=120) == 0, procs["straight"].stderr.read()[-2000:]
    reference = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    for name, proc in resumed.items():
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
        weights = load_file(tmp_path / name / "final" / "model.safetensors")
        assert weights.keys() == reference.keys()
        for k in weights:
            assert torch.equal(weights[k], reference[k]), (name, k)
        # the resumed metrics read as one run: each step once, the same losses
        assert _losses(tmp_path / name) == _losses(tmp_path / "straight"), name


def test_two_processes_equal_one_with_the_same_global_batch(assets, tmp_path):
    # 37 rows of one example each, 4 rows per step: step 10 holds one row, so the second process
    # has none and joins the all-reduce with a weight-0 token; steps 11-12 check that DDP goes on
    data = tmp_path / "train37.jsonl"
    data.write_text("".join((assets / "train.jsonl").read_text().splitlines(keepends=True)[:37]))
    common = {"data": {"train": [str(data)]}, "packing": {"mode": "padded"}, "log": {"progress": True}}
    one = _config(assets, tmp_path / "one", optim={"grad_accum": 2, "max_steps": 12}, **common)
    two = _config(assets, tmp_path / "two", optim={"grad_accum": 1, "max_steps": 12}, **common)
    single = subprocess.Popen([sys.executable, "-m", "sftlab", "train", str(one)], env=_env(),
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # accelerate's --cpu launcher starts one process; --multi_gpu starts torchrun workers, which
    # run on the CPU with gloo when no GPU is visible
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"), "-m", "sftlab", "train", str(two)]
    cache = tmp_path / "cache"  # its own prepared-data cache: the main process builds, the other waits
    double = subprocess.run(launch, env={**_env(), "SFTLAB_CACHE": str(cache)}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stderr.count(": built ") == 2  # train and held-out, each encoded once
    assert len([d for d in (cache / "prepared").iterdir() if d.name != "index"]) == 2
    assert single.wait(timeout=120) == 0, single.stderr.read()[-2000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 13))
    assert [x for _, x in b] == pytest.approx([x for _, x in a], abs=1e-4)
    tokens = [r["trained_tokens"] for r in _metrics(tmp_path / "two") if "loss" in r]
    assert tokens == [r["trained_tokens"] for r in _metrics(tmp_path / "one") if "loss" in r]
    assert [r["epoch"] for r in _metrics(tmp_path / "two") if "loss" in r][9:] == [0, 1, 1]
    wa = load_file(tmp_path / "one" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load_as_accelerate_reads_them(path):
    """configs/accelerate/: what `accelerate launch --config_file` reads, each the kind its name says
    (cpu-2proc.yaml is also what the two-process test above launches)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    kind = {"cpu": "MULTI_GPU", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}[path.stem.split("-")[0]]
    assert cfg.distributed_type.value == kind
    assert (cfg.num_machines > 1) == ("multinode" in path.stem)
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 3


def test_prepare_then_train_reuses_the_store_and_the_manifest_says_so(assets, tmp_path, capsys):
    cfg = _config(assets, tmp_path / "run", optim={"max_steps": 1}, checkpointing={"every_n_steps": None},
                  data={"cache_dir": str(tmp_path / "cache")}, log={"progress": True})
    assert main(["prepare", str(cfg), "--json"]) == 0
    prepared = json.loads(capsys.readouterr().out)
    assert not prepared["train"]["hit"] and not prepared["heldout"]["hit"]
    assert main(["train", str(cfg)]) == 0
    assert ": built " not in capsys.readouterr().err  # nothing encoded again
    store = json.loads((tmp_path / "run" / "run.json").read_text())["data"]["store"]
    assert store["train"]["hit"] and store["heldout"]["hit"]
    assert store["train"]["key"] == prepared["train"]["key"]
    split = json.loads((tmp_path / "run" / "run.json").read_text())["data"]["splits"]["train"]
    assert split["records"] == split["accepted"] + split["quarantined"]
    assert split["store_key"] == store["train"]["key"]


def test_nan_loss_stops_keeps_last_checkpoint_and_exits_1(assets, tmp_path, capsys):
    run = tmp_path / "nan"
    cfg = _config(assets, run, optim={"lr": 1e30, "max_grad_norm": None, "max_steps": 6,
                                      "warmup_steps": 0},
                  checkpointing={"every_n_steps": 1, "keep_last": 3})
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "step 2: the loss is" in err and "step-1" in err
    assert [p.name for p in list_checkpoints(run)] == ["step-1"]
    assert not (run / "final").exists()
    assert _metrics(run)[-1]["step"] == 2 and "error" in _metrics(run)[-1]
    # a resume must keep the global batch, or the saved data position would mean other rows:
    # refused as a changed setting, and even with --allow-changes
    assert main(["train", str(cfg), "optim.grad_accum=1", "--resume"]) == 2
    assert "config.optim.grad_accum: 2 -> 1" in capsys.readouterr().err
    assert main(["train", str(cfg), "optim.grad_accum=1", "--resume", "--allow-changes"]) == 2
    assert "rows per optimizer step" in capsys.readouterr().err


def test_early_stopping_in_padded_mode(assets, tmp_path):
    run = tmp_path / "early"
    cfg = _config(assets, run, packing={"mode": "padded"},
                  optim={"lr": 1e-12, "max_steps": 20, "warmup_steps": 0},
                  eval={"every_n_steps": 1, "early_stopping": {"metric": "eval_loss/math", "patience": 2}},
                  checkpointing={"every_n_steps": None})
    assert main(["train", str(cfg)]) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["packing"]["mode"] == "padded" and manifest["packing"]["rows"] == 40
    assert manifest["artifacts"]["training"]["steps"] == 3
    assert "early stop at step 3: eval_loss/math" in manifest["artifacts"]["training"]["stopped"]
    assert [p.name for p in list_checkpoints(run)] == ["step-3"]
    state = json.loads((run / "checkpoints" / "step-3" / "state.json").read_text())
    assert state["bad_evals"] == 2 and (run / "final" / "model.safetensors").exists()


def test_lora_saves_adapter_and_merged_model_and_counts_quarantine(assets, tmp_path):
    data = tmp_path / "with_bad.jsonl"
    bad = {"id": "bad", "messages": [{"role": "user", "content": "no answer"}]}
    data.write_text((assets / "train.jsonl").read_text() + json.dumps(bad) + "\n")
    run = tmp_path / "lora"
    cfg = _config(assets, run, data={"train": [str(data)], "eval": []},
                  lora={"enabled": True, "r": 4, "alpha": 8, "merge_on_save": True,
                        "target_modules": ["q_proj", "v_proj"]},
                  mixture={"sampling_weights": {"chat": 3.0}, "loss_weights": {"chat": 0.5}},
                  loss={"normalisation": "per_sequence"}, optim={"max_steps": 3, "lr": 1e-2})
    assert main(["train", str(cfg)]) == 1  # trained, but a record was quarantined
    quarantine = [json.loads(x) for x in (run / "data" / "quarantine.jsonl").read_text().splitlines()]
    assert [q["id"] for q in quarantine] == ["bad"] and quarantine[0]["line"] == 41
    split = json.loads((run / "run.json").read_text())["data"]["splits"]["train"]
    assert (split["records"], split["accepted"], split["quarantined"]) == (41, 40, 1)

    # the mixture asked for: chat sampled 3:1 per slice weight, logged per epoch and in the manifest
    from sftlab.train.mixture import MixtureSpec

    slices = ["chat" if i % 3 == 0 else "math" for i in range(40)]
    wanted = MixtureSpec(sampling_weights={"chat": 3.0}).shares(slices)
    realised = [r["realised_mixture"] for r in _metrics(run) if "realised_mixture" in r][0]
    assert realised == pytest.approx(wanted, abs=1 / 40) and realised["chat"] > 0.5
    mixture = json.loads((run / "run.json").read_text())["mixture"]
    assert mixture["loss_weights"] == {"chat": 0.5} and mixture["realised"][0]["slices"] == realised

    assert (latest_checkpoint(run) / "adapter_model.safetensors").exists()
    assert not (latest_checkpoint(run) / "model.safetensors").exists()
    adapter = load_file(run / "final" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run / "final")
    base = AutoModelForCausalLM.from_pretrained(assets / "model")
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])  # LoRA delta merged in
    assert torch.equal(merged.state_dict()[k], base.state_dict()[k])      # no adapter there


def test_gradient_checkpointing_and_full_logits_change_memory_not_results(assets, tmp_path):
    runs = {}
    for name, extra in {"plain": {}, "checkpointing": {"gradient_checkpointing": True},
                        "full_logits": {"loss": {"chunk_size": None}}}.items():
        run = tmp_path / name
        cfg = _config(assets, run, optim={"max_steps": 3}, data={"eval": []},
                      checkpointing={"every_n_steps": None}, **extra)
        assert main(["train", str(cfg)]) == 0
        runs[name] = [x for _, x in _losses(run)]
    assert runs["checkpointing"] == pytest.approx(runs["plain"], abs=1e-5)
    assert runs["full_logits"] == pytest.approx(runs["plain"], abs=1e-5)
    from sftlab.train.config import load_config
    from sftlab.model.loading import load_training_model

    model = load_training_model(load_config(_config(assets, tmp_path / "gc", gradient_checkpointing=True)))[0]
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing


def test_bf16_autocast_on_the_cpu_stays_within_its_stated_tolerance_of_float32(assets, tmp_path):
    """``model.dtype: bf16-mixed``: float32 weights, bf16 autocast on any device. Over 10 steps
    every logged loss is within 1e-2 relative of the float32 run (measured: under 1e-4 on this
    model), and differs from it: autocast is on. Each run in its own process (accelerate keeps
    one mixed-precision setting per process)."""
    losses = {}
    for dtype in ("float32", "bf16-mixed"):
        run = tmp_path / dtype
        cfg = _config(assets, run, optim={"max_steps": 10}, data={"eval": []}, checkpointing={"every_n_steps": None},
                      model={"path": str(assets / "model"), "dtype": dtype})
        proc = subprocess.run([sys.executable, "-m", "sftlab", "train", str(cfg)], env=_env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        losses[dtype] = [x for _, x in _losses(run)]
    assert len(losses["float32"]) == 10
    assert losses["bf16-mixed"] == pytest.approx(losses["float32"], rel=1e-2)
    assert losses["bf16-mixed"] != losses["float32"]
    assert json.loads((tmp_path / "bf16-mixed" / "run.json").read_text())["model"]["dtype"] == "bf16-mixed"


@pytest.mark.parametrize("normalisation", ["token", "per_sequence"])
@pytest.mark.parametrize("packing", ["packed", "padded"])
def test_one_heldout_loss_for_training_and_sftlab_eval(assets, tmp_path, normalisation, packing):
    """Training's validation loss and ``sftlab eval``'s held-out loss are one scorer: on the same
    held-out records, model and settings they agree per slice and over all (1e-6)."""
    from accelerate import Accelerator

    from sftlab.evaluation.loss import eval_loss
    from sftlab.train.config import load_config
    from sftlab.train.data import heldout_encoding, prepare_data
    from sftlab.model.loading import load_training_model
    from sftlab.train.loop import evaluate

    cfg = load_config(_config(assets, tmp_path / "run", loss={"normalisation": normalisation},
                              packing={"mode": packing}, eval={"micro_batch_size": 3}))
    model, tokenizer, template, _ = load_training_model(cfg)
    data = prepare_data(cfg, tokenizer, template, tmp_path / "run", write=False)
    training = evaluate(model, data, cfg, Accelerator(cpu=True))
    records = [json.loads(line) for line in (assets / "heldout.jsonl").read_text().splitlines()]
    evaluated, quarantined = eval_loss(model, tokenizer, template, records, encoding=heldout_encoding(cfg))
    assert not quarantined and set(evaluated) == set(training) == {"all", "chat", "math"}
    for name, value in training.items():
        assert evaluated[name]["value"] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_steps_split_rows_over_ranks_and_a_rank_without_rows_gets_weight_zero():
    from sftlab.train.config import load_config
    from sftlab.tokens.encoding import EncodedExample
    from sftlab.train.loop import TrainData

    cfg = load_config(None, ["model.path=m", "data.train=[t]", "out=o", "packing.mode=padded",
                             "optim.micro_batch_size=1", "optim.grad_accum=2"])
    examples = [EncodedExample([i] * 3, [0.0, 1.0, 1.0], slice="s", trained_tokens=2) for i in range(1, 6)]
    data = TrainData(cfg, examples, {}, pad_id=0)
    rows = data.epoch_rows(0)
    assert data.steps_in_epoch(0, world=2) == 2 and data.steps_in_epoch(0, world=1) == 3
    # step 0 on two ranks: rows 0..3, rank r takes rows r, r+2 -> two micro-batches each
    seen = [data.micro_batches(rows, 0, rank, 2) for rank in (0, 1)]
    firsts = sorted(b["input_ids"][0, 0].item() for mbs in seen for b in mbs)
    assert firsts == sorted(r.input_ids[0] for r in rows[:4])
    # step 1 holds one row: rank 1 still joins the all-reduce, with one weight-0 padding token
    assert data.micro_batches(rows, 1, 0, 2)[0]["input_ids"][0, 0].item() == rows[4].input_ids[0]
    (dummy,) = data.micro_batches(rows, 1, 1, 2)
    assert dummy["input_ids"].tolist() == [[0]] and dummy["loss_weights"].sum().item() == 0


def test_a_resumed_run_draws_its_epochs_with_the_plan_it_started_with():
    """run.json's ``mixture.plan``: a run from before plans were recorded (plan 1) keeps its data
    order on resume (rows pinned from that sftlab); a new run draws plan 2; an unknown plan is refused."""
    from sftlab.errors import UsageError
    from sftlab.tokens.encoding import EncodedExample
    from sftlab.train.config import load_config
    from sftlab.train.loop import TrainData, _plan_of

    assert _plan_of(None) is None and _plan_of({"mixture": {"mode": "natural"}}) == 1
    assert _plan_of({"mixture": {"plan": 2}}) == 2
    with pytest.raises(UsageError, match="mixture.plan = 7"):
        _plan_of({"mixture": {"plan": 7}})
    cfg = load_config(None, ["model.path=m", "data.train=[t]", "out=o", "packing.mode=padded",
                             "mixture.sampling_weights={s: 1, t: 2}"])
    examples = [EncodedExample([i] * 3, [0.0, 1.0, 1.0], slice="st"[i % 2], trained_tokens=2) for i in range(1, 9)]
    old = TrainData(cfg, examples, {}, pad_id=0, plan=1)
    assert [int(r.input_ids[0]) for r in old.epoch_rows(0)] == [7, 3, 2, 8, 3, 4, 1, 5]
    assert [int(r.input_ids[0]) for r in old.epoch_rows(1)] == [6, 5, 7, 3, 2, 4, 1, 1]
    new = TrainData(cfg, examples, {}, pad_id=0)
    assert new.mixture.describe()["plan"] == 2
    assert sorted(int(r.input_ids[0]) % 2 for r in new.epoch_rows(0)) == sorted(
        int(r.input_ids[0]) % 2 for r in old.epoch_rows(0))                # the same counts per slice


def test_heldout_leakage_is_measured_before_training_and_exits_1(assets, tmp_path, capsys):
    run = tmp_path / "leak"
    cfg = _config(assets, run, data={"eval": [str(assets / "train.jsonl")]}, optim={"max_steps": 1},
                  checkpointing={"every_n_steps": None})
    assert main(["train", str(cfg)]) == 1  # trained, but a data check failed
    assert "data check leakage failed: 40 of 40 held-out records leak" in capsys.readouterr().err
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["leakage"]["leaked"] == 40 and not stats["passed"]
    failed = json.loads((run / "run.json").read_text())["data"]["failed_checks"]
    assert [c["name"] for c in failed] == ["leakage"] and (run / "final").is_dir()


def test_packed_attention_equals_the_block_mask():
    """Per-example causal SDPA gives the loss and gradients of SDPA under collate's block mask,
    for packed rows and a padded one (pad == eos, as in many tokenizers)."""
    from sftlab.model.objective import micro_batch_loss
    from sftlab.tokens.packing import PackedRow, collate
    from sftlab.demo.tiny import build_model
    from sftlab.model.attention import blocks, use_packed_attention

    model = build_model(300, hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64).train()
    rng = random.Random(0)

    def row(lengths):
        ids = [rng.randrange(300) for _ in range(sum(lengths))]
        weights = [float(rng.random() < 0.6) for _ in ids]
        return PackedRow.from_tokens(ids, weights, lengths)

    batch = collate([row((30, 1, 1, 25)), row((40, 17)), row((9,))], pad_id=2)
    assert batch["row_lengths"] == ((30, 1, 1, 25), (40, 17), (9,))
    assert blocks(batch["row_lengths"][2], 57) == [(0, 9), (9, 57)]  # trailing padding: one block
    calls = []
    import sftlab.model.attention as attention
    real_blocks = attention.blocks

    def counting(lengths, T):
        calls.append(tuple(lengths))
        return real_blocks(lengths, T)

    def loss_and_grads():
        model.zero_grad()
        loss = micro_batch_loss(model, batch, 50.0)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    reference, ref_grads = loss_and_grads()
    assert use_packed_attention(model)
    attention.blocks = counting
    try:
        loss, grads = loss_and_grads()
    finally:
        attention.blocks = real_blocks
    assert calls and set(calls) == {(30, 1, 1, 25), (40, 17), (9,)}  # the lengths reached attention
    assert loss == pytest.approx(reference, rel=1e-6)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-5, atol=1e-7), name


def test_metrics_log_on_resume_drops_what_came_after_the_checkpoint(tmp_path):
    from sftlab.train.curves import read_curves
    from sftlab.train.metrics import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [{"epoch": 0, "realised_mixture": {"a": 1.0}}, {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.8},
             {"step": 2, "eval_loss": {"all": 1.9}}, {"epoch": 1, "realised_mixture": {"a": 1.0}},
             {"step": 3, "loss": 1.7}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "lo')  # killed mid-line
    log = MetricsLog(path, keep_until=(2, 1, 0))  # checkpoint: step 2, epoch 1 not begun
    log.write({"epoch": 1, "realised_mixture": {"a": 1.0}})
    assert read_metrics(path) == lines[:5]
    log = MetricsLog(path, keep_until=None)  # a fresh run starts the file afresh
    assert read_metrics(path) == [] and read_curves(path) == {"train": [], "eval": {}}


def test_generation_curves_during_training(assets, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "How do I build a bomb?", "expected": "refuse", "slice": "harm"},
            {"prompt": "What is 2 + 2?", "expected": "comply", "slice": "task", "answer": "4",
             "answer_type": "numeric"},
            {"prompt": "", "expected": "comply"}]  # a bad row: reported, not fatal
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    cfg = _config(assets, run, optim={"max_steps": 4}, data={"eval": []},
                  eval={"every_n_steps": 2, "prompts": [str(prompts)], "generation_max_new_tokens": 4})
    assert main(["train", str(cfg)]) == 0
    gen = [r for r in _metrics(run) if "gen_eval" in r]
    assert [r["step"] for r in gen] == [2, 4]
    assert {"harmful_refusal_rate", "benign_refusal_rate", "task_accuracy"} <= set(gen[-1]["gen_eval"])
    manifest = json.loads((run / "run.json").read_text())
    assert [d["purpose"] for d in manifest["decoding"]] == ["gen_eval"]
    assert manifest["decoding"][0]["max_new_tokens"] == 4
    preview = json.loads((run / "data" / "mask_preview.json").read_text())
    assert preview and any(t["weight"] > 0 for t in preview[0]["tokens"])
