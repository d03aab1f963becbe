"""The typed training config: one source for validation, ``sftlab train --help`` and the README.

Every section is a frozen pydantic model whose field docstrings (the string under each field)
are the documentation; :func:`config_reference_markdown` and :func:`config_reference_text`
render them. A config is a YAML file plus ``key=value`` overrides with dotted keys, values
parsed as YAML::

    >>> cfg = load_config(None, ["model.path=m", "data.train=[a.jsonl]", "out=runs/a", "optim.lr=1e-4"])
    >>> cfg.optim.lr, cfg.tokenizer_path, cfg.packing.mode
    (0.0001, 'm', 'packed')

Unknown keys are errors that name the key and suggest the closest one; bad values name the
field path (``optim.lr: Input should be a valid number ...``).
"""
from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sftlab.data.formats import Columns
from sftlab.data.layouts import columns_kwargs, dataset_info_entry, entry_kwargs
from sftlab.errors import UsageError
from sftlab.yaml_input import read_yaml
from sftlab.fingerprints import config_hash
from sftlab.train.config_keys import explain, reference_markdown, reference_text


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True,
                              allow_inf_nan=False)  # no NaN or infinity anywhere in a config


MAX_TOKENS = 1 << 20  # longer rows are a typo, and would exhaust memory before the first step


class ModelConfig(_Section):
    path: str
    """Base model: a local Hugging Face model directory, a hub name, a ``.gguf`` file or a directory
    holding one (converted once to safetensors, cached)."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code. Only turn on for code you trust."""
    gguf_file: str | None = None
    """A GGUF file inside ``path`` to load (dequantised) instead of safetensors weights."""
    dtype: Literal["auto", "float32", "bf16-mixed", "bfloat16"] = "auto"
    """``auto``: float32 weights, with bf16 autocast (mixed precision) on a GPU; ``float32``: no
    autocast; ``bf16-mixed``: float32 weights with bf16 autocast on any device, the CPU included;
    ``bfloat16``: bf16 weights and optimizer state (least memory, least precise)."""


