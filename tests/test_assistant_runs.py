"""Two assistant messages in a row: the loader and the templates agree.

The loader accepts them (an assistant message may follow another); whether the second can be trained
is the template's to say (DESIGN.md invariant 2: its trained tokens are F_i after P_i, the prompt
being the conversation up to the first answer plus the generation prompt; invariant 5: every
assistant turn is trained). ChatML writes that prompt (SmolLM2's and Qwen2.5's official templates,
eos ``<|im_end|>``), so both turns are trained exactly; a template that refuses the shape (the
template first published with Mixtral raises "roles must alternate") has the record quarantined at
encoding with its reason, counted like any other.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.data.loading import load_files
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import encode_report
from sftlab.tokens.templates import get_template

HERE = Path(__file__).parent / "data"
RECORD = {"id": "two-answers", "messages": [{"role": "user", "content": "Name two primes."},
                                            {"role": "assistant", "content": "2"},
                                            {"role": "assistant", "content": "and 3"}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "runs.jsonl"
    path.write_text(json.dumps(RECORD) + "\n")
    return path


def _tok(source: str | None, control: list[str], eos: str):
    tok = build_tokenizer([source or ""], vocab_size=400, special_tokens=["<|pad|>", *control])
    tok.eos_token = eos
    tok.chat_template = source
    return tok


def test_the_loader_accepts_two_assistant_messages_in_a_row(data):
    report = load_files([str(data)])
    assert (report.records, report.accepted, report.quarantined_count) == (1, 1, 0)


@pytest.mark.parametrize("template", ["chatml", "smollm2", "qwen2.5"])
def test_chatml_trains_each_answer_exactly_what_follows_its_prompt(template, data):
    files = {"smollm2": HERE / "chat_templates" / "smollm2.jinja",
             "qwen2.5": HERE / "templates" / "qwen2.5-0.5b-instruct.jinja"}
    source = files[template].read_text() if template in files else None
    tok = _tok(source, ["<|im_start|>", "<|im_end|>"], "<|im_end|>")
    t = get_template(None if source else template, tok)
    examples, report = encode_report(load_files([str(data)]), tok, t)
    assert report.quarantined_count == 0 and len(examples) == 1
    (ex,) = examples
    msgs = RECORD["messages"]
    runs, run = [], []
    for i, w in zip(ex.input_ids, ex.loss_weights):
        if w:
            run.append(i)
        elif run:
            runs.append(tok.decode(run))
            run = []
    runs += [tok.decode(run)] if run else []
    for k, trained in zip((1, 2), runs):  # F_k after P_k, up to and including the stop
        prompt, own = t.render(msgs[:k], True), t.render(msgs[:k + 1])
        assert own.startswith(prompt) and own[len(prompt):].startswith(trained)
    assert runs == ["2<|im_end|>", "and 3<|im_end|>"]


def test_a_template_that_refuses_the_shape_quarantines_the_record_at_encoding(data):
    source = (HERE / "chat_templates" / "mixtral-8x7b-instruct-v0.1.jinja").read_text()
    tok = _tok(source, ["<s>", "</s>", "[INST]", "[/INST]"], "</s>")
    examples, report = encode_report(load_files([str(data)]), tok, None)
    assert examples == [] and report.records == 1 and report.quarantined_count == 1
    (q,) = report.quarantined
    assert q.stage == "encode" and "roles must alternate" in q.reason
