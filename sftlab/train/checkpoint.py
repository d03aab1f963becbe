"""Atomic, resumable checkpoints: safetensors plus JSON, nothing pickled.

Layout of ``RUN/checkpoints/step-N/``::

    model.safetensors (+ config.json)   full fine-tuning, as ``save_pretrained`` writes it
    adapter_model.safetensors (+ adapter_config.json)   LoRA (peft) instead of the model
    tokenizer files                     with the training chat template installed
    optimizer.safetensors               AdamW state tensors, keys ``state.<param>.<name>``
    optimizer.json                      the non-tensor parts (param groups, scalar state)
    rng-<rank>.safetensors              torch CPU / CUDA RNG (uint8 tensors), numpy state;
                                        python ``random`` state as JSON in the file metadata
    state.json                          step, data position, scheduler state, loop state
    run.json                            the run manifest when the checkpoint was written
    checksums.json                      sha256 and size of every other file, written last; its
                                        own sha256 is recorded in RUN/run.json
                                        (``artifacts.checkpoint_checksums``) before the rename

A sharded (FSDP2) run writes each process's pieces of the weights and optimizer state instead of
``model.safetensors`` and ``optimizer.safetensors`` (``sftlab.train.sharding``), under the same
checksums.

Everything is written into ``checkpoints/.tmp-step-N`` first and then renamed into place with
``os.replace``, so a crash during a save leaves every earlier checkpoint whole and never leaves
a half-written ``step-N``. ``state.json`` is written last; a ``step-N`` directory without it
is not complete and is ignored by :func:`latest_checkpoint`.

On resume, :func:`choose_checkpoint` verifies the newest checkpoint against its
``checksums.json``, and that list against what a complete checkpoint holds and against the sha256
the run's manifest recorded for it (a list edited to leave a changed file out is damage, not a
smaller checkpoint): flipped bytes, a truncated, empty or missing file are found before any state
is loaded, reported with the newest intact checkpoint, and that one is taken only when the user
asks for it (``sftlab train --resume --fallback-checkpoint``).

Several processes save together: each writes its own ``rng-<rank>`` file, the main process
writes the rest and does the rename. ``barrier`` (for example ``accelerator.wait_for_everyone``)
orders the two.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sftlab.errors import UsageError
from sftlab.files import publish_dir, read_input, whole_or_nothing, write_atomic
from sftlab.fingerprints import file_sha256
from sftlab.manifest import ManifestError, read_run_json, update_manifest
from sftlab.train import sharding
from sftlab.train.optimizer_state import flatten_optimizer_state, unflatten_optimizer_state

_STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``step-N`` with a ``state.json``), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``run_dir``, or ``None``."""
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def save_checkpoint(run_dir: str | Path, step: int, *, model, tokenizer, optimizer, scheduler,
                    state: dict[str, Any], keep_last: int, manifest: dict | None = None,
                    rank: int = 0, barrier: Callable[[], None] = lambda: None) -> Path:
    """Write ``RUN/checkpoints/step-<step>`` atomically; every process calls this.

    ``model`` is the unwrapped model (a peft model saves only its adapter); ``state`` is
    JSON-able loop state (data position, early-stopping counters); the step and the scheduler
    state are added here. Keeps the newest ``keep_last`` checkpoints.
    """
    root = checkpoint_dir(run_dir)
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    previous = latest_checkpoint(run_dir)
    sharded = sharding.is_sharded(model)
    with whole_or_nothing(tmp, final, lambda: _bytes(previous) if previous else _bytes_of(model, optimizer),
                           previous):
        _save_rng(tmp / f"rng-{rank}.safetensors")
        if sharded:  # each process writes its own pieces (sftlab.train.sharding)
            sharding.save_shards(tmp, model, optimizer, rank, torch.distributed.get_world_size())
    barrier()
    if rank == 0:
        with whole_or_nothing(tmp, final, lambda: _bytes(previous) if previous else _bytes_of(model, optimizer),
                               previous):
            if sharded:
                sharding.save_config(tmp, model)
            else:
                model.save_pretrained(tmp)
                tensors, meta = flatten_optimizer_state(optimizer.state_dict())
                save_file(tensors, tmp / "optimizer.safetensors")
                _write_json(tmp / "optimizer.json", meta)
            tokenizer.save_pretrained(tmp)
            if manifest is not None:
                _write_json(tmp / "run.json", manifest)
            _write_json(tmp / "state.json", {**state, "step": step, "scheduler": scheduler.state_dict()})
            _write_json(tmp / CHECKSUMS, checksums(tmp))
            _record_checksums(Path(run_dir), step, tmp / CHECKSUMS)
            publish_dir(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _bytes_of(model, optimizer=None) -> int:
    """Bytes of the model's state (and the optimizer's): what a first save writes, about."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if optimizer is not None:
        for entry in optimizer.state_dict()["state"].values():
            total += sum(v.numel() * v.element_size() for v in entry.values() if torch.is_tensor(v))
    return total


def checksums(directory: Path) -> dict[str, dict]:
    """``{relative path: {"sha256", "bytes"}}`` of every file under ``directory`` but checksums.json."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != CHECKSUMS:
            out[p.relative_to(directory).as_posix()] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return out


def _record_checksums(run: Path, step: int, listing: Path) -> None:
    """Record the sha256 of a checkpoint's ``checksums.json`` in the run's manifest
    (``artifacts.checkpoint_checksums``, by step directory) before the checkpoint is published:
    the list that vouches for every file is itself vouched for from outside the checkpoint."""
    manifest = read_run_json(run, missing_ok=True, damaged_ok=True)
    if manifest is None:
        return  # a checkpoint written outside a run directory
    known = ((manifest.get("artifacts") or {}).get("checkpoint_checksums") or {})
    present = {p.name for p in step_dirs(run)}
    record = {k: v for k, v in known.items() if k in present} if isinstance(known, dict) else {}
    record[f"step-{step}"] = file_sha256(listing)
    try:
        update_manifest(run, artifacts={"checkpoint_checksums": record})
    except (ManifestError, OSError):
        pass  # the checkpoint is still checked against its own list


def recorded_checksums(run_dir: str | Path) -> dict[str, str]:
    """``{step directory: sha256 of its checksums.json}`` as the run's manifest records them."""
    manifest = read_run_json(run_dir, missing_ok=True, damaged_ok=True) or {}
    record = (manifest.get("artifacts") or {}).get("checkpoint_checksums") if isinstance(
        manifest.get("artifacts"), dict) else None
    return {k: v for k, v in record.items() if isinstance(v, str)} if isinstance(record, dict) else {}


# What every complete checkpoint holds, beside its checksums.json (the weights: one of two kinds).
_REQUIRED = ("state.json", "optimizer.safetensors", "optimizer.json")


def verify_checkpoint(path: Path, recorded: str | None = None) -> list[str]:
    """What is wrong with the checkpoint ``path`` (empty when intact): every file it holds is in
    its ``checksums.json`` with its size and sha256, the list names what a complete checkpoint
    holds (state, optimizer, RNG, model or adapter weights), and where the run's manifest
    recorded the list's own sha256 (``recorded``), the list is that one."""
    if not (path / "state.json").is_file():
        return ["state.json is missing"]

    if not os.path.lexists(path / CHECKSUMS):
        return [f"{CHECKSUMS} is missing"]
    try:
        listing = json.loads(read_input(path / CHECKSUMS, max_bytes=16 << 20, note=False))
    except (UsageError, ValueError, RecursionError):
        return [f"{CHECKSUMS} is unreadable (not a regular JSON file of sftlab's)"]
    if not isinstance(listing, dict):
        return [f"{CHECKSUMS} is not a JSON object"]
    if recorded is not None and file_sha256(path / CHECKSUMS) != recorded:
        return [f"{CHECKSUMS} is not the one written with the checkpoint (run.json records another sha256)"]
    problems = _incomplete(path, listing)
    for rel, want in sorted(listing.items()):
        p = path / rel
        if not isinstance(want, dict) or not p.is_file():
            problems.append(f"{rel} is missing")
            continue
        size = p.stat().st_size
        if size != want.get("bytes"):
            problems.append(f"{rel} has {size} bytes, {want.get('bytes')} were written")
            continue
        if file_sha256(p) != want.get("sha256"):
            problems.append(f"{rel} was changed after it was written (sha256 differs)")
    return problems


def _incomplete(path: Path, listing: dict) -> list[str]:
    """Files of the checkpoint its list leaves out, and parts of a checkpoint the list lacks."""
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()} - {CHECKSUMS}
    out = [f"{rel} is not in {CHECKSUMS} (the list is incomplete)" for rel in sorted(on_disk - set(listing))]
    names = set(listing)
    if sharding.SHARDING in names:
        return out + sharding.missing_files(path, names)
    out += [f"{CHECKSUMS} lists no {name}" for name in _REQUIRED if name not in names]
    if not any(n.startswith("rng-") and n.endswith(".safetensors") for n in names):
        out.append(f"{CHECKSUMS} lists no rng-*.safetensors")
    if not any(n == "adapter_model.safetensors" or n.startswith("model") and n.endswith(".safetensors")
               for n in names):
        out.append(f"{CHECKSUMS} lists no model or adapter weights")
    return out


