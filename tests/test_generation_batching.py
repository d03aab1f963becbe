"""Greedy generation does not depend on how the prompts are batched: batch size, prompt order and
the shared-prefix cache (a chat template's opening and system prompt, computed once per call)
leave every response as it is when each prompt is generated alone without it."""
import pytest
import torch

from sftlab.demo.tiny import build_tiny
from sftlab.evaluation import generation
from sftlab.evaluation.generation import DecoderSettings, generate, stop_tokens
from sftlab.tokens.encoding import encode_prompt
from sftlab.tokens.role_tokens import install_template
from sftlab.tokens.templates import get_template

QUESTIONS = ["hi", "What is 2 + 2?", "Tell me about the quick brown fox and the lazy dog.",
             "How do I kill a Python process?", "Name three colours.", "Why is the sky blue, briefly?",
             "Spell 'cat' backwards.", "Write one line about the sea"]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    tok, model = build_tiny(seed=4)
    tok.pad_token = tok.eos_token                     # pad == eos, as SmolLM2's
    template = get_template("chatml", tok)
    install_template(tok, template)
    system = {"role": "system", "content": "You are a careful assistant that answers briefly."}
    prompts = [encode_prompt([system, {"role": "user", "content": q}], tok, template) for q in QUESTIONS]
    eos, _ = stop_tokens(tok, template, model)
    return tok, model, prompts, eos


def _alone_without_prefix(model, tok, prompts, eos, settings, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(generation, "MIN_PREFIX", 10**9)
        return [generate(model, tok, [p], settings, eos_ids=eos)[0] for p in prompts]


def test_batch_size_order_and_the_prefix_cache_leave_greedy_responses_unchanged(setup, monkeypatch):
    tok, model, prompts, eos = setup
    assert generation._prefix_cache(model, [tuple(p) for p in prompts], 1, "cpu")[0] >= generation.MIN_PREFIX
    settings = DecoderSettings(max_new_tokens=8, batch_size=1)
    expected = _alone_without_prefix(model, tok, prompts, eos, settings, monkeypatch)
    assert len({r[0] for r in expected}) > 1        # the responses differ, so a mix-up would show
    for batch_size in (1, 3, 8):
        s = DecoderSettings(max_new_tokens=8, batch_size=batch_size)
        assert generate(model, tok, prompts, s, eos_ids=eos) == expected
        assert generate(model, tok, prompts[::-1], s, eos_ids=eos) == expected[::-1]


def test_prompts_with_no_shared_prefix_and_sampling_are_generated_without_it(setup, monkeypatch):
    tok, model, prompts, eos = setup
    bare = [tok(q, add_special_tokens=False)["input_ids"] for q in ("alpha beta", "zeta eta theta")]
    assert generation._prefix_cache(model, [tuple(p) for p in bare], 1, "cpu") == (0, None)
    assert generation._prefix_cache(model, [tuple(p) for p in prompts], 2, "cpu") == (0, None)
    s = DecoderSettings(max_new_tokens=6, batch_size=2)
    assert generate(model, tok, bare, s, eos_ids=eos) == _alone_without_prefix(model, tok, bare, eos, s, monkeypatch)


def test_a_lora_wrapped_model_continues_from_the_prefix_cache_too(setup, monkeypatch):
    """The training loop's generation eval passes a peft model: the cache goes under the name its
    base model takes (no deprecation warning) and the responses are those of each prompt alone."""
    import warnings

    from peft import LoraConfig, get_peft_model

    tok, model, prompts, eos = setup
    torch.manual_seed(0)
    wrapped = get_peft_model(build_tiny(seed=4)[1], LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                               task_type="CAUSAL_LM"))
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)                   # the adapter changes the outputs
    s = DecoderSettings(max_new_tokens=6, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        together = generate(wrapped, tok, prompts, s, eos_ids=eos)
    assert together == _alone_without_prefix(wrapped, tok, prompts, eos, s, monkeypatch)
    assert together != generate(model, tok, prompts, s, eos_ids=eos)
