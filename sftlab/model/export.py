"""Plain Hugging Face model directories for other tools: a converted GGUF, or a run's model.

What is written is what transformers, vLLM and llama.cpp's ``convert_hf_to_gguf.py`` read:
``config.json`` (with ``architectures``), safetensors weights, ``tokenizer.json`` and
``tokenizer_config.json`` with the ``chat_template`` written inline (older transformers and
llama.cpp's ``gguf.SpecialVocab`` read it there; ``chat_template.jinja`` is kept beside it for
transformers >= 4.43) and a ``tokenizer_class`` every transformers version knows, and a
``generation_config.json`` whose ``eos_token_id`` lists the stop tokens training taught (the
end-of-turn token of the training template, DESIGN invariant 11).

Example::

    >>> export_run("runs/a", "exported", merge=True)         # doctest: +SKIP
    PosixPath('exported')
    >>> convert_to_directory("m.Q4_1.gguf", "m-hf")            # doctest: +SKIP
    PosixPath('m-hf')
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.files import publish_dir, write_atomic
# The loader (Jinja, the tokens stage) and the manifest (pydantic) are imported where used, marked
# lazy: `sftlab convert` imports this module when the CLI starts.

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""transformers 5 writes ``TokenizersBackend``, a class older versions (and vLLM pinned to them) lack;
both load a ``tokenizer.json`` the same way."""


def portable_tokenizer_config(directory: str | os.PathLike) -> None:
    """Write the chat template into ``tokenizer_config.json`` and give it a tokenizer class every
    transformers version knows (in place)."""
    directory = Path(directory)
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    jinja = directory / "chat_template.jinja"
    if "chat_template" not in config and jinja.is_file():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    write_atomic(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: exists and is not empty; give a new directory")


def convert_to_directory(gguf_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A plain Hugging Face directory at ``out`` from a GGUF file (converted once into the model
    cache, as training does, then copied), with its provenance (``sftlab_source.json``)."""
    from sftlab.model.loading import model_directory  # lazy: see the note at the imports

    out, gguf_path = Path(out), Path(gguf_path)
    _refuse_existing(out)
    if gguf_path.is_dir():
        source = model_directory(gguf_path)
        if not (source / "sftlab_source.json").is_file():
            raise UsageError(f"{gguf_path}: a Hugging Face directory already, not a GGUF file")
    elif gguf_path.is_file():
        source = model_directory(gguf_path)
    else:
        raise UsageError(f"{gguf_path}: no such GGUF file")
    tmp = _staging(out)
    shutil.copytree(source, tmp)
    portable_tokenizer_config(tmp)
    return publish_dir(tmp, out)


TRAINING_STATE = ("optimizer.safetensors", "optimizer.json", "optimizer-shard-*", "rng-*.safetensors",
                  "state.json", "checksums.json", "run.json", "sharding.json")
"""What a checkpoint holds besides its model (``sftlab.train.checkpoint``): not exported."""


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, merge: bool = False,
               base: str | None = None) -> Path:
    """``RUN/final`` as a plain directory at ``out``.

    A full model (or one merged at save time) is copied. A LoRA adapter is merged into its base
    with ``merge`` (peft's ``merge_and_unload``), the base being ``base`` or what the adapter and
    ``run.json`` record; without ``merge`` the adapter is copied with its base recorded as an
    absolute path or hub name, so it loads from anywhere.
    """
    run, out = Path(run), Path(out)
    final = run / "final" if (run / "final").is_dir() else run
    if not (final / "config.json").is_file() and not (final / "adapter_config.json").is_file():
        raise UsageError(f"{run}: no trained model (expected RUN/final with config.json or adapter_config.json)")
    _refuse_existing(out)
    tmp = _staging(out)
    adapter = (final / "adapter_config.json").is_file() and not (final / "config.json").is_file()
    if adapter and merge:
        _write_merged(final, run, tmp, base)
    else:  # a checkpoint's training state stays behind: the export is a model, not a resumable run
        shutil.copytree(final, tmp, ignore=shutil.ignore_patterns(*TRAINING_STATE))
        if adapter:
            config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = str(adapter_base_path(final, run, base)[0])
            write_atomic(tmp / "adapter_config.json", json.dumps(config, indent=2) + "\n")
    portable_tokenizer_config(tmp)
    return publish_dir(tmp, out)


def adapter_base_path(final: Path, run: Path, base: str | None = None) -> tuple[str, str | None]:
    """``(base model, gguf file or None)`` of the adapter in ``final``: ``base`` when given (with
    the run's ``model.gguf_file``), else the directory or hub name the adapter records, as
    ``sftlab.model.loading.resolve_base`` finds it (a GGUF base: its converted copy)."""
    from sftlab.manifest import read_run_json  # lazy: see the note at the imports
    from sftlab.model.loading import resolve_base  # lazy: see the note at the imports

    if base is not None:
        model = ((read_run_json(run, missing_ok=True) or {}).get("config") or {}).get("model") or {}
        return base, model.get("gguf_file")
    try:
        return resolve_base(final), None
    except FileNotFoundError as e:
        raise UsageError(f"{e}; or give the base with --base") from None


def _write_merged(final: Path, run: Path, tmp: Path, base: str | None) -> None:
    # lazy: peft and transformers load only when a LoRA run is exported merged
    from peft import PeftModel
    from transformers import AutoTokenizer, GenerationConfig

    from sftlab.model.loading import load_base_model  # lazy: see the note at the imports

    name, gguf_file = adapter_base_path(final, run, base)
    try:
        model, base_tokenizer = load_base_model(name, gguf_file=gguf_file)
    except (OSError, ValueError) as e:
        raise UsageError(f"{final}: cannot load the adapter's base {name}: {' '.join(str(e).split())[:300]}; "
                         "give it with --base") from None
    tokenizer = AutoTokenizer.from_pretrained(str(final))  # role tokens added and template installed
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        _add_role_tokens_as_training_did(run, model, base_tokenizer)
    merged = PeftModel.from_pretrained(model, str(final)).merge_and_unload()
    merged.config.use_cache = True
    if (final / "generation_config.json").is_file():
        merged.generation_config = GenerationConfig.from_pretrained(str(final))
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if (final / "generation_config.json").is_file():
        shutil.copy2(final / "generation_config.json", tmp / "generation_config.json")


def _add_role_tokens_as_training_did(run: Path, model, base_tokenizer) -> None:
    """Grow the base's embeddings by the role tokens training added, initialised as training did
    (``add_role_tokens``), so the adapter sits on the same base it was trained on."""
    from sftlab.manifest import read_run_json  # lazy: see the note at the imports
    from sftlab.model.loading import load_tokenizer  # lazy: see the note at the imports
    from sftlab.tokens.role_tokens import add_role_tokens  # lazy: see the note at the imports
    from sftlab.tokens.templates import get_template  # lazy: see the note at the imports

    config = (read_run_json(run, missing_ok=True) or {}).get("config") or {}
    tokenizer = load_tokenizer(config["tokenizer"], what="tokenizer=") if config.get("tokenizer") else base_tokenizer
    add_role_tokens(tokenizer, model, get_template(config.get("template"), tokenizer))