class DataFile(_Section):
    """A data entry that says how its records name things (as LLaMA-Factory's ``dataset_info.json``
    columns and tags, or axolotl's ``field_messages``); a plain path string needs none of it."""
    path: str | None = None
    """The file (JSONL, JSON, Parquet, CSV or TSV; the text ones may be gzip, bz2 or xz compressed) or saved dataset directory; ``null`` with ``dataset_info``:
    the entry's ``file_name`` beside that file."""
    field_messages: str | None = None
    """The record field holding the list of messages (a dotted path such as ``body.messages``
    reaches into an object); ``null``: ``messages`` or ``conversations``."""
    role_key: str | None = None
    """The message key naming the speaker; ``null``: ``role``, or ``from`` where there is no ``role``."""
    content_key: str | None = None
    """The message key holding the text; ``null``: ``content`` (``value`` with ``from``)."""
    roles: dict[str, Literal["system", "user", "assistant", "tool"]] = {}
    """Speaker names of this file -> roles, e.g. ``{human: user, bot: assistant}`` (ShareGPT's
    human/gpt/model/observation/function are known already)."""
    dataset_info: str | None = None
    """LLaMA-Factory's ``dataset_info.json``, read as it is: the entry ``dataset`` gives the mapping
    (``formatting``, ``columns``, ``tags``) and, without ``path``, the file."""
    dataset: str | None = None
    """The entry of ``dataset_info`` to read."""
    formatting: Literal["alpaca", "sharegpt"] | None = None
    """As in ``dataset_info.json``: ``alpaca`` (instruction records) or ``sharegpt`` (message lists),
    with ``columns`` and ``tags``; ``null``: the layout is detected per record."""
    columns: dict[str, str] = {}
    """As in ``dataset_info.json``: LLaMA-Factory's column -> this file's field (``prompt``, ``query``,
    ``response``, ``system``, ``history`` for ``alpaca``; ``messages`` for ``sharegpt``; ``tools``,
    ``chosen``, ``rejected``), plus sftlab's metadata (``task: category``). Dotted paths reach into
    objects. E.g. Dolly: ``{prompt: instruction, query: context, response: response, task: category}``."""
    tags: dict[str, str] = {}
    """As in ``dataset_info.json`` (``sharegpt``): ``role_tag``, ``content_tag``, ``user_tag``,
    ``assistant_tag``, ``observation_tag``, ``function_tag``, ``system_tag``."""
    ranking: bool = False
    """As in ``dataset_info.json``: preference data (its records are refused unless ``layout: chosen``)."""
    layout: Literal["chosen"] | None = None
    """``chosen``: train a preference record (``chosen``/``rejected``) on its prompt and chosen answer,
    dropping the rejected one; ``null``: preference records are quarantined."""
    ignore_fields: list[str] = []
    """Record fields declared unused (kept as metadata, not trained): a top-level field by its name, a
    message key as the message list's field, ``[]`` and the key (``messages[].name``,
    ``conversations[].mask``); any other field or message key that sftlab does not read and that is not
    known metadata quarantines its record."""
    prompt_completion: Literal["continuation", "chat"] | None = None
    """As ``data.prompt_completion``, for this file; ``null``: the data section's."""

    @model_validator(mode="before")
    @classmethod
    def _entry_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("path") is None and data.get("dataset_info"):
            if not data.get("dataset"):
                raise ValueError("dataset_info needs dataset: the name of its entry")
            try:
                data = {**data, "path": str(dataset_info_entry(data["dataset_info"], data["dataset"])[0])}
            except UsageError as e:
                raise ValueError(str(e)) from None
        return data

    @model_validator(mode="after")
    def _one_path(self):
        if self.path is None:
            raise ValueError("path: give the data file (or dataset_info and dataset)")
        if self.dataset_info and not self.dataset:
            raise ValueError("dataset_info needs dataset: the name of its entry")
        return self

    def mapping(self, ignore_fields: list[str] = (), where: str | None = None,
                prompt_completion: str = "continuation"):
        """The ``sftlab.data.formats.Columns`` of this entry (``ignore_fields``: the data section's)."""
        kwargs: dict[str, Any] = {}
        if self.dataset_info:
            kwargs = entry_kwargs(dataset_info_entry(self.dataset_info, self.dataset)[1],
                                  f"{self.dataset_info} [{self.dataset}]")
        if self.formatting or self.columns or self.tags:
            kwargs.update(columns_kwargs(self.formatting, dict(self.columns), dict(self.tags), self.ranking,
                                         where or f"data entry {self.path}"))
        own = dict(field_messages=self.field_messages, role_key=self.role_key, content_key=self.content_key)
        kwargs.update({k: v for k, v in own.items() if v is not None})
        roles = {**kwargs.get("roles", {}), **self.roles}
        return Columns(**{**kwargs, "roles": roles}, layout=self.layout,
                       ignore=tuple(dict.fromkeys([*ignore_fields, *self.ignore_fields])),
                       prompt_completion=self.prompt_completion or prompt_completion)


