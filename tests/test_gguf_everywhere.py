"""Every command takes a model or tokenizer as a GGUF file, or a directory holding one, as the training
config does; `sftlab convert` writes the converted model as a plain Hugging Face directory."""
from __future__ import annotations

import json

import pytest
import torch

from sftlab.cli import main
from sftlab.model.loading import load_tokenizer, model_directory
from tests.test_models import CHATML, write_tiny_gguf

pytestmark = pytest.mark.usefixtures("one_thread")

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                        {"role": "assistant", "content": f"The answer is {2 * i}."}]}
           for i in range(4)]


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    """A directory holding one tiny Llama GGUF (tokenizer and ChatML template inside), a conversation
    file and a prompt file."""
    root = tmp_path_factory.mktemp("gguf")
    (root / "model").mkdir()
    tok, model, _ = write_tiny_gguf(root / "model" / "tiny.Q4_1.gguf")
    (root / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say {w}.", "expected": "comply"}) + "\n"
                                                for w in ("hi", "yes")))
    return root


def test_every_form_names_the_same_converted_directory(gguf_dir, tmp_path):
    by_file = model_directory(gguf_dir / "model" / "tiny.Q4_1.gguf")
    assert model_directory(gguf_dir / "model") == by_file
    assert model_directory(gguf_dir / "model", gguf_file="tiny.Q4_1.gguf") == by_file
    assert (by_file / "config.json").is_file()
    tok = load_tokenizer(gguf_dir / "model")
    assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>"
    # two GGUF files: which one is meant is asked, not guessed
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (two / name).write_bytes(b"")
    with pytest.raises(Exception, match=r"holds 2 GGUF files \(a\.Q4_0\.gguf, a\.Q8_0\.gguf\); give the file"):
        load_tokenizer(two)


@pytest.mark.parametrize("form", ["directory", "file"])
def test_data_commands_take_a_gguf(gguf_dir, tmp_path, capsys, form):
    model = gguf_dir / "model" if form == "directory" else gguf_dir / "model" / "tiny.Q4_1.gguf"
    chats = str(gguf_dir / "chats.jsonl")
    assert main(["validate", chats, "--tokenizer", str(model), "--quarantine", str(tmp_path / "q.jsonl"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 4
    assert main(["inspect", chats, "--tokenizer", str(model), "--index", "1"]) == 0
    assert "[[The]][[ an]][[s]][[w]][[er]][[ is]][[ 2]][[.]][[<|im_end|>]]" in capsys.readouterr().out
    assert main(["stats", chats, "--tokenizer", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lengths"]["unit"] == "tokens"
    assert main(["check-template", "--tokenizer", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_eval_takes_a_gguf_directory(gguf_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(gguf_dir / "model"), "--prompts", str(gguf_dir / "prompts.jsonl"),
                 "--out", str(out), "--conditions", "training_template", "--max-new-tokens", "3",
                 "--no-cache", "--json"])
    assert code == 0, capsys.readouterr()
    ev = json.loads((out / "eval.json").read_text())
    assert ev["model"]["source"]["kind"] == "gguf" and ev["model"]["source"]["quantization"] == "Q4_1"
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 2


def test_convert_writes_a_plain_directory(gguf_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "hf"
    assert main(["convert", str(gguf_dir / "model" / "tiny.Q4_1.gguf"), str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "sftlab_source.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_dir / "model"), gguf_file="tiny.Q4_1.gguf",
                                                  dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok("the quick fox").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=0)
    assert main(["convert", str(gguf_dir / "model" / "tiny.Q4_1.gguf"), str(out)]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.gguf"), str(tmp_path / "x")]) == 2
