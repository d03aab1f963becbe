"""What the report, the help and the progress bars say in the corner cases users met: no gates, one
condition, no held-out data, one task, tool statistics, skipped prompt rows; one placeholder for the
tokenizer; decoder options with defaults; the prepare bar's count; a template whose control tokens the
tokenizer lacks; an unknown template name."""
from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

from sftlab.cli import build_parser, main
from sftlab.demo.tiny import build_tokenizer
from sftlab.manifest import update_manifest
from sftlab.report import build_report

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"


def _text(page: str, section_id: str) -> str:
    body = page.split(f'<section id="{section_id}">', 1)[1].split("</section>", 1)[0]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def _png_width(page: str, index: int = 0) -> int:
    data = base64.b64decode(re.findall(r'src="data:image/png;base64,([^"]+)"', page)[index])
    return struct.unpack(">I", data[16:20])[0]  # IHDR width


@pytest.fixture
def bare_run(tmp_path):
    """A run trained without held-out data, on one task with tools, evaluated without a policy under
    one condition, with one unusable prompt row."""
    run = tmp_path / "run"
    run.mkdir()
    update_manifest(run, kind="train", seed=0)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 - s / 10, "lr": 1e-3,
                                                           "tokens_per_s": 900.0}) + "\n" for s in range(1, 4)))
    (run / "data").mkdir()
    stats = {"records": 4, "tasks": {"distinct": 1, "entropy_nats": -0.0, "effective_tasks": 1.0,
                                     "largest": {"task": "qa", "share": 1.0}},
             "tools": {"unit": "words", "slices": {"all": {"records": 4, "with_tools": 1, "share": 0.25,
                                                           "calls": {"n": 4, "min": 0, "p50": 0, "p90": 2,
                                                                     "p99": 2, "max": 2, "mean": 0.5},
                                                           "reasoning_share": 0.125}}}}
    (run / "data" / "stats.json").write_text(json.dumps(stats))
    rate = {"value": 0.5, "k": 1, "n": 2, "low": 0.1, "high": 0.9}
    ev = {"schema_version": 1, "model": {"path": "final"}, "conditions": ["training_template"],
          "results": {"tuned": {"training_template": {"all": {"benign_refusal_rate": rate}}}, "reference": None},
          "robustness": {"benign_refusal_rate": {"by_condition": {"training_template": 0.5}, "spread": 0.0,
                                                 "threshold": 0.1, "flagged": False}},
          "prompt_sets": [{"path": "p.jsonl", "sha256": "0" * 64, "n": 2,
                           "bad_rows": [{"file": "p.jsonl", "line": 3, "reason": "no prompt or messages"}]}],
          "comparison": [], "gates": [], "passed": True}
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps(ev))
    return run


def test_report_corner_cases_say_what_happened(bare_run):
    page, _ = build_report(bare_run)
    summary, evaluation, data = _text(page, "summary"), _text(page, "evaluation"), _text(page, "data")
    assert "Policy gates: NO GATES" in summary and "PASS" not in summary
    assert "Gates: NO GATES" in evaluation and "no policy gate was checked" in evaluation
    assert "one condition: not measured" in evaluation and "stable" not in evaluation
    assert "Skipped prompt rows (1) file line reason p.jsonl 3 no prompt or messages" in evaluation
    assert "entropy (nats) 0 " in data and "-0" not in data
    assert "Tool use and reasoning" in data and "all 4 1 25.0% 0.5 2 12.5%" in data
    assert "Other statistics" not in data  # the tool statistics are not dumped raw
    assert _png_width(page) < 700  # the loss chart has no empty validation panel beside it


def test_one_placeholder_for_the_tokenizer_and_decoder_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("validate", "stats", "inspect", "check-template"):
        help_text = sub[name].format_help()
        assert "--tokenizer TOKENIZER" in help_text, name
        assert ".gguf file" in " ".join(help_text.split()), name
    eval_help = " ".join(sub["eval"].format_help().split())
    for option, default in (("--max-new-tokens N", "128"), ("--top-p P", "1.0"), ("--seed S", "0"),
                            ("--batch-size B", "8")):
        after = eval_help.split(option, 2)[2] if eval_help.count(option) > 1 else eval_help.split(option, 1)[1]
        assert f"(default: {default}" in after.split(" --", 1)[0], option
    assert "95% interval" in sub["eval-detector"].format_help() and "%%" not in sub["eval-detector"].format_help()
    assert "``" not in sub["label"].format_help()
    assert "--line N" in sub["inspect"].format_help()


def test_inspect_line_picks_the_record_on_that_line(tmp_path, capsys):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rows = ['{"broken": true}', json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "second"}]})]
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    args = ["inspect", str(tmp_path / "d.jsonl"), "--tokenizer", str(tmp_path / "tok"), "--template", "chatml"]
    assert main([*args, "--line", "2"]) == 0
    assert "d.jsonl:2" in capsys.readouterr().out
    assert main([*args, "--line", "1"]) == 2
    err = capsys.readouterr().err
    assert "--line 1: the record on line 1 of" in err and "is quarantined: no conversation found" in err
    assert main([*args, "--index", "1"]) == 2
    assert "1 accepted records (0 to 0); --line N" in capsys.readouterr().err


def test_prepare_bar_counts_the_records_of_a_json_array(tmp_path, capsys):
    records = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}!"} for i in range(1200)]
    (tmp_path / "alpaca.json").write_text(json.dumps(records, indent=2))  # LLaMA-Factory's layout
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    assert main(["stats", str(tmp_path / "alpaca.json"), "--tokenizer", str(tmp_path / "tok"), "--template",
                 "chatml", "--json"]) == 0
    err = capsys.readouterr().err
    states = re.findall(r"(\d+)%\|[^|]*\| (\d+)/(\d+) ", err)
    assert states and states[-1] == ("100", "1200", "1200"), err[-400:]
    assert all(total == "1200" for _, _, total in states)  # the estimate was right from the start
    assert not re.search(r"\d(\.\d+)?k/", err) and "1.20k" not in err  # counts in full ("1.20k/1.20k" never)


def test_a_jinja_template_whose_control_tokens_the_tokenizer_lacks(tmp_path, capsys):
    tok = build_tokenizer()
    tok.bos_token = "<|endoftext|>"
    tok.save_pretrained(tmp_path / "tok")
    for name, token in (("llama-3.jinja", "<|eot_id|>"), ("gemma-2.jinja", "<end_of_turn>")):
        assert main(["check-template", "--tokenizer", str(tmp_path / "tok"), "--template",
                     str(TEMPLATES / name), "--json"]) == 1
        reasons = {p.get("reason") for p in json.loads(capsys.readouterr().out)["probes"]}
        reason = next(r for r in reasons if r and "stop" in r)
        assert "this tokenizer lacks the template's control token(s)" in reason and token in reason
        assert "add_role_tokens" in reason


def test_an_unknown_template_name_is_named_as_such(tmp_path, capsys):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "d.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {tmp_path / 'tok'}}}\ndata: {{train: [{tmp_path / 'd.jsonl'}]}}\n"
                   f"out: {tmp_path / 'run'}\n")
    assert main(["prepare", str(cfg), "template=chatm"]) == 2
    err = capsys.readouterr().err
    assert "template=chatm: unknown template 'chatm'" in err and "model.path" not in err
