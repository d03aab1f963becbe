"""Attention example by example inside packed rows (an attention function registered with transformers).

``sftlab.tokens.packing.collate`` gives packed rows a block-diagonal causal mask, which transformers' SDPA
path honours but pays for in full: every T x T score of the row is computed, and the masked ones
thrown away. ``use_packed_attention`` registers an attention function that cuts each row at its
example boundaries and runs causal SDPA block by block: sum(n_i^2) scores instead of T^2, the
same outputs. The boundaries are handed through: ``collate`` knows each row's example lengths
(``row_lengths``), the objective passes them to the model as the ``sftlab_row_lengths`` keyword,
and transformers forwards it to the attention function (nothing is recovered from the mask, and
no device sync is needed to find the blocks). It is written here because transformers' own variable-length
paths need FlashAttention (a CUDA kernel) or ignore the block structure on the CPU; torch's
``scaled_dot_product_attention`` does the arithmetic.
"""
from __future__ import annotations

import torch

PACKED_ATTENTION = "sftlab_packed_sdpa"
ROW_LENGTHS = "sftlab_row_lengths"
"""The keyword the objective passes the per-row example lengths under."""


def use_packed_attention(model) -> bool:
    """Run attention example by example inside packed rows, when the model uses SDPA.

    ``collate`` gives a block-diagonal causal mask; SDPA with that mask still computes every
    T x T score of a row. Cutting the row at its example boundaries (``row_lengths``, handed
    through) and running causal SDPA on each block computes only sum(n_i^2) of them, with the same
    result (the masked scores get zero weight either way). Models whose attention needs more than a
    causal mask (sliding windows, soft-capping), calls without the lengths (generation, a user's own
    forward), and KV caches keep transformers' SDPA with the mask.
    Returns whether it was switched on.
    """
    # lazy: transformers takes seconds to import; sftlab.model is imported by commands that never train
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(PACKED_ATTENTION)
    return True


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # lazy: as above

    row_lengths = kwargs.pop(ROW_LENGTHS, None)
    plain = (row_lengths is None or attention_mask is None or attention_mask.dim() != 4
             or query.shape[2] != key.shape[2] or kwargs.get("sliding_window") or kwargs.get("softcap"))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    B, H, T, D = query.shape  # key, value: [B, H_kv, T, D]
    if key.shape[1] != H:
        key, value = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (key, value))
    out = query.new_empty(B, H, T, value.shape[-1])
    for b in range(B):
        for s, e in blocks(row_lengths[b], T):
            out[b:b + 1, :, s:e] = torch.nn.functional.scaled_dot_product_attention(
                query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                is_causal=True, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def blocks(lengths, T: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` of the examples of one row of width ``T``, from their lengths; trailing
    padding is one more block (a padding token is never attended to by a real one and has no
    weight, so what it sees changes no loss).

        >>> blocks((3, 1, 2), 8)
        [(0, 3), (3, 4), (4, 6), (6, 8)]
    """
    out, start = [], 0
    for n in lengths:
        out.append((start, start + n))
        start += n
    if start < T:
        out.append((start, T))
    return out
