"""Helpers shared by several test modules (pytest imports this file before any test module)."""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import tempfile

import pytest
import torch

# Prepared data goes to a fresh cache per test session, never ~/.cache; subprocesses (two-process
# training, the CLI) inherit it.
os.environ["SFTLAB_CACHE"] = _CACHE = tempfile.mkdtemp(prefix="sftlab-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def hand_tokenizer():
    """A word-level tokenizer whose ids a person can write by hand."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|im_start|>": 0, "<|im_end|>": 1, "<pad>": 2, "[UNK]": 3, "\n": 4, "system": 5, "user": 6,
             "assistant": 7, "hi": 8, "hello": 9, "there": 10, " ": 11, "bye": 12, "<": 13, "|": 14, "im_start": 15,
             ">": 16}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|\s|[^\w\s]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    return tok


def _store_record(i: int, rng) -> dict:
    turns = []
    for t in range(1 + i % 3):
        turns += [{"role": "user", "content": f"question {i}.{t}: " + " ".join(rng.choice("abcdefg") for _ in range(5))},
                  {"role": "assistant", "content": f"answer {i}.{t} " + "x " * rng.randint(1, 12 + 10 * (i % 7))}]
    return {"id": f"r{i}", "slice": ["chat", "math", None][i % 3], "task": f"t{i % 4}", "messages": turns}


@pytest.fixture(scope="session")
def make_record():
    """``make_record(i, rng)``: record ``r{i}`` of 1-3 turns with answers of varied length, a slice
    and a task (the prepared-data store tests' input)."""
    return _store_record


@pytest.fixture
def hand_tok():
    """A word-level tokenizer whose ids a person can write by hand (``hand_tokenizer()``)."""
    return hand_tokenizer()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests, like the subprocesses they start (OMP_NUM_THREADS=1):
    tiny matmuls gain nothing from two, and a busy 2-core machine makes spinning threads slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the hostile-input corpus (tests/test_hostile*.py) ------------------------------------------------

HOSTILE_LIMIT_S = 120  # per case; a hang fails the case, not the whole suite


@contextlib.contextmanager
def _alarm_after(seconds: int, what: str):
    """Raise ``TimeoutError`` in the test's thread when the block runs past ``seconds`` (SIGALRM):
    a hang fails its case, not the whole suite."""
    import signal

    def expire(signum, frame):
        raise TimeoutError(f"{what} took longer than {seconds} s (a hang)")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def alarm_after():
    """``with alarm_after(seconds, what):`` fails the block with ``TimeoutError`` past ``seconds``."""
    return _alarm_after


@pytest.fixture
def time_limit():
    """The case must finish within ``HOSTILE_LIMIT_S``."""
    with _alarm_after(HOSTILE_LIMIT_S, "hostile case"):
        yield


def refusal(capsys, code: int, *names: str) -> str:
    """Exit 2 with one line on stderr, no traceback, naming each of ``names``; the line."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)
    return err


def snapshot(root) -> dict:
    """``{relative path: bytes (or the link target, or the kind)}`` of everything under ``root``:
    equal snapshots, nothing written, nothing changed."""
    import stat
    from pathlib import Path

    root, out = Path(root), {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = p.read_bytes()
        else:
            out[rel] = stat.S_IFMT(st.st_mode)
    return out


def write_config(base: dict, out, **sections):
    """``base`` (a training config as a dict, ``out`` set to ``out``) with each of ``sections``
    merged over its own section (a value that is not a mapping replaces it), written beside ``out``
    as ``<out>.yaml``; the path. Every module's config helper is this with its own ``base``."""
    import yaml

    cfg = {**base, "out": str(out)}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def save_tiny_model(path, **sizes):
    """A tiny random Llama and its tokenizer (``sftlab.demo.tiny.build_tiny`` with ``sizes``), saved
    into the directory ``path``; the path."""
    from sftlab.demo.tiny import build_tiny

    tok, model = build_tiny(**sizes)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


TINY = {"vocab_size": 400, "hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
"""The sizes of the tiny model the training tests share (``tiny_model``)."""


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A saved tiny random Llama (``TINY``: 2 layers, width 32, vocabulary 400) with its tokenizer,
    the base model of the training and training-option tests (read only: copy it to change it)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", **TINY)


def hostile_config(assets, out, **sections):
    """A two-step training config on the hostile assets (tiny model, 24 records) into ``out``."""
    return write_config({"model": {"path": str(assets / "model")}, "template": "chatml",
                         "data": {"train": [str(assets / "train.jsonl")]}, "encoding": {"max_length": 64},
                         "seed": 1, "log": {"progress": False, "trackers": []},
                         "optim": {"lr": 1e-3, "micro_batch_size": 2, "grad_accum": 1, "max_steps": 2,
                                   "warmup_steps": 1},
                         "checkpointing": {"every_n_steps": 1, "keep_last": 3}}, out, **sections)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root (``PYTHONPATH`` of the subprocesses a case starts)."""
GOOD = {"id": "g", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
"""One record every layout accepts."""


def write_jsonl(path, rows):
    """``rows`` (records, or lines as they are) written one a line into ``path``; the path."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def records(n: int) -> list[dict]:
    """``n`` two-message records ``r0``... with prompts of 1 to 97 characters."""
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": "q" * (i % 97 + 1)},
                                         {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]


def validate_json(capsys, *argv) -> tuple[int, dict]:
    """``sftlab validate ARGV --json``: the exit code and the summary it printed."""
    from sftlab.cli import main

    code = main(["validate", *map(str, argv), "--json"])
    return code, json.loads(capsys.readouterr().out)


def copy_run(run, tmp_path):
    """A copy of the run directory ``run`` at ``tmp_path/run`` (a case changes its copy only)."""
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def flip_byte(path) -> None:
    """Flip the bits of the middle byte of the file ``path``."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def hostile_assets(tmp_path_factory):
    """A tiny model (vocabulary 300) with its tokenizer, another of vocabulary 400 and width 24,
    24 arithmetic conversations (train.jsonl, and other.jsonl: the same in reverse order) and a policy."""
    d = tmp_path_factory.mktemp("hostile_assets")
    rng = random.Random(0)
    rows = []
    for i in range(24):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"id": f"c{i}", "messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                                 {"role": "assistant", "content": f"It is {a + b}."}]})
    write_jsonl(d / "train.jsonl", rows)
    write_jsonl(d / "other.jsonl", rows[::-1])
    for name, vocab, hidden in (("model", 300, 16), ("model2", 400, 24)):
        save_tiny_model(d / name, vocab_size=vocab, hidden=hidden, layers=1, heads=2, kv_heads=1, intermediate=32)
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "sftlab", "data", "policy_example.yaml"),
                d / "policy.yaml")
    return d


@pytest.fixture(scope="session")
def hostile_base_run(hostile_assets, tmp_path_factory):
    """A finished two-step run of the full model with a checkpoint after each step (read only:
    a case changes a copy, ``hostile.copy_run``)."""
    from sftlab.cli import main

    run = tmp_path_factory.mktemp("hostile_base") / "full"
    assert main(["train", str(hostile_config(hostile_assets, run))]) == 0
    return run


@pytest.fixture(scope="session")
def hostile_runs(hostile_assets, hostile_base_run, tmp_path_factory):
    """``{"full": RUN, "lora": RUN}``: finished two-step runs (a checkpoint after each step),
    the full model (``hostile_base_run``) and a LoRA adapter of rank 4."""
    from sftlab.cli import main

    lora = tmp_path_factory.mktemp("hostile_runs") / "lora"
    assert main(["train", str(hostile_config(hostile_assets, lora, lora={"enabled": True, "r": 4}))]) == 0
    return {"full": hostile_base_run, "lora": lora}


@pytest.fixture
def hostile(time_limit):
    """The corpus's helpers, the case under ``time_limit``: ``refusal``, ``snapshot``, ``config``
    (``hostile_config``), ``write_jsonl``, ``records``, ``validate_json``, ``copy_run``, ``flip_byte``,
    ``good`` (``GOOD``), ``root`` (``ROOT``) and ``limit_s`` (``HOSTILE_LIMIT_S``)."""
    from types import SimpleNamespace

    return SimpleNamespace(refusal=refusal, snapshot=snapshot, config=hostile_config, write_jsonl=write_jsonl,
                           records=records, validate_json=validate_json, copy_run=copy_run, flip_byte=flip_byte,
                           good=GOOD, root=ROOT, limit_s=HOSTILE_LIMIT_S)
