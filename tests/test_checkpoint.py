"""Atomic safetensors checkpoints: round trip of weights, optimizer, scheduler and RNG."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from sftlab.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from sftlab.demo.tiny import build_tiny


def _setup(seed=0):
    tok, model = build_tiny(vocab_size=300, hidden=32, layers=1, heads=2, kv_heads=1,
                            intermediate=64, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = get_cosine_schedule_with_warmup(opt, 2, 10)
    return tok, model, opt, sched


def _train_step(model, opt, sched):
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def _save(run, step, tok, model, opt, sched, keep_last=3, **state):
    return save_checkpoint(run, step, model=model, tokenizer=tok, optimizer=opt, scheduler=sched,
                           state={"epoch": 0, "step_in_epoch": step, **state}, keep_last=keep_last,
                           manifest={"schema_version": 1})


def test_round_trip_restores_rng_and_training_continues_identically(tmp_path):
    torch.manual_seed(1)
    tok, model, opt, sched = _setup()
    _train_step(model, opt, sched)
    path = _save(tmp_path, 1, tok, model, opt, sched, best=1.5)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    _train_step(model, opt, sched)  # continues from the RNG state drawn above

    _, model2, opt2, sched2 = _setup(seed=7)  # different init: everything must come from disk
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 1 and state["best"] == 1.5 and state["step_in_epoch"] == 1
    draws = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == expected[0] and draws[1] == expected[1]
    assert torch.equal(draws[2], expected[2])
    _train_step(model2, opt2, sched2)
    assert sched2.get_last_lr() == sched.get_last_lr()
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k


def test_optimizer_and_scheduler_state_equal_after_load(tmp_path):
    tok, model, opt, sched = _setup()
    for _ in range(3):
        _train_step(model, opt, sched)
    path = _save(tmp_path, 3, tok, model, opt, sched)
    _, model2, opt2, sched2 = _setup(seed=3)
    load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx, entry in a["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, b["state"][idx][name]), (idx, name)
    assert sched2.state_dict() == sched.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k


def test_nothing_is_pickled_and_layout(tmp_path):
    tok, model, opt, sched = _setup()
    _train_step(model, opt, sched)
    path = _save(tmp_path, 1, tok, model, opt, sched)
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.safetensors", "optimizer.json",
            "rng-0.safetensors", "state.json", "run.json", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]


class _CrashingTokenizer:
    """Stands in for a process that dies while the tokenizer files are being written."""

    def save_pretrained(self, path):
        (path / "tokenizer.json").write_text("{half")
        raise OSError("disk full")


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    tok, model, opt, sched = _setup()
    _train_step(model, opt, sched)
    first = _save(tmp_path, 1, tok, model, opt, sched)
    _train_step(model, opt, sched)
    with pytest.raises(OSError):
        _save(tmp_path, 2, _CrashingTokenizer(), model, opt, sched)
    assert latest_checkpoint(tmp_path) == first
    assert not (tmp_path / "checkpoints" / "step-2").exists()
    # the old one still loads whole
    _, model2, opt2, sched2 = _setup(seed=4)
    assert load_checkpoint(first, model=model2, optimizer=opt2, scheduler=sched2)["step"] == 1
    # the next save clears the half-written temp dir
    third = _save(tmp_path, 3, tok, model, opt, sched)
    assert latest_checkpoint(tmp_path) == third
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_and_incomplete_dirs_ignored(tmp_path):
    tok, model, opt, sched = _setup()
    for step in (1, 2, 3, 4):
        _train_step(model, opt, sched)
        _save(tmp_path, step, tok, model, opt, sched, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-3", "step-4"]
    (tmp_path / "checkpoints" / "step-9").mkdir()  # no state.json: never complete
    assert latest_checkpoint(tmp_path).name == "step-4"
    assert latest_checkpoint(tmp_path / "nowhere") is None
