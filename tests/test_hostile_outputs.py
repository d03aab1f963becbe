"""Hostile outputs: no command writes over one of its inputs or into a directory it does not own,
and a refused resume changes nothing.

A command's inputs are remembered by device and inode while it runs, so an output path that is
an input under another name (a symbolic link to its directory, a hard link) is refused like the
path itself. Every case: exit 2, one line naming the path or key, no traceback, every file of
the case's directory byte-identical afterwards (nothing written anywhere else either).
"""
from __future__ import annotations

import os
import shutil

import pytest

from sftlab.cli import main


def _inputs(tmp_path, assets):
    shutil.copy(assets / "train.jsonl", tmp_path / "data.jsonl")
    shutil.copy(assets / "policy.yaml", tmp_path / "policy.yaml")
    (tmp_path / "alias").symlink_to(tmp_path)  # the same directory under another name
    os.link(tmp_path / "data.jsonl", tmp_path / "hard.jsonl")  # the same file under another name


# (argv with {d} for the case directory and {m} for the model, the path the refusal names)
OVER_INPUTS = {
    "stats --out onto its input": (["stats", "{d}/data.jsonl", "--out", "{d}/data.jsonl"], "data.jsonl"),
    "stats --out through a symlinked directory": (["stats", "{d}/data.jsonl", "--out", "{d}/alias/data.jsonl"],
                                                  "alias/data.jsonl"),
    "stats --out onto a hard link of its input": (["stats", "{d}/data.jsonl", "--out", "{d}/hard.jsonl"],
                                                  "hard.jsonl"),
    "stats --out onto its policy": (["stats", "{d}/data.jsonl", "--policy", "{d}/policy.yaml", "--out",
                                     "{d}/policy.yaml"], "policy.yaml"),
    "validate --quarantine onto its policy": (["validate", "{d}/data.jsonl", "--policy", "{d}/policy.yaml",
                                               "--quarantine", "{d}/policy.yaml"], "policy.yaml"),
    "validate --quarantine onto its input": (["validate", "{d}/data.jsonl", "--quarantine", "{d}/alias/hard.jsonl"],
                                             "hard.jsonl"),
    "inspect --html onto its input": (["inspect", "{d}/data.jsonl", "--tokenizer", "{m}", "--template", "chatml",
                                       "--html", "{d}/data.jsonl"], "data.jsonl"),
}


@pytest.mark.parametrize("case", sorted(OVER_INPUTS))
def test_no_command_writes_over_its_input(hostile, hostile_assets, tmp_path, capsys, case):
    _inputs(tmp_path, hostile_assets)
    argv, named = OVER_INPUTS[case]
    before = hostile.snapshot(tmp_path)
    code = main([a.format(d=tmp_path, m=hostile_assets / "model") for a in argv])
    err = hostile.refusal(capsys, code, named, "inputs")
    assert "never writes over" in err
    assert hostile.snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["run.json", "metrics.jsonl", "data/stats.json", "data/mask_preview.json"])
def test_report_out_onto_a_file_of_its_run_is_refused(hostile, hostile_runs, tmp_path, capsys, target):
    run = tmp_path / "run"
    shutil.copytree(hostile_runs["full"], run)
    before = hostile.snapshot(run)
    hostile.refusal(capsys, main(["report", str(run), "--out", str(run / target)]), target)
    assert hostile.snapshot(run) == before
    assert main(["report", str(run), "--out", str(tmp_path / "page.html")]) == 0  # elsewhere: fine


def test_label_out_onto_its_input_through_a_link_is_refused(hostile, tmp_path, capsys):
    (tmp_path / "out.jsonl").write_text('{"id": 1, "response": "sure"}\n')
    (tmp_path / "alias").symlink_to(tmp_path)
    before = hostile.snapshot(tmp_path)
    hostile.refusal(capsys, main(["label", str(tmp_path / "out.jsonl"), "--out",
                                  str(tmp_path / "alias" / "out.jsonl")]), "out.jsonl")
    assert hostile.snapshot(tmp_path) == before


# -- train out= a directory that is not a sftlab run -----------------------------------------------

FOREIGN_DIRS = {
    "a user's data, config and model": {"data/mine.jsonl": "{}\n", "config.yaml": "lr: 1\n", "base/w.bin": "x"},
    "a user's suite": {"suite/cases.txt": "x"},
    "a user's base model": {"base/config.json": "{}"},
    "a user's data folder": {"data/stats.json": "{}", "data/train.jsonl": "{}\n"},
    "garbage run.json": {"run.json": "garbage\n", "thesis.tex": "mine"},
    "another tool's run.json": {"run.json": '{"kind": "other", "x": 1}\n'},
    "a run.json that is a JSON list": {"run.json": "[1, 2]\n"},
}


@pytest.mark.parametrize("case", sorted(FOREIGN_DIRS))
def test_train_into_a_directory_with_files_it_did_not_write_is_refused(hostile, hostile_assets, tmp_path,
                                                                       capsys, case):
    out = tmp_path / "out"
    for rel, text in FOREIGN_DIRS[case].items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    cfg = hostile.config(hostile_assets, out)
    before = hostile.snapshot(tmp_path)
    err = hostile.refusal(capsys, main(["train", str(cfg)]), f"out={out}")
    assert "not a sftlab run" in err
    assert hostile.snapshot(tmp_path) == before


# -- a refused resume changes nothing ---------------------------------------------------------------

REFUSED_RESUMES = {
    "micro-batch size": ("full", ["optim.micro_batch_size=4"], "rows per optimizer step"),
    "grad accumulation": ("full", ["optim.grad_accum=2"], "rows per optimizer step"),
    "LoRA switched on": ("full", ["lora.enabled=true"], "LoRA adapter"),
    "LoRA switched off": ("lora", ["lora.enabled=false"], "LoRA adapter"),
    "LoRA rank": ("lora", ["lora.enabled=true", "lora.r=8"], "lora.r"),
    "LoRA targets": ("lora", ["lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj]"], "lora.target_modules"),
    "another base model": ("lora", ["lora.enabled=true", "lora.r=4", "model.path={a}/model2"], "model.path"),
    "a tokenizer of another vocabulary": ("full", ["tokenizer={a}/model2"], "tokenizer="),
}


@pytest.mark.parametrize("case", sorted(REFUSED_RESUMES))
def test_a_refused_resume_with_allow_changes_leaves_the_run_as_it_was(hostile, hostile_assets, hostile_runs,
                                                                      tmp_path, capsys, case):
    kind, overrides, named = REFUSED_RESUMES[case]
    run = tmp_path / "run"
    shutil.copytree(hostile_runs[kind], run)
    cfg = hostile.config(hostile_assets, run)
    before = hostile.snapshot(run)
    code = main(["train", str(cfg), *[o.format(a=hostile_assets) for o in overrides], "--resume",
                 "--allow-changes"])
    err = hostile.refusal(capsys, code, named)
    assert "continuing" not in err
    assert hostile.snapshot(run) == before  # run.json, segments, metrics, checkpoints, final: as they were
