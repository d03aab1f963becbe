"""LoRA targets a model lacks are named with the layers it has: GPT-2's Conv1D layers too."""
import warnings

import pytest

from sftlab.errors import UsageError
from sftlab.model.adapters import add_lora
from sftlab.train.config import LoraConfig


def test_targets_a_gpt2_model_lacks_name_its_conv1d_layers_and_peft_usual_choice():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(UsageError, match=r"layers that take adapters: c_attn, c_fc, c_proj; set lora\.target_modules "
                                         r"to some of them or to all-linear \(peft's usual choice for gpt2: \['c_attn'\]\)"):
        add_lora(model, LoraConfig(enabled=True))  # the default targets are Llama's q/k/v/o
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # GPT-2's transposed Conv1D weights: fan_in_fan_out set, no warning
        wrapped = add_lora(model, LoraConfig(enabled=True, target_modules=["c_attn"]))
    trained = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and "c_attn" in n for n in trained)
