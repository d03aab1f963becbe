"""The run manifest: a typed, versioned record of everything that produced an artifact.

Every stage that writes into a run directory merges its own section into ``RUN/run.json``
with :func:`update_manifest`; the file is validated against :class:`RunManifest` on every
write and replaced atomically, so a reader never sees half a manifest.

Merging is one level deep: a dict section is merged key by key into the section already
on disk, anything else (lists, numbers, strings) replaces it::

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = update_manifest(d, kind="train", masking={"mode": "all_turns", "max_length": 512})
    >>> m = update_manifest(d, masking={"trained_tokens": 40}, seed=3)
    >>> m["masking"], m["seed"]
    ({'mode': 'all_turns', 'max_length': 512, 'trained_tokens': 40}, 3)
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab import __version__
from sftlab.errors import UsageError
from sftlab.files import read_input, write_atomic
from sftlab.fingerprints import canonical_json, config_hash, tokenizer_fingerprint

__all__ = ["RunManifest", "ManifestError", "update_manifest", "read_manifest", "read_run_json", "diff_manifests",
           "environment", "canonical_json", "config_hash", "tokenizer_fingerprint"]

SCHEMA_VERSION = 2
"""2: a split's data version is ``records_sha256`` (schema 1 called it ``sha256``, and segments'
``data_sha256``); :func:`read_run_json` reads schema 1 under the new names."""
MANIFEST_NAME = "run.json"
SOFTWARE_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft",
                     "safetensors")


class ManifestError(ValueError):
    """A run.json that cannot be read or does not match the schema (the message says where)."""


class _Section(BaseModel):
    """Sections grow as sftlab grows: unknown keys inside a section are kept."""
    model_config = ConfigDict(extra="allow")


class SplitData(_Section):
    records_sha256: str | None = None
    """The split's data version: the prepared store's hash of its records (``store.json``'s
    ``records_sha256``). Every record read is hashed with its line number: an accepted one in its
    normalised form (``Conversation.to_dict()``), one quarantined while loading as its raw content;
    the hashes are combined per chunk, per input file and over the inputs in order. The same
    records in the same files give the same hash; a record edited, added, dropped or moved changes
    it. ``sftlab manifest --diff`` and a resume compare it (``data.splits.SPLIT.records_sha256``)."""
    records: int | None = None
    """Records read; records = accepted + quarantined (nothing lost)."""
    accepted: int | None = None
    quarantined: int | None = None
    files: list[dict[str, Any]] = Field(default_factory=list)
    """Per input file: ``{"path", "records", "accepted", "quarantined"}`` as ``sftlab validate`` reports."""


class DataSection(_Section):
    splits: dict[str, SplitData] = Field(default_factory=dict)
    """Split name (``train``, ``heldout``, ...) -> its version and counts."""


class TemplateSection(_Section):
    name: str | None = None
    """Built-in template name (``chatml``...) or ``tokenizer`` for the tokenizer's own Jinja template."""
    fingerprint: str | None = None
    """sha256 of the template source, its role tokens and the tokenizer."""
    role_format: str | dict[str, Any] | None = None
    control_tokens: list[str] | None = None
    end_of_turn: str | list[str] | None = None


class TokenizerSection(_Section):
    name_or_path: str | None = None
    sha256: str | None = None
    """See ``tokenizer_fingerprint``: backend JSON + special tokens + chat template."""
    vocab_size: int | None = None
    added_tokens: dict[str, int] | list[Any] | None = None


class PolicySection(_Section):
    version: str | None = None
    sha256: str | None = None
    path: str | None = None


