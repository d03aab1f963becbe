"""Prompt/completion records of two strings: a plain-text continuation by default, as TRL trains them.

Where TRL's behaviour was read (huggingface/trl @ f2cd57710ae345ea6428ae95363267fcf38a3dc8):
``trl/trainer/sft_trainer.py``, ``SFTTrainer._prepare_dataset``: for a non-conversational dataset
``add_eos`` appends ``tokenizer.eos_token`` to ``completion`` unless it already ends with it; then
``tokenize_fn`` takes ``prompt_ids = tokenizer(text=prompt)["input_ids"]`` and
``input_ids = tokenizer(text=prompt + completion)["input_ids"]`` and sets ``completion_mask = [0] *
len(prompt_ids) + [1] * (len(input_ids) - len(prompt_ids))`` (the loss covers the completion and the
eos: ``completion_only_loss``); ``trl/data_utils.py``, ``_tokenize``: a string goes through
``processing_class(text=...)``, so the tokenizer's own special tokens (a BOS where it adds one) are
there, and no chat template is applied. The expectations below are computed that way, with the real
``transformers`` tokenizer, not written by hand.
"""
import json

import pytest
from tokenizers import processors

from sftlab.data.formats import Columns, RecordError, to_conversation
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import EncodingError, encode, encode_expanded
from sftlab.prepare import prepare
from sftlab.tokens.templates import get_template

CASES = [("The sky is", " blue."), ("Translate to French: cheese =>", " fromage"),
         ("Q: 2+2?\nA:", " 4"), ("Grüße aus", " Köln, café ☕")]


def trl_expectation(tok, prompt: str, completion: str) -> tuple[list[int], list[float]]:
    """TRL's ids and completion mask for a non-conversational prompt/completion example."""
    if not completion.endswith(tok.eos_token):
        completion = completion + tok.eos_token
    prompt_ids = tok(text=prompt)["input_ids"]
    ids = tok(text=prompt + completion)["input_ids"]
    assert ids[:len(prompt_ids)] == prompt_ids  # TRL warns otherwise; these cases have no merge at the seam
    return ids, [0.0] * len(prompt_ids) + [1.0] * (len(ids) - len(prompt_ids))


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(texts=[p + c for p, c in CASES])


@pytest.fixture(scope="module")
def bos_tok():
    """The same vocabulary with a post-processor that adds ``<|endoftext|>`` as BOS, as Llama's does."""
    t = build_tokenizer(texts=[p + c for p, c in CASES], special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    bos = "<|endoftext|>"
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, t.convert_tokens_to_ids(bos))])
    t.bos_token = bos
    return t


@pytest.mark.parametrize("prompt, completion", CASES)
def test_ids_and_trained_tokens_are_trls(tok, bos_tok, prompt, completion):
    conv = to_conversation({"prompt": prompt, "completion": completion})
    assert conv.plain
    for t in (tok, bos_tok):
        ex = encode(conv, t, "chatml")
        ids, mask = trl_expectation(t, prompt, completion)
        assert list(ex.input_ids) == ids and list(ex.loss_weights) == mask
    assert encode(conv, bos_tok, "chatml").input_ids[0] == bos_tok.convert_tokens_to_ids("<|endoftext|>")


def test_chat_option_renders_the_template_and_messages_lists_stay_conversations(tok):
    chat = to_conversation({"prompt": "The sky is", "completion": " blue."},
                           columns=Columns(prompt_completion="chat"))
    assert not chat.plain
    text = tok.decode(list(encode(chat, tok, "chatml").input_ids))
    assert text == "<|im_start|>user\nThe sky is<|im_end|>\n<|im_start|>assistant\n blue.<|im_end|>\n"
    listed = to_conversation({"prompt": [{"role": "user", "content": "The sky is"}],
                              "completion": [{"role": "assistant", "content": " blue."}]})
    assert not listed.plain and encode(listed, tok, "chatml").input_ids == encode(chat, tok, "chatml").input_ids


def test_content_that_spells_a_special_token_stays_text(tok):
    """Unlike ``tokenizer(prompt + completion)``, the eos or a role token written in the data is text."""
    ex = encode(to_conversation({"prompt": "<|im_start|>x", "completion": " y<|im_end|>"}), tok, "chatml")
    control = set(tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
    assert [i for i in ex.input_ids if i in control] == [tok.eos_token_id]  # only the eos sftlab appends
    assert ex.input_ids[-1] == tok.eos_token_id and ex.loss_weights[-1] == 1.0


def test_a_system_prompt_or_tools_refuse_a_plain_record_with_the_option_that_keeps_them():
    with pytest.raises(RecordError) as e:
        to_conversation({"system": "Be brief.", "prompt": "The sky is", "completion": " blue."})
    assert e.value.field == "system" and "prompt_completion: chat" in e.value.reason
    chat = to_conversation({"system": "Be brief.", "prompt": "The sky is", "completion": " blue."},
                           columns=Columns(prompt_completion="chat"))
    assert [m.role for m in chat.messages] == ["system", "user", "assistant"]


def test_too_long_is_refused_and_inspect_sees_the_layout(tok):
    conv = to_conversation({"prompt": "The sky is", "completion": " blue."})
    with pytest.raises(EncodingError) as e:
        encode(conv, tok, "chatml", max_length=3)
    assert e.value.code == "too_long"
    ex = encode_expanded(conv, tok, "chatml", trace=True)[0]
    assert ex.trace.layout.text == "The sky is blue.<|im_end|>"


def test_the_prepared_store_key_holds_the_option(tok, tmp_path):
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in CASES))
    kw = dict(options={"max_length": 64}, cache_dir=tmp_path / "cache")
    template = get_template("chatml", tok)
    plain = prepare([str(path)], tok, template, **kw)
    chat = prepare([str(path)], tok, template, columns=[Columns(prompt_completion="chat")], **kw)
    assert plain.key != chat.key and not chat.hit
    assert list(plain.ids(0)) == trl_expectation(tok, *CASES[0])[0]
    assert len(chat.ids(0)) > len(plain.ids(0))


def test_the_readme_renderings_with_smollm2s_template():
    """The README's two renderings of one record: SmolLM2's template adds its default system prompt
    to a chat exchange; the continuation has no template at all."""
    from pathlib import Path

    t = build_tokenizer(texts=[p + c for p, c in CASES])
    t.chat_template = (Path(__file__).parent / "data" / "chat_templates" / "smollm2.jinja").read_text()
    template = get_template(None, t)
    seen = {}
    for mode in ("continuation", "chat"):
        ex = encode(to_conversation({"prompt": "The sky is", "completion": " blue."},
                                    columns=Columns(prompt_completion=mode)), t, template)
        trained = [i for i, w in zip(ex.input_ids, ex.loss_weights) if w]
        seen[mode] = (t.decode(list(ex.input_ids)), t.decode(trained))
    assert seen["continuation"] == ("The sky is blue.<|im_end|>", " blue.<|im_end|>")
    assert seen["chat"] == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                            "Face<|im_end|>\n<|im_start|>user\nThe sky is<|im_end|>\n<|im_start|>assistant\n"
                            " blue.<|im_end|>\n", " blue.<|im_end|>")
