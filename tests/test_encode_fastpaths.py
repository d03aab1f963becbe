"""Preparation's fast paths give what the general paths give: the layout of plain messages taken
as they are, the token offsets read only where they are used, the checks skipped for the usual
message (no reasoning, ASCII text)."""
from __future__ import annotations

import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoder import encoder_for
from sftlab.tokens.encoding import encode_all, encode_expanded
from sftlab.tokens.splicing import _splice_ids, splice
from sftlab.tokens.templates import BUILTIN_TEMPLATES, get_template
from sftlab.tokens.weighting import exchanges, render_layout


ALL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "[INST]", "[/INST]", "<|system|>", "<|user|>",
                "<|assistant|>", "<|end|>")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(special_tokens=("<|im_start|>", "<|im_end|>", "<s>", "</s>", "[INST]", "[/INST]"))


def _messages():
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "bye"}]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_plain_messages_lay_out_as_their_copies(tok, name):
    """A built-in format takes a role-and-content message as it is; a message with a ``None``
    field (copied, the field dropped) lays out the same, and the caller's dicts are untouched."""
    t = get_template(name, tok)
    plain = _messages()
    copied = [{**m, "name": None} for m in plain]
    try:
        want = t.layout(copied)
    except Exception as e:  # a format that refuses these messages refuses them both ways
        with pytest.raises(type(e)):
            t.layout(plain)
        return
    assert t.layout(plain) == want
    assert plain == _messages()


def test_reasoning_tokens_and_trace_from_bulk_encoding(tok):
    """The bulk encoding reads the token offsets only for reasoning and traces: its reasoning
    token count is the one counted over the trace's offsets."""
    a = Message("assistant", "The answer is four.", reasoning="two and two make four")
    convs = [Conversation((Message("user", "two plus two?"), a)), Conversation((Message("user", "hi"),
                                                                                 Message("assistant", "hello")))]
    examples, quarantined = encode_all(convs, tok, "chatml")
    assert not quarantined
    (traced,) = encode_expanded(convs[0], tok, "chatml", trace=True)
    spans = [(x, y) for _, x, y in traced.trace.layout.reasoning_spans]
    want = sum(1 for (s, _), w in zip(traced.trace.offsets, traced.loss_weights)
               if w > 0 and any(x <= s < y for x, y in spans))
    assert want > 0 and examples[0].reasoning_tokens == want == traced.reasoning_tokens
    assert len(traced.trace.offsets) == len(traced.input_ids)
    assert examples[1].reasoning_tokens == 0 and examples[1].trace is None


def test_reasoning_and_surrogate_checks_still_apply():
    """The usual message skips the reasoning and Unicode checks; one that needs them gets them."""
    from sftlab.data.formats import RecordError, to_conversation

    c = to_conversation({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "thinking": "t"}]})
    assert c.messages[1].reasoning == "t" and c.messages[0].reasoning is None
    with pytest.raises(RecordError, match="twice"):
        to_conversation({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "thinking": "t", "reasoning": "u"}]})
    for bad in ({"role": "user", "content": "caf\u00e9 \ud800"},
                {"role": "assistant", "content": "ok", "reasoning_content": "\ud800"}):
        with pytest.raises(RecordError, match="surrogate"):
            to_conversation({"messages": [{"role": "user", "content": "q"}, bad] if bad["role"] == "assistant"
                             else [bad, {"role": "assistant", "content": "a"}]})


# -- truncation: the first candidate's encoding spliced from the full encoding --------------------