class MaskingSection(_Section):
    mode: str | None = None
    max_length: int | None = None
    last_turn_only: bool | None = None
    reasoning: str | None = None
    """``encoding.reasoning``: ``keep``, ``mask`` or ``drop``."""
    trained_tokens: int | None = None
    total_tokens: int | None = None
    trained_token_share: float | None = None
    turns: str | None = None
    """``encoding.turns``: ``whole`` or ``expand``."""
    overflow: str | None = None
    """``encoding.overflow``: ``drop`` or ``split``."""
    expanded_examples: int | None = None
    """Extra examples made by ``turns: expand`` (one per re-rendered trained turn)."""
    expanded_tokens: int | None = None
    """Their tokens: what the expansion costs over one example per record."""
    overflow_examples: int | None = None
    """Extra examples made by ``overflow: split`` from exchanges truncation dropped."""
    overflow_tokens: int | None = None
    lost_trained_tokens: int | None = None
    """Trained tokens dropped by ``max_length`` truncation and in no example."""
    heldout_encoding: dict[str, Any] | None = None
    """The encoding options training applied (``max_length`` as in effect, ``last_turn_only``,
    ``turns``, ``overflow``); ``sftlab eval`` of ``RUN/final`` encodes held-out data with them."""


class PackingSection(_Section):
    mode: str | None = None
    """``packed`` (best-fit-decreasing) or ``padded``."""
    max_length: int | None = None
    efficiency: float | None = None
    """Example tokens / (rows x max_length)."""
    rows: int | None = None


class MixtureSection(_Section):
    sampling: dict[str, Any] | None = None
    """Sampling weights per slice (explicit or from a temperature over slice sizes)."""
    loss_weights: dict[str, float] | None = None
    realised: Any = None
    """Realised mixture per epoch, e.g. ``[{"epoch": 0, "slices": {"math": 0.4, ...}}]``."""


class DecoderSetting(_Section):
    purpose: str | None = None
    """What the generation was for (``eval``, ``gen_eval``, ``reference``...)."""
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int | None = None


class ModelSection(_Section):
    base: str | None = None
    dtype: str | None = None
    lora: dict[str, Any] | None = None
    notes: str | list[str] | None = None
    """For example ``"dequantised from GGUF Q4_1"``."""


class SoftwareSection(_Section):
    sftlab: str | None = None
    git_commit: str | None = None
    """Commit of the sftlab checkout; ``None`` when sftlab is not running from a git checkout."""
    git_dirty: bool | None = None
    python: str | None = None


class HardwareSection(_Section):
    platform: str | None = None
    cpu: str | None = None
    cores: int | None = None
    memory_gib: float | None = None
    gpus: list[dict[str, Any]] = Field(default_factory=list)


