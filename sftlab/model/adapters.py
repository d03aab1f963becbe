"""LoRA adapter directories: the base model they name, and loading them from any directory.

``RUN/final`` of a LoRA run holds the adapter only; its ``adapter_config.json`` names the base
model in ``base_model_name_or_path``. peft and transformers resolve that name against the
*current* directory (``AutoPeftModelForCausalLM.from_pretrained("RUN/final")``), so sftlab records
the absolute path of the directory the base was loaded from: the model directory itself, or for
a GGUF base its converted copy in sftlab's cache (``~/.cache/sftlab/models/<name>-<hash>``),
which is a plain Hugging Face directory peft can load. A hub name is recorded as given. The run
directory can then be moved or copied anywhere on the machine and still loads, in sftlab and in
plain peft.

When the recorded base is gone (the base moved, the run was copied to another machine, the cache
was cleared), :func:`resolve_base` still finds it where it can: a path relative to the adapter
directory (what earlier sftlab versions recorded), or, for a GGUF base, the GGUF file the run's
manifest names, converted again. Otherwise the error names the path and how to point at the base.

    >>> recorded_base("org/model")
    'org/model'
"""
from __future__ import annotations

import json
import os
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A directory with a peft adapter and no full model of its own."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def recorded_base(loaded_from: str) -> str:
    """What an adapter records as its base: the absolute path of a local directory, else the hub name."""
    path = Path(loaded_from)
    return str(path.resolve()) if path.is_dir() else loaded_from


def resolve_base(adapter_dir: str | os.PathLike) -> str:
    """The base model of the adapter in ``adapter_dir``: an existing directory, or a hub name.

    Raises ``FileNotFoundError`` naming the recorded base and how to point at it when it is gone.
    """
    from sftlab.model.loading import _looks_like_hub_name

    adapter_dir = Path(adapter_dir)
    config = adapter_dir / ADAPTER_CONFIG
    recorded = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    path = Path(recorded)
    for candidate in ([path] if path.is_absolute() else [adapter_dir / path, path]):
        if candidate.is_dir():
            return str(candidate.resolve())
    rebuilt = _rebuild_gguf_base(adapter_dir)
    if rebuilt is not None:
        return rebuilt
    if not path.is_absolute() and _looks_like_hub_name(recorded):
        return recorded
    raise FileNotFoundError(
        f"a LoRA adapter whose base model {recorded!r} is not there (moved or deleted?): put the base "
        f"model back there, or write where it is now as base_model_name_or_path in {config}")


def _rebuild_gguf_base(adapter_dir: Path) -> str | None:
    """For a run trained on a GGUF file whose converted copy is gone: convert the GGUF file named by
    ``RUN/run.json`` (``RUN`` two levels up from ``RUN/final``) again, when it is still there."""
    manifest = adapter_dir.parent / "run.json"
    try:
        model = json.loads(manifest.read_text(encoding="utf-8")).get("model") or {}
    except (OSError, ValueError):
        return None
    base, gguf_file = model.get("base"), model.get("gguf_file")
    if not (isinstance(base, str) and isinstance(gguf_file, str)):
        return None
    from sftlab.model.loading import _gguf_path, convert_gguf

    try:
        return str(convert_gguf(_gguf_path(base, gguf_file)).resolve())
    except FileNotFoundError:
        return None


def load_adapter_model(adapter_dir: str | os.PathLike, **base_kwargs):
    """``(model, tokenizer)``: the base model (:func:`resolve_base`, loaded with
    ``load_base_model(**base_kwargs)``) with the adapter merged in, and the adapter directory's
    tokenizer (it carries the training template and any role tokens added in training)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from sftlab.model.loading import load_base_model
    from sftlab.tokens.role_tokens import grow_embeddings

    adapter_dir = Path(adapter_dir)
    base = resolve_base(adapter_dir)
    model, _ = load_base_model(base, **base_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=base_kwargs.get("trust_remote_code", False))
    grow_embeddings(model, len(tokenizer))  # role tokens added in training
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    model.sftlab_source = {"kind": "lora_adapter", "path": str(adapter_dir), "base": base}
    return model, tokenizer
