"""sftlab inspect and check-template: the views and the probe verdicts."""
from __future__ import annotations

import json

import pytest

from sftlab.cli import main
from sftlab.data.conversation import Conversation, Message
from sftlab.tokens.masks import CAPABILITY_PROBES, annotate, check_template, to_html
from sftlab.tokens.role_tokens import install_template
from sftlab.tokens.templates import get_template
from sftlab.demo.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = build_tokenizer()
    install_template(tok, get_template("chatml", tok))
    tok.save_pretrained(d)
    return d


def test_annotate_labels_roles_and_weights(hand_tok):
    tok = hand_tok
    conv = Conversation((Message("user", "hi"), Message("assistant", "hello there")))
    ex, views = annotate(conv, tok, "chatml")
    assert [(v.text, v.weight, v.role) for v in views] == [
        ("<|im_start|>", 0, "template"), ("user", 0, "template"), ("\n", 0, "template"), ("hi", 0, "user"),
        ("<|im_end|>", 0, "template"), ("\n", 0, "template"), ("<|im_start|>", 0, "template"),
        ("assistant", 0, "template"), ("\n", 0, "template"), ("hello", 1, "assistant"), (" ", 1, "assistant"),
        ("there", 1, "assistant"), ("<|im_end|>", 1, "template"), ("\n", 0, "template")]
    page = to_html([("r", views, ex)], "t <script>")
    assert "<script>" not in page and "&lt;|im_start|&gt;" in page


def test_check_template_passes_for_builtins_and_reports_each_turn():
    tok = build_tokenizer()
    results = check_template(tok, "chatml")
    # every probe passes: the tool schemas, the tool-call probe and reasoning included
    assert [r["status"] for r in results] == ["ok"] * len(results) and len(results) == 10
    turn = results[0]["turns"][0]
    assert turn["prompt_ends_with"].endswith("<|im_start|>assistant\n")
    assert turn["must_generate"] == "Paris.<|im_end|>\n" and turn["trained_text"] == "Paris.<|im_end|>"
    assert turn["after_stop"] == "\n"


def test_text_the_template_writes_between_content_and_stop_is_trained():
    tok = build_tokenizer()
    # The model must write "there" after its content before the stop: it is part of the turn.
    merging = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
               " + 'there<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
               "{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    results = check_template(tok, merging)
    assert all(r["status"] == "ok" for r in results if r["probe"] not in CAPABILITY_PROBES)
    # It has no tool or reasoning format: those probes are listed as unsupported, not as passed.
    assert [r["status"] for r in results if r["probe"] in CAPABILITY_PROBES] == ["unsupported"] * 3
    assert results[0]["turns"][0]["trained_text"] == "Paris.there<|im_end|>"


@pytest.mark.parametrize("source,reason", [
    ("{{ raise_exception('no') }}", "no probe could be checked"),
    ("{%- for m in messages %}{{ m['role'] + m['content'] + m['content'] + '<|im_end|>' }}{%- endfor %}", "more than once"),
    ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] }}{%- if m['role'] != 'user' %}{{ m['content'] }}"
     "{%- endif %}{{ '<|im_end|>' }}{%- endfor %}", "drops the content"),
])
def test_check_template_fails_templates_it_cannot_check(source, reason):
    tok = build_tokenizer()
    results = check_template(tok, source)
    assert any(r["status"] == "mismatch" for r in results)
    assert any(reason in (r.get("reason") or "") for r in results), [r.get("reason") for r in results]


def test_check_template_reports_a_history_rerendering_template_as_expanded():
    from tests.test_encode import REASONING_LIKE

    tok = build_tokenizer()
    results = {r["probe"]: r for r in check_template(tok, REASONING_LIKE)}
    assert results["multi-turn"]["status"] == "expanded"
    assert [t["exact"] for t in results["multi-turn"]["turns"]] == [True] * 3
    assert [t["expanded"] for t in results["multi-turn"]["turns"]] == [True, True, False]
    assert all(t["trained_text"].startswith("<think>") for t in results["multi-turn"]["turns"])
    assert not any(r["status"] == "mismatch" for r in results.values())


def test_check_template_cli_exit_codes(tok_dir, capsys):
    assert main(["check-template", "--tokenizer", str(tok_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and {p["probe"] for p in out["probes"]} >= {"multi-turn", "content spelling special tokens"}
    assert main(["check-template", "--tokenizer", str(tok_dir / "missing")]) == 2


def test_inspect_cli_writes_html(tok_dir, tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"id": "x", "messages": [{"role": "user", "content": "2+2?"},
                                                        {"role": "assistant", "content": "4"}]}) + "\n")
    out = tmp_path / "view.html"
    assert main(["inspect", str(data), "--tokenizer", str(tok_dir), "--html", str(out)]) == 0
    assert "[[4]][[<|im_end|>]]" in capsys.readouterr().out
    page = out.read_text()
    assert 'class="tok trained"' in page and "assistant #1" in page


def test_characters_split_over_tokens_are_shown_once(tok_dir, tmp_path, capsys):
    """Byte-level BPE splits CJK characters and emoji into byte tokens; each character shows once."""
    from pathlib import Path

    rows = json.loads((Path(__file__).parent / "data" / "public" / "llamafactory_mllm_demo.json").read_text())
    messages = rows[1]["messages"][:2]
    messages[1] = {"role": "assistant", "content": messages[1]["content"] + " 🙂"}
    tok = build_tokenizer()
    conv = Conversation(tuple(Message(m["role"], m["content"]) for m in messages))
    ex, views = annotate(conv, tok, "chatml")
    assert sum(len(v.ids) for v in views) == len(ex.input_ids)  # every token is shown, none twice
    answer = "".join(v.text for v in views if v.role == "assistant")
    assert answer == messages[1]["content"]
    merged = [v for v in views if len(v.ids) > 1]
    assert merged and all(v.weight == 1 for v in merged if v.role == "assistant")

    data = tmp_path / "zh.jsonl"
    data.write_text(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    assert main(["inspect", str(data), "--tokenizer", str(tok_dir)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("legend: [[text]] trained")
    assert "他们是拜仁慕尼黑的凯恩和格雷茨卡。" in out.replace("[[", "").replace("]]", "")
    assert "[[他]][[他]]" not in out


def test_inspect_takes_the_column_mapping(tok_dir, tmp_path, capsys):
    """Before: inspect read only the built-in layouts; it takes the same mapping options as validate."""
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    assert main(["inspect", str(data), "--tokenizer", str(tok_dir)]) == 2
    capsys.readouterr()
    assert main(["inspect", str(data), "--tokenizer", str(tok_dir), "--column", "prompt=question",
                 "--column", "response=answer"]) == 0
    assert "[[4]][[<|im_end|>]]" in capsys.readouterr().out
