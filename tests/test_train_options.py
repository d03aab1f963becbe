"""What users of the peers expect from `sftlab train`: data entries with their own key names, a
held-out split by content hash, the exit-code rule, lr schedules, trackers through accelerate,
outcomes in the manifest, a LoRA adapter that loads from any directory, and no dependency warnings."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from accelerate.tracking import GeneralTracker

from sftlab.cli import main
from sftlab.train.config import load_config
from conftest import TINY, write_config

PUBLIC = Path(__file__).parent / "data" / "public"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per module


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_model):
    """The tiny model (conftest.py's ``tiny_model``), and the FastChat sample with other speaker names
    plus one bad and one long record."""
    d = tmp_path_factory.mktemp("options")
    fastchat = json.loads((PUBLIC / "fastchat_dummy_conversation.json").read_text())
    rows = []
    for i in range(24):
        r = fastchat[i % 3]
        rows.append({"id": f"{r['id']}-{i}", "conversations": [
            {"from": {"human": "Kunde", "gpt": "Agent"}[m["from"]], "value": f"{m['value']} ({i})"}
            for m in r["conversations"]]})
    rows.append({"id": "bad", "conversations": [{"from": "Kunde", "value": "no answer"}, {"from": "Agent", "value": ""}]})
    rows.append({"id": "long", "conversations": [{"from": "Kunde", "value": "word " * 200},
                                                 {"from": "Agent", "value": "ok " * 200}]})
    (d / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tiny_model, d / "model")
    return d


def _config(assets: Path, out: Path, **sections) -> Path:
    return write_config({"model": {"path": str(assets / "model")}, "template": "chatml",
                         "data": {"train": [{"path": str(assets / "chats.jsonl"),
                                             "roles": {"Kunde": "user", "Agent": "assistant"}}],
                                  "eval_split": 0.25, "max_quarantined_share": 0.1},
                         "encoding": {"max_length": 128}, "seed": 1, "log": {"progress": False, "trackers": []},
                         "optim": {"lr": 1e-3, "micro_batch_size": 2, "max_steps": 3, "schedule": "constant",
                                   "warmup_steps": 0},
                         "lora": {"enabled": True, "r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}},
                        out, **sections)


class ListTracker(GeneralTracker):
    """An accelerate tracker that keeps what it is given (accelerate's own extension point)."""
    name = "list"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.logged, self.config = [], None

    @property
    def tracker(self):
        return self.logged

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, dict(values)))