class DataConfig(_Section):
    train: list[str | DataFile] = Field(min_length=1)
    """Training data (JSONL, JSON, Parquet, CSV or TSV files, compressed or not, a saved HF dataset directory, a folder of data
    files, or a dataset name for ``datasets.load_dataset`` as ``name[:config[:split]]``): a path, or a mapping
    with ``path`` and how its records name things (``field_messages``, ``role_key``,
    ``content_key``, ``roles``; LLaMA-Factory's ``formatting``, ``columns``, ``tags``, or its
    ``dataset_info`` and ``dataset``; ``layout``, ``ignore_fields``)."""
    eval: list[str | DataFile] = []
    """Held-out files for the validation loss per slice (entries as in ``train``)."""
    ignore_fields: list[str] = []
    """Record fields declared unused in every file (kept as metadata, not trained): a top-level field by
    its name, a message key as ``messages[].name`` (the message list's field, ``[]``, the key); a field
    or message key that sftlab does not read, that is not known metadata and is not declared here or in
    its entry's ``ignore_fields`` quarantines its record."""
    prompt_completion: Literal["continuation", "chat"] = "continuation"
    """What a ``prompt``/``completion`` record of two strings means: ``continuation`` is plain text as
    TRL trains it (no chat template: the prompt's tokens, the completion's and eos; the completion and
    eos trained); ``chat`` is a user and an assistant message rendered by the template. Message-list
    prompts are always conversations."""
    eval_split: float = Field(0.0, ge=0, lt=1)
    """Share of the training records held out for the validation loss (e.g. 0.02), chosen by a hash
    of each record's messages, so the split is the same on every run and copies of a record fall
    on the same side; added to ``eval``. 0: none."""
    max_quarantined_share: float = Field(0.0, ge=0, le=1)
    """Most records (training and held-out) that may be quarantined, as a share of all records, before
    the run exits 1; with the default 0 any quarantined record makes the exit code 1."""
    policy: str | None = None
    """Policy YAML; records whose ``policy_category`` it does not define are quarantined."""
    cache_dir: str | None = None
    """Where prepared (encoded) data is kept, keyed by content; default ``$SFTLAB_CACHE/prepared``
    or ``~/.cache/sftlab/prepared``. ``sftlab prepare`` fills it ahead of training."""
    num_proc: int = Field(1, gt=0)
    """Processes that encode the data when it is not prepared yet (each writes its own chunks)."""

    @staticmethod
    def paths(entries: list) -> list[str]:
        return [e if isinstance(e, str) else e.path for e in entries]

    def columns(self, entries: list) -> list:
        """One ``Columns`` (or ``None``: the usual names, nothing ignored) per entry."""
        plain = Columns(ignore=tuple(self.ignore_fields), prompt_completion=self.prompt_completion)
        return [(None if plain.is_default else plain) if isinstance(e, str)
                else e.mapping(self.ignore_fields, prompt_completion=self.prompt_completion) for e in entries]


class EncodingConfig(_Section):
    max_length: int = Field(2048, gt=0, le=MAX_TOKENS)
    """Longest encoded example in tokens; whole early turns are dropped to fit."""
    last_turn_only: bool = False
    """Train only the last assistant turn (per-message ``train`` flags still win)."""
    turns: Literal["whole", "expand"] = "whole"
    """``whole``: a record is one example; a trained turn the template re-renders once the conversation
    goes on (Qwen3-style templates drop earlier reasoning) refuses the record. ``expand``: each such
    turn becomes an example of its own, rendered as at inference for that turn (costs extra tokens,
    reported by stats and the manifest)."""
    overflow: Literal["drop", "split"] = "drop"
    """What happens to early exchanges dropped to fit ``max_length``: ``drop`` loses them (counted as
    lost trained tokens); ``split`` makes them further examples with the system message and as much
    preceding context as fits, trained on their own turns only."""
    reasoning: Literal["keep", "mask", "drop"] = "keep"
    """Reasoning on assistant messages: ``keep`` trains it as part of its turn, ``mask`` renders it
    with weight 0, ``drop`` removes it before rendering. A template that does not write reasoning
    refuses records with it unless ``drop``. Under ``mask`` and ``drop`` no reasoning text is ever
    trained: an answer holding a reasoning marker that is not one leading block (unclosed, not at
    the start, a second block, or beside a reasoning field) is refused (``reasoning_unread``), and
    so is an example whose trained tokens hold any marker (``reasoning_trained``)."""
    inline_reasoning: bool = True
    """Read the reasoning that opens an assistant message's content as that message's reasoning, so
    ``reasoning`` applies to it: a block of any known convention (``<think>``, ``<thinking>``,
    ``[THINK]``, ``◁think▷``, ``<reasoning>``, ``<seed:think>``, OpenThoughts' begin/end_of_thought
    and Cohere's START/END_THINKING markers, the pair the template writes), or the text before a closer such as
    ``</think>`` when no opener comes first (DeepSeek-R1 data). A template that writes no reasoning
    keeps the block where the data puts it (trained under ``keep``, weight 0 with its markers under
    ``mask``). ``false`` for data where such markers are answer text."""
    mask_source: Literal["contract", "generation_markers"] = "contract"
    """Where the trained tokens of each assistant turn come from: ``contract`` derives them from the
    template's renderings (what the model generates after the turn's prompt, up to and including the
    stop); ``generation_markers`` trains what the template's ``{% generation %}`` markers enclose
    (TRL-style training templates; ``sftlab check-template`` lists where the two differ)."""
    opening_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    """How many of the first trained tokens of every trained assistant turn weigh ``opening_weight``
    times their turn's weight (the response's opening, where answering or refusing is decided);
    0: none."""
    opening_weight: float = Field(1.0, gt=0)
    """Loss weight multiplier on those ``opening_tokens`` tokens; the loss stays normalised by the
    step's total trained weight, so the rest of the response weighs relatively less. 1: off (the
    prepared-data store's key is then what it is without the option)."""


