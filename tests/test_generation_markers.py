"""Templates that declare their own masks with ``{% generation %}`` markers.

Fixtures: TRL's training templates (tests/data/chat_templates/trl-*.jinja, source and licence in
that folder's README) and the Jinja source of every sftlab built-in (written with markers). The
markers' spans are transformers' own (``apply_chat_template(..., return_assistant_tokens_mask=True)``).
TRL's Qwen2.5 training template marks ``'\\n' + content + '<|im_end|>\\n'``: the newline that ends the
generation prompt ``<|im_start|>assistant\\n`` and the one after the stop, neither of which the model
writes at its turn, so check-template names both for every turn; its Llama 3 training template
marks ``content|trim + '<|eot_id|>'``, exactly sftlab's trained tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import encode, encode_all
from sftlab.tokens.masks import check_template
from sftlab.tokens.templates import BUILTIN_TEMPLATES, TemplateError, get_template

HERE = Path(__file__).parent / "data" / "chat_templates"
INDEX = json.loads((HERE / "templates.json").read_text(encoding="utf-8"))
CONV = Conversation((Message("user", "hi"), Message("assistant", "yo"), Message("user", "again"),
                     Message("assistant", "ok", weight=2.0)))


def tokenizer_for(name: str):
    spec = INDEX[name]
    source = (HERE / f"{name}.jinja").read_text(encoding="utf-8")
    tok = build_tokenizer([source, "hi yo again ok"], vocab_size=400, special_tokens=["<|pad|>", *spec["control"]])
    tok.bos_token, tok.eos_token, tok.chat_template = spec["bos_token"], spec["eos_token"], source
    return tok


def test_check_template_names_the_newlines_trl_qwen25_training_marks_per_turn():
    tok = tokenizer_for("trl-qwen2.5-training")
    results = check_template(tok, None)
    assert all(r["status"] in ("ok", "skipped", "unsupported") for r in results)  # the contract itself holds
    turns = [t for r in results for t in r["turns"]]
    assert len(turns) >= 8
    for t in turns:
        i = t["message_index"]
        assert t["markers"] == [
            f"assistant #{i}: the markers train '\\n' before the answer (the prompt's), sftlab does not",
            f"assistant #{i}: the markers train '\\n' after the stop, sftlab does not"]


def test_check_template_finds_no_difference_where_the_markers_train_what_sftlab_trains():
    tok = tokenizer_for("trl-llama3-training")
    results = check_template(tok, None)
    assert [r["markers"] for r in results if "markers" in r] and all(not r["markers"] for r in results
                                                                     if "markers" in r)


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_every_builtin_trains_exactly_what_its_own_markers_mark(name):
    """A built-in renders fast in Python and installs Jinja with markers into the trained model's
    tokenizer: both must agree on the trained tokens of every probe."""
    tok = build_tokenizer(["hi"], vocab_size=300)
    tok.eos_token = "</s>"
    t = get_template(name, tok)
    from sftlab.tokens.role_tokens import add_role_tokens

    add_role_tokens(tok, None, t)
    results = check_template(tok, t)
    checked = [r for r in results if "markers" in r and r["turns"]]
    assert checked and all(r["markers"] == [] for r in checked), [(r["probe"], r["markers"]) for r in checked]


def _trained(tok, ex):
    return [(tok.decode([i]), float(w)) for i, w in zip(ex.input_ids, ex.loss_weights) if w]


def test_the_markers_as_the_mask_train_what_transformers_marks_with_the_message_weights():
    tok = tokenizer_for("trl-qwen2.5-training")
    ex = encode(CONV, tok, None, mask_source="generation_markers")
    assert _trained(tok, ex) == [("\n", 1.0), ("y", 1.0), ("o", 1.0), ("<|im_end|>", 1.0), ("\n", 1.0),
                                 ("\n", 2.0), ("o", 2.0), ("k", 2.0), ("<|im_end|>", 2.0), ("\n", 2.0)]
    out = tok.apply_chat_template([{"role": m.role, "content": m.content} for m in CONV.messages], tokenize=True,
                                  return_dict=True, return_assistant_tokens_mask=True)
    assert list(ex.input_ids) == out["input_ids"]
    assert [int(w > 0) for w in ex.loss_weights] == out["assistant_masks"]
    contract = encode(CONV, tok, None)
    assert _trained(tok, contract) == [("y", 1.0), ("o", 1.0), ("<|im_end|>", 1.0),
                                       ("o", 2.0), ("k", 2.0), ("<|im_end|>", 2.0)]


def test_the_markers_as_the_mask_keep_last_turn_only_and_refuse_a_template_without_markers():
    tok = tokenizer_for("trl-qwen2.5-training")
    ex = encode(CONV, tok, None, mask_source="generation_markers", last_turn_only=True)
    assert _trained(tok, ex) == [("\n", 2.0), ("o", 2.0), ("k", 2.0), ("<|im_end|>", 2.0), ("\n", 2.0)]
    plain = get_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
                         tok)
    with pytest.raises(TemplateError, match="needs a template with {% generation %} markers"):
        encode(CONV, tok, plain, mask_source="generation_markers")
    with pytest.raises(ValueError, match="mask_source must be one of contract, generation_markers"):
        encode(CONV, tok, None, mask_source="markers")


def test_a_turn_the_markers_leave_out_is_refused_with_the_reason():
    source = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.last %}"
              "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>"
              "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = tokenizer_for("trl-qwen2.5-training")
    examples, quarantined = encode_all([CONV], tok, get_template(source, tok), mask_source="generation_markers")
    assert examples == [] and "markers do not mark it" in quarantined[0]["reason"]
    (ex,) = encode_all([CONV], tok, get_template(source, tok), mask_source="generation_markers",
                       last_turn_only=True)[0]
    assert _trained(tok, ex) == [("o", 2.0), ("k", 2.0), ("<|im_end|>", 2.0)]


def test_the_mask_source_enters_the_prepared_store_key(tmp_path):
    from sftlab.prepare import prepare

    tok = tokenizer_for("trl-qwen2.5-training")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in
                                             (("user", "hi"), ("assistant", "yo"))]}) + "\n")
    stores = {ms: prepare([str(data)], tok, get_template(None, tok),
                          options={"max_length": 64, "mask_source": ms}, cache_dir=tmp_path / "cache")
              for ms in ("contract", "generation_markers")}
    assert stores["contract"].key != stores["generation_markers"].key
    assert not stores["generation_markers"].hit
    trained = {ms: int((s.weights(0) > 0).sum()) for ms, s in stores.items()}
    assert trained == {"contract": 3, "generation_markers": 5}  # y o <|im_end|>, and the two newlines
