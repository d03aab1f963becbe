"""Helpers shared by several test modules (pytest imports this file before any test module)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Prepared data goes to a fresh cache per test session, never ~/.cache; subprocesses (two-process
# training, the CLI) inherit it.
os.environ["SFTLAB_CACHE"] = _CACHE = tempfile.mkdtemp(prefix="sftlab-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def hand_tokenizer():
    """A word-level tokenizer whose ids a person can write by hand."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|im_start|>": 0, "<|im_end|>": 1, "<pad>": 2, "[UNK]": 3, "\n": 4, "system": 5, "user": 6,
             "assistant": 7, "hi": 8, "hello": 9, "there": 10, " ": 11, "bye": 12, "<": 13, "|": 14, "im_start": 15,
             ">": 16}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|\s|[^\w\s]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    return tok


def _store_record(i: int, rng) -> dict:
    turns = []
    for t in range(1 + i % 3):
        turns += [{"role": "user", "content": f"question {i}.{t}: " + " ".join(rng.choice("abcdefg") for _ in range(5))},
                  {"role": "assistant", "content": f"answer {i}.{t} " + "x " * rng.randint(1, 12 + 10 * (i % 7))}]
    return {"id": f"r{i}", "slice": ["chat", "math", None][i % 3], "task": f"t{i % 4}", "messages": turns}


@pytest.fixture(scope="session")
def make_record():
    """``make_record(i, rng)``: record ``r{i}`` of 1-3 turns with answers of varied length, a slice
    and a task (the prepared-data store tests' input)."""
    return _store_record


@pytest.fixture
def hand_tok():
    """A word-level tokenizer whose ids a person can write by hand (``hand_tokenizer()``)."""
    return hand_tokenizer()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests, like the subprocesses they start (OMP_NUM_THREADS=1):
    tiny matmuls gain nothing from two, and a busy 2-core machine makes spinning threads slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
