"""`sftlab demo --tiny` end to end through the console script: the artifact set, and a run
interrupted after a checkpoint and resumed gives the same final weights."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ARTIFACTS = ["run.json", "metrics.jsonl", "curves.png", "report.html", "demo.json", "demo_config.yaml",
             "final/model.safetensors", "final/tokenizer.json", "final/generation_config.json",
             "eval/eval.json", "eval/outputs.jsonl", "eval_xstest/eval.json", "eval_xstest/outputs.jsonl",
             "eval_ood/eval.json", "eval_ood/outputs.jsonl",
             "data/stats.json", "data/mask_preview.json",
             "suite/train.jsonl", "suite/heldout_prompts.jsonl", "suite/policy.yaml"]


def _demo(out: Path, *extra: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SFTLAB_CACHE": str(cache), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "sftlab", "demo", "--tiny", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    proc = _demo(root / "run", cache=root / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]  # a tiny model's failed gates are reported, not enforced
    return root, proc


def test_demo_tiny_writes_every_artifact(demo_run):
    root, proc = demo_run
    run = root / "run"
    missing = [a for a in ARTIFACTS if not (run / a).is_file()]
    assert not missing
    assert "reported, not enforced" in proc.stdout
    outcome = json.loads((run / "run.json").read_text())["outcome"]
    assert outcome["train"]["final_train_loss"] > 0 and "all" in outcome["train"]["eval_loss"]
    assert [g["metric"] for g in outcome["eval"]["gates"]] and isinstance(outcome["eval"]["passed"], bool)
    manifest = json.loads((run / "run.json").read_text())
    for section in ("data", "template", "tokenizer", "policy", "masking", "packing", "mixture", "decoding",
                    "config", "seed", "software", "hardware"):
        assert manifest.get(section) is not None, section
    report = json.loads((run / "eval" / "eval.json").read_text())
    assert report["reference"] is not None and report["gates"]
    assert proc.returncode == 0 and isinstance(report["passed"], bool)  # --tiny: gates reported, not enforced
    xstest = json.loads((run / "eval_xstest" / "eval.json").read_text())
    assert xstest["prompt_sets"][0]["name"] == "xstest" and xstest["prompt_sets"][0]["n"] == 450
    # the XSTest gates are checked there, and only there
    assert {g["prompts"] for g in xstest["gates"]} == {"xstest"}
    assert {g["prompts"] for g in report["gates"]} == {None}
    assert {"homonyms", "contrast_homonyms", "privacy_fictional"} <= set(xstest["results"]["tuned"]["training_template"])
    assert len(xstest["margins"]["pairs"]) == 8 and xstest["refusal_diversity"]["tuned"] is not None
    assert "report:" in proc.stdout and "harmful_refusal_rate" in proc.stdout
    # both detectors label every response; the rules' rates are printed beside the learned ones
    by = xstest["rates_by_detector"]["tuned"]["training_template"]
    assert set(by) == {"learned", "rules"} and by["rules"]["benign_refusal_rate"]["n"] == 250
    assert "(rules detector)" in proc.stdout
    html = (run / "report.html").read_text()
    assert 'id="summary"' in html and 'id="evaluation"' in html
    assert 'id="xstest"' in html and 'id="margins"' in html and "contrast_homonyms" in html
    assert 'id="by-detector"' in html
    # the public sets the suite was not built from, per category, with their own gates
    ood = json.loads((run / "eval_ood" / "eval.json").read_text())
    assert [s["name"] for s in ood["prompt_sets"]] == ["simplesafetytests", "coconot_contrast"]
    assert {g["prompts"] for g in ood["gates"]} == {"simplesafetytests", "coconot_contrast"}
    assert ood["results"]["tuned"]["training_template"]["all"]["harmful_refusal_rate"]["n"] == 100
    assert ood["results"]["tuned"]["training_template"]["all"]["benign_refusal_rate"]["n"] == 149
    assert {"self_harm", "scams_fraud", "sensitive_topics", "privacy"} <= set(ood["results"]["tuned"]["training_template"])
    assert 'id="ood"' in html and "scams_fraud" in html
    # clause-level collapse beside the sentence share, and reasons checked against the request
    div = xstest["refusal_diversity"]["tuned"]
    assert {"share", "top", "with_reason"} <= set(div["reasons"]) and "unrelated" in div["reasons_related"]
    # the summary a newcomer reads last
    summary = proc.stdout[proc.stdout.index("\nsummary"):]
    assert "the run completed" in summary and "improved over the reference" in summary
    assert "exit 0: the run completed" in summary


def test_demo_resumed_after_a_checkpoint_gives_the_same_model(demo_run):
    root, _ = demo_run
    first = root / "run"
    again = root / "resumed"
    shutil.copytree(first, again)
    # Forget everything after the first checkpoint, as if the run had been killed there.
    steps = sorted((again / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    for p in steps[1:]:
        shutil.rmtree(p)
    for p in ("final", "eval", "eval_xstest", "report.html"):
        shutil.rmtree(again / p, ignore_errors=True) if (again / p).is_dir() else (again / p).unlink(missing_ok=True)
    with open(again / "metrics.jsonl") as f:
        kept = [line for line in f if json.loads(line).get("step", 0) <= int(steps[0].name.split("-")[1])]
    (again / "metrics.jsonl").write_text("".join(kept))
    proc = _demo(again, "--resume", cache=root / "cache")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(first / "final" / "model.safetensors")
    b = load_file(again / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


def test_strict_demo_exits_1_on_a_missed_gate(demo_run, monkeypatch, capsys):
    """`make demo` exits 0 once the run completed; `sftlab demo --strict` is the check that exits 1
    when a gate fails (a finished run's evaluations are reused, only the closing verdict is redone)."""
    from sftlab.demo import run as demo_run_module

    root, _ = demo_run
    run = root / "run"
    gates = demo_run_module._print_effect(run, {"total_s": 1, "train_s": 0, "eval_s": 0, "xstest_s": 0, "ood_s": 0})
    failed = [g for g in gates if not g["passed"]]
    assert failed  # a random tiny model misses its gates
    demo_run_module._summary(run, "quick", gates, failed)
    out = capsys.readouterr().out
    assert out.count("- missed on") == len(failed) and "most of all in" in out
    assert demo_run_module.exit_code("quick", True, (0, 0, 0), failed) == 1
    assert demo_run_module.exit_code("full", True, (0, 1, 0), []) == 1
    assert demo_run_module.exit_code("full", True, (0, 0, 0), []) == 0
    assert demo_run_module.exit_code("full", False, (1, 1, 1), failed) == 0  # make demo: the run completed
    assert demo_run_module.exit_code("tiny", True, (1, 1, 1), failed) == 0
    assert "exit 0: the run completed" in capsys.readouterr().out


def test_idle_cores_are_measured_now_on_linux():
    """The demo picks its torch threads from the cores idle right now, not from the load average
    (which still counts the demo's own set-up)."""
    from sftlab.demo.run import _idle_cores

    idle = _idle_cores(0.2)
    if sys.platform.startswith("linux"):
        assert idle is not None and 0.0 <= idle <= (os.cpu_count() or 1) + 1e-6