class RunManifest(BaseModel):
    """``RUN/run.json``. Every section is optional; unknown top-level keys are rejected."""
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    """2; a schema-1 file is read with its fields renamed (:func:`read_run_json`) and keeps its 1."""
    kind: str | None = None
    """What wrote the run: ``train``, ``eval``, ``demo``..."""
    created: str | None = None
    """UTC ISO-8601 time of the first write."""
    data: DataSection | None = None
    template: TemplateSection | None = None
    tokenizer: TokenizerSection | None = None
    policy: PolicySection | None = None
    masking: MaskingSection | None = None
    packing: PackingSection | None = None
    mixture: MixtureSection | None = None
    decoding: list[DecoderSetting] | None = None
    model: ModelSection | None = None
    config: dict[str, Any] | None = None
    config_sha256: str | None = None
    seed: int | None = None
    software: SoftwareSection | None = None
    hardware: HardwareSection | None = None
    artifacts: dict[str, Any] | None = None
    """Artifact name -> path relative to the run directory (``{"report": "report.html"}``)."""
    outcome: dict[str, Any] | None = None
    """What the run gave, so ``manifest --diff`` shows changed results beside changed inputs:
    ``train`` (steps, why it stopped, final train loss, last eval loss per slice, exit code and the
    rule that decided it) and ``eval`` (each gate's metric, slice, value and whether it passed)."""
    timing: dict[str, Any] | None = None
    """Wall-clock seconds per phase of training (``phases_s``: load, prepare, train, eval, save, summed
    over every invocation of the run; ``this_invocation_s``)."""
    throughput: dict[str, Any] | None = None
    """How the MFU in ``metrics.jsonl`` is computed: the peak FLOP/s and its source (datasheet or
    measured), the model's matmul weights, layers and hidden size (``sftlab.train.throughput``)."""
    segments: list[dict[str, Any]] | None = None
    """Training segments, one per start or resume: ``from_step``, ``to_step``, ``config_sha256``,
    ``records_sha256`` per split (each split's data version), template and tokenizer fingerprints, and ``changed`` (the keys a
    resume with ``--allow-changes`` changed)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with only the fields that were given (explicit nulls kept)."""
        return self.model_dump(mode="json", exclude_unset=True) | {"schema_version": self.schema_version}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout sftlab runs from; (None, None) for an installed copy."""
    package = Path(__file__).resolve().parent
    # The package file must be tracked: an installed copy inside some other repository
    # (a venv under a project) must not report that repository's commit.
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package) is None:
        return None, None
    commit = _git(["rev-parse", "HEAD"], package)
    status = _git(["status", "--porcelain", "--untracked-files=no"], package)
    return (commit.strip() if commit else None), (bool(status.strip()) if status is not None else None)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpus() -> list[dict[str, Any]]:
    try:
        # lazy: torch takes seconds to import; this module is also used where no model runs
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                     "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda})
    return gpus


def environment() -> dict[str, Any]:
    """The ``software`` and ``hardware`` sections for this process.

    Returns ``{"software": {...}, "hardware": {...}}``, ready for ``update_manifest(run, **env)``.
    Package versions come from installed metadata (``None`` when not installed).
    """
    commit, dirty = _git_state()
    software: dict[str, Any] = {"sftlab": __version__, "git_commit": commit, "git_dirty": dirty,
                                "python": platform.python_version()}
    for name in SOFTWARE_PACKAGES:
        try:
            software[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            software[name] = None
    try:
        # lazy: psutil is read once, when the environment is recorded
        import psutil
        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory = None
    hardware = {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                "memory_gib": memory, "gpus": _gpus()}
    return {"software": software, "hardware": hardware}


def manifest_path(path_or_dir: str | os.PathLike) -> Path:
    """``RUN/run.json`` for a run directory; the path itself for a file."""
    p = Path(path_or_dir)
    return p / MANIFEST_NAME if p.is_dir() else p


def validate_manifest(data: Any, source: str = "run.json") -> RunManifest:
    """Validate a manifest dict; ``ManifestError`` names the file and every bad field."""
    try:
        return RunManifest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '<top>'}: {err['msg']}"
                             for err in e.errors())
        raise ManifestError(f"{source}: invalid run manifest (schema version {SCHEMA_VERSION}): "
                            f"{problems}") from None


MAX_MANIFEST_BYTES = 256 << 20


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_input(path, max_bytes=MAX_MANIFEST_BYTES).decode("utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); "
                            f"fix or remove the file") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}); fix or remove the file") from None
    except (ValueError, RecursionError):  # a number of 4,300+ digits, nesting too deep to parse
        raise ManifestError(f"{path}: not a JSON manifest sftlab can read (too deep or too large "
                            "a number); fix or remove the file") from None


def read_run_json(path_or_dir: str | os.PathLike, *, missing_ok: bool = False,
                  damaged_ok: bool = False) -> dict[str, Any] | None:
    """``RUN/run.json`` (or a manifest file given directly, such as a checkpoint's copy) as a dict:
    the one reader of run manifests. A schema-1 file comes back with schema 2's names
    (:func:`upgrade`); the schema itself is checked by :func:`read_manifest`. The file is read as
    the command's input (``sftlab.files.open_input``), so no ``--out`` of the command replaces it;
    :func:`update_manifest` writes it as the run's own.

    No file: ``None`` with ``missing_ok``, else ``FileNotFoundError``. Not JSON, or not a JSON
    object: ``None`` with ``damaged_ok``, else ``ManifestError`` (one line naming the file).

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> read_run_json(d, missing_ok=True) is None
        True
        >>> _ = open(f"{d}/run.json", "w").write('{"schema_version": 1, "data": {"splits": {"train": {"sha256": "ab"}}}}')
        >>> read_run_json(d)["data"]
        {'splits': {'train': {'records_sha256': 'ab'}}}
    """
    path = manifest_path(path_or_dir)
    if not path.is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path}: no run manifest (expected run.json written by sftlab)")
    try:
        value = _load_json(path)
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected a JSON object at the top level")
    except (ManifestError, OSError, UsageError):
        if damaged_ok:
            return None
        raise
    return upgrade(value)


def upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 manifest with schema 2's names: each split's ``sha256`` is its
    ``records_sha256`` (schema 1 recorded the store's records hash under that name) and each
    segment's ``data_sha256`` its ``records_sha256``. Other manifests are returned as they are.

        >>> upgrade({"schema_version": 1, "segments": [{"from_step": 0, "data_sha256": {"train": "ab"}}]})
        {'schema_version': 1, 'segments': [{'from_step': 0, 'records_sha256': {'train': 'ab'}}]}
    """
    if manifest.get("schema_version") != 1:
        return manifest
    out = dict(manifest)
    data = out.get("data")
    if isinstance(data, dict) and isinstance(data.get("splits"), dict):
        out["data"] = {**data, "splits": {name: _renamed(s, "sha256", "records_sha256")
                                          for name, s in data["splits"].items()}}
    if isinstance(out.get("segments"), list):
        out["segments"] = [_renamed(s, "data_sha256", "records_sha256") for s in out["segments"]]
    return out


def _renamed(entry: Any, old: str, new: str) -> Any:
    if not isinstance(entry, dict) or old not in entry:
        return entry
    return {(new if k == old else k): v for k, v in entry.items()}


def read_manifest(path_or_dir: str | os.PathLike) -> RunManifest:
    """Read and validate ``RUN/run.json`` (or a manifest file given directly).

    Raises ``FileNotFoundError`` when there is no manifest and ``ManifestError`` when it is
    not valid JSON or does not match the schema.
    """
    path = manifest_path(path_or_dir)
    return validate_manifest(read_run_json(path), str(path))


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def update_manifest(run_dir: str | os.PathLike, **sections: Any) -> dict[str, Any]:
    """Merge ``sections`` into ``run_dir/run.json``, validate, write atomically; return the result.

    A dict section is merged key by key into the one on disk (one level deep); any other
    value replaces it. ``created`` is set on the first write. Raises ``ManifestError`` (and
    leaves the file as it was) when the result does not match the schema.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    path = run / MANIFEST_NAME
    merged = _merge(read_run_json(path, missing_ok=True) or {}, sections)
    merged["schema_version"] = SCHEMA_VERSION  # a schema-1 file is upgraded as it is rewritten
    merged.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    result = validate_manifest(merged, str(path)).to_dict()
    bad = [k for k, v in flatten(result).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ManifestError(f"{path}: {', '.join(bad)}: NaN or infinity is not JSON; "
                            f"record a finite number or null")
    write_atomic(path, json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n", own=True)
    return result


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts and lists by dotted path (list items by index).

    >>> flatten({"a": {"b": 1}, "c": [5, {"d": 2}]})
    {'a.b': 1, 'c.0': 5, 'c.1.d': 2}
    """
    if isinstance(value, dict) and value:
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, sub in items:
        out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return out


_MISSING = object()


def diff_manifests(old: dict[str, Any], new: dict[str, Any],
                   ignore: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Fields that differ, as ``[{"path", "old", "new"}]`` sorted by path.

    A field present on one side only shows ``None`` on the other and ``"missing": "old"``
    or ``"new"``. Paths starting with an ``ignore`` prefix are left out.

    >>> diff_manifests({"seed": 1, "masking": {"mode": "all"}}, {"seed": 2, "masking": {"mode": "all"}})
    [{'path': 'seed', 'old': 1, 'new': 2}]
    """
    a, b = flatten(old), flatten(new)
    prefixes = tuple(ignore)
    out = []
    for path in sorted(set(a) | set(b)):
        if any(path == p or path.startswith(p + ".") for p in prefixes):
            continue
        va, vb = a.get(path, _MISSING), b.get(path, _MISSING)
        if va == vb and type(va) is type(vb):
            continue
        entry = {"path": path, "old": None if va is _MISSING else va,
                 "new": None if vb is _MISSING else vb}
        if va is _MISSING or vb is _MISSING:
            entry["missing"] = "old" if va is _MISSING else "new"
        out.append(entry)
    return out