def step_dirs(run_dir: str | Path) -> list[Path]:
    """Every ``step-N`` directory, complete or not, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def choose_checkpoint(run_dir: str | Path, *, fallback: bool = False,
                      say=lambda message: None) -> Path | None:
    """The checkpoint to resume from: the newest, verified. A damaged newest checkpoint raises
    ``UsageError`` naming what is wrong and the newest intact one, unless ``fallback``: then that
    one is used (and ``say`` tells why)."""
    dirs = step_dirs(run_dir)
    if not dirs:
        return None
    record = recorded_checksums(run_dir)
    newest, problems = dirs[-1], verify_checkpoint(dirs[-1], record.get(dirs[-1].name))
    if not problems:
        return newest
    intact = next((d for d in reversed(dirs[:-1]) if not verify_checkpoint(d, record.get(d.name))), None)
    what = f"{newest} is damaged: {'; '.join(problems[:3])}"
    if intact is None:
        raise UsageError(f"{what}; no intact checkpoint is left: train into a new out")
    if not fallback:
        raise UsageError(f"{what}; the newest intact checkpoint is {intact.name}: pass "
                         f"--fallback-checkpoint to resume from it")
    say(f"{what}; resuming from the newest intact checkpoint, {intact.name}")
    return intact


def load_checkpoint(path: str | Path, *, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore weights, optimizer, scheduler and this process's RNG from ``path``; returns state.json.

    ``model`` is the unwrapped model of the same architecture (a peft model for LoRA runs).
    """
    path = Path(path)
    try:
        if (path / sharding.SHARDING).is_file():
            sharding.load_shards(path, model, optimizer, rank)
        else:
            _load_weights(path, model)
            tensors = load_file(path / "optimizer.safetensors")
            meta = json.loads((path / "optimizer.json").read_text())
            optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta))
        state = json.loads((path / "state.json").read_text())
        scheduler.load_state_dict(state["scheduler"])
        rng_files = sorted(path.glob("rng-*.safetensors"))
        own = path / f"rng-{rank}.safetensors"
        if not rng_files:
            raise FileNotFoundError("no rng-*.safetensors")
        _load_rng(own if own.exists() else rng_files[rank % len(rng_files)])
    except UsageError:
        raise
    except Exception as e:  # safetensors, JSON, torch and a damaged state raise many types
        raise UsageError(f"{path}: cannot resume from this checkpoint: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}"[:400]) from None
    return state


