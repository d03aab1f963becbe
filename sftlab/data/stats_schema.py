"""The schema of ``stats.json``: what ``sftlab stats`` prints and ``RUN/data/stats.json`` holds.

The statistics engine (``sftlab.data.chunk_stats``) fills a plain dict of this shape; ``Stats``
is that shape as typed structures, and ``validate_stats`` checks a dict (or a file's JSON)
against it: every key present, no key unknown, every value of its type. Every writer validates
what it writes, and a reader of an old or damaged file gets one line naming the field.

    >>> validate_stats({"schema_version": 1})
    Traceback (most recent call last):
    ...
    ValueError: stats.json does not match its schema (version 1): records: Field required
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

SCHEMA_VERSION = 1


class _Strict(TypedDict):
    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012  (pydantic reads it from the class)


class Dist(_Strict):
    """A distribution: nearest-rank percentiles; every value but ``n`` null when ``n`` is 0."""
    n: int
    min: Optional[float]
    p50: Optional[float]
    p90: Optional[float]
    p99: Optional[float]
    max: Optional[float]
    mean: Optional[float]


class PolicyRef(_Strict):
    version: str
    sha256: str


class Largest(_Strict):
    task: str
    share: float


class Tasks(_Strict):
    """Shannon entropy H = -sum p ln p over task shares; effective tasks = exp(H)."""
    distinct: int
    entropy_nats: float
    effective_tasks: float
    largest: Optional[Largest]


class EncodingExtra(_Strict):
    """Examples made by ``encoding.turns: expand`` / ``overflow: split``, and tokens truncation lost."""
    expanded_examples: int
    expanded_tokens: int
    overflow_examples: int
    overflow_tokens: int
    lost_trained_tokens: int


class Lengths(_Strict):
    """Prompt and response per conversation: words (system, user and tool messages; assistant
    messages) or, with a tokenizer, tokens (untrained tokens of the rendering; trained tokens)."""
    unit: Literal["words", "tokens"]
    prompt: Dist
    response: Dist
    template: Optional[str]
    unencoded: int
    """Records the template cannot encode."""
    extra: NotRequired[EncodingExtra]


class ToolSlice(_Strict):
    """Records with tools (a tools list or a tool call), calls per record, and reasoning as a
    share of what is trained (tokens with an encoding, else words)."""
    records: int
    with_tools: int
    share: float
    calls: Dist
    reasoning_share: float


class Tools(_Strict):
    unit: Literal["words", "tokens"]
    slices: dict[str, ToolSlice]
    """``all`` first, then the slices by name."""


class Category(_Strict):
    name: str
    refusals: int
    benign_contrast: list[str]
    contrasts: int
    has_contrast: bool


class Refusals(_Strict):
    refuse: int
    comply: int
    share: float
    """refuse / records."""
    uncategorised: int
    categories: list[Category]
    diversity: dict[str, Any]
    """``sftlab.data.diversity.response_diversity`` of the refusal records' final responses."""


class Ref(_Strict):
    """A record: its id and ``file:line`` (or ``#index`` for records built in memory)."""
    id: Optional[str]
    where: str


class Pair(_Strict):
    a: Ref
    b: Ref


class NearPair(Pair):
    jaccard: float


class Exact(_Strict):
    records: int
    """Records that repeat an earlier one (what exact dedup would drop)."""
    groups: int
    examples: list[Pair]


class Near(_Strict):
    threshold: float
    num_perm: int
    records: int
    """Records, exact copies left out, whose word 3-shingle Jaccard with an earlier one is >= threshold."""
    examples: list[NearPair]


class Duplicates(_Strict):
    exact: Exact
    near: Near


class Leak(_Strict):
    heldout: Ref
    train: Ref


class NearLeak(Leak):
    jaccard: float


class ExactLeakage(_Strict):
    records: int
    examples: list[Leak]


class NearLeakage(_Strict):
    threshold: float
    records: int
    examples: list[NearLeak]


class Leakage(_Strict):
    """Held-out records whose prompt (the user messages) equals or nearly equals a training one."""
    heldout_records: int
    leaked: int
    share: float
    exact: ExactLeakage
    near: NearLeakage


class Warning(_Strict):  # noqa: A001  (a stats.json warning, not the builtin)
    code: str
    message: str


class Check(_Strict):
    name: str
    passed: bool
    message: str
    skipped: NotRequired[bool]


class FileCount(_Strict):
    """Records read from one file: records = accepted + quarantined."""
    path: str
    split: NotRequired[Literal["train", "heldout"]]
    records: int
    accepted: int
    quarantined: int


class Stats(_Strict):
    """The whole file. ``files`` and ``quarantined`` come from the loaders' reports
    (``sftlab.data.stats.with_files``); a failed check makes ``sftlab stats`` exit 1."""
    schema_version: Literal[1]
    records: int
    """Training conversations analysed."""
    policy: Optional[PolicyRef]
    counts: dict[str, dict[str, int]]
    """``{"task"|"slice"|"source"|"policy_category"|"expected": {value: n}}``, most frequent
    first; a missing value counts as "(none)"."""
    tasks: Tasks
    turns: Dist
    """Assistant turns per conversation."""
    lengths: Lengths
    tools: Tools
    refusals: Refusals
    duplicates: Duplicates
    leakage: Optional[Leakage]
    """Null without held-out data."""
    warnings: list[Warning]
    checks: list[Check]
    passed: bool
    files: NotRequired[list[FileCount]]
    quarantined: NotRequired[int]


_ADAPTER = TypeAdapter(Stats)


def validate_stats(data: Any, where: str = "stats.json") -> Stats:
    """``data`` checked against ``Stats`` (strictly: no type coercion); ``ValueError`` naming the first wrong field."""
    try:
        return _ADAPTER.validate_python(data, strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ValueError(f"{where} does not match its schema (version {SCHEMA_VERSION}): {field}: {err['msg']}") from None
