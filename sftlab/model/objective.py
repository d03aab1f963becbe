"""The response-only objective: weighted next-token cross-entropy, normalised per optimizer step.

For one optimizer step over micro-batches b and ranks r (DESIGN invariant 1)::

    L = - sum_{b,r,i,t} w[i,t] * log p(x[i,t] | x[i,<t]) / sum_{b,r,i,t} w[i,t]

``w[i,t]`` is the loss weight ``encode`` (and the mixture) gave token t: the weight of
*predicting* token t from the tokens before it. Labels are shifted here and nowhere else
(``shift_targets``): the prediction made at position t-1 is scored against token t with weight
w[t], except where token t starts an example (``position_ids == 0``), whose weight is dropped,
so the first token of an example is never a target of the previous example's last token.

Worked example, one packed row holding two examples (positions restart at 0)::

    input_ids    [5, 6, 7 | 8, 9]        position_ids [0, 1, 2 | 0, 1]
    loss_weights [0, 1, 2 | 1, 1]
    shifted:  predict 6 from [5] w=1, 7 from [5,6] w=2, 8 from [5,6,7] w=0 (boundary), 9 from [8] w=1
    sum = 1*nll(6) + 2*nll(7) + 1*nll(9);  step_normaliser = 1 + 2 + 1 = 4

The training loop divides by the weight of the whole step (``step_normaliser`` over all its
micro-batches, all-reduced over ranks), so each ``micro_batch_loss(...).backward()`` adds its
exact share and the accumulated gradient is the gradient of L, whatever the micro-batch size,
accumulation, packing or number of ranks.

Logits are never materialised for the whole batch: only positions with a non-zero weight are
projected through the output head, in chunks of ``chunk_size`` under activation checkpointing,
so neither forward nor backward holds more than one chunk of [tokens, vocab] logits.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sftlab.model.attention import PACKED_ATTENTION, ROW_LENGTHS
from sftlab.tokens.packing import additive_mask, collate, pack, pad_rows

__all__ = ["shift_targets", "weighted_token_loss", "chunked_token_nll", "output_head",
           "check_head", "step_normaliser", "micro_batch_loss", "scale_for_ddp", "REDUCTIONS"]

REDUCTIONS = ("token", "per_sequence")
"""``token``: sum of w*nll over the step / total weight of the step (DESIGN invariant 1).
``per_sequence``: each example's weighted mean nll, then the mean over the step's examples."""


def shift_targets(input_ids: torch.Tensor, loss_weights: torch.Tensor,
                  position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, weights)``, both [B, T-1]: the prediction at position t is scored on token t+1.

    The weight of a token that starts an example (position 0) is dropped: nothing before it
    in the row belongs to its example.

        >>> ids = torch.tensor([[5, 6, 7, 8, 9]]); pos = torch.tensor([[0, 1, 2, 0, 1]])
        >>> t, w = shift_targets(ids, torch.tensor([[0., 1, 2, 1, 1]]), pos)
        >>> t.tolist(), w.tolist()
        ([[6, 7, 8, 9]], [[1.0, 2.0, 0.0, 1.0]])
    """
    targets = input_ids[:, 1:]
    weights = loss_weights[:, 1:].float() * (position_ids[:, 1:] != 0)
    return targets, weights


def _sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1]: a batch-unique example number for each shifted target."""
    starts = (position_ids == 0).long().cumsum(1)                   # 1, 1, 1, 2, 2, ...
    row = torch.arange(position_ids.shape[0], device=position_ids.device)[:, None]
    return (starts + row * (position_ids.shape[1] + 1))[:, 1:]


def _reduce(nll: torch.Tensor, weights: torch.Tensor, seq_ids: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum over the batch of w*nll (``token``) or of per-example weighted means (``per_sequence``)."""
    if reduction == "token":
        return (nll * weights).sum()
    if reduction != "per_sequence":
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    nll, weights, seq_ids = nll.reshape(-1), weights.reshape(-1), seq_ids.reshape(-1)
    uniq, inverse = torch.unique(seq_ids, return_inverse=True)
    num = torch.zeros(len(uniq), dtype=nll.dtype, device=nll.device).index_add(0, inverse, nll * weights)
    den = torch.zeros(len(uniq), dtype=weights.dtype, device=nll.device).index_add(0, inverse, weights)
    return (num / den.clamp_min(torch.finfo(den.dtype).tiny))[den > 0].sum()


def weighted_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_weights: torch.Tensor,
                        position_ids: torch.Tensor, *, reduction: str = "token") -> torch.Tensor:
    """The plain version from full logits [B,T,V] (reference, or small vocabularies): the SUM
    (not the mean) of w * -log p over the batch; ``per_sequence`` sums per-example means."""
    targets, weights = shift_targets(input_ids, loss_weights, position_ids)
    V = logits.shape[-1]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), targets.reshape(-1),
                          reduction="none").view_as(weights)
    return _reduce(nll, weights, _sequence_ids(position_ids), reduction)


