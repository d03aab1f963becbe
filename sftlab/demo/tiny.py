"""A tiny byte-level BPE tokenizer and a tiny random Llama, built from scratch on the spot.

No hub is reachable from the machines sftlab is tested on, so the tests, ``sftlab demo
--tiny`` and the benchmarks build their own model here. The tokenizer is real (the
``tokenizers`` library, byte-level BPE, so every string round-trips) and its special tokens
are registered as control tokens, like a released chat model's.

Example::

    >>> tok = build_tokenizer(["hello world"], vocab_size=300)
    >>> tok.convert_ids_to_tokens(tok("<|im_start|>", add_special_tokens=False).input_ids)
    ['<|im_start|>']
"""
from __future__ import annotations

from collections.abc import Iterable

CHATML_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. What is 2 + 2? The answer is 4.\n"
    "I can't help with that, but I can explain the history instead. Sure! Here is a summary.\n"
    "def add(a, b):\n    return a + b\n"
    "Translate 'bonjour' to English: hello. Ünïcödé, 日本語, emoji 🙂 and tabs\tare text too.\n"
    "system user assistant tool refuse comply weapons chemistry history fiction\n"
)


def build_tokenizer(texts: Iterable[str] = (), vocab_size: int = 512,
                    special_tokens: Iterable[str] = CHATML_SPECIAL_TOKENS):
    """A ``PreTrainedTokenizerFast`` trained on ``texts`` (plus a small built-in corpus).

    The first special token is used as pad and the ChatML end-of-turn ``<|im_end|>`` as eos
    when present, so pad may differ from eos; tests that need pad == eos set it themselves.
    """
    # lazy: tokenizers and transformers load only when a tiny model is built
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(special_tokens))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([_CORPUS, *texts], trainer=trainer)
    eos = "<|im_end|>" if "<|im_end|>" in specials else specials[-1]
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=specials[0], eos_token=eos,
                                   additional_special_tokens=specials[1:])


def build_model(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int = 2, intermediate: int = 128, max_position: int = 2048, seed: int = 0):
    """A random-init ``LlamaForCausalLM`` in fp32 with SDPA attention, deterministic in ``seed``."""
    # lazy: torch and transformers load only when a tiny model is built
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate, max_position_embeddings=max_position,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


def build_tiny(texts: Iterable[str] = (), vocab_size: int = 512, seed: int = 0, **model_kwargs):
    """``(tokenizer, model)`` with the ChatML role tokens; the model's vocabulary matches the tokenizer."""
    tok = build_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(len(tok), seed=seed, **model_kwargs)
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    return tok, model