def _family(kind: str, specials: list[str]):
    """A small tokenizer of one family (the real ``tokenizers`` components these families use),
    trained on a small corpus, with ``specials`` as special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sftlab.demo.tiny import _CORPUS

    if kind == "bytelevel":  # GPT-2, Llama 3, Qwen
        return build_tokenizer(special_tokens=specials)
    if kind == "metaspace":  # Mistral, Llama 2 (current files): a space marker prepended to the first piece
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
    elif kind == "legacy":  # Llama 2 (older files): the marker prepended to every piece by the normaliser
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:  # "bert": lowercasing normaliser, word-piece model, split on punctuation
        tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                                     pre_tokenizers.Split(Regex(r"\n"), "isolated")])
    trainer = (trainers.WordPieceTrainer if kind == "bert" else trainers.BpeTrainer)(
        vocab_size=400, special_tokens=["<unk>", *specials], show_progress=False)
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token=specials[0],
                                   eos_token=specials[-1], additional_special_tokens=specials)


def _long_conversations(n: int, seed: int):
    import random

    rng = random.Random(seed)
    words = ["the", "cat", "Sat", "on", " mat", "naïve", "café", "\u4e2d\u6587", "42", "x\ny", "  two", "end.",
             "<b>", "tab\t", "émoji \U0001F600"]
    out = []
    for i in range(n):
        msgs = [Message("system", "Be " + rng.choice(words))] if i % 2 else []
        for _ in range(rng.randint(2, 6)):
            msgs += [Message("user", " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))),
                     Message("assistant", " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))))]
        if i % 7 == 3:  # content that spells a control token: that text is not spliced
            msgs[-2] = Message("user", msgs[-2].content + " <|im_end|><|eot_id|></s>")
        out.append(Conversation(tuple(msgs)))
    return out


CASES = [("bytelevel", "chatml"), ("metaspace", "chatml"), ("legacy", "chatml"), ("bert", "chatml"),
         ("bytelevel", "llama3"), ("metaspace", "mistral"), ("legacy", "zephyr"), ("bytelevel", "phi3")]


@pytest.mark.parametrize("kind,template", CASES)
def test_spliced_truncation_equals_tokenizing_the_candidate(kind, template, monkeypatch):
    """Every truncated conversation's first candidate, spliced from the full encoding, has the ids,
    offsets and character-to-token map of the tokenizer's own encoding of its text; the examples
    are those of a run that tokenizes every candidate."""
    from sftlab.tokens import encoding as E

    tok = _family(kind, list(ALL_SPECIALS))
    enc = encoder_for(tok, template)
    convs = _long_conversations(40, seed=len(kind) + len(template))
    spliced = 0
    for conv in convs:
        layout = render_layout(enc, conv.messages)
        full = enc.backend.encode(layout.text, add_special_tokens=False)
        head, groups = exchanges(conv.messages)
        for k in range(1, len(groups)):
            kept = [conv.messages[i] for i in head + [i for g in groups[k:] for i in g]]
            cand = render_layout(enc, kept)
            got = splice(enc, layout, full, cand)
            if got is None:
                continue
            spliced += 1
            want = enc.backend.encode(cand.text, add_special_tokens=False)
            assert got.ids == want.ids and got.offsets == want.offsets
            assert [got.char_to_token(c) for c in range(len(cand.text) + 2)] == \
                   [want.char_to_token(c) for c in range(len(cand.text) + 2)]
    assert spliced >= 40  # most cuts splice: the test is not vacuous
    with_splice = encode_all(convs, tok, template, max_length=96)
    monkeypatch.setattr(E, "splice", lambda *a: None)
    assert encode_all(convs, tok, template, max_length=96) == with_splice


@pytest.mark.parametrize("name", ["qwen3", "smollm2", "llama-3.2", "mistral-nemo", "gemma-3", "phi-4"])
def test_spliced_truncation_on_official_templates(name, monkeypatch):
    """The same with official chat templates (tests/data/chat_templates) run by Jinja."""
    import json
    from pathlib import Path

    from sftlab.tokens import encoding as E

    here = Path(__file__).parent / "data" / "chat_templates"
    spec = json.loads((here / "templates.json").read_text(encoding="utf-8"))[name]
    source = (here / spec.get("file", f"{name}.jinja")).read_text(encoding="utf-8")
    tok = build_tokenizer([source], vocab_size=600, special_tokens=list(dict.fromkeys(["<|pad|>", *spec["control"]])))
    tok.bos_token, tok.eos_token, tok.chat_template = spec["bos_token"], spec["eos_token"], source
    convs = _long_conversations(25, seed=7)
    calls = []
    real = E.splice
    monkeypatch.setattr(E, "splice", lambda *a: calls.append(real(*a)) or calls[-1])
    with_splice = encode_all(convs, tok, None, max_length=256, last_turn_only=True)
    assert sum(c is not None for c in calls) >= 3
    monkeypatch.setattr(E, "splice", lambda *a: None)
    assert encode_all(convs, tok, None, max_length=256, last_turn_only=True) == with_splice


def test_no_splice_at_a_token_that_strips_whitespace():
    """A special token that strips the whitespace beside it (``lstrip``/``rstrip``) depends on what
    surrounds it: no cut is spliced there."""
    from tokenizers import AddedToken

    from sftlab.tokens import encoding as E

    tok = build_tokenizer(special_tokens=["<|endoftext|>"])
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<|im_start|>", lstrip=True, rstrip=True),
                                                          AddedToken("<|im_end|>", lstrip=True)]})
    enc = encoder_for(tok, "chatml")
    assert not {tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")} & _splice_ids(enc)


def test_no_splice_where_later_turns_render_differently(monkeypatch):
    """A template that numbers its turns renders the kept turns with other numbers once earlier ones
    are dropped: the cut falls between equal special tokens but the text after it differs, so
    nothing is spliced and the candidates are tokenized."""
    from sftlab.tokens import encoding as E

    numbered = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' #' + (loop.index0 % 7)|string"
                " + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant #' + (messages|length % 7)|string + '\\n' }}{% endif %}")
    tok = build_tokenizer(special_tokens=list(ALL_SPECIALS))
    tok.chat_template = numbered
    convs = [c for c in _long_conversations(20, seed=3) if c.messages[0].role == "user"]
    calls = []
    real = E.splice
    monkeypatch.setattr(E, "splice", lambda *a: calls.append(real(*a)) or calls[-1])
    with_splice = encode_all(convs, tok, None, max_length=160)
    assert len(calls) >= 5 and not any(calls)
    assert sum(e.dropped_turns > 0 for e in with_splice[0]) >= 5
    monkeypatch.setattr(E, "splice", lambda *a: None)
    assert encode_all(convs, tok, None, max_length=160) == with_splice


def test_plain_messages_read_as_the_general_path_reads_them():
    """A message of a known role and text only is read directly; it equals what the general path
    makes of it (forced here by a field that changes nothing), and any other message still goes
    through every check."""
    from sftlab.data.formats import RecordError, to_conversation

    for role in ("system", "user", "assistant", "tool"):
        for content in ("text", "", "caf\u00e9"):
            plain = to_conversation({"messages": [{"role": role, "content": content}]}).messages[0]
            general = to_conversation({"messages": [{"role": role, "content": content, "train": None}]}).messages[0]
            assert plain == general and plain.train is None and plain.tool_calls == () and plain.reasoning is None
    human = to_conversation({"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}]})
    assert [m.role for m in human.messages] == ["user", "assistant"]
    for bad in ({"role": ["user"], "content": "x"}, {"role": "user", "content": 3}, {"role": "robot", "content": "x"}):
        with pytest.raises(RecordError):
            to_conversation({"messages": [bad, {"role": "assistant", "content": "a"}]})
    with pytest.raises(RecordError, match="surrogate"):
        to_conversation({"messages": [{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "a"}]})
