"""Sharded training (FSDP2) where accelerate will not shard, and the checkpoints of sharded weights.

accelerate turns FSDP on for GPU processes only: launched with an FSDP config on CPU processes
(gloo), it reports ``MULTI_CPU`` and would wrap the model in DDP. The accelerate config still says
what the user asked for (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_RESHARD_AFTER_FORWARD``
in the environment of every process ``accelerate launch`` starts), so sftlab reads it there and
applies torch's FSDP2 itself: :func:`shard` calls ``fully_shard`` on every decoder layer (the
``TRANSFORMER_BASED_WRAP`` policy: the model's ``_no_split_modules``) and then on the whole model.
Parameters, gradients and AdamW state are then ``DTensor`` shards, one piece per process. Where
accelerate does shard (``distributed_type: FSDP`` on GPUs) it wraps the model itself; the
checkpoint functions below key on the weights being ``DTensor`` s, not on who sharded them.

A sharded checkpoint is written by every process without any collective: each writes its own
pieces of the trained weights and of the optimizer state as safetensors::

    model-shard-<rank>-of-<world>.safetensors       this process's pieces of every trained parameter
                                                    (LoRA: of the adapter; the frozen base is read
                                                    again from model.path on resume)
    optimizer-shard-<rank>-of-<world>.safetensors   its pieces of the AdamW state (``state.<i>.<name>``)
    sharding.json                                   world size, layout, the full shape of every
                                                    saved parameter (written by the main process)

beside the files every checkpoint has (``optimizer.json``, ``rng-<rank>``, ``state.json``, the
config or adapter config, the tokenizer), all under the same ``checksums.json``. A resume needs
the same number of processes (each loads its own pieces: bit-exact). ``final/`` is consolidated:
:func:`consolidate` gathers the full weights on the main process, which writes a plain Hugging
Face model directory.

Held-out loss under FSDP runs a forward (an all-gather) per micro-batch on every process, so every
process must run as many: :func:`even_rows` tops up a process's share with weight-0 rows.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sftlab.errors import UsageError
from sftlab.files import write_atomic
from sftlab.tokens.packing import PackedRow
from sftlab.train.optimizer_state import flatten_optimizer_state, unflatten_optimizer_state

SHARDING = "sharding.json"


def requested(environ=os.environ) -> bool:
    """Whether the accelerate config that launched this process asks for FSDP.

    >>> requested({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}), requested({})
    (True, False)
    """
    return str(environ.get("ACCELERATE_USE_FSDP", "false")).lower() == "true"


def is_requested_here(world: int) -> bool:
    """Whether this run shards: FSDP asked for, over more than one process."""
    return requested() and world > 1


def shard(model, accelerator, cfg):
    """``model`` sharded with FSDP2 over this run's processes when the accelerate config asks for
    FSDP and accelerate itself will not (CPU processes); otherwise ``model`` unchanged. Call it
    before the optimizer is built (it must see the sharded parameters)."""
    from accelerate.utils import DistributedType  # lazy, as below: accelerate and torch.distributed.fsdp take ~1 s

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and \
            accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise UsageError("the accelerate config asks for DeepSpeed, which accelerate does not turn on for CPU "
                         "processes (the run would be plain DDP); on CPUs launch with an FSDP config "
                         "(configs/accelerate/fsdp-cpu-2proc.yaml), which sftlab shards with FSDP2")
    if not is_requested_here(accelerator.num_processes) or accelerator.distributed_type == DistributedType.FSDP:
        return model
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise UsageError("the accelerate config asks for FSDP version 1; on CPU processes sftlab shards with "
                         "FSDP2 only: set fsdp_config.fsdp_version: 2")
    if cfg.eval.prompts:
        raise UsageError("eval.prompts: generation during training runs on the main process alone, which a "
                         "sharded model cannot do; drop eval.prompts and run `sftlab eval` on RUN/final")
    from torch.distributed.device_mesh import init_device_mesh  # lazy: only a sharded run loads FSDP
    from torch.distributed.fsdp import fully_shard

    for tensor in [*model.parameters(), *model.buffers()]:  # as DDP does: every process starts from rank 0's
        torch.distributed.broadcast(tensor.data, src=0)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"
    layers = set(_layer_classes(model))
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
    # the root keeps its weights gathered from forward to backward: the chunked loss calls the
    # output head after the model's forward (and the backward would gather them again at once)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    model.sftlab_sharding = {"kind": "fsdp2", "world_size": accelerator.num_processes, "layers": sorted(layers),
                             "reshard_after_forward": reshard}
    return model


def _layer_classes(model) -> list[str]:
    """The classes to shard one by one: ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (comma-separated) or the
    model's ``_no_split_modules`` (its decoder layers), found through a peft wrapper too."""
    named = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
    if named:
        return [n.strip() for n in named.split(",") if n.strip()]
    for module in model.modules():
        found = getattr(module, "_no_split_modules", None)
        if found:
            return list(found)
    return []


