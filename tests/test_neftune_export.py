"""NEFTune noise against the paper's scale and transformers' hook, LoRA on all-linear with DoRA, and
`sftlab export --merge`: a plain directory transformers loads and generates from, with what vLLM and
llama.cpp's converter read (architectures, chat template, stop tokens)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from sftlab.cli import main
from sftlab.demo.tiny import build_tiny
from sftlab.model.neftune import activate_neftune, example_lengths
from sftlab.tokens.packing import PackedRow, collate

pytestmark = pytest.mark.usefixtures("one_thread")


def _embeddings(model, batch):
    """The embedding output the decoder sees in one forward (after every hook)."""
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    handle.remove()
    return seen[0]


def test_neftune_noise_has_the_papers_scale_per_packed_example():
    tok, model = build_tiny(vocab_size=300, hidden=64)
    d, alpha = model.config.hidden_size, 5.0
    ids = torch.randint(10, 290, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    row = PackedRow.from_tokens(ids[:40] + ids[40:64], [1.0] * 64, lengths=[40, 24])
    batch = collate([row], pad_id=0, max_length=72)  # 8 padding positions
    clean = model.get_input_embeddings()(batch["input_ids"]).detach()
    activate_neftune(model, alpha)
    model.eval()
    torch.testing.assert_close(_embeddings(model, batch), clean, rtol=0, atol=0)  # eval: no noise
    model.train()
    torch.manual_seed(1)
    noise = (_embeddings(model, batch) - clean)[0]
    for start, length in ((0, 40), (40, 24)):  # each example: uniform in +-alpha/sqrt(L d)
        scale = alpha / math.sqrt(length * d)
        part = noise[start:start + length]
        assert part.abs().max().item() <= scale * (1 + 1e-5)
        assert part.abs().max().item() >= 0.99 * scale
        assert part.pow(2).mean().item() == pytest.approx(scale ** 2 / 3, rel=0.06)  # var of U(-s, s)
    assert example_lengths(batch["position_ids"])[0, :64].tolist() == [40] * 40 + [24] * 24


def test_one_unpacked_example_gets_exactly_transformers_neftune_noise():
    from transformers.integrations.neftune import neftune_post_forward_hook

    tok, model = build_tiny(vocab_size=300, hidden=64)
    row = PackedRow.from_tokens(list(range(20, 50)), [1.0] * 30)
    batch = collate([row], pad_id=0)
    emb = model.get_input_embeddings()
    emb.neftune_noise_alpha = 7.0
    handle = emb.register_forward_hook(neftune_post_forward_hook)
    model.train()
    torch.manual_seed(3)
    reference = _embeddings(model, batch)
    handle.remove()
    activate_neftune(model, 7.0)
    torch.manual_seed(3)
    torch.testing.assert_close(_embeddings(model, batch), reference, rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run on every linear layer with DoRA and NEFTune, trained for 3 steps."""
    root = tmp_path_factory.mktemp("export")
    tok, model = build_tiny(vocab_size=400, hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    rows = [{"messages": [{"role": "user", "content": f"Say {w} please"}, {"role": "assistant", "content": f"{w}!"}]}
            for w in ("hello", "yes", "no", "fox", "dog", "the answer")]
    (root / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"path": str(root / "base")}, "template": "chatml", "data": {"train": [str(root / "chats.jsonl")]},
           "encoding": {"max_length": 64}, "out": str(root / "run"), "log": {"progress": False, "trackers": []},
           "optim": {"lr": 5e-2, "max_steps": 3, "micro_batch_size": 2, "warmup_steps": 0, "neftune_alpha": 5.0},
           "lora": {"enabled": True, "r": 2, "alpha": 4, "target_modules": "all-linear", "use_dora": True}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(root / "cfg.yaml")]) == 0
    return root


def test_all_linear_dora_and_neftune_are_trained_and_recorded(lora_run):
    adapter = json.loads((lora_run / "run" / "final" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    assert {m.rsplit(".", 1)[-1] for m in adapter["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}  # all-linear: every linear layer but lm_head
    manifest = json.loads((lora_run / "run" / "run.json").read_text())
    assert manifest["model"]["neftune"]["alpha"] == 5.0 and manifest["config"]["optim"]["neftune_alpha"] == 5.0
    assert manifest["model"]["lora"]["use_dora"] is True


def test_export_merge_writes_a_directory_others_load(lora_run, tmp_path, capsys):
    import gguf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    assert main(["export", str(lora_run / "run"), str(out), "--merge"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names and "adapter_config.json" not in names
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["use_cache"] is True
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    final = AutoTokenizer.from_pretrained(lora_run / "run" / "final")
    assert tok_config["chat_template"] == final.chat_template and "<|im_end|>" in tok_config["chat_template"]
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    end_of_turn = final.convert_tokens_to_ids("<|im_end|>")
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])
    # llama.cpp's converter reads the chat template and eos through gguf-py's SpecialVocab
    special = gguf.SpecialVocab(out, load_merges=True)
    assert special.chat_template == final.chat_template and special.special_token_ids["eos"] == end_of_turn

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(lora_run / "base", dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, lora_run / "run" / "final").eval()
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say hello please"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, adapted(**ids).logits, rtol=1e-4, atol=1e-5)
    generated = merged.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.input_ids.shape[1]
    assert main(["export", str(lora_run / "run"), str(out), "--merge"]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err


def test_export_without_merge_records_a_base_that_loads_from_anywhere(lora_run, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "adapter"
    assert main(["export", str(lora_run / "run"), str(out)]) == 0
    monkeypatch.chdir(tmp_path)
    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"


def test_neftune_runs_resume_to_the_same_weights(lora_run, tmp_path):
    """The noise is drawn from torch's generator, which checkpoints keep: a run resumed from its
    step-2 checkpoint ends with the weights of the run that went straight on."""
    import shutil

    from safetensors.torch import load_file

    from sftlab.train.config import load_config
    from sftlab.train.loop import train

    settings = [f"model.path={lora_run / 'base'}", f"data.train=[{lora_run / 'chats.jsonl'}]", "template=chatml",
                "encoding.max_length=64", "log.progress=false", "log.trackers=[]", "optim.max_steps=4",
                "optim.micro_batch_size=2", "optim.lr=5e-2", "optim.warmup_steps=0", "optim.neftune_alpha=5",
                "checkpointing.every_n_steps=2", "checkpointing.keep_last=2"]
    assert train(load_config(None, [*settings, f"out={tmp_path / 'straight'}"])) == 0
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "final")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-4")
    assert train(load_config(None, [*settings, f"out={tmp_path / 'resumed'}"]), resume=True,
                 allow_changes=True) == 0
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untouched = load_file(lora_run / "base" / "model.safetensors")
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], untouched["model.layers.0.mlp.up_proj.weight"])
