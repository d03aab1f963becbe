"""An optimizer's ``state_dict`` as safetensors tensors plus JSON (never pickled), for the
checkpoints of one process (``sftlab.train.checkpoint``) and of each shard of a sharded run
(``sftlab.train.sharding``).
"""
from __future__ import annotations

from typing import Any

import torch


def flatten_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer ``state_dict`` into safetensors tensors and JSON.

    >>> p = torch.nn.Parameter(torch.zeros(2)); opt = torch.optim.AdamW([p])
    >>> p.grad = torch.ones(2); opt.step()
    >>> tensors, meta = flatten_optimizer_state(opt.state_dict())
    >>> sorted(tensors), meta["param_groups"][0]["params"]
    (['state.0.exp_avg', 'state.0.exp_avg_sq', 'state.0.step'], [0])
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
