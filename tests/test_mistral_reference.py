"""The built-in ``mistral`` format (Mistral 7B Instruct v0.1 / v0.2, Mixtral 8x7B Instruct v0.1) against
Mistral's own reference tokenizer.

Source of truth: mistral-common (github.com/mistralai/mistral-common, Apache-2.0; the PyPI package
``mistral-common``), ``InstructTokenizerV1``, with the V1 SentencePiece model the package ships
(``mistral_common/data/tokenizer.model.v1``). It encodes ``[INST] q [/INST]`` and then the answer on
its own, so SentencePiece starts the answer with ``▁``: ``<s>▁[INST]▁q▁[/INST]▁a</s>``. Mistral's
cookbook (concept-deep-dive/tokenization/templates.md, "Tokenizer V1") gives the same string, and
torchtune's ``MistralChatTemplate`` and axolotl's Mistral format write the same space. The Hugging
Face tokenizer made from that model (``LlamaTokenizer``, legacy: ``▁`` before every text segment)
encodes sftlab's rendering to exactly mistral-common's ids; the template first published with
Mixtral 8x7B Instruct v0.1 (tests/data/chat_templates/mixtral-8x7b-instruct-v0.1.jinja) writes
``[/INST]a</s>``, which that tokenizer encodes without the ``▁`` before the answer.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.tokens.encoding import encode
from sftlab.tokens.templates import get_template

mistral_common = pytest.importorskip("mistral_common", reason="pip install 'sftlab[test]' (mistral-common)")

FIXTURE = Path(__file__).parent / "data" / "chat_templates" / "mixtral-8x7b-instruct-v0.1.jinja"


@pytest.fixture(scope="module")
def reference():
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    return MistralTokenizer.from_file(str(path), mode=ValidationMode.finetuning), path


@pytest.fixture(scope="module")
def hf_tokenizer(reference, tmp_path_factory):
    """The Hugging Face tokenizer of the same V1 model, as Mistral 7B v0.1 / Mixtral ship it."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("mistral-v1")
    shutil.copy(reference[1], d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return AutoTokenizer.from_pretrained(str(d))


def _mistral_common_ids(reference, conv: Conversation) -> tuple[list[int], list[int]]:
    """(all ids, the ids of the assistant answers) as mistral-common's V1 tokenizer encodes ``conv``."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    tok = reference[0]
    out = tok.encode_chat_completion(ChatCompletionRequest(
        messages=[kinds[m.role](content=m.content) for m in conv.messages]))
    sp = tok.instruct_tokenizer.tokenizer
    answers = [i for m in conv.messages if m.role == "assistant" for i in sp.encode(m.content, bos=False, eos=True)]
    return out.tokens, answers


CONVERSATIONS = {
    "one turn": (("user", "What is 2 + 2?"), ("assistant", "4")),
    "two turns": (("user", "What is 2 + 2?"), ("assistant", "It is 4."), ("user", "And 3 + 3?"),
                  ("assistant", "6, said plainly.")),
    "system prompt": (("system", "Answer in one word."), ("user", "Capital of France?"), ("assistant", "Paris")),
    "non-ASCII": (("user", "Übersetze: guten Morgen"), ("assistant", "Good morning — 早上好")),
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_mistral_equals_mistral_common_v1_token_for_token(name, reference, hf_tokenizer):
    conv = Conversation(tuple(Message(r, c) for r, c in CONVERSATIONS[name]))
    ex = encode(conv, hf_tokenizer, "mistral")
    want, answers = _mistral_common_ids(reference, conv)
    assert list(ex.input_ids) == want
    assert [i for i, w in zip(ex.input_ids, ex.loss_weights) if w] == answers  # "▁4</s>": space and stop


def test_mistral_keeps_inst_as_text_where_the_tokenizer_has_no_such_token(hf_tokenizer):
    """V1 has no [INST] token: the format adds none (training would otherwise grow the vocabulary
    and write the marker as a new token the model never saw)."""
    t = get_template("mistral", hf_tokenizer)
    assert "[INST]" not in t.control_tokens and t.control_tokens == ("<s>", "</s>")


def test_the_first_published_mixtral_template_differs_only_by_the_space_before_each_answer(hf_tokenizer):
    published = get_template(FIXTURE.read_text(), hf_tokenizer)
    msgs = [{"role": r, "content": c} for r, c in CONVERSATIONS["two turns"]]
    ours = get_template("mistral", hf_tokenizer).render(msgs)
    theirs = published.render(msgs)
    assert theirs == "<s>[INST] What is 2 + 2? [/INST]It is 4.</s>[INST] And 3 + 3? [/INST]6, said plainly.</s>"
    assert ours == theirs.replace("[/INST]", "[/INST] ")
    # The first prompt is the same in both: only what the model writes (and history holds) differs.
    assert get_template("mistral", hf_tokenizer).render(msgs[:1], True) == published.render(msgs[:1], True)
