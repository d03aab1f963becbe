"""The typed training config: YAML + dotted overrides, errors that name the key, one doc source."""
from __future__ import annotations

import pytest
import yaml

from sftlab.cli import main
from sftlab.train.config import (ConfigError, TrainConfig, config_reference_markdown,
                                 config_reference_text, load_config)

BASE = ["model.path=tiny", "data.train=[train.jsonl]", "out=runs/a"]


def test_yaml_plus_overrides(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {path: tiny}\ndata: {train: [t.jsonl], eval: [h.jsonl]}\n"
                        "out: run\noptim: {lr: 3.0e-4, grad_accum: 2}\n")
    cfg = load_config(cfg_file, ["optim.lr=1e-4", "lora.enabled=true", "lora.target_modules=[q_proj]",
                                 "eval.early_stopping.patience=3", "template=chatml"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.grad_accum == 2
    assert cfg.lora.enabled is True and cfg.lora.target_modules == ["q_proj"]
    assert cfg.eval.early_stopping.patience == 3 and cfg.template == "chatml"
    assert cfg.data.eval == ["h.jsonl"] and cfg.tokenizer_path == "tiny"
    assert cfg.model.trust_remote_code is False and cfg.loss.normalisation == "token"
    assert cfg.row_length == cfg.encoding.max_length == 2048


def test_config_is_frozen_and_fingerprinted():
    cfg = load_config(None, BASE)
    with pytest.raises(Exception):
        cfg.seed = 3
    assert cfg.sha256() == load_config(None, BASE).sha256()
    assert cfg.sha256() != load_config(None, [*BASE, "seed=1"]).sha256()


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1e-4", "unknown key 'optim.lrr' (in override optim.lrr=1e-4); did you mean 'optim.lr'?"),
    ("optim.grad_acum=2", "did you mean 'optim.grad_accum'?"),
    ("modle.path=x", "unknown key 'modle' (in override modle.path=x); did you mean 'model'?"),
    ("eval.early_stopping.patiense=2", "did you mean 'eval.early_stopping.patience'?"),
])
def test_unknown_key_suggests_closest(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, override])
    assert message in str(e.value)


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr:"),
    ("optim.lr=fast", "optim.lr:"),
    ("packing.mode=zip", "packing.mode:"),
    ("lora.enabled=maybe", "lora.enabled:"),
    ("optim.betas=[0.9]", "optim.betas:"),
    ("loss.normalisation=sequence", "loss.normalisation:"),
    ("mixture.temperature=0", "mixture.temperature:"),
])
def test_bad_value_names_field_path(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, override])
    assert str(e.value).startswith(field), str(e.value)