def test_a_run_of_a_user_with_own_key_names(assets, tmp_path, capsys):
    from sftlab.train.loop import train

    run = tmp_path / "run"
    cfg = load_config(_config(assets, run))
    tracker = ListTracker()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = train(cfg, trackers=(tracker,))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    # 26 records: 'bad' (empty assistant) and 'long' (too long for 128 tokens) quarantined = 7.7%
    assert code == 0
    manifest = json.loads((run / "run.json").read_text())
    outcome = manifest["outcome"]["train"]
    assert outcome["exit_code"] == 0 and "within data.max_quarantined_share=0.1" in outcome["exit_reason"]
    assert outcome["steps"] == 3 and outcome["final_train_loss"] > 0
    assert set(outcome["eval_loss"]) >= {"all"}
    splits = manifest["data"]["splits"]
    held = splits["heldout"]["from_train"]["records"]
    assert 0 < held < 24 and splits["train"]["accepted"] + held == 24
    quarantine = [json.loads(x) for x in (run / "data" / "quarantine.jsonl").read_text().splitlines()]
    assert {(q["id"], q["code"], q["stage"]) for q in quarantine} == {
        ("bad", "empty_assistant", "load"), ("long", "too_long", "encode")}

    # the report reads every count from one place: summary card, data check and file table agree
    assert main(["report", str(run)]) == 1  # records were quarantined: the report says so
    capsys.readouterr()
    html = (run / "report.html").read_text()
    assert '<div class="k">quarantined</div><div class="v">2</div>' in html
    assert "2 record(s) quarantined in all" in html and "2 records quarantined" in html
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert sum(f["quarantined"] for f in stats["files"]) == 2
    # `sftlab stats CONFIG` reads the same stores (a cache hit): the same figures as the run's stats.json
    assert main(["stats", str(_config(assets, run)), "--json"]) == 1  # quarantined records: exit 1
    assert json.loads(capsys.readouterr().out) == stats
    assert stats["lengths"]["unit"] == "tokens" and stats["leakage"] is not None

    # the first step runs at the configured lr (constant, no warm-up), not at 0
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [s["lr"] for s in steps] == [1e-3] * 3
    # the tracker got every step and the config through accelerate
    assert [s for s, v in tracker.logged if "train/loss" in v] == [1, 2, 3]
    assert tracker.config["optim.schedule"] == "constant"

    # the adapter names its base by absolute path: it loads from any directory (test below)
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((assets / "model").resolve())

    # validate with the same tokenizer and length quarantines exactly what training did
    code = main(["validate", str(assets / "chats.jsonl"), "--tokenizer", str(assets / "model"),
                 "--template", "chatml", "--max-length", "128", "--role", "Kunde=user", "--role", "Agent=assistant",
                 "--quarantine", str(tmp_path / "q.jsonl"), "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 1 and out["quarantined"] == 2 and out["reasons"] == {"empty_assistant": 1, "too_long": 1}
    assert "read:" not in captured.err and "encode:" not in captured.err  # 26 records: no bars
    validated = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert [(q["id"], q["code"]) for q in validated] == [(q["id"], q["code"]) for q in quarantine]
    assert set(validated[1]) == set(quarantine[1]) - {"split"}  # one schema

    # stricter tolerance: exit 1, and the summary says which rule decided; manifest --diff shows outcomes
    run2 = tmp_path / "run2"
    assert main(["train", str(_config(assets, run2, data={"max_quarantined_share": 0.0}))]) == 1
    err_out = capsys.readouterr().out
    assert "exit 1: 2 of 26 records quarantined" in err_out and "more than data.max_quarantined_share=0" in err_out
    assert "LoRA adapter" in err_out
    main(["manifest", str(run), "--diff", str(run2), "--json"])
    paths = {d["path"] for d in json.loads(capsys.readouterr().out)["differences"]}
    assert {"outcome.train.exit_code", "outcome.train.exit_reason"} <= paths


def test_lr_schedules_and_warmup():
    from sftlab.train.loop import lr_scheduler

    def rates(schedule, warmup, total=8):
        cfg = load_config(None, ["model.path=m", "data.train=[t]", "out=o", "optim.lr=1.0",
                                 f"optim.schedule={schedule}", f"optim.warmup_steps={warmup}"])
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched, out = lr_scheduler(opt, cfg, total), []
        for _ in range(total):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    assert rates("constant", 0) == [1.0] * 8
    assert rates("cosine", 0)[0] == 1.0 and rates("cosine", 1)[0] == 1.0  # never lr 0 on step 1
    assert rates("cosine", 4)[:4] == [0.25, 0.5, 0.75, 1.0]
    lin = rates("linear", 0)
    assert lin == sorted(lin, reverse=True) and lin[-1] > 0
    cos = rates("cosine", 2)
    assert cos[2] == 1.0 and all(a >= b for a, b in zip(cos[2:], cos[3:])) and cos[-1] > 0


def test_trackers_are_never_required(assets, tmp_path):
    run = tmp_path / "t"
    code = main(["train", str(_config(assets, run, log={"trackers": ["wandb"]}))])
    assert code == 2  # not installed here: a one-line reason naming the install command
    from sftlab.train.metrics import resolve_trackers

    with pytest.raises(ValueError, match="pip install wandb"):
        resolve_trackers(["wandb"])
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        resolve_trackers(["tensorbord"])


def test_one_heldout_loss_in_training_and_in_eval(assets, tmp_path, capsys):
    """The same held-out data gives the same eval loss in training's validation and in `sftlab eval`
    of RUN/final: the same slice names (`unsliced` for records without one) and the same max_length
    truncation (a long multi-turn record loses its first exchange in both)."""
    fastchat = json.loads((PUBLIC / "fastchat_dummy_conversation.json").read_text())
    held = [{"id": r["id"], "conversations": r["conversations"]} for r in fastchat]  # no slice
    long = {"id": "long-multi", "slice": "multi", "conversations": [
        {"from": "human", "value": "word " * 60}, {"from": "gpt", "value": "reply " * 30},
        {"from": "human", "value": "Goodbye"}, {"from": "gpt", "value": "Goodbye! Come back soon."}]}
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*held, long]))
    run = tmp_path / "full"
    cfg = _config(assets, run, data={"eval": [str(tmp_path / "held.jsonl")], "eval_split": 0.0,
                                     "max_quarantined_share": 1.0},
                  lora={"enabled": False}, optim={"max_steps": 2}, encoding={"max_length": 96})
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    manifest = json.loads((run / "run.json").read_text())
    trained = manifest["outcome"]["train"]["eval_loss"]
    assert set(trained) == {"all", "unsliced", "multi"}
    assert manifest["masking"]["heldout_encoding"]["max_length"] == 96

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "prompt": "Who are you?", "expected": "comply"}) + "\n")
    main(["eval", "--model", str(run / "final"), "--prompts", str(prompts), "--heldout-conversations",
          str(tmp_path / "held.jsonl"), "--out", str(tmp_path / "eval"), "--max-new-tokens", "2",
          "--conditions", "training_template", "--no-cache", "--json"])
    capsys.readouterr()
    ev = json.loads((tmp_path / "eval" / "eval.json").read_text())
    tuned = ev["results"]["tuned"]["training_template"]
    evaluated = {s: m["eval_loss"]["value"] for s, m in tuned.items() if "eval_loss" in m}
    assert set(evaluated) == set(trained)
    for name in trained:
        assert evaluated[name] == pytest.approx(trained[name], rel=1e-4), name


