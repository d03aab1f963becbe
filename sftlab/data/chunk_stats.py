"""The statistics engine: every figure of ``stats.json``, from per-record summaries of chunks.

``sftlab stats FILES`` (``sftlab.data.stats.compute_stats``, in memory) and a prepared-data store
(``sftlab.prepare``, a chunk at a time in several processes, ``RUN/data/stats.json``) both
summarise their conversations here into small arrays (``summary_arrays``) and ``merge`` those into
the figures (``sftlab.data.stats_schema.Stats``): one engine, so the two reports are equal on the
same data. In memory the summaries are held (``Summaries.in_memory``); a store writes each
chunk's beside its tokens (``summarise``) and maps them back (``Summaries``).

What is kept per record:

- counts: a few integers (turns, prompt and response words, calls, reasoning words) and the
  metadata values, counted per chunk (``fields.json``);
- exact duplicates: a 128-bit key of the normalised text (``sftlab.data.dedup.MinHasher.keys``);
- near duplicates: the LSH band keys of its MinHash signature (``dedup.band_keys``, uint64 per
  band), and on disk the signature and the word 3-shingle hashes (4 bytes a word), read back only
  for the few records whose band keys collide with another's, so every candidate is confirmed
  with the exact Jaccard similarity of the shingle sets (``dedup.near_duplicates``).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.data.conversation import Conversation
from sftlab.data.dedup import (DEFAULT_NUM_PERM, MinHasher, band_keys, first_rows, lsh_index, near_duplicates,
                               near_leaks)
from sftlab.data.diversity import response_diversity
from sftlab.data.stats_schema import SCHEMA_VERSION, validate_stats
from sftlab.progress import progress_bar

NEAR_THRESHOLD = 0.8
NONE = "(none)"
COUNTED_FIELDS = ("task", "slice", "source", "policy_category", "expected")
MAX_EXAMPLES = 5
DOMINANT_TASK_SHARE = 0.5
ARRAYS = ("turns", "prompt_words", "response_words", "calls", "has_tools", "reason_words", "trained_words", "lines",
          "conv_key", "conv_bands", "conv_sigs", "conv_shingles", "conv_starts",
          "prompt_key", "prompt_n", "prompt_bands", "prompt_sigs", "prompt_shingles", "prompt_starts", "records")

BUILD_ONLY = ("conv_shingles.npy", "conv_starts.npy")
"""Summary files ``merge`` needs and a finished store need not keep (leakage reads prompts only)."""

_SIGNERS: dict = {}
_first_rows = first_rows  # the name the prepared store calls


def _signer_and_ranges(num_perm: int = DEFAULT_NUM_PERM, threshold: float = NEAR_THRESHOLD):
    """A ``MinHasher`` and the LSH band ranges, made once per process (the band parameters cost
    a numerical optimisation)."""
    key = (num_perm, threshold)
    if key not in _SIGNERS:
        signer = MinHasher(num_perm)
        _SIGNERS[key] = signer, lsh_index(signer, threshold).hashranges
    return _SIGNERS[key]


def warm() -> None:
    """Make the signer and import what ``summarise`` uses (datasketch, pyarrow's compute kernels)
    now: called before worker processes fork, so each inherits them instead of paying again."""
    import pyarrow as pa  # lazy: pyarrow costs 0.3 s to import, and only a build needs it warm

    pa.array([""], type=pa.large_string())  # its first call imports pandas (pyarrow checks for its types)
    _signer_and_ranges()


# ---------------------------------------------------------------- texts and per-record summaries

def conversation_text(c: Conversation) -> str:
    """Every message as ``role: content``, joined (normalised later, word by word): what duplicates compare."""
    return " ".join([f"{m.role}: {m.content}" for m in c.messages])


def prompt_text(c: Conversation) -> str:
    """The user messages joined (empty when there is none): what leakage compares."""
    return " ".join([m.content for m in c.messages if m.role == "user"])


def _text_words(signer: MinHasher, convs: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"conv": (hashes, offsets), "prompt": ...}``: the normalised words of
    ``conversation_text`` and ``prompt_text`` of every conversation, as ``signer.words`` gives
    them for those texts, with each message's content split once.

    Both texts join their parts with spaces and the normalisation (lowercasing, spaces around
    unspaced scripts, splitting on whitespace) works character by character, so a text's words
    are its parts' words end to end: ``role:`` then the content's words per message for the
    conversation, the user contents' words for the prompt."""
    messages = [m for c in convs for m in c.messages]
    msg_bounds = np.concatenate(([0], np.cumsum([len(c.messages) for c in convs]))).astype(np.int64)
    words, offsets = signer.words([m.content for m in messages])
    n = np.diff(offsets)
    roles = sorted({m.role for m in messages})
    role_words, role_offsets = signer.words([f"{r}: " for r in roles])
    if not (np.diff(role_offsets) == 1).all():  # a role that is not one word: join the texts
        conv = signer.words([conversation_text(c) for c in convs])
    else:
        code = {r: i for i, r in enumerate(roles)}
        role_of = np.fromiter((code[m.role] for m in messages), np.int64, len(messages))
        starts = np.concatenate(([0], np.cumsum(n + 1)))  # each message: its role word, then its content
        conv = np.insert(words, offsets[:-1], role_words[role_of]), starts[msg_bounds]
    user = np.fromiter((m.role == "user" for m in messages), bool, len(messages))
    user_words = np.concatenate(([0], np.cumsum(np.where(user, n, 0)))).astype(np.int64)
    prompt = words[np.repeat(user, n)], user_words[msg_bounds]
    return {"conv": conv, "prompt": prompt, "split": _split_counts(messages, n)}


def _split_counts(messages: list, n: np.ndarray) -> np.ndarray:
    """``len(m.content.split())`` of every message, from ``n``, the number of its normalised words
    (``signer.words``): for ASCII text the two are equal (str.split and Arrow's whitespace
    split break at the same ASCII characters, and lowercasing moves no boundary); other text is
    split here."""
    counts = n.astype(np.int64)
    for k, m in enumerate(messages):
        if not m.content.isascii():
            counts[k] = len(m.content.split())
    return counts


def _counts(convs: list, messages: list, split: np.ndarray) -> dict[str, np.ndarray]:
    """Per conversation: turns, prompt and response words (``stats.word_lengths``), tool calls,
    whether it has tools, reasoning words and trained words (``stats.tool_counts``), summed from
    each message's count; calls and reasoning (rare) counted in Python."""
    conv_of = np.repeat(np.arange(len(convs)), [len(c.messages) for c in convs])
    assistant = np.fromiter((m.role == "assistant" for m in messages), bool, len(messages))

    def per_conv(values) -> np.ndarray:
        return np.bincount(conv_of, weights=values, minlength=len(convs)).astype(np.int64)

    response = per_conv(np.where(assistant, split, 0))
    calls, reason, trained = [0] * len(convs), [0] * len(convs), response.tolist()
    for k, m in enumerate(messages):
        if m.tool_calls or m.reasoning:
            c = int(conv_of[k])
            calls[c] += len(m.tool_calls)
            if m.role == "assistant":
                w = len(m.reasoning.split()) if m.reasoning else 0
                reason[c] += w
                trained[c] += w + sum(1 + len(x.arguments.split()) for x in m.tool_calls)
    return {"turns": per_conv(assistant).astype(np.int32), "calls": np.asarray(calls, dtype=np.int32),
            "has_tools": np.asarray([bool(k or c.tools) for k, c in zip(calls, convs)], dtype=np.int8),
            "reason_words": np.asarray(reason, dtype=np.int64), "trained_words": np.asarray(trained, dtype=np.int64),
            "prompt_words": per_conv(np.where(assistant, 0, split)).astype(np.int32),
            "response_words": response.astype(np.int32)}


def summary_arrays(convs: Sequence[Conversation], records: Sequence[int], num_perm: int = DEFAULT_NUM_PERM,
                   threshold: float = NEAR_THRESHOLD) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, fields)``: the summary of ``convs`` (``records``: their record numbers), one
    array per name of ``ARRAYS`` and the ``fields.json`` counts and texts."""
    signer, ranges = _signer_and_ranges(num_perm, threshold)
    convs = list(convs)
    texts = _text_words(signer, convs)
    messages = [m for c in convs for m in c.messages]
    arrays = {"records": np.asarray(records, dtype=np.int64), **_counts(convs, messages, texts.pop("split")),
              "lines": np.asarray([c.origin.line if c.origin and c.origin.line is not None else -1
                                   for c in convs], dtype=np.int64)}
    for name, (words, offsets) in texts.items():
        arrays[f"{name}_key"] = signer.keys(words, offsets)
        sh, st = signer.shingles(words, offsets)
        arrays[f"{name}_shingles"], arrays[f"{name}_starts"] = sh, st.astype(np.int64)
        sigs = signer.signatures(sh, st) if len(convs) else np.zeros((0, signer.num_perm), np.uint32)
        arrays[f"{name}_sigs"] = sigs
        arrays[f"{name}_bands"] = band_keys(sigs, ranges)
        if name == "prompt":
            arrays["prompt_n"] = np.diff(offsets).astype(np.int32)
    fields = {"counts": {f: dict(Counter(getattr(c, f) or NONE for c in convs)) for f in COUNTED_FIELDS},
              "refuse": Counter(str(c.policy_category) for c in convs if c.expected == "refuse"),
              "comply": Counter(str(c.policy_category) for c in convs if c.expected == "comply"),
              "ids": [c.id for c in convs], "slices": [c.slice for c in convs],
              "refusal_texts": [[r, c.messages[i].content] for c, r in zip(convs, records)
                                if c.expected == "refuse" for i in c.assistant_indices[-1:]]}
    return arrays, fields


def summarise(convs: list, records: list[int], out: Path) -> None:
    """Write the summary of one chunk's accepted conversations (``records``: their record
    numbers) into the folder ``out``: ``fields.json`` and one ``.npy`` per array of ``ARRAYS``."""
    arrays, fields = summary_arrays(convs, records)
    out.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        np.save(out / f"{name}.npy", a, allow_pickle=False)
    (out / "fields.json").write_text(json.dumps(fields, ensure_ascii=False), encoding="utf-8")


class _Mapped(dict):
    """A chunk's summary arrays, each memory-mapped when first asked for."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def __missing__(self, name: str) -> np.ndarray:
        self[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        return self[name]


IN_MEMORY_CHUNK = 8192
"""Conversations per part of a summary held in memory (a store's chunk size)."""


class Summaries:
    """The chunk summaries of one split (memory-mapped from ``dirs``, or held: ``in_memory``),
    with the records to leave out. Rows are the kept records, in record order."""

    def __init__(self, dirs: list[Path], files: list[str], exclude: set[int] | frozenset = frozenset()):
        self.dirs, self.files = dirs, files  # files[k]: the input file name of chunk k
        self.parts = [_Mapped(d) for d in dirs]
        self._held: list[dict] | None = None
        self._fields: dict[int, dict] = {}
        self._keep(exclude)

    @classmethod
    def in_memory(cls, convs: Sequence[Conversation], num_perm: int = DEFAULT_NUM_PERM,
                  threshold: float = NEAR_THRESHOLD, *, progress: bool = False,
                  chunk: int = IN_MEMORY_CHUNK) -> Summaries:
        """The summary of ``convs``, held, one part per ``chunk`` conversations (a progress bar
        over them with ``progress`` where there are several parts: 100k conversations take about
        ten seconds); a record is
        referred to by its origin (``file:line``), or ``#index`` without one."""
        convs = list(convs)
        parts, held = [], []
        with progress_bar(total=len(convs), desc="stats", unit="conv", enabled=progress and len(convs) > chunk) as bar:
            for start in range(0, max(len(convs), 1), chunk):  # one part, empty, for no conversation
                part = convs[start:start + chunk]
                arrays, fields = summary_arrays(part, range(start, start + len(part)), num_perm, threshold)
                fields["where"] = [(f"{o.file}:{o.line}" if o.line is not None else o.file) if (o := c.origin)
                                   else f"#{i}" for i, c in enumerate(part, start)]
                parts.append(arrays)
                held.append(fields)
                bar.update(len(part))
        self = cls.__new__(cls)
        self.dirs, self.files, self.parts, self._held, self._fields = [], [""] * len(parts), parts, held, {}
        self._keep(frozenset())
        return self

    def _keep(self, exclude) -> None:
        gone = np.fromiter(exclude, np.int64, len(exclude))
        self.keep = [~np.isin(p["records"], gone) if len(gone) else np.ones(len(p["records"]), bool)
                     for p in self.parts]
        self.starts = np.concatenate(([0], np.cumsum([int(k.sum()) for k in self.keep]))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def column(self, name: str) -> np.ndarray:
        """One array over every kept record, in record order (in memory: keys and bands only)."""
        parts = [np.asarray(p[name])[k] for p, k in zip(self.parts, self.keep)]
        if parts:
            return np.concatenate(parts)
        return np.zeros((0,), np.int64)

    def _local(self, row: int) -> tuple[int, int]:
        c = int(np.searchsorted(self.starts, row, side="right") - 1)
        return c, int(np.flatnonzero(self.keep[c])[row - self.starts[c]])

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """``name``'s values at global kept rows (read from disk for these rows only)."""
        out = [np.asarray(self.parts[c][name][local]) for c, local in map(self._local, rows.tolist())]
        return np.stack(out) if out else np.zeros((0,), np.uint32)

    def shingle_set(self, kind: str, row: int) -> np.ndarray:
        """The sorted, unique word 3-shingle hashes of a kept row's ``kind`` text ("conv" or "prompt")."""
        c, local = self._local(row)
        start, end = self.parts[c][f"{kind}_starts"][local:local + 2]
        return np.unique(self.parts[c][f"{kind}_shingles"][start:end])

    def fields(self, c: int) -> dict:
        if self._held is not None:
            return self._held[c]
        if c not in self._fields:  # one chunk's at a time
            self._fields = {c: json.loads((self.dirs[c] / "fields.json").read_text(encoding="utf-8"))}
        return self._fields[c]

    def ref(self, row: int) -> dict[str, Any]:
        """``{"id", "where"}`` of a kept row: ``where`` is ``file:line`` (or the file)."""
        c, local = self._local(row)
        f = self.fields(c)
        if "where" in f:
            return {"id": f["ids"][local], "where": f["where"][local]}
        line = int(self.parts[c]["lines"][local])
        return {"id": f["ids"][local], "where": f"{self.files[c]}:{line}" if line >= 0 else self.files[c]}


# ---------------------------------------------------------------- the figures

def merge(s: Summaries, policy: Any = None, excluded_fields: list[dict] | None = None, encoded: Any = None,
          threshold: float = NEAR_THRESHOLD, max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """Every figure but ``leakage`` (null; ``with_leakage`` adds it) from the summaries.
    ``excluded_fields``: ``fields.json``-shaped counts of the records left out (duplicate ids),
    subtracted. ``encoded``: ``(lengths, trained tokens, unencoded records, template name)`` of
    the examples, for lengths in tokens (words without it)."""
    counts, refuse, comply = _field_counts(s, excluded_fields or ())
    n = len(s)
    stats: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "records": n,
        "policy": policy.manifest_entry() if policy is not None else None,
        "counts": counts, "tasks": diversity(counts["task"]),
        "turns": distribution(s.column("turns")),
        "lengths": ({"unit": "words", "prompt": distribution(s.column("prompt_words")),
                     "response": distribution(s.column("response_words")), "template": None, "unencoded": 0}
                    if encoded is None else
                    {"unit": "tokens", "prompt": distribution(encoded[0] - encoded[1]),
                     "response": distribution(encoded[1]), "template": encoded[3], "unencoded": encoded[2]}),
        "tools": _tools(s),
        "refusals": {**_refusals(refuse, comply, n, policy), "diversity": _refusal_diversity(s)},
        "duplicates": _duplicates(s, threshold, max_examples),
        "leakage": None,
    }
    return checked(stats)


def with_leakage(stats: dict[str, Any], train: Summaries, heldout: Summaries,
                 threshold: float = NEAR_THRESHOLD, max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """``stats`` with the held-out leakage section (and its warnings and checks) filled in."""
    return checked({**stats, "leakage": _leakage(train, heldout, threshold, max_examples)})


def checked(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` with ``warnings``, ``checks`` and ``passed`` (re)computed from its figures,
    validated against ``sftlab.data.stats_schema.Stats``."""
    stats["warnings"], stats["checks"] = _warnings(stats), _checks(stats)
    stats["passed"] = all(c["passed"] for c in stats["checks"])
    validate_stats(stats)
    return stats


def _field_counts(s: Summaries, excluded: Sequence[dict]) -> tuple[dict[str, dict[str, int]], Counter, Counter]:
    """``({field: {value: n}} most frequent first (ties by name), refusals, benign contrasts per category)``."""
    counts: dict[str, Counter] = {f: Counter() for f in COUNTED_FIELDS}
    refuse, comply = Counter(), Counter()
    for f, sign in [*((s.fields(c), 1) for c in range(len(s.parts))), *((f, -1) for f in excluded)]:
        for name in COUNTED_FIELDS:
            (counts[name].update if sign > 0 else counts[name].subtract)(f["counts"][name])
        (refuse.update if sign > 0 else refuse.subtract)(f["refuse"])
        (comply.update if sign > 0 else comply.subtract)(f["comply"])
    ordered = {name: dict(sorted(((k, v) for k, v in c.items() if v > 0), key=lambda kv: (-kv[1], kv[0])))
               for name, c in counts.items()}
    return ordered, refuse, comply


def diversity(counts: dict[str, int]) -> dict[str, Any]:
    """Entropy (nats) of the task shares, its exponential, and the largest task.

    Tasks a, a, b, c: shares 1/2, 1/4, 1/4; H = 1.5 ln 2 = 1.0397; effective tasks 2^1.5 = 2.828.

        >>> diversity({"a": 2, "b": 1, "c": 1})["effective_tasks"]
        2.828427
    """
    n = sum(counts.values())
    if n == 0:
        return {"distinct": 0, "entropy_nats": 0.0, "effective_tasks": 0.0, "largest": None}
    entropy = max(0.0, -sum(k / n * math.log(k / n) for k in counts.values()))  # one task: 0, never -0.0
    top, k = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent, ties by name
    return {"distinct": len(counts), "entropy_nats": _r(entropy), "effective_tasks": _r(math.exp(entropy)),
            "largest": {"task": top, "share": _r(k / n)}}


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """n, min, nearest-rank p50/p90/p99, max and mean: ``[1, 2, 3, 10]`` -> p50 2, p90 10.

        >>> distribution([1, 2, 3, 10])
        {'n': 4, 'min': 1, 'p50': 2, 'p90': 10, 'p99': 10, 'max': 10, 'mean': 4.0}
    """
    if not len(values):
        return {"n": 0, **dict.fromkeys(("min", "p50", "p90", "p99", "max", "mean"))}
    v = np.sort(np.asarray(values))
    pick = lambda pct: v[-(-pct * len(v) // 100) - 1].item()  # noqa: E731  (ceil in integers)
    return {"n": len(v), "min": v[0].item(), "p50": pick(50), "p90": pick(90),
            "p99": pick(99), "max": v[-1].item(), "mean": _r(float(v.mean()))}


def _tools(s: Summaries) -> dict[str, Any]:
    """Tool use and reasoning per slice (``all`` first, then slices by name): records with tools
    (a tools list or a tool call), calls per record, reasoning words over trained words."""
    slices = [x for c, keep in enumerate(s.keep) for x, k in zip(s.fields(c)["slices"], keep.tolist()) if k]
    names = sorted({x for x in slices if x is not None})
    code = {name: i for i, name in enumerate(names)}
    of = np.fromiter((code.get(x, -1) for x in slices), np.int64, len(slices))
    calls, tools = s.column("calls").astype(np.int64), s.column("has_tools").astype(np.int64)
    reason, trained = s.column("reason_words").astype(np.int64), s.column("trained_words").astype(np.int64)
    out = {}
    for name in ["all", *names]:
        mask = np.ones(len(of), bool) if name == "all" else of == code[name]
        n, with_tools = int(mask.sum()), int(tools[mask].sum())
        r, t = int(reason[mask].sum()), int(trained[mask].sum())
        out[name] = {"records": n, "with_tools": with_tools, "share": _r(with_tools / n) if n else 0.0,
                     "calls": distribution(calls[mask]), "reasoning_share": _r(r / t) if t else 0.0}
    return {"unit": "words", "slices": out}


def _refusal_diversity(s: Summaries) -> dict[str, Any]:
    """``sftlab.data.diversity.response_diversity`` of the refusal records' final responses (the
    only texts the summaries keep: refusals are a small share of the records)."""
    excluded = set()
    for part, keep in zip(s.parts, s.keep):
        excluded.update(np.asarray(part["records"])[~keep].tolist())
    texts = [t for c in range(len(s.parts)) for r, t in s.fields(c).get("refusal_texts", []) if r not in excluded]
    return response_diversity(texts)


def _refusals(refused: Counter, comply: Counter, n: int, policy: Any) -> dict[str, Any]:
    """Refusal share and, per refusal category, how many benign contrasts (``expected: comply``
    with ``policy_category`` in the category's ``benign_contrast`` list, or the category itself)."""
    key = lambda c: str(c)  # noqa: E731  (categories were counted as str(category), None as "None")
    if policy is not None:
        categories = [(c.name, tuple(c.benign_contrast)) for c in policy.categories]
    else:
        categories = [(name, ()) for name in sorted(k for k, v in refused.items() if k != "None" and v > 0)]
    rows = []
    for name, contrast in categories:
        k = sum(comply[key(x)] for x in dict.fromkeys((*contrast, name)))
        rows.append({"name": name, "refusals": refused[key(name)], "benign_contrast": list(contrast),
                     "contrasts": k, "has_contrast": k > 0})
    total = sum(v for v in refused.values() if v > 0)
    return {"refuse": total, "comply": sum(v for v in comply.values() if v > 0),
            "share": _r(total / n) if n else 0.0, "uncategorised": max(refused["None"], 0), "categories": rows}


def _num_perm(s: Summaries) -> int:
    return int(s.parts[0]["conv_sigs"].shape[1]) if s.parts else DEFAULT_NUM_PERM


def _duplicates(s: Summaries, threshold: float, max_examples: int) -> dict[str, Any]:
    """Exact copies (equal normalised word sequences) and near copies (exact copies left out,
    word 3-shingle Jaccard >= ``threshold`` with an earlier record) of whole conversations."""
    signer, _ = _signer_and_ranges(_num_perm(s), threshold)
    firsts, is_first = first_rows(s.column("conv_key"))
    repeats = np.flatnonzero(~is_first)
    exact_examples = [{"a": s.ref(int(firsts[i])), "b": s.ref(int(i))} for i in repeats[:max_examples]]
    near = near_duplicates(s, np.flatnonzero(is_first), signer, threshold)
    return {"exact": {"records": int(len(repeats)), "groups": int(len(np.unique(firsts[repeats]))),
                      "examples": exact_examples},
            "near": {"threshold": threshold, "num_perm": signer.num_perm, "records": len(near),
                     "examples": [{"a": s.ref(j), "b": s.ref(i), "jaccard": _r(jac)}
                                  for i, j, jac in near[:max_examples]]}}


def _leakage(train: Summaries, held: Summaries, threshold: float, max_examples: int) -> dict[str, Any]:
    """Held-out records whose prompt (user messages) equals or nearly equals a training prompt."""
    t_keys, t_n = train.column("prompt_key"), train.column("prompt_n")
    h_keys, h_n = held.column("prompt_key"), held.column("prompt_n")
    first: dict[bytes, int] = {}
    for i in np.flatnonzero(t_n > 0).tolist():  # an empty prompt leaks nothing
        first.setdefault(t_keys[i].tobytes(), i)
    exact, exact_examples, rest = 0, [], []
    for h in np.flatnonzero(h_n > 0).tolist():
        j = first.get(h_keys[h].tobytes())
        if j is None:
            rest.append(h)
            continue
        exact += 1
        if len(exact_examples) < max_examples:
            exact_examples.append({"heldout": held.ref(h), "train": train.ref(j)})
    signer, _ = _signer_and_ranges(_num_perm(train), threshold)
    near = near_leaks(held, np.asarray(rest, dtype=np.int64), train,
                      np.asarray(sorted(first.values()), dtype=np.int64), signer, threshold)
    near_examples = [{"heldout": held.ref(h), "train": train.ref(j), "jaccard": _r(jac)}
                     for h, (j, jac) in sorted(near.items())[:max_examples]]
    n, leaked = len(held), exact + len(near)
    return {"heldout_records": n, "leaked": leaked, "share": _r(leaked / n) if n else 0.0,
            "exact": {"records": exact, "examples": exact_examples},
            "near": {"threshold": threshold, "records": len(near), "examples": near_examples}}


# ---------------------------------------------------------------- warnings and checks

def _warnings(s: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    add = lambda code, message: out.append({"code": code, "message": message})  # noqa: E731
    largest = s["tasks"]["largest"]
    if largest and largest["share"] > DOMINANT_TASK_SHARE and s["tasks"]["distinct"] > 1:
        add("dominant_task", f"task {largest['task']!r} is {largest['share']:.0%} of the records "
            f"(effective tasks {s['tasks']['effective_tasks']:.2f}); consider sampling weights per slice")
    ref = s["refusals"]
    for c in ref["categories"]:
        if not c["has_contrast"]:
            names = ", ".join([*c["benign_contrast"], c["name"]])
            hint = "" if s["policy"] else " (pass the policy to count its benign_contrast categories)"
            add("no_contrast", f"refusal category {c['name']!r} has no benign contrast "
                f"(expected: comply with policy_category in: {names}){hint}; the model may learn to "
                "over-refuse the whole topic")
        if c["refusals"] == 0:
            add("no_refusals", f"refusal category {c['name']!r} has no refusal example (expected: refuse)")
    div = ref.get("diversity") or {}
    if div.get("flagged"):
        add("refusal_collapse", f"the refusal responses are dominated by a few sentences: {div['reason']} "
            f"(distinct bigram share {div['distinct_2']}); a model trained on them learns the sentence, "
            "not the boundary: write refusals for the request they answer")
    if ref["uncategorised"]:
        add("uncategorised_refusals", f"{ref['uncategorised']} refusal records have no policy_category")
    dup = s["duplicates"]
    if dup["exact"]["records"]:
        add("exact_duplicates", f"{dup['exact']['records']} records repeat an earlier one exactly "
            f"(first: {_pair(dup['exact']['examples'][0])})")
    if dup["near"]["records"]:
        add("near_duplicates", f"{dup['near']['records']} records are near duplicates (Jaccard >= "
            f"{dup['near']['threshold']}) of an earlier one (first: {_pair(dup['near']['examples'][0])})")
    leak = s["leakage"]
    for kind in ("exact", "near") if leak else ():
        if leak[kind]["records"]:
            e = leak[kind]["examples"][0]
            add(f"{kind}_leakage", f"{leak[kind]['records']} held-out records have "
                f"{_article(kind)} duplicate "
                f"prompt in training (first: held-out {_where(e['heldout'])} ~ train {_where(e['train'])})")
    if s["lengths"]["unencoded"]:
        add("unencoded", f"{s['lengths']['unencoded']} records cannot be encoded with template "
            f"{s['lengths']['template']!r}; `sftlab validate` / `sftlab inspect` show why")
    return out


def _checks(s: dict[str, Any]) -> list[dict[str, Any]]:
    categories = s["refusals"]["categories"]
    missing = [c["name"] for c in categories if not c["has_contrast"]]
    if not categories:  # nothing to check is not a pass: say so
        checks = [{"name": "contrast", "passed": True, "skipped": True,
                   "message": "skipped: no refusal category to check (no policy given and no record with "
                              "expected: refuse)"}]
    else:
        checks = [{"name": "contrast", "passed": not missing,
                   "message": (f"refusal categories without a benign contrast: {', '.join(missing)}"
                               if missing else f"each of the {len(categories)} refusal categories has a "
                               "benign contrast")}]
    leak = s["leakage"]
    if leak is not None:
        checks.append({"name": "leakage", "passed": leak["leaked"] == 0,
                       "message": f"{leak['leaked']} of {leak['heldout_records']} held-out records "
                                  f"leak (exact {leak['exact']['records']}, near {leak['near']['records']})"})
    return checks


def _article(kind: str) -> str:
    return {"exact": "an exact", "near": "a near"}[kind]


def _where(ref: dict[str, Any]) -> str:
    return ref["where"] + (f" (id {ref['id']})" if ref.get("id") else "")


def _pair(example: dict[str, Any]) -> str:
    return f"{_where(example['b'])} ~ {_where(example['a'])}"


def _r(x: float) -> float:
    return round(float(x), 6)
