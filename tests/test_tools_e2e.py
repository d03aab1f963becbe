"""End to end: public tool-calling and reasoning data load, train a tiny model with the built-in
``chatml`` tool format, and evaluate tool-call prompts (expected call checked as JSON)."""
import json
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main
from sftlab.data.conversation import template_messages
from sftlab.data.loading import load_files
from sftlab.tokens.templates import get_template

DATA = Path(__file__).parent / "data" / "tools"
TOOLS = [{"type": "function", "function": {"name": "calculate_area", "description": "Area of a shape",
                                           "parameters": {"type": "object", "properties": {
                                               "shape": {"type": "string"}, "dimensions": {"type": "array"}}}}}]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per module


def test_tool_data_trains_and_evaluates_end_to_end(tmp_path, capsys):
    from sftlab.demo.tiny import build_tiny

    tok, model = build_tiny(vocab_size=400, hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = [str(DATA / "glaive_toolcall_en_demo.sample.json"), str(DATA / "reason_tool_use_demo.sample.jsonl")]
    run = tmp_path / "run"
    cfg = {"model": {"path": str(tmp_path / "model")}, "template": "chatml",
           "data": {"train": data, "eval": [], "max_quarantined_share": 0.25},
           "encoding": {"max_length": 4096, "reasoning": "mask"},
           "packing": {"mode": "padded"}, "seed": 1, "out": str(run), "log": {"progress": False},
           "optim": {"lr": 1e-3, "micro_batch_size": 1, "grad_accum": 1, "max_steps": 2, "warmup_steps": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--json"]) == 0, capsys.readouterr()
    capsys.readouterr()
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["masking"]["reasoning"] == "mask"
    split = manifest["data"]["splits"]["train"]
    quarantined = [json.loads(line) for line in (run / "data" / "quarantine.jsonl").read_text().splitlines()]
    # The tiny tokenizer spells these long conversations in many tokens: length refuses some, and two
    # answers of the reasoning demo hold a stray </think> beside their reasoning (not trained under mask).
    assert split["records"] == 19 and split["accepted"] >= 14
    assert {q["code"] for q in quarantined} <= {"too_long", "reasoning_unread"}
    assert sum(q["code"] == "reasoning_unread" for q in quarantined) <= 2
    assert manifest["masking"]["trained_tokens"] > 0
    # The trained model's own template renders tool conversations as training did.
    from transformers import AutoTokenizer

    final = AutoTokenizer.from_pretrained(run / "final")
    conv = next(c for c in load_files([data[0]]).conversations if c.tools)
    msgs, tools = template_messages(conv.messages), conv.tool_list()
    assert final.apply_chat_template(msgs, tools=tools, tokenize=False) == \
        get_template("chatml", final).render(msgs, tools=tools)
    # Evaluate a tool-call prompt: the tools reach the prompt, the expected call is checked.
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "t1", "prompt": "Area of a 5 by 3 rectangle?", "slice": "tools",
                                   "tools": TOOLS, "tool_call": {"name": "calculate_area", "arguments": {
                                       "shape": "rectangle", "dimensions": [5, 3]}}}) + "\n")
    code = main(["eval", "--model", str(run / "final"), "--prompts", str(prompts), "--out", str(tmp_path / "eval"),
                 "--max-new-tokens", "4", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and "error" not in summary
    rows = [json.loads(line) for line in (tmp_path / "eval" / "outputs.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r["condition"] == "training_template"]
    assert row["correct"] is False and json.loads(row["answer"])["name"] == "calculate_area"
    # The prompt the model answered carries the schemas, in the trained model's own tool format.
    from sftlab.tokens.encoding import encode_prompt

    ids = encode_prompt([{"role": "user", "content": "Area?"}], final, None, tools=TOOLS)
    assert '"name": "calculate_area"' in final.decode(ids) and "<tools>" in final.decode(ids)