def prepare(accelerator, model, optimizer):
    """``accelerator.prepare`` for the model and optimizer; a model :func:`shard` sharded is not
    handed to accelerate (it would wrap it in DDP on CPU processes)."""
    if getattr(model, "sftlab_sharding", None):
        return model, accelerator.prepare(optimizer)
    return accelerator.prepare(model, optimizer)


def is_sharded(model) -> bool:
    """Whether ``model`` is sharded with FSDP2 (by sftlab or by accelerate).

    >>> is_sharded(torch.nn.Linear(2, 2))
    False
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported (~1 s): nothing can be sharded
    return fsdp is not None and any(isinstance(m, fsdp.FSDPModule) for m in model.modules())


def _resharded(model) -> None:
    """Every FSDP2 module back to its shards (a forward without backward, as validation runs,
    leaves the modules that do not reshard after forward gathered)."""
    from torch.distributed.fsdp import FSDPModule  # lazy: only a sharded run loads FSDP

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


# -- checkpoints -----------------------------------------------------------------------------------

def _names(rank: int, world: int) -> tuple[str, str]:
    return f"model-shard-{rank}-of-{world}.safetensors", f"optimizer-shard-{rank}-of-{world}.safetensors"


def _local(value):
    from torch.distributed.tensor import DTensor  # lazy: only a sharded run loads FSDP

    return value.to_local() if isinstance(value, DTensor) else value


def save_shards(directory: Path, model, optimizer, rank: int, world: int) -> None:
    """Write this process's pieces of the trained parameters and of the optimizer state (no
    collective: every process calls it on its own)."""
    _resharded(model)
    weights = {name: _local(p.detach()).cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    sd = optimizer.state_dict()
    local = {"state": {i: {k: _local(v) for k, v in entry.items()} for i, entry in sd["state"].items()},
             "param_groups": sd["param_groups"]}
    tensors, meta = flatten_optimizer_state(local)
    model_file, optimizer_file = _names(rank, world)
    save_file(weights, directory / model_file)
    save_file({k: v.clone() for k, v in tensors.items()}, directory / optimizer_file)
    if rank == 0:
        _write_json(directory / "optimizer.json", meta)
        _write_json(directory / SHARDING, {
            "kind": "fsdp2", "world_size": world, "files": ["model-shard-{rank}-of-{world}.safetensors",
                                                            "optimizer-shard-{rank}-of-{world}.safetensors"],
            "params": {name: list(p.shape) for name, p in model.named_parameters() if p.requires_grad}})


def save_config(directory: Path, model) -> None:
    """The config a sharded checkpoint carries instead of ``save_pretrained``'s weights: the model's
    ``config.json``, or a LoRA run's ``adapter_config.json``."""
    if hasattr(model, "peft_config"):
        model.peft_config["default"].save_pretrained(directory)
    else:
        model.config.save_pretrained(directory)


def load_shards(path: Path, model, optimizer, rank: int) -> None:
    """Load this process's pieces of the weights and optimizer state written by :func:`save_shards`
    into the sharded ``model`` and its ``optimizer`` (built, not yet stepped)."""
    from torch.distributed.tensor import DTensor  # lazy: only a sharded run loads FSDP

    record = json.loads((path / SHARDING).read_text(encoding="utf-8"))
    model_file, optimizer_file = _names(rank, record["world_size"])
    _resharded(model)
    weights = load_file(path / model_file)
    params = dict(model.named_parameters())
    trained = {name for name, p in params.items() if p.requires_grad}
    if set(weights) != trained:
        raise ValueError(f"{model_file} holds {len(weights)} parameters, this model trains {len(trained)} "
                         f"({sorted(set(weights) ^ trained)[:3]} differ)")
    with torch.no_grad():
        for name, value in weights.items():
            _local(params[name]).copy_(value)
    meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    sd = unflatten_optimizer_state(load_file(path / optimizer_file), meta)
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    for i, entry in sd["state"].items():
        p = ordered[i]
        for k, v in entry.items():
            if isinstance(p, DTensor) and v.dim() > 0:
                entry[k] = DTensor.from_local(v, p.device_mesh, p.placements, run_check=False,
                                              shape=p.shape, stride=p.stride())
    optimizer.load_state_dict(sd)