class PackingConfig(_Section):
    mode: Literal["packed", "padded"] = "packed"
    """``packed``: several whole examples per row (best-fit decreasing); ``padded``: one per row."""
    max_length: int | None = Field(None, gt=0, le=MAX_TOKENS)
    """Row length in tokens; ``null`` means ``encoding.max_length``."""


class MixtureConfig(_Section):
    sampling_weights: dict[str, float] | None = None
    """Explicit sampling weight per slice (relative; a slice left out keeps weight 1)."""
    temperature: float | None = Field(None, gt=0)
    """Sample slices with probability proportional to size**(1/temperature); ``null``: as is."""
    loss_weights: dict[str, float] = {}
    """Loss weight per slice, multiplied into every trained token of the slice (default 1)."""

    @model_validator(mode="after")
    def _one_sampling_rule(self):
        if self.sampling_weights is not None and self.temperature is not None:
            raise ValueError("give sampling_weights or temperature, not both")
        for name, weights in (("sampling_weights", self.sampling_weights), ("loss_weights", self.loss_weights)):
            bad = {k: v for k, v in (weights or {}).items() if v < 0}
            if bad:
                raise ValueError(f"{name}: {', '.join(f'{k}={v}' for k, v in bad.items())}: expected "
                                 "finite weights >= 0")
        if self.sampling_weights and not any(self.sampling_weights.values()):
            raise ValueError("sampling_weights: every weight is 0, nothing would be sampled; expected "
                             "at least one weight > 0")
        return self


class OptimConfig(_Section):
    lr: float = Field(2e-5, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after the warm-up: ``cosine`` decay towards 0, ``linear`` decay towards 0,
    or ``constant`` at ``lr``."""
    warmup_steps: int | None = Field(None, ge=0)
    """Linear warm-up steps: step k (from 1) of W runs at ``lr * k / W``, so the first step never runs
    at 0; 0 starts at ``lr``. ``null`` means ``warmup_ratio`` of the total steps."""
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    """Warm-up as a share of the total optimizer steps (rounded up), when ``warmup_steps`` is null."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; ``null`` turns clipping off."""
    micro_batch_size: int = Field(1, gt=0)
    """Rows per forward pass on each process."""
    grad_accum: int = Field(1, gt=0)
    """Micro-batches per optimizer step on each process."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps (wins over ``epochs``)."""
    epochs: int = Field(1, gt=0)
    """Passes over the (mixed) training data when ``max_steps`` is null."""
    neftune_alpha: float | None = Field(None, gt=0)
    """NEFTune (Jain et al. 2023): uniform noise in [-1, 1] x alpha / sqrt(L x d) added to the input
    embeddings in training steps only (never in validation or generation), L the length of the example
    a token belongs to (in a packed row, each example's own length), d the hidden size; the paper
    uses 5 to 15. ``null``: off."""


    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"expected two numbers in [0, 1), such as [0.9, 0.999]; got {list(betas)}")
        return betas

class LossConfig(_Section):
    normalisation: Literal["token", "per_sequence"] = "token"
    """``token``: divide by the total trained weight of the optimizer step;
    ``per_sequence``: every example counts the same, whatever its length."""
    chunk_size: int | None = Field(1024, gt=0)
    """Trained tokens per chunk of the output head + cross-entropy, so [tokens, vocab] logits
    never exist whole; ``null`` takes the full logits from the model's own forward (more memory;
    for wrappers that only gather the head's weights inside the model's forward)."""