def weights_mismatch(path: Path, model, world: int = 1) -> str | None:
    """Why the weights in the checkpoint ``path`` cannot be loaded into ``model`` (a LoRA adapter
    for a full model or the reverse, other names, other shapes: another rank, other target
    modules, another base), read from the files' headers without loading a tensor; ``None``
    when they fit."""
    if (path / sharding.SHARDING).is_file() or sharding.is_requested_here(world):
        return sharding.shards_mismatch(path, model, world)
    adapter = path / "adapter_model.safetensors"
    lora = hasattr(model, "peft_config")
    if adapter.exists() != lora:
        return (f"it holds {'a LoRA adapter' if adapter.exists() else 'full model weights'} and this run "
                f"trains {'a LoRA adapter' if lora else 'the full model'} (lora.enabled)")
    if lora:
        # lazy: peft loads only for a LoRA run
        from peft import get_peft_model_state_dict

        want = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
        files = [adapter]
    else:
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        files = sorted(path.glob("model*.safetensors"))
    have: dict[str, tuple] = {}
    for f in files:
        with safe_open(f, framework="pt") as h:
            have.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    unexpected = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    missing = sorted(set(want) - set(have)) if lora else []  # tied weights may be saved once
    if unexpected or shapes or missing:
        first = (f"{shapes[0]} is {list(have[shapes[0]])} there, {list(want[shapes[0]])} here" if shapes
                 else f"unexpected {unexpected[:3]}" if unexpected else f"missing {missing[:3]}")
        return (f"its weights do not fit this model ({first}; lora.r, lora.target_modules or "
                "model.path differ)")
    return None


