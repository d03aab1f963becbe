"""The keys of a config model: every leaf key with its type, default and field doc (``rows``: the
reference ``sftlab train --help`` and the README print), and what a user who typed an unknown key
meant (``explain``: the nested form of a dotted key written in YAML, sftlab's name for a key of
TRL, transformers, peft, Axolotl or LLaMA-Factory, or the closest key).

Example::

    >>> from sftlab.train.config import TrainConfig
    >>> next(k for k, *_ in rows(TrainConfig) if k.startswith("optim."))
    'optim.lr'
    >>> unknown_key_hint(TrainConfig, (), "learning_rate")
    "; did you mean 'optim.lr'? (learning_rate is what TRL, peft, Axolotl or LLaMA-Factory call it)"
    >>> unknown_key_hint(TrainConfig, ("optim",), "lrr")
    "; did you mean 'optim.lr'?"
"""
from __future__ import annotations

import difflib
import json
import re
import reprlib
import typing
from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["PEER_KEYS", "explain", "unknown_key_hint", "rows", "keys_of", "reference_markdown", "reference_text"]

PEER_KEYS = {
    # TRL / transformers TrainingArguments
    "learning_rate": "optim.lr", "num_train_epochs": "optim.epochs", "max_steps": "optim.max_steps",
    "per_device_train_batch_size": "optim.micro_batch_size", "gradient_accumulation_steps": "optim.grad_accum",
    "warmup_ratio": "optim.warmup_ratio", "warmup_steps": "optim.warmup_steps",
    "weight_decay": "optim.weight_decay", "lr_scheduler_type": "optim.schedule",
    "max_grad_norm": "optim.max_grad_norm", "neftune_noise_alpha": "optim.neftune_alpha",
    "max_seq_length": "encoding.max_length", "output_dir": "out", "model_name_or_path": "model.path",
    "per_device_eval_batch_size": "eval.micro_batch_size", "eval_steps": "eval.every_n_steps",
    "save_steps": "checkpointing.every_n_steps", "save_total_limit": "checkpointing.keep_last",
    "logging_steps": "log.every_n_steps", "chat_template": "template", "dataset_text_field": "data.train",
    # peft LoraConfig and its flat spellings
    "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules", "use_dora": "lora.use_dora",
    # Axolotl and LLaMA-Factory
    "base_model": "model.path", "sequence_len": "encoding.max_length", "cutoff_len": "encoding.max_length",
    "micro_batch_size": "optim.micro_batch_size", "num_epochs": "optim.epochs", "lora_rank": "lora.r",
    "lora_target": "lora.target_modules", "val_set_size": "data.eval_split",
}
"""Keys as TRL, transformers, peft, Axolotl and LLaMA-Factory users type them -> sftlab's key."""


def explain(error: dict, where: str, model: type[BaseModel]) -> str:
    """One line for a validation error of ``model``: the key, what is wrong, ``where`` it was set."""
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        parent, name = error["loc"][:-1], str(error["loc"][-1])
        return f"unknown key '{loc}' (in {where}){unknown_key_hint(model, parent, name)}"
    if error["type"] == "missing" and isinstance(error["loc"][-1], int):
        parent = ".".join(str(p) for p in error["loc"][:-1])
        return f"{parent}: item {error['loc'][-1]} is missing (in {where})"
    if error["type"] == "missing":
        return f"{loc}: required (in {where}); see `sftlab train --help` for every key"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {reprlib.repr(got)})"
    return f"{loc or 'config'}: {error['msg']}{shown} (in {where})"


def unknown_key_hint(model: type[BaseModel], parent: tuple, name: str) -> str:
    """What to write instead of the unknown key ``name`` under ``parent``: the nested form of a
    dotted key, sftlab's name for a peer's key, or the closest key of the section."""
    prefix = "".join(f"{p}." for p in parent)
    if "." in name:
        section, _, rest = name.partition(".")
        if section in keys_of(model, parent):
            known = _is_key(model, parent + tuple(name.split(".")))
            nested = f"; YAML does not read dots as nesting: nest it under `{section}:` ({section}: {{{rest}: ...}})"
            if known:
                return nested
            leaf = PEER_KEYS.get(rest) or PEER_KEYS.get(name.rsplit(".", 1)[-1]) or _closest_key(model, name)
            return nested + (f"; {prefix}{section} has no {rest} either: did you mean '{leaf}'?" if leaf
                             else f"; {prefix}{section} has no {rest} either")
    peer = PEER_KEYS.get(name)
    if peer is not None:
        return f"; did you mean '{peer}'? ({name} is what TRL, peft, Axolotl or LLaMA-Factory call it)"
    choices = keys_of(model, parent)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(choices)}"


def _is_key(model: type[BaseModel], path: tuple) -> bool:
    """Whether the dotted ``path`` names a config key or section."""
    return bool(path) and path[-1] in keys_of(model, path[:-1])


def _closest_key(model: type[BaseModel], dotted: str) -> str | None:
    """The leaf key closest to ``dotted`` over the whole config (``data.max_length`` -> ``encoding.max_length``)."""
    leaves = [key for key, *_ in rows(model)]
    name = dotted.rsplit(".", 1)[-1]
    same = [k for k in leaves if k.rsplit(".", 1)[-1] == name]
    if same:
        return same[0]
    close = difflib.get_close_matches(dotted, leaves, n=1, cutoff=0.6)
    return close[0] if close else None


def keys_of(model: type[BaseModel], parent: tuple) -> list[str]:
    """The keys of the section of ``model`` at ``parent`` (``[]`` where that is no section)."""
    for part in parent:
        sub = _section_type(model.model_fields.get(str(part)))
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _section_type(field) -> type[BaseModel] | None:
    if field is None:
        return None
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(ann))
    if typing.get_origin(ann) is typing.Union and any(typing.get_origin(a) is Literal for a in typing.get_args(ann)):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(ann))
    text = getattr(ann, "__name__", None) if typing.get_origin(ann) is None else None
    return text or re.sub(r"\bsftlab\.[\w.]+\.(?=\w+\b)", "", str(ann).replace("typing.", ""))


def rows(model: type[BaseModel], prefix: str = ""):
    """(dotted key, type, default, description) for every leaf field, in declaration order."""
    for name, field in model.model_fields.items():
        sub = _section_type(field)
        if sub is not None:
            yield from rows(sub, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else json.dumps(field.default)
        doc = " ".join((field.description or "").split())
        yield f"{prefix}{name}", _type_name(field.annotation), default, doc



def reference_markdown(model: type[BaseModel]) -> str:
    """The reference of ``model``'s keys as a Markdown table (for the README), from the field docstrings."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, doc in rows(model):
        cell = kind.replace("|", "\\|")
        lines.append(f"| `{key}` | {cell} | `{default}` | {doc} |")
    return "\n".join(lines) + "\n"


def reference_text(model: type[BaseModel]) -> str:
    """The same reference as plain text, for ``sftlab train --help``."""
    out = []
    for key, kind, default, doc in rows(model):
        out.append(f"  {key} ({kind}; default {default})\n      {doc}")
    return "\n".join(out)