class LoraConfig(_Section):
    enabled: bool = False
    """Train LoRA adapters (peft) instead of every weight."""
    r: int = Field(8, gt=0)
    """LoRA rank."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    """Names of the linear modules that get adapters, or ``all-linear`` (peft's spelling: every linear
    layer but the output head)."""
    use_dora: bool = False
    """DoRA (peft's ``use_dora``): each adapted weight is split into a magnitude and a direction, the
    LoRA update applies to the direction; slower per step than plain LoRA."""
    merge_on_save: bool = False
    """Write the merged full model to ``RUN/final`` and the adapter to ``RUN/final/adapter``.
    Otherwise ``RUN/final`` holds only the adapter; its ``adapter_config.json`` records the base as
    the hub name, or as the absolute path of the local base (a GGUF base: its converted copy), so
    ``AutoPeftModelForCausalLM.from_pretrained("RUN/final")`` and ``sftlab eval --model RUN/final``
    load it from any directory."""


class EarlyStoppingConfig(_Section):
    metric: str = "eval_loss/all"
    """``eval_loss/all`` or ``eval_loss/<slice>``: the validation curve to watch."""
    patience: int | None = Field(None, gt=0)
    """Stop after this many validations without improvement; ``null`` never stops early."""


class EvalConfig(_Section):
    every_n_steps: int | None = Field(None, gt=0)
    """Validate every N optimizer steps (and at the end); ``null``: only at the end."""
    micro_batch_size: int = Field(4, gt=0)
    """Held-out examples per forward pass."""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    """Early stopping on a validation curve."""
    prompts: list[str] = []
    """Held-out prompt files (``sftlab eval`` formats) for generation-based refusal and
    over-refusal curves at every validation; empty: no generation during training."""
    generation_max_new_tokens: int = Field(24, gt=0)
    """New tokens per response in those generation curves (greedy)."""


class CheckpointConfig(_Section):
    every_n_steps: int | None = Field(None, gt=0)
    """Write ``RUN/checkpoints/step-N`` every N optimizer steps; ``null``: only the last step."""
    keep_last: int = Field(2, gt=0)
    """Keep the newest N complete checkpoints, delete older ones."""


class LogConfig(_Section):
    every_n_steps: int = Field(1, gt=0)
    """Write a ``metrics.jsonl`` line every N optimizer steps."""
    trackers: list[str] | Literal["auto"] = "auto"
    """Experiment trackers, through accelerate's tracker API: any of ``tensorboard``, ``wandb``,
    ``mlflow``, ``comet_ml``, ``aim``, ``clearml``, ``dvclive``, ``swanlab``, ``trackio`` (each needs
    its own package; none is a dependency of sftlab). ``auto``: tensorboard when installed, else
    none. TensorBoard writes under ``RUN/tensorboard``; the project / run name is the run directory's
    name. ``metrics.jsonl`` is written in every case."""
    progress: bool = True
    """Show a tqdm progress bar with loss, tokens/s, model FLOP utilisation (MFU) and ETA."""


class TrainConfig(_Section):
    model: ModelConfig
    """The base model."""
    data: DataConfig
    """Training and held-out data."""
    out: str
    """Run directory (``run.json``, ``metrics.jsonl``, ``checkpoints/``, ``final/``)."""
    tokenizer: str | None = None
    """The tokenizer: a Hugging Face directory, a hub name, a .gguf file or a directory holding one;
    ``null`` means the model's."""
    template: str | None = None
    """Chat template: ``null`` uses the tokenizer's own (its ``default`` where it has named templates,
    or a processor's chat_template.json beside it); a built-in name (``chatml``, ...); one of the
    tokenizer's named templates (``tool_use``); or the path of a Jinja file (``.jinja``/``.j2``, or a
    JSON file holding one under ``chat_template``), sandboxed and fingerprinted like a tokenizer's own."""
    encoding: EncodingConfig = EncodingConfig()
    """How conversations become tokens and loss weights."""
    packing: PackingConfig = PackingConfig()
    """How examples become rows."""
    mixture: MixtureConfig = MixtureConfig()
    """Class imbalance: sampling weights and loss weights per slice."""
    optim: OptimConfig = OptimConfig()
    """AdamW, warm-up and learning-rate schedule, batch sizes and length of training."""
    loss: LossConfig = LossConfig()
    """The response-only objective."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters instead of full fine-tuning."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    eval: EvalConfig = EvalConfig()
    """Validation loss per slice and early stopping."""
    checkpointing: CheckpointConfig = CheckpointConfig()
    """Atomic, resumable checkpoints."""
    seed: int = Field(0, ge=0, lt=2**32)
    """Seed for the data order, the mixture and initialisation of new weights."""
    log: LogConfig = LogConfig()
    """Metrics, experiment trackers and the progress bar."""

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.model.path

    @property
    def row_length(self) -> int:
        return self.packing.max_length or self.encoding.max_length

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        """Fingerprint of the resolved config: ``sftlab.fingerprints.config_hash`` of ``to_dict()``,
        the same hash ``run.json`` records as ``config_sha256``."""
        return config_hash(self.to_dict())


class ConfigError(UsageError, ValueError):
    """A config that cannot be used; the message names the file and the field path. A
    ``UsageError``: the CLI prints it as one line (exit 2) without converting it."""


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read ``path`` (YAML mapping), apply ``key=value`` overrides, validate.

    Raises :class:`ConfigError` naming the key and where it was written: ``unknown key 'optim.lrr'
    (in cfg.yaml); did you mean 'optim.lr'?``, ``optim.lr: Input should be greater than 0 (got -1)
    (in override optim.lr=-1)``. A peer's key gets sftlab's; a dotted key written in YAML is told
    to nest::

        >>> load_config(None, ["model.path=m", "data.train=[t]", "out=o", "learning_rate=1e-4"])
        Traceback (most recent call last):
        sftlab.train.config.ConfigError: unknown key 'learning_rate' (in override learning_rate=1e-4); did you mean 'optim.lr'? (learning_rate is what TRL, peft, Axolotl or LLaMA-Factory call it)
    """
    where = str(path) if path is not None else "overrides"
    raw: Any = {}
    if path is not None:
        try:
            raw = read_yaml(path, "config") or {}
        except UsageError as e:
            raise ConfigError(str(e)) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    given = {}  # dotted key -> the override that set it
    for item in overrides:
        given[_apply_override(raw, item)] = item
    _check_numbers(raw, lambda key: _origin(tuple(key.split('.')), given, where))
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as e:
        # A data entry given as a mapping is a DataFile: its own problems, not the plain-path branch's.
        errors = [x for x in e.errors() if not (x["loc"][-1:] == ("str",) and isinstance(x.get("input"), dict))]
        errors = [{**x, "loc": tuple(p for p in x["loc"] if not (isinstance(p, str) and "DataFile" in p)),
                   "msg": x["msg"].removeprefix("Value error, ")} for x in errors or e.errors()]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(explain(errors[0], _origin(errors[0]["loc"], given, where), TrainConfig) + more) from None
    if path is not None:
        _check_relative_paths(cfg, Path(path), lambda key: _origin(tuple(key.split(".")), given, where))
    return cfg


def _check_relative_paths(cfg: TrainConfig, path: Path, where) -> None:
    """Relative paths in a config are read from the directory sftlab runs in, as in the shell that
    started it. One that is missing there but present beside the config (a config written in its
    project and run from elsewhere) is refused naming both places, not left to fail later as a
    missing file or, for a model, as a hub name that cannot be reached:

        >>> import os, tempfile
        >>> d = tempfile.mkdtemp(); os.makedirs(f"{d}/proj/data"); open(f"{d}/proj/data/t.jsonl", "w").close()
        >>> with open(f"{d}/proj/c.yaml", "w") as f:
        ...     _ = f.write("model: {path: m}\\ndata: {train: [data/t.jsonl]}\\nout: runs/a\\n")
        >>> load_config(f"{d}/proj/c.yaml")  # run from another directory
        Traceback (most recent call last):
        sftlab.train.config.ConfigError: data.train.0: 'data/t.jsonl' is not in the current directory ... but is beside the config (...proj/data/t.jsonl): relative paths are read from where sftlab runs; run it from ...proj or write the paths as seen from here (in .../proj/c.yaml)
    """
    here = path.resolve().parent
    if here == Path.cwd().resolve():
        return
    d = cfg.data
    named = [(f"data.{side}.{i}", e if isinstance(e, str) else e.path)
             for side in ("train", "eval") for i, e in enumerate(getattr(d, side))]
    named += [("data.policy", d.policy), ("model.path", cfg.model.path), ("tokenizer", cfg.tokenizer),
              ("template", cfg.template)]
    found = [(key, value) for key, value in named if value and not Path(value).is_absolute()
             and not os.path.lexists(value) and (here / value).exists()]
    if found:
        key, value = found[0]
        more = "".join(f"; {k}: {v!r} too" for k, v in found[1:])
        raise ConfigError(f"{key}: {value!r} is not in the current directory ({Path.cwd()}) but is beside the "
                          f"config ({here / value}){more}: relative paths are read from where sftlab runs; run it "
                          f"from {here} or write the paths as seen from here (in {where(key)})")


MAX_INT = 2**63 - 1  # what an index, a count or a seed can hold in NumPy and torch


def _check_numbers(value: Any, where, key: str = "") -> None:
    """Integers beyond 64 bits and text with bytes that are not UTF-8 are refused by key before
    any field sees them (they would overflow in NumPy or torch, or break run.json, later);
    ``where(key)`` names where the key was set:

        >>> _check_numbers({"optim": {"max_steps": 10**30}}, lambda key: "cfg.yaml")
        Traceback (most recent call last):
        ...
        sftlab.train.config.ConfigError: optim.max_steps: 1000000000000000000000000000000 is out of range (at most 9223372036854775807) (in cfg.yaml)
    """
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, where, f"{key}.{i}")
    elif isinstance(value, str) and _not_utf8(value):
        raise ConfigError(f"{key}: {_escaped(value)} holds bytes that are not UTF-8 (run.json records "
                          f"paths as UTF-8 text) (in {where(key)}); rename the file or directory")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        shown = reprlib.repr(value) if len(str(value)) < 40 else f"a number of {len(str(abs(value)))} digits"
        raise ConfigError(f"{key}: {shown} is out of range (at most {MAX_INT}) (in {where(key)})")


