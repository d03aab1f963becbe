"""``encoding.opening_tokens`` / ``opening_weight``: the first trained tokens of every trained turn
weigh more, on official chat templates (tests/data/chat_templates); off by default, where the
prepared-data store's key and every weight are what they are without the option."""
from __future__ import annotations

import numpy as np
import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.tokens.encoding import encode, encode_all
from tests.test_real_templates import tokenizer_for

CONV = Conversation((Message("system", "Be brief."), Message("user", "How do I kill a stuck process?"),
                     Message("assistant", "Open the task manager, pick the process and press End task."),
                     Message("user", "And on Linux?"),
                     Message("assistant", "Run kill with its process id; kill -9 if it ignores that.", weight=0.5)))


def runs(weights) -> list[np.ndarray]:
    """The index runs of trained tokens (one per trained turn in these templates)."""
    idx = np.flatnonzero(np.asarray(weights))
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)


@pytest.fixture(scope="module")
def toks():
    return {}


@pytest.mark.parametrize("name", ["smollm2", "llama-3.2", "gemma-3", "phi-4"])
def test_first_tokens_of_each_trained_turn_weigh_more(name, toks):
    tok = tokenizer_for(name, toks)
    plain = encode(CONV, tok, None)
    (opened,), _ = encode_all([CONV], tok, None, opening_tokens=3, opening_weight=4.0)
    assert opened.input_ids == plain.input_ids and opened.trained_tokens == plain.trained_tokens
    before, after = np.asarray(plain.loss_weights), np.asarray(opened.loss_weights)
    turns = runs(before)
    assert len(turns) == 2 and all(len(t) > 3 for t in turns)
    want = before.copy()
    for t in turns:
        want[t[:3]] *= 4.0
    assert after.tolist() == want.tolist()  # message weights kept: 0.5 * 4 on the second turn's opening
    assert sorted(set(after[turns[1][:3]])) == [2.0]
    assert opened.trained_weight == pytest.approx(float(after.sum()), abs=1e-6)  # the loss's normaliser


def test_a_turn_shorter_than_the_opening_is_weighted_whole(toks):
    tok = tokenizer_for("smollm2", toks)
    short = Conversation((Message("user", "Hi"), Message("assistant", "Hi!")))
    plain = encode(short, tok, None)
    (opened,), _ = encode_all([short], tok, None, opening_tokens=50, opening_weight=2.0)
    assert np.asarray(opened.loss_weights).tolist() == (2 * np.asarray(plain.loss_weights)).tolist()


def test_off_by_default_leaves_the_store_key_and_weights_unchanged(toks):
    from sftlab.train.config import TrainConfig
    from sftlab.train.data import _encoding_options, heldout_encoding

    base = {"model": {"path": "m"}, "data": {"train": ["t.jsonl"]}, "out": "r"}
    default = TrainConfig.model_validate(base)
    assert not any(k.startswith("opening") for k in _encoding_options(default))
    assert not any(k.startswith("opening") for k in heldout_encoding(default))
    only_k = TrainConfig.model_validate({**base, "encoding": {"opening_tokens": 4}})  # weight 1: still off
    assert _encoding_options(only_k) == _encoding_options(default)
    on = TrainConfig.model_validate({**base, "encoding": {"opening_tokens": 4, "opening_weight": 3.0}})
    assert _encoding_options(on)["opening_tokens"] == 4 and heldout_encoding(on)["opening_weight"] == 3.0
    tok = tokenizer_for("smollm2", toks)
    assert encode_all([CONV], tok, None, opening_tokens=4, opening_weight=1.0) == encode_all([CONV], tok, None)


def test_opening_weight_must_be_positive():
    from sftlab.train.config import ConfigError, TrainConfig

    with pytest.raises((ConfigError, ValueError), match="opening_weight"):
        TrainConfig.model_validate({"model": {"path": "m"}, "data": {"train": ["t.jsonl"]}, "out": "r",
                                    "encoding": {"opening_weight": 0}})
