"""Template objects: fingerprints, installation into a tokenizer, adding role tokens."""
from __future__ import annotations

import torch

from sftlab.tokens.encoding import encode
from sftlab.tokens.role_tokens import add_role_tokens, install_template, missing_control_tokens
from sftlab.tokens.templates import get_template
from sftlab.demo.tiny import build_model, build_tokenizer


def test_fingerprint_changes_with_template_and_tokenizer():
    a, b = build_tokenizer(), build_tokenizer(["a different corpus entirely"], vocab_size=400)
    assert get_template("chatml", a).fingerprint == get_template("chatml", a).fingerprint
    assert get_template("chatml", a).fingerprint != get_template("zephyr", a).fingerprint
    assert get_template("chatml", a).fingerprint != get_template("chatml", b).fingerprint


def test_installed_template_reproduces_the_rendering_with_apply_chat_template():
    tok = build_tokenizer()
    t = get_template("chatml", tok)
    install_template(tok, t)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == t.render(msgs)
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True) == t.render(msgs[:2], True)
    assert get_template(None, tok).layout(msgs) == t.layout(msgs)


def test_add_role_tokens_resizes_and_initialises_to_the_mean():
    tok = build_tokenizer()
    model = build_model(len(tok))
    t = get_template("llama3", tok)
    before = model.get_input_embeddings().weight.detach().clone()
    record = add_role_tokens(tok, model, t)
    assert record["added"] == missing_control_tokens(get_template("llama3", build_tokenizer()), build_tokenizer())
    assert record["vocab_after"] == len(tok) == model.get_input_embeddings().weight.shape[0]
    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(emb[:before.shape[0]], before)
    assert torch.allclose(emb[before.shape[0]:], before.mean(0, keepdim=True).expand(len(record["added"]), -1))
    out = model.get_output_embeddings().weight.detach()
    assert torch.allclose(out[before.shape[0]], out[:before.shape[0]].mean(0))
    assert not missing_control_tokens(t, tok)
    t = get_template("llama3", tok)  # rebinds to the grown tokenizer
    ex = encode({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, tok, t)
    assert tok.convert_tokens_to_ids("<|eot_id|>") in ex.input_ids
