"""Held-out eval loss per slice: the response-only cross-entropy of the training objective.

Conversations are encoded exactly as training encodes its held-out data (``sftlab.tokens.encoding.encode_all``,
same template, and the run's encoding options: ``max_length`` truncation, last-turn-only, turns and
overflow, as the run manifest's ``masking.heldout_encoding`` records them), named by the same slice
names (``sftlab.data.conversation.slice_of``: ``unsliced`` for records without one), and scored
with ``sftlab.model.objective.weighted_token_loss``; the loss of a slice is the sum of w * nll over
its examples divided by the sum of their weights (the trained tokens when every weight is 1), so the
same held-out data gives the same loss here as in training's validation. Reported as
``{"value", "k": None, "n": trained tokens, "low": None, "high": None}`` (no interval).
"""
from __future__ import annotations

from collections import defaultdict


def eval_loss(model, tokenizer, template, conversations, slice_of=None,
              encoding: dict | None = None) -> tuple[dict, list[dict]]:
    """``({"all": est, slice: est, ...}, quarantined)`` for a list of conversations/records;
    ``encoding``: keyword options of ``encode_all`` (``max_length``, ``last_turn_only``, ``turns``,
    ``overflow``), as the training run used them."""
    import torch

    from sftlab.data.conversation import slice_of as default_slice_of
    from sftlab.tokens.encoding import encode_all
    from sftlab.model.objective import shift_targets, weighted_token_loss

    slice_of = slice_of or default_slice_of
    options = {k: v for k, v in (encoding or {}).items()
               if k in ("max_length", "last_turn_only", "reasoning", "inline_reasoning", "turns", "overflow")
               and v is not None}
    examples, quarantined = encode_all(conversations, tokenizer, template, **options)
    device = next(model.parameters()).device
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    was_training = model.training
    model.eval()
    try:
        for ex in examples:
            ids = torch.tensor([ex.input_ids], device=device)
            w = torch.tensor([ex.loss_weights], dtype=torch.float32, device=device)
            pos = torch.arange(len(ex.input_ids), device=device)[None]
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
                total = weighted_token_loss(logits.float(), ids, w, pos).item()
            denom = shift_targets(ids, w, pos)[1].sum().item()
            name = slice_of(ex)
            for key in ("all", name):
                sums[key] += total
                weights[key] += denom
    finally:
        model.train(was_training)
    out = {k: {"value": round(sums[k] / weights[k], 6), "k": None, "n": int(round(weights[k])),
               "low": None, "high": None} for k in sums if weights[k] > 0}
    return out, quarantined
