"""The generation-parity contract (DESIGN.md, invariant 2) on template shapes that broke it, the
per-turn expansion, overflow splitting, content parts and the rendering limits."""
from __future__ import annotations


import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.tokens.encoding import EncodingError, encode, encode_all, encode_expanded, encoding_summary
from sftlab.tokens.jinja_render import render_jinja
from sftlab.tokens.templates import TemplateError, get_template
from sftlab.demo.tiny import build_tokenizer
from tests.test_encode import REASONING_LIKE

CONTROL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
           "<|return|>", "<|start|>", "<|message|>", "<|channel|>", "<|END_RESPONSE|>", "<|END_OF_TURN_TOKEN|>",
           "<|START_RESPONSE|>", "<|CHATBOT_TOKEN|>", "<|USER_TOKEN|>", "<|START_OF_TURN_TOKEN|>", "</s>")


@pytest.fixture(scope="module")
def tok():
    t = build_tokenizer(special_tokens=CONTROL)
    t.eos_token = "</s>"
    return t


def conv(*turns, system=None):
    msgs = [Message("system", system)] if system else []
    msgs += [Message("user" if k % 2 == 0 else "assistant", t) for k, t in enumerate(turns)]
    return Conversation(tuple(msgs))


def trained(tok, ex):
    runs, cur = [], []
    for i, w in zip(ex.input_ids, ex.loss_weights):
        if w > 0:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


# GLM-4 style: no end-of-turn token; the next role token ends a turn.
GLM_LIKE = ("{%- for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content }}{%- endfor %}"
            "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}")
# Cohere2 style: two tokens end a turn.
COHERE2_LIKE = ("{%- for m in messages %}{{ '<|START_OF_TURN_TOKEN|>' }}{%- if m.role == 'user' %}"
                "{{ '<|USER_TOKEN|>' + m.content + '<|END_OF_TURN_TOKEN|>' }}{%- else %}"
                "{{ '<|CHATBOT_TOKEN|><|START_RESPONSE|>' + m.content + '<|END_RESPONSE|><|END_OF_TURN_TOKEN|>' }}"
                "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"
                "{%- endif %}")
# gpt-oss style: a channel header the model writes; the last turn ends with <|return|>, earlier ones with <|end|>.
GPT_OSS_LIKE = ("{%- for m in messages %}{%- if m.role == 'assistant' %}"
                "{{ '<|start|>assistant<|channel|>final<|message|>' + m.content }}"
                "{%- if loop.last and not add_generation_prompt %}{{ '<|return|>' }}{%- else %}{{ '<|end|>' }}{%- endif %}"
                "{%- else %}{{ '<|start|>' + m.role + '<|message|>' + m.content + '<|end|>' }}{%- endif %}{%- endfor %}"
                "{%- if add_generation_prompt %}{{ '<|start|>assistant' }}{%- endif %}")
# Phi-3 style: eos written after the whole conversation, even an empty one.
PHI3_LIKE = ("{% for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")
# Qwen3.5 style: raises on a conversation without a user turn.
NEEDS_USER = ("{%- if not (messages | selectattr('role', 'equalto', 'user') | list) %}"
              "{{ raise_exception('No user query found in messages.') }}{%- endif %}"
              "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
              "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
# SmolVLM / Idefics3 style: iterates over content parts.
PARTS = ("{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}{%- for part in m.content %}"
         "{%- if part.type == 'text' %}{{ part.text }}{%- endif %}{%- endfor %}{{ '<|im_end|>\\n' }}{%- endfor %}"
         "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")


def test_no_stop_in_the_template_trains_the_next_role_token(tok):
    t = get_template(GLM_LIKE, tok)
    ex = encode(conv("q1", "a1", "q2", "a2"), tok, t)
    assert trained(tok, ex) == ["a1<|user|>", "a2<|user|>"]  # the final turn's stop is written after it
    assert t.end_of_turn == ("<|user|>",)
    own = render_jinja(t, [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}], False)
    assert not own.endswith("<|user|>")  # the template writes none after the final turn ...
    assert t.render([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]) == own + "<|user|>"


def test_every_token_of_a_two_token_stop_is_trained(tok):
    t = get_template(COHERE2_LIKE, tok)
    ex = encode(conv("q1", "a1", "q2", "a2"), tok, t)
    assert trained(tok, ex) == ["<|START_RESPONSE|>a1<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
                                "<|START_RESPONSE|>a2<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"]
    assert t.end_of_turn == ("<|END_RESPONSE|>", "<|END_OF_TURN_TOKEN|>")


def test_a_different_last_stop_is_a_rerendered_turn_and_expands(tok):
    t = get_template(GPT_OSS_LIKE, tok)
    assert trained(tok, encode(conv("q1", "a1"), tok, t)) == ["<|channel|>final<|message|>a1<|return|>"]
    with pytest.raises(EncodingError, match="encoding.turns: expand"):
        encode(conv("q1", "a1", "q2", "a2"), tok, t)
    exs = encode_expanded(conv("q1", "a1", "q2", "a2"), tok, t)
    assert [trained(tok, e) for e in exs] == [["<|channel|>final<|message|>a2<|return|>"],
                                               ["<|channel|>final<|message|>a1<|return|>"]]
    assert [e.derived for e in exs] == [None, "turn"]