def test_lora_adapter_loads_from_any_directory_in_peft_and_sftlab(assets, tmp_path, monkeypatch, capsys):
    # RUN/final of a LoRA run holds the adapter only; peft resolves its base against the current
    # directory, so a relative base failed everywhere but inside RUN/final
    from peft import AutoPeftModelForCausalLM

    from sftlab.model.loading import load_base_model

    run = tmp_path / "runs" / "lora"
    run.parent.mkdir()
    assert main(["train", str(_config(assets, run, data={"eval_split": 0.0}))]) == 0  # 2 quarantined, within 0.1
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ids = torch.tensor([[1, 5, 9, 12, 7]])

    def logits(model):
        with torch.no_grad():
            return model(input_ids=ids).logits

    moved = tmp_path / "moved" / "lora"
    shutil.copytree(run, moved)  # a copied or moved run directory loads the same
    plain = AutoPeftModelForCausalLM.from_pretrained(str(moved / "final")).eval()  # plain peft, another cwd
    ours, tok = load_base_model(moved / "final")
    assert ours.sftlab_source["base"] == str((assets / "model").resolve())
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert torch.allclose(logits(plain), logits(ours), atol=1e-5)  # the adapter, merged by sftlab
    base, _ = load_base_model(assets / "model")
    assert not torch.allclose(logits(base), logits(ours), atol=1e-5)  # ... and not the bare base

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p1", "prompt": "What is 2 + 3?", "expected": "comply"}) + "\n")
    code = main(["eval", "--model", str(run / "final"), "--prompts", str(prompts), "--max-new-tokens", "2",
                 "--conditions", "training_template", "--no-cache", "--out", str(tmp_path / "eval")])
    assert code in (0, 1), capsys.readouterr().err
    capsys.readouterr()
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["model"]["source"]["kind"] == "lora_adapter"

    # an adapter written with a base relative to RUN/final (earlier sftlab) still loads in sftlab
    config_path = moved / "final" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    relative = os.path.relpath(assets / "model", moved / "final")
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(relative)}))
    assert torch.allclose(logits(load_base_model(moved / "final")[0]), logits(ours), atol=1e-6)
    # a base recorded as a bare relative name is read from the current directory, as peft reads it,
    # only where it holds the weights the run's manifest hashed: another model there is passed over
    from sftlab.demo.tiny import build_tiny
    from sftlab.model.loading import resolve_base

    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "base"}))
    build_tiny(**TINY, seed=7)[1].save_pretrained(elsewhere / "base")
    with pytest.raises(FileNotFoundError, match="base model 'base' is not there: .*elsewhere/base holds other weights"):
        resolve_base(moved / "final")
    shutil.rmtree(elsewhere / "base")
    shutil.copytree(assets / "model", elsewhere / "base")
    assert resolve_base(moved / "final") == str((elsewhere / "base").resolve())
    # the generation cache's key of an adapter covers its base: new base weights, another key
    from sftlab.evaluation.cache import model_fingerprint

    shutil.copytree(assets / "model", tmp_path / "base2")
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "base2")}))
    before = model_fingerprint(moved / "final")
    build_tiny(**TINY, seed=5)[1].save_pretrained(tmp_path / "base2")
    assert model_fingerprint(moved / "final") != before
    # a base that is gone: exit 2, one line naming the path and the file to edit
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    code = main(["eval", "--model", str(moved / "final"), "--prompts", str(prompts), "--no-cache",
                 "--out", str(tmp_path / "eval2")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "gone") in err and "adapter_config.json" in err


def test_quarantine_that_stops_a_run_says_why_where_and_which_key(assets, tmp_path, capsys):
    # LLaMA-Factory's Alpaca demo at a small max_length: two of its three records are too long.
    # prepare and train give the count per reason, the quarantine file, the keys, the same exit code.
    data = {"train": [str(PUBLIC / "llamafactory_alpaca_en_demo.json")], "eval_split": 0.0,
            "max_quarantined_share": 0.0, "cache_dir": str(tmp_path / "cache")}
    run = tmp_path / "alpaca"
    cfg = str(_config(assets, run, data=data, encoding={"max_length": 96}, optim={"max_steps": 1}, lora={"enabled": False}))
    assert main(["prepare", cfg]) == 1
    out = capsys.readouterr().out
    quarantine = next(Path(w.rstrip(";")) for w in out.split() if w.rstrip(";").endswith("quarantine.jsonl"))
    assert [json.loads(x)["code"] for x in quarantine.read_text().splitlines()] == ["too_long", "too_long"]
    said = out.strip().splitlines()[-1]
    assert said.startswith("exit 1: 2 of 3 records quarantined (66.67%: too_long 2), more than "
                           "data.max_quarantined_share=0; each record and its reason: ")
    assert "set data.max_quarantined_share=0.667 or more" in said and "too_long: raise encoding.max_length" in said

    assert main(["train", cfg]) == 1
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said == ("exit 1: 2 of 3 records quarantined (66.67%: too_long 2), more than data.max_quarantined_share=0; "
                    f"each record and its reason: {run / 'data' / 'quarantine.jsonl'}; to train on the rest set "
                    "data.max_quarantined_share=0.667 or more; too_long: raise encoding.max_length")
    assert len((run / "data" / "quarantine.jsonl").read_text().splitlines()) == 2

    # the key the message names changes the outcome of both the same way
    assert main(["prepare", cfg, "data.max_quarantined_share=0.667", "--json"]) == 0
    prepared = json.loads(capsys.readouterr().out)
    assert prepared["exit_code"] == 0 and prepared["train"]["reasons"] == {"too_long": 2}
    assert "within data.max_quarantined_share=0.667" in prepared["exit_reason"]
    assert main(["train", cfg, "data.max_quarantined_share=0.667", f"out={tmp_path / 'alpaca2'}"]) == 0
