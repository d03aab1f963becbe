"""LoRA adapters: setting one up on a base model for training, and what an adapter directory records.

:func:`add_lora` wraps a base model with peft's LoRA (or DoRA) layers as the config's ``lora``
section says. ``RUN/final`` of a LoRA run then holds the adapter only; its ``adapter_config.json``
names the base model in ``base_model_name_or_path``. peft and transformers resolve that name
against the *current* directory (``AutoPeftModelForCausalLM.from_pretrained("RUN/final")``), so
sftlab records the absolute path of the directory the base was loaded from (:func:`recorded_base`):
the model directory itself, or for a GGUF base its converted copy in sftlab's cache
(``~/.cache/sftlab/models/<name>-<hash>``), which is a plain Hugging Face directory peft can load.
A hub name is recorded as given. The run directory can then be moved or copied anywhere on the
machine and still loads, in sftlab and in plain peft. Loading an adapter directory, and finding
its base when the recorded one is gone, is ``sftlab.model.loading``'s (``resolve_base``,
``load_adapter_model``).

    >>> recorded_base("org/model")
    'org/model'
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from sftlab.errors import UsageError

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A directory with a peft adapter and no full model of its own."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def recorded_base(loaded_from: str) -> str:
    """What an adapter records as its base: the absolute path of a local directory, else the hub name."""
    path = Path(loaded_from)
    return str(path.resolve()) if path.is_dir() else loaded_from


def add_lora(model, lora):
    """``model`` wrapped with trainable LoRA layers as ``lora`` (a config's ``lora`` section: ``r``,
    ``alpha``, ``dropout``, ``use_dora``, ``target_modules``) says; the base weights stay frozen.
    Target modules the model does not have are a ``UsageError`` listing its linear layers."""
    import torch  # lazy: torch and peft load only when a model is trained
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D  # lazy, as torch and peft above

    targets = lora.target_modules  # "all-linear" goes to peft as peft spells it
    # GPT-2's Conv1D stores its weight transposed: peft needs fan_in_fan_out (it warns and sets it)
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                        use_dora=lora.use_dora, target_modules=targets if isinstance(targets, str) else list(targets),
                        fan_in_fan_out=conv1d)
    try:
        with warnings.catch_warnings():
            # peft reads the deprecated is_gradient_checkpointing; the warning says nothing to users
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:  # peft: target modules not found in the base model
        raise UsageError(f"lora.target_modules={lora.target_modules}: {str(e).splitlines()[0][:200]}; "
                         f"{adaptable_layers(model)}") from None


def adaptable_layers(model) -> str:
    """What to tell a user whose ``lora.target_modules`` the model lacks: the names of its layers
    that take adapters (linear layers and GPT-2's ``Conv1D``, the output head left out, as
    ``all-linear`` leaves it out) and peft's usual choice for the architecture."""
    import torch  # lazy, as in add_lora
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as USUAL
    from transformers.pytorch_utils import Conv1D  # lazy, as torch and peft above

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                    if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head})
    kind = getattr(getattr(model, "config", None), "model_type", None)
    usual = USUAL.get(kind)
    return (f"this model's layers that take adapters: {', '.join(names[:12]) or 'none'}; set lora.target_modules "
            f"to some of them or to all-linear" + (f" (peft's usual choice for {kind}: {usual})" if usual else ""))
