"""The run manifest: schema, merge, atomic write, environment, and `sftlab manifest`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.manifest import (SCHEMA_VERSION, ManifestError, RunManifest, config_hash, diff_manifests,
                             environment, read_manifest, read_run_json, tokenizer_fingerprint,
                             update_manifest)

FULL = {
    "kind": "train",
    "created": "2026-11-01T12:00:00+00:00",
    "data": {"splits": {"train": {"records_sha256": "ab" * 32, "records": 10, "accepted": 9,
                                  "quarantined": 1,
                                  "files": [{"path": "train.jsonl", "records": 10, "accepted": 9,
                                             "quarantined": 1}]}}},
    "template": {"name": "chatml", "fingerprint": "cd" * 32, "role_format": "chatml",
                 "control_tokens": ["<|im_start|>", "<|im_end|>"], "end_of_turn": ["<|im_end|>"]},
    "tokenizer": {"name_or_path": "tiny", "sha256": "ef" * 32, "vocab_size": 455,
                  "added_tokens": {"<|im_start|>": 1}},
    "policy": {"version": "2026-11-01", "sha256": "01" * 32, "path": "policy.yaml"},
    "masking": {"mode": "all_assistant_turns", "max_length": 512, "last_turn_only": False,
                "trained_tokens": 300, "total_tokens": 1000, "trained_token_share": 0.3},
    "packing": {"mode": "packed", "max_length": 512, "efficiency": 0.97, "rows": 2},
    "mixture": {"sampling": {"math": 0.5, "refusal": 0.5}, "loss_weights": {"math": 1.0},
                "realised": [{"epoch": 0, "slices": {"math": 0.52, "refusal": 0.48}}]},
    "decoding": [{"purpose": "eval", "do_sample": False, "max_new_tokens": 32, "seed": 0}],
    "model": {"base": "SmolLM2-135M-Instruct", "dtype": "float32", "lora": {"r": 8},
              "notes": "dequantised from GGUF Q4_1"},
    "config": {"lr": 1e-4, "epochs": 1},
    "config_sha256": config_hash({"lr": 1e-4, "epochs": 1}),
    "seed": 0,
    "artifacts": {"final": "final"},
    "software": {"sftlab": "0.1.0", "git_commit": None, "git_dirty": None, "python": "3.11.7",
                 "torch": "2.13.0"},
    "hardware": {"platform": "Linux", "cpu": "x", "cores": 2, "memory_gib": 8.0, "gpus": []},
}


def test_schema_round_trip(tmp_path):
    written = update_manifest(tmp_path, **FULL)
    assert written == {"schema_version": 2, **FULL}
    on_disk = json.loads((tmp_path / "run.json").read_text())
    assert on_disk == written
    m = read_manifest(tmp_path)
    assert isinstance(m, RunManifest)
    assert m.to_dict() == written
    assert m.masking.trained_token_share == 0.3
    assert m.data.splits["train"].quarantined == 1
    assert m.decoding[0].purpose == "eval"
    assert read_manifest(tmp_path / "run.json") == m


def test_merge_is_one_level_deep_and_lists_replace(tmp_path):
    first = update_manifest(tmp_path, kind="train", masking={"mode": "all", "max_length": 64},
                            decoding=[{"purpose": "eval"}, {"purpose": "gen_eval"}],
                            data={"splits": {"train": {"records": 3}}})
    assert first["created"]  # set on first write, then kept
    m = update_manifest(tmp_path, masking={"trained_tokens": 7, "max_length": 128},
                        decoding=[{"purpose": "reference"}],
                        data={"splits": {"heldout": {"records": 2}}}, seed=5)
    assert m["masking"] == {"mode": "all", "max_length": 128, "trained_tokens": 7}
    assert m["decoding"] == [{"purpose": "reference"}]
    # one level deep: the "splits" key of the data section is replaced as a whole
    assert m["data"] == {"splits": {"heldout": {"records": 2}}}
    assert m["kind"] == "train" and m["seed"] == 5 and m["created"] == first["created"]
    assert json.loads((tmp_path / "run.json").read_text()) == m


def test_sections_keep_extra_keys_but_top_level_forbids_unknown(tmp_path):
    m = update_manifest(tmp_path, packing={"mode": "packed", "boundaries": "cu_seqlens"})
    assert m["packing"]["boundaries"] == "cu_seqlens"
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(ManifestError, match="learning_rate"):
        update_manifest(tmp_path, learning_rate=0.1)
    with pytest.raises(ManifestError, match="masking.trained_tokens"):
        update_manifest(tmp_path, masking={"trained_tokens": "many"})
    assert (tmp_path / "run.json").read_text() == before
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 3}))
    with pytest.raises(ManifestError, match="schema_version"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run manifest"):
        read_manifest(tmp_path / "elsewhere")


def test_atomic_write_leaves_old_file_whole(tmp_path, monkeypatch):
    update_manifest(tmp_path, kind="train", seed=1)
    before = (tmp_path / "run.json").read_text()

    def crash(src, dst):  # the process dies between writing the temp file and the rename
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        update_manifest(tmp_path, seed=2)
    monkeypatch.undo()
    assert (tmp_path / "run.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temp file left
    with pytest.raises(ManifestError, match="masking.trained_token_share: NaN"):  # refused before writing
        update_manifest(tmp_path, masking={"trained_token_share": float("nan")})
    assert (tmp_path / "run.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_environment_has_software_and_hardware():
    env = environment()
    soft, hard = env["software"], env["hardware"]
    for key in ("sftlab", "git_commit", "git_dirty", "python", "torch", "transformers",
                "tokenizers", "datasets", "accelerate", "peft", "safetensors"):
        assert key in soft
    import torch
    import transformers
    assert soft["torch"] == torch.__version__ and soft["transformers"] == transformers.__version__
    assert soft["git_commit"] is None or len(soft["git_commit"]) == 40
    for key in ("platform", "cpu", "cores", "memory_gib", "gpus"):
        assert key in hard
    assert hard["cores"] >= 1 and hard["memory_gib"] > 0
    assert len(hard["gpus"]) == torch.cuda.device_count()
    RunManifest.model_validate(env)  # fits the schema as it is


def test_hashes_are_content_hashes():
    assert config_hash({"x": 1, "y": [1, 2]}) == config_hash({"y": [1, 2], "x": 1})
    assert config_hash({"x": 1}) != config_hash({"x": 2})

    from sftlab.demo.tiny import build_tokenizer
    t1, t2 = build_tokenizer(), build_tokenizer()
    f1 = tokenizer_fingerprint(t1)
    assert f1["sha256"] == tokenizer_fingerprint(t2)["sha256"]
    assert f1["vocab_size"] == len(t1) and f1["added_tokens"]["<|im_end|>"] == 2
    t2.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(t2)["sha256"] != f1["sha256"]
    t3 = build_tokenizer(["a different corpus changes the merges entirely"])
    assert tokenizer_fingerprint(t3)["sha256"] != f1["sha256"]


def test_diff_names_each_differing_field():
    old = {"schema_version": 1, "seed": 1, "masking": {"mode": "all", "max_length": 512},
           "decoding": [{"purpose": "eval", "temperature": 0.0}]}
    new = {"schema_version": 1, "seed": 2, "masking": {"mode": "all", "max_length": 1024},
           "decoding": [{"purpose": "eval", "temperature": 0.0}], "kind": "train"}
    assert diff_manifests(old, new) == [
        {"path": "kind", "old": None, "new": "train", "missing": "old"},
        {"path": "masking.max_length", "old": 512, "new": 1024},
        {"path": "seed", "old": 1, "new": 2}]
    assert diff_manifests(old, old) == []
    assert [d["path"] for d in diff_manifests(old, new, ignore=["kind", "masking"])] == ["seed"]


def test_cli_show_and_diff(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    update_manifest(a, **FULL)
    update_manifest(b, **{**FULL, "seed": 7, "packing": {**FULL["packing"], "efficiency": 0.5}})
    assert main(["manifest", str(a), "--diff", str(a)]) == 0
    assert "identical" in capsys.readouterr().out
    assert main(["manifest", str(a), "--diff", str(b)]) == 1
    out = capsys.readouterr().out
    assert "seed: 0 -> 7" in out and "packing.efficiency: 0.97 -> 0.5" in out
    assert "2 field(s) differ" in out
    assert main(["manifest", str(a), "--diff", str(b), "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert got["identical"] is False
    assert {d["path"]: (d["old"], d["new"]) for d in got["differences"]} == {
        "packing.efficiency": (0.97, 0.5), "seed": (0, 7)}

    assert main(["manifest", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"schema_version": 2, **FULL}
    assert main(["manifest", str(a)]) == 0
    out = capsys.readouterr().out
    assert "dequantised from GGUF Q4_1" in out and "trained_token_share" in out

    assert main(["manifest", str(tmp_path / "missing"), "--json"]) == 2
    assert "no run manifest" in json.loads(capsys.readouterr().out)["error"]
    (b / "run.json").write_text("{not json")
    assert main(["manifest", str(a), "--diff", str(b)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_environment_without_git_records_null_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    soft = environment()["software"]
    assert soft["git_commit"] is None and soft["git_dirty"] is None
    assert soft["python"] and soft["torch"]


OLD = Path(__file__).parent / "data" / "manifests" / "run-schema1.json"


def test_a_schema_1_run_json_still_reads_validates_and_diffs(tmp_path, capsys):
    """Schema 1 named the data version ``sha256`` (segments: ``data_sha256``); it reads as
    ``records_sha256``, validates, diffs against a schema-2 manifest field by field, and a
    later write (a resume) upgrades the file."""
    raw = json.loads(OLD.read_text())
    version = raw["data"]["splits"]["train"]["sha256"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(OLD.read_text())
    m = read_manifest(old)
    assert m.schema_version == 1 and SCHEMA_VERSION == 2
    assert m.data.splits["train"].records_sha256 == version
    assert m.segments[0]["records_sha256"] == {"train": version} and "data_sha256" not in m.segments[0]
    assert "sha256" not in read_run_json(old)["data"]["splits"]["train"]

    sections = {k: v for k, v in read_run_json(old).items() if k != "schema_version"}
    same = update_manifest(tmp_path / "same", **sections)
    assert same["schema_version"] == 2 and same["data"]["splits"]["train"]["records_sha256"] == version
    assert main(["manifest", str(old), "--diff", str(tmp_path / "same"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["differences"] == [
        {"path": "schema_version", "old": 1, "new": 2}]  # the data version compares equal

    splits = {"train": {**sections["data"]["splits"]["train"], "records_sha256": "cd" * 32}}
    update_manifest(tmp_path / "other", **{**sections, "data": {**sections["data"], "splits": splits}})
    assert main(["manifest", str(old), "--diff", str(tmp_path / "other"), "--json"]) == 1
    paths = {d["path"]: (d["old"], d["new"]) for d in json.loads(capsys.readouterr().out)["differences"]}
    assert paths["data.splits.train.records_sha256"] == (version, "cd" * 32)

    upgraded = update_manifest(old, seed=raw["seed"])  # what a resume of the old run does
    on_disk = json.loads((old / "run.json").read_text())
    assert on_disk == upgraded and on_disk["schema_version"] == 2
    assert on_disk["data"]["splits"]["train"]["records_sha256"] == version
    assert "sha256" not in on_disk["data"]["splits"]["train"]


@pytest.mark.parametrize("damage", [b"[" * 100000, b"\xff\xfe", b'{"seed": ' + b"9" * 5000 + b"}"])
def test_manifest_of_a_damaged_run_json_is_one_line(hostile, tmp_path, capsys, damage):
    (tmp_path / "run.json").write_bytes(damage)
    assert "run.json" in hostile.refusal(capsys, main(["manifest", str(tmp_path)]))