def test_errors_name_the_file(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {path: tiny}\ndata: {train: [t.jsonl]}\nout: r\noptim: {epochs: 0}\n")
    with pytest.raises(ConfigError, match=r"optim.epochs: .*greater than 0.*cfg.yaml"):
        load_config(cfg_file)
    with pytest.raises(ConfigError, match="data: required"):
        load_config(None, ["model.path=m", "out=r"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, [*BASE, "optim.lr"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(None, [*BASE, "model.path.x=1"])
    with pytest.raises(ConfigError, match="sampling_weights or temperature"):
        load_config(None, [*BASE, "mixture.temperature=2", "mixture.sampling_weights={a: 1}"])


def test_reference_comes_from_field_docstrings():
    md = config_reference_markdown()
    text = config_reference_text()
    assert "| `optim.lr` | float | `2e-05` | Peak learning rate of AdamW. |" in md
    assert "`eval.early_stopping.metric`" in md and "`model.path` | str | `required`" in md
    # every leaf field is documented, in both renderings
    rows = [line for line in md.splitlines()[2:]]
    assert all(not line.endswith("|  |") for line in rows)
    assert "  optim.grad_accum (int; default 1)" in text
    assert len(rows) == text.count("\n      ")
    assert TrainConfig.model_fields["seed"].description.startswith("Seed")


def test_cli_config_errors_exit_2(tmp_path, capsys):
    import json

    from sftlab.cli import main

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {path: tiny}\ndata: {train: [t.jsonl]}\nout: r\n")
    assert main(["train", str(cfg_file), "optim.lrr=1e-4", "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "error": "unknown key 'optim.lrr' (in override optim.lrr=1e-4); did you mean 'optim.lr'?"}
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


@pytest.mark.parametrize("key, ours", [
    ("learning_rate", "optim.lr"), ("lora_r", "lora.r"), ("lora_alpha", "lora.alpha"),
    ("num_train_epochs", "optim.epochs"), ("per_device_train_batch_size", "optim.micro_batch_size"),
    ("gradient_accumulation_steps", "optim.grad_accum"), ("max_seq_length", "encoding.max_length"),
    ("warmup_ratio", "optim.warmup_ratio"), ("lora_target_modules", "lora.target_modules"),
])
def test_keys_as_the_peers_users_type_them(tmp_path, key, ours):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"model: {{path: tiny}}\ndata: {{train: [t.jsonl]}}\nout: r\n{key}: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file)
    assert str(e.value).startswith(f"unknown key '{key}' (in {cfg_file}); did you mean '{ours}'?")


def test_a_dotted_key_in_yaml_is_told_to_nest(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {path: tiny}\ndata: {train: [t.jsonl]}\nout: r\noptim.lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lr' \(in .*cfg.yaml\); YAML does not read dots as "
                                          r"nesting: nest it under `optim:` \(optim: \{lr: ...\}\)$"):
        load_config(cfg_file)
    cfg_file.write_text("model: {path: tiny}\ndata: {train: [t.jsonl]}\nout: r\ndata.max_length: 512\n")
    with pytest.raises(ConfigError, match=r"nest it under `data:`.*data has no max_length either: did you mean "
                                          r"'encoding.max_length'\?"):
        load_config(cfg_file)


def test_errors_of_overrides_name_the_override_not_the_file(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {path: tiny}\ndata: {train: [t.jsonl]}\nout: r\noptim: {epochs: 0}\n")
    with pytest.raises(ConfigError, match=r"^optim.lr: .*greater than 0 \(got -1\) \(in override optim.lr=-1\)"):
        load_config(cfg_file, ["optim.lr=-1", "optim.epochs=1"])
    with pytest.raises(ConfigError, match=r"^optim.epochs: .*\(in .*cfg.yaml\)"):  # the file's own mistake
        load_config(cfg_file, ["optim.lr=1e-4"])


def test_lora_all_linear_dora_and_neftune_keys():
    cfg = load_config(None, [*BASE, "lora.target_modules=all-linear", "lora.use_dora=true",
                             "optim.neftune_alpha=5"])
    assert cfg.lora.target_modules == "all-linear" and cfg.lora.use_dora and cfg.optim.neftune_alpha == 5
    assert load_config(None, BASE).optim.neftune_alpha is None  # off by default
    with pytest.raises(ConfigError, match="lora.target_modules"):
        load_config(None, [*BASE, "lora.target_modules=all"])


@pytest.mark.parametrize("override,field", [
    ("optim.lr=.inf", "optim.lr"), ("optim.lr=.nan", "optim.lr"), ("optim.betas=[2,-1]", "optim.betas"),
    ("seed=-1", "seed"), ("mixture.sampling_weights={a: -1}", "sampling_weights"),
    ("mixture.sampling_weights={a: 0, b: 0}", "sampling_weights"), ("mixture.loss_weights={a: .nan}", "loss_weights"),
    ("encoding.max_length=100000000000", "encoding.max_length"),
])
def test_values_that_would_break_training_are_refused_with_field_and_range(hostile, tmp_path, capsys, override,
                                                                           field):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": "m"}, "data": {"train": ["t.jsonl"]}, "out": str(tmp_path / "r")}))
    err = hostile.refusal(capsys, main(["train", str(cfg), override]))
    assert field in err


def test_unknown_lora_target_modules_name_the_field_and_the_choices(hostile, hostile_assets, tmp_path, capsys):
    cfg = hostile.config(hostile_assets, tmp_path / "run", lora={"enabled": True, "target_modules": ["nope_proj"]})
    err = hostile.refusal(capsys, main(["train", str(cfg)]))
    assert "lora.target_modules" in err and "q_proj" in err


def _laughs() -> str:
    lines, prev = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\nmodel: {path: m}\ndata: {train: [x]}\nout: o\noptim: {lr: *i}\n"


@pytest.mark.parametrize("kind", ["latin1", "binary", "deep", "laughs", "broken"])
def test_unreadable_yaml_is_one_line(hostile, tmp_path, capsys, kind):
    cfg = tmp_path / "c.yaml"
    data = {"latin1": "model: {path: caf\xe9}\n".encode("latin-1"), "binary": b"\x00\x01\x02\xff",
            "deep": ("a: " + "[" * 10000 + "]" * 10000 + "\n").encode(), "laughs": _laughs().encode(),
            "broken": b"model: {path: m\ndata: [\n"}[kind]
    cfg.write_bytes(data)
    err = hostile.refusal(capsys, main(["train", str(cfg)]))
    assert "c.yaml" in err
    policy = tmp_path / "p.yaml"
    policy.write_bytes(data)
    hostile.refusal(capsys, main(["validate", str(hostile.write_jsonl(tmp_path / "a.jsonl", [hostile.good])),
                                   "--policy", str(policy)]))


def test_relative_paths_beside_the_config_but_not_here_are_named(tmp_path, monkeypatch):
    """A config written in its project and run from another directory: each relative path missing
    here but present beside the config is refused naming both places; a path present here, an
    absolute one, or a hub name found nowhere is left to the usual checks."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "t.jsonl").write_text("")
    (proj / "policy.yaml").write_text("")
    cfg = proj / "c.yaml"
    cfg.write_text("model: {path: org/some-model}\ndata: {train: [data/t.jsonl], policy: policy.yaml}\nout: runs/a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match=r"^data\.train\.0: 'data/t\.jsonl' is not in the current directory "
                                          r".*; data\.policy: 'policy\.yaml' too: .*run it from .*proj .*\(in .*c\.yaml\)$"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"^data\.policy: 'policy\.yaml'"):
        load_config(cfg, [f"data.train=[{proj / 'data' / 't.jsonl'}]"])
    assert load_config(cfg, [f"data.train=[{proj / 'data' / 't.jsonl'}]", f"data.policy={proj / 'policy.yaml'}"])
    monkeypatch.chdir(proj)  # run from the project: the paths are read as written
    assert load_config(cfg).data.train == ["data/t.jsonl"]
