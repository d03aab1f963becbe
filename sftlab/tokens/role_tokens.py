"""A template's control tokens in a tokenizer and model: the tokens it writes that the tokenizer
lacks are added as special tokens and the embeddings grown (each new row the mean of the old ones),
and the template's source installed as the tokenizer's ``chat_template``.

Example::

    >>> from sftlab.tokens.templates import get_template
    >>> missing_control_tokens(get_template("chatml"), None)
    ['<|im_end|>', '<|im_start|>']
"""
from __future__ import annotations

from sftlab.tokens.templates import ChatTemplate, control_token_strings

__all__ = ["missing_control_tokens", "install_template", "add_role_tokens", "grow_embeddings"]


def missing_control_tokens(template: ChatTemplate, tokenizer) -> list[str]:
    """Control tokens the template writes that the tokenizer does not know as special tokens."""
    known = set(control_token_strings(tokenizer))
    return [t for t in template.control_tokens if t not in known]


def install_template(tokenizer, template: ChatTemplate):
    """Set the template's Jinja source as the tokenizer's ``chat_template`` (in place; returns it)."""
    tokenizer.chat_template = template.source
    return tokenizer


def add_role_tokens(tokenizer, model, template: ChatTemplate) -> dict:
    """Add the template's missing control tokens as special tokens and grow the embeddings.

    New embedding rows (input and, when untied, output) are set to the mean of the existing rows,
    so a new role token starts as an "average" token instead of noise. Returns the record that
    goes into the manifest: ``{"added": [...], "vocab_before": n, "vocab_after": m, "init": "mean"}``.
    """
    missing = missing_control_tokens(template, tokenizer)
    record = {"added": missing, "vocab_before": len(tokenizer), "vocab_after": len(tokenizer), "init": "mean"}
    if not missing:
        return record
    tokenizer.add_tokens(missing, special_tokens=True)  # the same call in transformers 4 and 5
    if model is not None:
        grow_embeddings(model, len(tokenizer))
    record["vocab_after"] = len(tokenizer)
    return record


def grow_embeddings(model, size: int) -> None:
    """Resize ``model``'s embeddings (and an untied output layer) to ``size`` rows when it has fewer,
    each new row the mean of the old ones: how role tokens start in training, and how a LoRA
    adapter's base is grown again to its tokenizer on load."""
    import torch  # on first use, for start-up time

    old = model.get_input_embeddings().weight.shape[0]
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(dim=0, keepdim=True)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[old:] = out.weight[:old].mean(dim=0, keepdim=True)

