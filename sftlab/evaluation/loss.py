"""Held-out eval loss per slice: the response-only cross-entropy of the training objective.

One scorer, :func:`slice_sums`, serves training's validation (``sftlab.train.loop.evaluate``) and
``sftlab eval`` (:func:`eval_loss`): rows of one example each, collated in micro-batches
(``sftlab.tokens.packing.collate``) and scored by ``sftlab.model.objective.micro_batch_loss`` with
the run's ``loss.normalisation``. Per slice it returns the sum of the scores and of the normaliser
(``token``: sum of w * nll and sum of w, the trained tokens when every weight is 1;
``per_sequence``: sum of the examples' weighted means and the number of examples), so the loss of a
slice, and of all slices together, is the first over the second, the same in both places.

``eval_loss`` encodes conversations exactly as training encodes its held-out data
(``sftlab.tokens.encoding.encode_all``, same template, and the run's encoding options: ``max_length``
truncation, last-turn-only, turns and overflow, as the run manifest's ``masking.heldout_encoding``
records them, with ``normalisation``), named by the same slice names (``sftlab.data.conversation.slice_of``:
``unsliced`` for records without one). Reported as ``{"value", "k": None, "n": trained tokens,
"low": None, "high": None}`` (no interval).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from sftlab.data.conversation import slice_of as default_slice_of
from sftlab.model.objective import micro_batch_loss, step_normaliser
from sftlab.tokens.encoding import encode_all
from sftlab.tokens.packing import collate, PackedRow

ENCODING_KEYS = ("max_length", "last_turn_only", "reasoning", "inline_reasoning", "turns", "overflow",
                 "mask_source", "opening_tokens", "opening_weight")


@torch.no_grad()
def slice_sums(model, rows_by_slice: dict, pad_id: int, *, micro_batch_size: int = 8, reduction: str = "token",
               chunk_size: int | None = 1024, device=None, autocast=nullcontext) -> torch.Tensor:
    """``[len(rows_by_slice), 3]`` float64: per slice (in the dict's order) the summed scores, the
    summed normaliser and the trained weight, over its rows (``PackedRow``s, one example each) in
    micro-batches of ``micro_batch_size``. The model is put in eval mode and restored."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(rows_by_slice), 3, dtype=torch.float64)
    try:
        for j, rows in enumerate(rows_by_slice.values()):
            for i in range(0, len(rows), micro_batch_size):
                batch = collate(rows[i:i + micro_batch_size], pad_id)
                if device is not None:
                    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with autocast():
                    sums[j, 0] += micro_batch_loss(model, batch, 1.0, reduction=reduction,
                                                   chunk_size=chunk_size).item()
                sums[j, 1] += step_normaliser([batch], reduction=reduction).item()
                sums[j, 2] += step_normaliser([batch], reduction="token").item()
    finally:
        model.train(was_training)
    return sums


def eval_loss(model, tokenizer, template, conversations, slice_of=None,
              encoding: dict | None = None, micro_batch_size: int = 8) -> tuple[dict, list[dict]]:
    """``({"all": est, slice: est, ...}, quarantined)`` for a list of conversations/records;
    ``encoding``: keyword options of ``encode_all`` (``max_length``, ``last_turn_only``, ``turns``,
    ``overflow``) and ``normalisation`` (``token`` | ``per_sequence``), as the training run used them."""
    slice_of = slice_of or default_slice_of
    encoding = encoding or {}
    options = {k: v for k, v in encoding.items() if k in ENCODING_KEYS and v is not None}
    examples, quarantined = encode_all(conversations, tokenizer, template, **options)
    rows: dict[str, list] = {}
    for ex in examples:
        rows.setdefault(slice_of(ex), []).append(PackedRow.from_tokens(ex.input_ids, ex.loss_weights))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    sums = slice_sums(model, rows, pad_id, micro_batch_size=micro_batch_size,
                      reduction=encoding.get("normalisation") or "token", device=next(model.parameters()).device)
    parts = dict(zip(rows, sums.tolist()))
    if rows:
        parts["all"] = sums.sum(0).tolist()
    out = {k: {"value": round(s / d, 6), "k": None, "n": int(round(w)), "low": None, "high": None}
           for k, (s, d, w) in parts.items() if d > 0}
    return out, quarantined