def _not_utf8(text: str) -> bool:
    """Text with lone surrogates: bytes of a command-line argument that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escaped(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")[:200]


def _origin(loc: tuple, given: dict[str, str], where: str) -> str:
    """``override KEY=VALUE`` when an override set ``loc`` (or a section above it), else ``where``."""
    parts = [str(p) for p in loc]
    for n in range(len(parts), 0, -1):
        item = given.get(".".join(parts[:n]))
        if item is not None:
            return f"override {item}"
    below = [item for key, item in given.items() if key.startswith(".".join(parts) + ".")]
    return f"override {below[0]}" if below and parts else where


def _apply_override(raw: dict, item: str) -> str:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {ascii(item)} is not key=value (for example optim.lr=1e-4)")
    if _not_utf8(item):
        raise ConfigError(f"override {_escaped(key)}: {_escaped(text)} holds bytes that are not UTF-8 "
                          "(run.json records paths as UTF-8 text); rename the file or directory")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    except ValueError:  # an integer of more than 4,300 digits
        raise ConfigError(f"override {key.strip()}: a number with more than 4,300 digits; no "
                          "setting takes one") from None
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value
    return ".".join(p.strip() for p in parts)


def config_reference_markdown() -> str:
    """The config reference as a Markdown table (for the README), from the field docstrings."""
    return reference_markdown(TrainConfig)


def config_reference_text() -> str:
    """The same reference as plain text, for ``sftlab train --help``."""
    return reference_text(TrainConfig)