def test_a_closing_eos_written_even_for_no_message_does_not_shift_the_spans(tok):
    t = get_template(PHI3_LIKE, tok)
    assert t.render([]) == "</s>"
    ex = encode(conv("q1", "a1", "q2", "a2", system="S"), tok, t)
    assert trained(tok, ex) == ["a1<|end|>", "a2<|end|>"]


def test_a_template_that_needs_a_user_turn_is_only_rendered_with_one(tok):
    t = get_template(NEEDS_USER, tok)
    ex = encode(conv("q1", "a1", "q2", "a2", system="S"), tok, t)
    assert trained(tok, ex) == ["a1<|im_end|>", "a2<|im_end|>"]


def test_content_parts_are_passed_to_templates_that_iterate_over_parts(tok):
    t = get_template(PARTS, tok)
    assert t.content_parts
    ex = encode(conv("q1", "a1", system="S"), tok, t)
    assert trained(tok, ex) == ["a1<|im_end|>"]
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "1"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "a1"}]}]}
    assert trained(tok, encode(record, tok, t)) == ["a1<|im_end|>"]
    assert trained(tok, encode(record, tok, "chatml")) == ["a1<|im_end|>"]


def test_expand_trains_every_turn_of_a_reasoning_template_with_its_inference_context(tok):
    c = conv("q1", "a1", "q2", "a2", "q3", "a3", system="S")
    exs, quarantined = encode_all([c], tok, REASONING_LIKE, turns="expand")
    assert not quarantined and len(exs) == 3
    assert [trained(tok, e) for e in exs] == [[f"<think>\n\n</think>\n\na{k}<|im_end|>"] for k in (3, 1, 2)]
    summary = encoding_summary(exs)
    assert summary["expanded_examples"] == 2 and summary["expanded_tokens"] == len(exs[1]) + len(exs[2])
    _, quarantined = encode_all([c], tok, REASONING_LIKE)
    assert "encoding.turns: expand" in quarantined[0]["reason"]


def test_overflow_split_trains_every_turn_once_with_the_system_message(tok):
    msgs = [Message("system", "SYS")] + [Message("user" if k % 2 == 0 else "assistant", f"turn {k} " * 6)
                                         for k in range(10)]
    c = Conversation(tuple(msgs))
    full = encode(c, tok, "chatml")
    dropped, _ = encode_all([c], tok, "chatml", max_length=len(full) // 2)
    assert len(dropped) == 1 and dropped[0].lost_trained_tokens > 0
    assert dropped[0].lost_trained_tokens + dropped[0].trained_tokens == full.trained_tokens
    split, _ = encode_all([c], tok, "chatml", max_length=len(full) // 2, overflow="split")
    assert len(split) > 1 and all(len(e) <= len(full) // 2 for e in split)
    assert sum(e.trained_tokens for e in split) == full.trained_tokens
    assert sorted(r for e in split for r in trained(tok, e)) == sorted(trained(tok, full))
    assert all(tok.decode(e.input_ids).startswith("<|im_start|>system\nSYS") for e in split)
    assert encoding_summary(split)["lost_trained_tokens"] == 0 and [e.derived for e in split][1:] == \
        ["overflow"] * (len(split) - 1)


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**7 }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{{ 7 ** 100000000 }}",
])
def test_templates_that_hang_or_explode_are_refused_quickly(tok, source, monkeypatch, alarm_after):
    import sftlab.tokens.jinja_render as jinja_render

    monkeypatch.setattr(jinja_render, "RENDER_SECONDS", 1.0)
    with alarm_after(120, "a template that should be refused"), pytest.raises(TemplateError, match="refused"):
        t = get_template(source + "{% for m in messages %}{{ m.content }}{% endfor %}", tok)
        encode(conv("q", "a"), tok, t)


def test_overflow_split_leaves_out_only_an_exchange_too_long_on_its_own(tok):
    turns = ["q0", "a0 short", "q1", "long answer " * 80, "q2", "a2 short", "q3", "a3 short"]
    c = Conversation((Message("system", "SYS"),) + tuple(Message("user" if k % 2 == 0 else "assistant", t)
                                                         for k, t in enumerate(turns)))
    limit = len(encode(conv("q1", "long answer " * 80, system="SYS"), tok, "chatml")) - 1  # exchange 1 cannot fit
    examples, quarantined = encode_all([c], tok, "chatml", max_length=limit, overflow="split")
    trained_runs = sorted(r for e in examples for r in trained(tok, e))
    assert not quarantined and trained_runs == ["a0 short<|im_end|>", "a2 short<|im_end|>", "a3 short<|im_end|>"]
    lost = encoding_summary(examples)["lost_trained_tokens"]
    full = encode(c, tok, "chatml")
    assert lost == full.trained_tokens - sum(e.trained_tokens for e in examples) > 0