def _chunk_nll(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module,
               transform: Callable | None) -> torch.Tensor:
    logits = head(hidden).float()
    if transform is not None:
        logits = transform(logits)
    return F.cross_entropy(logits, targets, reduction="none")


def chunked_token_nll(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, *,
                      chunk_size: int = 1024, transform: Callable | None = None) -> torch.Tensor:
    """-log p(target) for N positions from their final hidden states [N,H], chunk by chunk.

    Each chunk's logits [chunk, V] exist only inside ``checkpoint``: backward recomputes them,
    so peak memory is one chunk of logits, not N x V. ``transform`` post-processes the fp32
    logits (softcapping, scaling; see ``output_head``).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    parts = []
    for s in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[s:s + chunk_size], targets[s:s + chunk_size]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_nll, h, t, head, transform, use_reentrant=False))
        else:
            parts.append(_chunk_nll(h, t, head, transform))
    if not parts:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / accelerate / PEFT wrappers (for reading, not calling)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def output_head(model: torch.nn.Module) -> tuple[torch.nn.Module, Callable | None]:
    """``(head, transform)``: the output projection and what the model does to its logits after it.

    Supported: plain heads with or without bias (and LoRA on the head, since the module is
    called), ``final_logit_softcapping`` (Gemma 2/3: ``c * tanh(logits / c)``), ``logit_scale``
    (Cohere: ``logits * s``) and ``logits_scaling`` (Granite: ``logits / s``). Anything else a
    model does to its logits goes unnoticed here; ``check_head`` compares against the model.
    """
    inner = _unwrap(model)
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings (get_output_embeddings() "
                         "is None); the objective needs a causal LM head")
    config = inner.config
    steps = []
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        steps.append(lambda x, c=float(cap): torch.tanh(x / c) * c)
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        steps.append(lambda x, s=float(scale): x * s)
    scaling = getattr(config, "logits_scaling", None)
    if isinstance(scaling, (int, float)) and scaling != 1:
        steps.append(lambda x, s=float(scaling): x / s)
    if not steps:
        return head, None

    def transform(x):
        for f in steps:
            x = f(x)
        return x
    return head, transform


@torch.no_grad()
def check_head(model: torch.nn.Module, *, tolerance: float = 1e-3) -> None:
    """Raise ValueError unless ``output_head`` reproduces the model's own logits on a short input.

    Call it once before training a model family sftlab has not been tested with: a model that
    post-processes its logits in a way ``output_head`` does not know would otherwise train on a
    silently different objective.
    """
    inner = _unwrap(model)
    device = next(inner.parameters()).device
    ids = torch.arange(min(8, inner.config.get_text_config().vocab_size), device=device)[None]
    out = inner(input_ids=ids, use_cache=False, output_hidden_states=True)
    head, transform = output_head(inner)
    ours = _chunk_logits(out.hidden_states[-1], head, transform)
    theirs = out.logits.float()
    if not torch.allclose(ours, theirs, rtol=tolerance, atol=tolerance):
        diff = (ours - theirs).abs().max().item()
        raise ValueError(f"{type(inner).__name__}: the chunked loss head differs from the model's logits "
                         f"(max abs diff {diff:.3g}); the model transforms its logits in a way "
                         "sftlab.model.objective.output_head does not support. Set loss.chunk_size: null in the "
                         "training config (the loss then takes the full logits from the model's own forward).")


def check_packing(model: torch.nn.Module, *, packed: bool = True, tolerance: float = 1e-3) -> None:
    """Raise ValueError unless the model computes, on the batches ``collate`` makes, what it
    computes on each example alone: two short examples packed into one row (``packed``; else
    each in a row of its own, padded) must give the logits of each example's forward on its own.

    Packing puts several examples in a row with a block-diagonal causal mask and positions that
    restart per example; a model whose attention builds its own mask from a 2-D padding mask
    (Bloom's ALiBi) fails on that batch, and one whose attention or positions ignored it would let
    the second example see the first without a word. Called once, with the model in eval mode
    (dropout would make any two forwards differ), on the model as training will run it.
    """
    inner = _unwrap(model)
    vocab = inner.config.get_text_config().vocab_size
    device = next(inner.parameters()).device
    first, second = [(7 * k + 3) % vocab for k in range(5)], [(11 * k + 5) % vocab for k in range(7)]
    probes = [_Probe(first, [1.0] * 5), _Probe(second, [1.0] * 7)]
    rows = pack(probes, len(first) + len(second)) if packed else pad_rows(probes, len(second))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate(rows, pad_id=0).items()}
    name = f"{type(inner).__name__} ({getattr(inner.config, 'model_type', '?')})"
    with torch.no_grad():
        try:
            logits = model(**_model_inputs(model, batch), use_cache=False).logits.float()
        except Exception as e:  # any failure of a foreign forward: named, with the fix
            raise ValueError(f"{name}: its forward fails on sftlab's batches, which carry a block-diagonal "
                             f"4-D attention mask and per-example position ids ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160]}); sftlab cannot train this architecture") from None
        alone = [model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float()
                 for ids in (first, second)]
    scale = max(float(a.abs().max()) for a in alone) or 1.0
    diff = 0.0
    for r, row in enumerate(rows):  # each example where its row holds it
        start = 0
        for i in row.example_indices:
            n = len(probes[i].input_ids)
            diff = max(diff, float((logits[r, start:start + n] - alone[i]).abs().max()))
            start += n
    if diff > tolerance * scale:
        where = "another example precedes it in a packed row" if packed else "padding follows it in a row"
        raise ValueError(f"{name}: an example's logits change when {where} (max difference {diff:.3g} "
                         f"against logits up to {scale:.3g}): its attention or positions do not keep to the "
                         "block-diagonal mask sftlab gives" + (", so packed examples would see each other; set "
                                                              "packing.mode: padded" if packed else ""))


class _Probe:
    __slots__ = ("input_ids", "loss_weights")

    def __init__(self, input_ids, loss_weights):
        self.input_ids, self.loss_weights = input_ids, loss_weights


def _chunk_logits(hidden, head, transform):
    logits = head(hidden).float()
    return transform(logits) if transform is not None else logits


def step_normaliser(micro_batches: Iterable[Mapping[str, torch.Tensor]], *, reduction: str = "token",
                    all_reduce: bool = False) -> torch.Tensor:
    """The denominator of one optimizer step: total trained weight (``token``) or the number of
    examples with trained weight (``per_sequence``) over all its micro-batches.

    With ``all_reduce=True`` and torch.distributed initialised it is summed over ranks (every
    rank must call it). The loop must use the global value, or each rank normalises by its own
    share and ranks with fewer trained tokens count more.
    """
    total = torch.zeros((), dtype=torch.float64)
    for batch in micro_batches:
        _, w = shift_targets(batch["input_ids"], batch["loss_weights"], batch["position_ids"])
        if reduction == "token":
            total += w.double().sum().cpu()
        elif reduction == "per_sequence":
            seq = _sequence_ids(batch["position_ids"])
            total += len(torch.unique(seq[w > 0]))
        else:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = torch.distributed.get_backend()
        t = total.to("cuda" if backend == "nccl" else "cpu")
        torch.distributed.all_reduce(t)
        total = t.cpu()
    return total


def scale_for_ddp(world_size: int) -> float:
    """Factor on each rank's loss so that gradient *averaging* over ranks (DDP, FSDP, DeepSpeed
    all average) yields the gradient of the global sum / global weight: ``world_size``."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return float(world_size)