def missing_files(path: Path, names: set[str]) -> list[str]:
    """What a sharded checkpoint's ``checksums.json`` (``names``) lacks: each process's shards and
    RNG state, the optimizer's JSON part, the loop state."""
    try:
        world = int(json.loads((path / SHARDING).read_text(encoding="utf-8"))["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{SHARDING} is unreadable"]
    want = ["optimizer.json", "state.json",
            *(n for r in range(world) for n in (*_names(r, world), f"rng-{r}.safetensors"))]
    return [f"checksums.json lists no {n}" for n in want if n not in names]


def shards_mismatch(path: Path, model, world: int) -> str | None:
    """Why the sharded checkpoint ``path`` cannot be loaded by this run (another number of
    processes, other trained parameters or shapes); ``None`` when it fits. ``model`` is the
    model before sharding."""
    if not (path / SHARDING).is_file():
        return ("it holds whole (unsharded) weights and this run shards them (FSDP); resume with the "
                "launch config that wrote it")
    try:
        record = json.loads((path / SHARDING).read_text(encoding="utf-8"))
        saved, want_world = record["params"], int(record["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {SHARDING} is unreadable"
    if want_world != world or not is_requested_here(world):
        return (f"it holds FSDP shards of {want_world} processes and this run "
                + (f"has {world}" if want_world != world else "does not shard (launch it with the FSDP config)"))
    want = {name: list(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    if saved != want:
        diff = sorted(set(saved) ^ set(want)) or sorted(k for k in saved if saved[k] != want[k])
        return f"its weights do not fit this model ({diff[:3]}; lora.r, lora.target_modules or model.path differ)"
    return None


def _write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# -- final model and held-out loss ------------------------------------------------------------------

def consolidate(model):
    """A sharded ``model`` gathered whole: on the main process its parameters become plain tensors
    holding the full weights (what ``save_pretrained`` and a LoRA merge need); every process must
    call it, and the model trains no more afterwards. An unsharded model is returned unchanged."""
    if not is_sharded(model):
        return model
    # lazy: only a sharded run loads FSDP
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return model
    from torch.distributed.fsdp import FSDPModule  # lazy: only a sharded run loads FSDP

    whole: dict[int, torch.nn.Parameter] = {}  # tied weights stay one parameter
    for name, param in list(model.named_parameters(remove_duplicate=False)):
        if id(param) not in whole:
            whole[id(param)] = torch.nn.Parameter(full[name], requires_grad=param.requires_grad)
        owner, _, leaf = name.rpartition(".")
        (model.get_submodule(owner) if owner else model).register_parameter(leaf, whole[id(param)])
    for module in model.modules():  # FSDP2 made each sharded module an FSDP<Class>; configs name the class
        if isinstance(module, FSDPModule):
            module.__class__ = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
    return model


def even_rows(rows_by_slice: dict, model, world: int, pad_id: int) -> dict:
    """Held-out rows of this process, topped up with weight-0 rows to ``ceil(n / world)`` per slice
    when ``model`` is sharded, so every process runs the same forwards (each gathers the weights).

    >>> even_rows({"a": [1, 2]}, torch.nn.Linear(1, 1), 2, 0)   # not sharded: unchanged
    {'a': [1, 2]}
    """
    if not is_sharded(model):
        return rows_by_slice
    totals = torch.tensor([len(rows) for rows in rows_by_slice.values()], dtype=torch.long)
    torch.distributed.all_reduce(totals, op=torch.distributed.ReduceOp.MAX)
    blank = PackedRow.from_tokens((pad_id,), (0.0,), example_indices=(-1,))
    return {name: list(rows) + [blank] * (int(n) - len(rows))
            for (name, rows), n in zip(rows_by_slice.items(), totals.tolist())}
