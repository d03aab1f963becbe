"""NEFTune: uniform noise on the input embeddings in training steps (Jain et al. 2023,
"NEFTune: Noisy Embeddings Improve Instruction Finetuning", arXiv:2310.05914, Algorithm 1).

Each embedding vector of an example of length L in a model of hidden size d gets noise drawn
uniformly from ``[-1, 1]`` and scaled by ``alpha / sqrt(L * d)``. transformers and TRL implement it
as a forward hook on the embedding layer (``transformers.integrations.neftune.
neftune_post_forward_hook``) that takes L as the padded batch width ``output.size(1)``; here a row
may pack several examples, so L is the length of the example each token belongs to, found from the
``position_ids`` that restart at 0 per example. That is the paper's per-example scale: an example
gets the same noise packed or alone. The noise is added only while the embedding module is in
training mode, so validation, generation and evaluation never see it.

Example::

    >>> import torch
    >>> example_lengths(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    tensor([[3, 3, 3, 2, 2, 1]])
"""
from __future__ import annotations

import torch


def example_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T]: the length of the example each token belongs to (a new example starts
    where the position is 0)."""
    starts = position_ids == 0
    starts[:, 0] = True
    segment = starts.cumsum(dim=1) - 1  # example index within the row
    counts = torch.zeros_like(position_ids).scatter_add_(1, segment, torch.ones_like(position_ids))
    return counts.gather(1, segment)


def noise_scale(position_ids: torch.Tensor | None, shape: torch.Size, alpha: float) -> torch.Tensor:
    """``alpha / sqrt(L * d)`` per token, shape [B, T, 1]; without positions L is the row width
    (transformers' choice)."""
    batch, width, hidden = shape
    if position_ids is None or tuple(position_ids.shape) != (batch, width):
        lengths = torch.full((batch, width), width)
    else:
        lengths = example_lengths(position_ids)
    return (alpha / torch.sqrt(lengths.double() * hidden)).float().unsqueeze(-1)


def activate_neftune(model: torch.nn.Module, alpha: float) -> list:
    """Add NEFTune noise to ``model``'s input embeddings in training mode; returns the hook handles
    (``handle.remove()`` turns it off). The model's forward must get ``position_ids`` as a keyword
    (as sftlab's objective passes them) for per-example lengths."""
    embedding = model.get_input_embeddings()
    embedding.sftlab_position_ids = None

    def remember_positions(module, args, kwargs):
        embedding.sftlab_position_ids = kwargs.get("position_ids")

    def add_noise(module, args, output):
        if not module.training:
            return output
        scale = noise_scale(module.sftlab_position_ids, output.shape, alpha).to(output.device, output.dtype)
        return output + torch.empty_like(output).uniform_(-1.0, 1.0) * scale

    return [model.register_forward_pre_hook(remember_positions, with_kwargs=True),
            embedding.register_forward_hook(add_noise)]