def _model_inputs(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict:
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    mask = inputs.get("attention_mask")
    impl = getattr(_unwrap(model).config, "_attn_implementation", "sdpa")
    if mask is not None and mask.dim() == 4:
        if "flash" in str(impl):
            raise ValueError(f"attn_implementation={impl!r} takes no 4D mask: collate with for_flash=True")
        if impl == "eager" and mask.dtype == torch.bool:
            dtype = next(model.parameters()).dtype
            inputs["attention_mask"] = additive_mask(mask, dtype)
        if impl == PACKED_ATTENTION and "row_lengths" in batch:
            inputs[ROW_LENGTHS] = batch["row_lengths"]  # the boundaries, handed to the attention function
    return inputs


def micro_batch_loss(model: torch.nn.Module, batch: Mapping[str, Any], total_weight: float | torch.Tensor,
                     *, reduction: str = "token", chunk_size: int | None = 1024,
                     world_size: int = 1) -> torch.Tensor:
    """This micro-batch's share of the step loss: sum(w * nll) / total_weight * world_size.

    ``batch`` is ``sftlab.tokens.packing.collate``'s output on the model's device; ``total_weight`` is
    ``step_normaliser`` over the whole step (all micro-batches, all ranks). Calling ``backward``
    on each micro-batch's result accumulates exactly the gradient of the step loss; the logged
    step loss is the sum of the detached results / world_size, summed over ranks.
    ``chunk_size=None`` takes the full logits from the model (reference path).
    """
    inputs = _model_inputs(model, batch)
    ids, pos = batch["input_ids"], batch["position_ids"]
    if chunk_size is None:
        logits = model(**inputs, use_cache=False).logits
        total = weighted_token_loss(logits, ids, batch["loss_weights"], pos, reduction=reduction)
    else:
        extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
        out = model(**inputs, use_cache=False, output_hidden_states=True, **extra)
        hidden = out.hidden_states[-1][:, :-1]
        targets, weights = shift_targets(ids, batch["loss_weights"], pos)
        keep = weights != 0
        head, transform = output_head(model)
        nll = chunked_token_nll(hidden[keep], targets[keep], head, chunk_size=chunk_size, transform=transform)
        total = _reduce(nll, weights[keep], _sequence_ids(pos)[keep], reduction)
        # every parameter stays in the graph even when no position is trained (DDP expects that)
        total = total + out.logits.float().sum() * 0.0
    denominator = float(total_weight)
    if denominator <= 0:           # nothing trained in the whole step: a zero loss, gradients zero
        return total * 0.0
    return total * (scale_for_ddp(world_size) / denominator)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(_unwrap(model).forward).parameters