def _load_weights(path: Path, model) -> None:
    adapter = path / "adapter_model.safetensors"
    if adapter.exists():
        # lazy: peft loads only for a LoRA run
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(adapter))
        return
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no model.safetensors or adapter_model.safetensors")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    loaded = {t.data_ptr() for name, t in model.state_dict().items() if name in weights}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if untied or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model "
                         f"(missing {untied[:5]}, unexpected {unexpected[:5]})")


def _final_whole_or_nothing(save):
    """``save_final`` inside ``whole_or_nothing`` (its temporary ``.tmp-NAME`` beside ``out``)."""
    @functools.wraps(save)
    def wrapped(out, model, *args, **kwargs):
        out = Path(out)
        with whole_or_nothing(out.with_name(f".tmp-{out.name}"), out, lambda: _bytes_of(model)):
            return save(out, model, *args, **kwargs)
    return wrapped


@_final_whole_or_nothing
def save_final(out: str | Path, model, tokenizer, template, *, merge: bool = False,
               adapter_base: str | None = None) -> Path:
    """Write the trained model as a loadable Hugging Face directory, atomically.

    ``out`` gets the weights (``save_pretrained``, safetensors), the tokenizer with the training
    template as its ``chat_template`` and a ``generation_config`` whose eos ids include the
    template's end-of-turn token(s), so generation stops at the end of the turn (DESIGN
    invariant 11). A peft model writes its adapter there; with ``merge`` the merged full model
    goes to ``out`` and the adapter to ``out/adapter``. ``adapter_base``: what the adapter's
    ``adapter_config.json`` records as ``base_model_name_or_path`` (``sftlab.model.adapters``: an
    absolute path, so the adapter loads from any directory, or a hub name).
    """
    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.chat_template = template.source
    if hasattr(model, "peft_config") and merge:
        model.save_pretrained(tmp / "adapter")
        tokenizer.save_pretrained(tmp / "adapter")
        model = model.merge_and_unload()
    model.config.use_cache = True  # training turned the KV cache off; generation wants it
    model.save_pretrained(tmp)
    for adapter_config in (tmp / "adapter_config.json", tmp / "adapter" / "adapter_config.json"):
        if adapter_base is not None and adapter_config.is_file():
            config = json.loads(adapter_config.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = adapter_base
            write_atomic(adapter_config, json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(tmp)
    generation_config(model, tokenizer, template).save_pretrained(tmp)
    publish_dir(tmp, out)
    return out


def generation_config(model, tokenizer, template):
    """The model's generation config with the template's end-of-turn ids added to ``eos_token_id``."""
    # lazy: transformers takes seconds to import
    from transformers import GenerationConfig

    gen = getattr(model, "generation_config", None)
    gen = copy.deepcopy(gen) if gen is not None else GenerationConfig.from_model_config(model.config)
    eos = gen.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for marker in template.end_of_turn:
        marker_ids = tokenizer(marker, add_special_tokens=False).input_ids
        if len(marker_ids) == 1 and marker_ids[0] not in ids:
            ids.append(marker_ids[0])
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


def _save_rng(path: Path) -> None:
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(),
               "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py_version, py_internal, py_gauss = random.getstate()
    meta = {"python": json.dumps([py_version, list(py_internal), py_gauss]),
            "numpy": json.dumps([np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])])}
    save_file(tensors, path, metadata=meta)


def _load_rng(path: Path) -> None:
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    version, internal, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
