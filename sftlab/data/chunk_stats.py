"""The statistics of ``sftlab.data.stats``, computed over a stream of chunks in bounded memory.

``compute_stats`` holds every conversation; a prepared-data store (``sftlab.prepare``) sees
its records a chunk at a time, in several processes. Each chunk is summarised here into small
arrays, written beside the chunk's tokens, and ``merge`` puts them together into the same
schema as ``compute_stats`` (``records``, ``counts``, ``tasks``, ``turns``, ``lengths``,
``refusals``, ``duplicates``, ``leakage``, ``warnings``, ``checks``, ``passed``).

What is kept per record (about 150 bytes, whatever its length):

- counts: a few integers (turns, prompt and response words) and the metadata values, counted
  per chunk (``fields.json``);
- exact duplicates: a 128-bit key of the normalised text (``sftlab.data.dedup.MinHasher.keys``);
- near duplicates: the LSH band keys of its MinHash signature (``dedup.band_keys``, uint64 per
  band), and the signature itself on disk, read back only for the few records whose band keys
  collide with another's.

One difference from ``compute_stats``: a near-duplicate candidate is confirmed by the MinHash
estimate of its Jaccard similarity (the share of equal signature values, standard error about
0.05 at 64 permutations), not by the exact Jaccard of the shingle sets, which would need the
texts again.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.data.dedup import DEFAULT_NUM_PERM, MinHasher, band_keys, colliding, lsh_index
from sftlab.data.stats import (COUNTED_FIELDS, MAX_EXAMPLES, NONE, SCHEMA_VERSION, _checks, _r, _warnings,
                               conversation_text, distribution, prompt_text)

NEAR_THRESHOLD = 0.8
ARRAYS = ("turns", "prompt_words", "response_words", "calls", "has_tools", "reason_words", "trained_words", "lines", "conv_key", "conv_bands", "conv_sigs",
          "prompt_key", "prompt_n", "prompt_bands", "prompt_sigs", "records")


_SIGNERS: dict = {}
_WORD_CACHE_LIMIT = 1 << 20  # distinct words whose hash a signer keeps between chunks


def _signer_and_ranges(num_perm: int = DEFAULT_NUM_PERM, threshold: float = NEAR_THRESHOLD):
    """A ``MinHasher`` and the LSH band ranges, made once per process (the band parameters cost
    a numerical optimisation); its word-hash cache is emptied beyond ``_WORD_CACHE_LIMIT`` words,
    so memory stays bounded however many chunks it sees."""
    key = (num_perm, threshold)
    if key not in _SIGNERS:
        signer = MinHasher(num_perm)
        _SIGNERS[key] = signer, lsh_index(signer, threshold).hashranges
    signer, ranges = _SIGNERS[key]
    if len(signer._word_hash) > _WORD_CACHE_LIMIT:
        signer._word_hash.clear()
    return signer, ranges


def warm() -> None:
    """Make the signer and import what ``summarise`` uses (datasketch, pyarrow's compute kernels)
    now: called before worker processes fork, so each inherits them instead of paying again."""
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401

    pa.array([""], type=pa.large_string())  # its first call imports pandas (pyarrow checks for its types)
    _signer_and_ranges()


def _text_words(signer: MinHasher, convs: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"conv": (hashes, offsets), "prompt": ...}``: the normalised words of
    ``stats.conversation_text`` and ``stats.prompt_text`` of every conversation, as
    ``signer.words`` gives them for those texts, with each message's content split once.

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
    if not (np.diff(role_offsets) == 1).all():  # a role that is not one word: join the texts as stats does
        from sftlab.data.stats import conversation_text

        conv = signer.words([conversation_text(c) for c in convs])
    else:
        code = {r: i for i, r in enumerate(roles)}
        role_of = np.fromiter((code[m.role] for m in messages), np.int64, len(messages))
        starts = np.concatenate(([0], np.cumsum(n + 1)))  # each message: its role word, then its content
        out = np.empty(int(starts[-1]), dtype=np.uint64)
        out[starts[:-1]] = role_words[role_of]
        content_at = np.repeat(starts[:-1] + 1 - offsets[:-1], n) + np.arange(len(words))
        out[content_at] = words
        conv = out, starts[msg_bounds]
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


def summarise(convs: list, records: list[int], out: Path) -> None:
    """Write the summary of one chunk's accepted conversations (``records``: their record
    numbers) into the folder ``out``: ``fields.json`` and one ``.npy`` per array of ``ARRAYS``."""
    signer, ranges = _signer_and_ranges()
    arrays: dict[str, np.ndarray] = {"records": np.asarray(records, dtype=np.int64)}
    # Word counts of ``stats.word_lengths`` (prompt, response) and tool use and reasoning as
    # ``stats.tool_stats`` counts them (calls, has_tools, reasoning and trained words), summed
    # per conversation from each message's count; calls and reasoning (rare) counted in Python.
    texts = _text_words(signer, convs)
    split = texts.pop("split")
    messages = [m for c in convs for m in c.messages]
    conv_of = np.repeat(np.arange(len(convs)), [len(c.messages) for c in convs])
    assistant = np.fromiter((m.role == "assistant" for m in messages), bool, len(messages))

    def per_conv(values) -> np.ndarray:
        return np.bincount(conv_of, weights=values, minlength=len(convs)).astype(np.int64)

    turns, response = per_conv(assistant), per_conv(np.where(assistant, split, 0))
    prompt = per_conv(np.where(assistant, 0, split))
    calls, reason, trained = [0] * len(convs), [0] * len(convs), response.tolist()
    for k, m in enumerate(messages):
        if m.tool_calls or m.reasoning:
            c = int(conv_of[k])
            calls[c] += len(m.tool_calls)
            if m.role == "assistant":
                w = len(m.reasoning.split()) if m.reasoning else 0
                reason[c] += w
                trained[c] += w + sum(1 + len(x.arguments.split()) for x in m.tool_calls)
    has_tools = [bool(k or c.tools) for k, c in zip(calls, convs)]
    arrays["turns"] = turns.astype(np.int32)
    arrays["calls"] = np.asarray(calls, dtype=np.int32)
    arrays["has_tools"] = np.asarray(has_tools, dtype=np.int8)
    arrays["reason_words"] = np.asarray(reason, dtype=np.int64)
    arrays["trained_words"] = np.asarray(trained, dtype=np.int64)
    arrays["prompt_words"] = np.asarray(prompt, dtype=np.int32)
    arrays["response_words"] = np.asarray(response, dtype=np.int32)
    arrays["lines"] = np.asarray([c.origin.line if c.origin and c.origin.line is not None else -1
                                  for c in convs], dtype=np.int64)
    for name, (words, offsets) in texts.items():
        keys = signer.keys(words, offsets)
        arrays[f"{name}_key"] = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
        sh, st = signer.shingles(words, offsets)
        sigs = signer.signatures(sh, st) if len(convs) else np.zeros((0, signer.num_perm), np.uint32)
        arrays[f"{name}_sigs"] = sigs
        arrays[f"{name}_bands"] = band_keys(sigs, ranges)
        if name == "prompt":
            arrays["prompt_n"] = np.diff(offsets).astype(np.int32)
    fields = {f: dict(Counter(getattr(c, f) or NONE for c in convs)) for f in COUNTED_FIELDS}
    refuse = Counter(str(c.policy_category) for c in convs if c.expected == "refuse")
    comply = Counter(str(c.policy_category) for c in convs if c.expected == "comply")
    ids = [c.id for c in convs]
    out.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        np.save(out / f"{name}.npy", a, allow_pickle=False)
    (out / "fields.json").write_text(json.dumps({"counts": fields, "refuse": refuse, "comply": comply,
                                                 "ids": ids, "slices": [c.slice for c in convs],
                                                 "refusal_texts": [[r, c.messages[i].content] for c, r in zip(convs, records)
                                                                   if c.expected == "refuse"
                                                                   for i in c.assistant_indices[-1:]]},
                                                ensure_ascii=False), encoding="utf-8")


class Summaries:
    """The chunk summaries of one split, memory-mapped, with the records to leave out."""

    def __init__(self, dirs: list[Path], files: list[str], exclude: set[int] | frozenset = frozenset()):
        self.dirs, self.files = dirs, files  # files[k]: the input file name of chunk k
        self.parts = [{n: np.load(d / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in ARRAYS} for d in dirs]
        self.keep = [~np.isin(p["records"], np.fromiter(exclude, np.int64, len(exclude))) if exclude
                     else np.ones(len(p["records"]), bool) for p in self.parts]
        sizes = [int(k.sum()) for k in self.keep]
        self.starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self._fields: dict[int, dict] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def column(self, name: str) -> np.ndarray:
        """One array over every kept record, in record order (in memory: keys and bands only)."""
        parts = [np.asarray(p[name])[k] for p, k in zip(self.parts, self.keep)]
        if parts:
            return np.concatenate(parts)
        return np.zeros((0,), np.int64)

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """``name``'s values at global kept rows (read from disk for these rows only)."""
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        out = []
        for c, r in zip(chunk.tolist(), rows.tolist()):
            local = np.flatnonzero(self.keep[c])[r - self.starts[c]]
            out.append(np.asarray(self.parts[c][name][local]))
        return np.stack(out) if out else np.zeros((0,), np.uint32)

    def fields(self, c: int) -> dict:
        if c not in self._fields:
            self._fields = {c: json.loads((self.dirs[c] / "fields.json").read_text(encoding="utf-8"))}
        return self._fields[c]

    def ref(self, row: int) -> dict[str, Any]:
        """``{"id", "where"}`` of a kept row, as ``sftlab.data.stats.record_ref`` gives it."""
        c = int(np.searchsorted(self.starts, row, side="right") - 1)
        local = int(np.flatnonzero(self.keep[c])[row - self.starts[c]])
        line = int(self.parts[c]["lines"][local])
        return {"id": self.fields(c)["ids"][local], "where": f"{self.files[c]}:{line}" if line >= 0 else self.files[c]}


def merge(s: Summaries, policy: Any = None, excluded_fields: list[dict] | None = None, encoded: Any = None,
          threshold: float = NEAR_THRESHOLD, max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """``compute_stats``' dict (``leakage`` null) from the chunk summaries. ``excluded_fields``:
    ``fields.json``-shaped counts of the records left out (duplicate ids), subtracted.
    ``encoded``: ``(lengths, trained tokens, unencoded records, template name)`` of the examples,
    for lengths in tokens as ``compute_stats(encoded=...)`` gives them (words without it)."""
    counts: dict[str, Counter] = {f: Counter() for f in COUNTED_FIELDS}
    refuse, comply = Counter(), Counter()
    for c in range(len(s.dirs)):
        f = s.fields(c)
        for name in COUNTED_FIELDS:
            counts[name].update(f["counts"][name])
        refuse.update(f["refuse"])
        comply.update(f["comply"])
    for f in excluded_fields or ():
        for name in COUNTED_FIELDS:
            counts[name].subtract(f["counts"][name])
        refuse.subtract(f["refuse"])
        comply.subtract(f["comply"])
    ordered = {name: dict(sorted(((k, v) for k, v in c.items() if v > 0), key=lambda kv: (-kv[1], kv[0])))
               for name, c in counts.items()}
    n = len(s)
    stats: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "records": n,
        "policy": policy.manifest_entry() if policy is not None else None,
        "counts": ordered, "tasks": _diversity(ordered["task"]),
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
    stats["warnings"], stats["checks"] = _warnings(stats), _checks(stats)
    stats["passed"] = all(c["passed"] for c in stats["checks"])
    return stats


def with_leakage(stats: dict[str, Any], train: Summaries, heldout: Summaries,
                 threshold: float = NEAR_THRESHOLD, max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """``stats`` with the held-out leakage section (and its warnings and checks) filled in."""
    out = {**stats, "leakage": _leakage(train, heldout, threshold, max_examples)}
    out["warnings"], out["checks"] = _warnings(out), _checks(out)
    out["passed"] = all(c["passed"] for c in out["checks"])
    return out


def _diversity(counts: dict[str, int]) -> dict[str, Any]:
    n = sum(counts.values())
    if n == 0:
        return {"distinct": 0, "entropy_nats": 0.0, "effective_tasks": 0.0, "largest": None}
    entropy = max(0.0, -sum(k / n * math.log(k / n) for k in counts.values()))  # one task: 0, never -0.0
    top, k = next(iter(counts.items()))
    return {"distinct": len(counts), "entropy_nats": _r(entropy), "effective_tasks": _r(math.exp(entropy)),
            "largest": {"task": top, "share": _r(k / n)}}


def _tools(s: Summaries) -> dict[str, Any]:
    """``sftlab.data.stats.tool_stats`` from the per-record counts."""
    groups: dict[str, dict] = {}
    for c, (part, keep) in enumerate(zip(s.parts, s.keep)):
        slices = s.fields(c)["slices"]
        calls, tools = np.asarray(part["calls"]), np.asarray(part["has_tools"])
        reason, trained = np.asarray(part["reason_words"]), np.asarray(part["trained_words"])
        for j in np.flatnonzero(keep).tolist():
            for name in ("all", slices[j]) if slices[j] is not None else ("all",):
                g = groups.setdefault(name, {"calls": [], "with_tools": 0, "reasoning": 0, "trained": 0})
                g["calls"].append(int(calls[j]))
                g["with_tools"] += int(tools[j])
                g["reasoning"] += int(reason[j])
                g["trained"] += int(trained[j])
    groups.setdefault("all", {"calls": [], "with_tools": 0, "reasoning": 0, "trained": 0})
    out = {}
    for name in ["all", *sorted(k for k in groups if k != "all")]:
        g = groups[name]
        n = len(g["calls"])
        out[name] = {"records": n, "with_tools": g["with_tools"], "share": _r(g["with_tools"] / n) if n else 0.0,
                     "calls": distribution(g["calls"]),
                     "reasoning_share": _r(g["reasoning"] / g["trained"]) if g["trained"] else 0.0}
    return {"unit": "words", "slices": out}


def _refusal_diversity(s: Summaries) -> dict[str, Any]:
    """``sftlab.data.diversity.response_diversity`` of the refusal records' final responses (the
    only texts the summaries keep: refusals are a small share of the records)."""
    from sftlab.data.diversity import response_diversity

    excluded = set()
    for part, keep in zip(s.parts, s.keep):
        excluded.update(np.asarray(part["records"])[~keep].tolist())
    texts = [t for c in range(len(s.dirs)) for r, t in s.fields(c).get("refusal_texts", []) if r not in excluded]
    return response_diversity(texts)


def _refusals(refused: Counter, comply: Counter, n: int, policy: Any) -> dict[str, Any]:
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


def _first_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first row of each row's key, whether the row is the first)``, keys as [n, 16] bytes."""
    if not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, bool)
    flat = np.ascontiguousarray(keys).view(np.dtype((np.void, 16))).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    firsts = first[inverse.ravel()]
    return firsts, firsts == np.arange(len(keys))


def _estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b).mean(axis=-1)


def _duplicates(s: Summaries, threshold: float, max_examples: int) -> dict[str, Any]:
    signer, _ = _signer_and_ranges()
    firsts, is_first = _first_rows(s.column("conv_key"))
    repeats = np.flatnonzero(~is_first)
    exact_examples = [{"a": s.ref(int(firsts[i])), "b": s.ref(int(i))} for i in repeats[:max_examples]]
    lsh = lsh_index(signer, threshold)
    uniques = np.flatnonzero(is_first)
    rows = uniques[colliding(s.column("conv_bands")[uniques])] if len(uniques) else uniques
    sigs = s.rows("conv_sigs", rows)
    near_records, near_examples, inserted = 0, [], {}
    for r, sig in zip(rows.tolist(), sigs):
        m = signer.lean(sig)
        candidates = list(lsh.query(m))
        best = None
        if candidates:
            est = _estimate(np.stack([inserted[c] for c in candidates]), sig)
            k = int(np.argmax(est))
            if est[k] >= threshold:
                best = (candidates[k], float(est[k]))
        if best is None:
            lsh.insert(r, m, check_duplication=False)
            inserted[r] = sig
            continue
        near_records += 1
        if len(near_examples) < max_examples:
            near_examples.append({"a": s.ref(best[0]), "b": s.ref(r), "jaccard": _r(best[1])})
    return {"exact": {"records": int(len(repeats)), "groups": int(len(np.unique(firsts[repeats]))),
                      "examples": exact_examples},
            "near": {"threshold": threshold, "num_perm": signer.num_perm, "records": near_records,
                     "examples": near_examples, "confirmed_by": "minhash_estimate"}}


def _leakage(train: Summaries, held: Summaries, threshold: float, max_examples: int) -> dict[str, Any]:
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
    near: dict[int, tuple[int, float]] = {}
    if rest and first:
        corpus = np.asarray(sorted(first.values()), dtype=np.int64)
        t_bands, h_bands = train.column("prompt_bands")[corpus], held.column("prompt_bands")[rest]
        by_band: dict[tuple[int, int], list[int]] = {}
        for q, row in enumerate(h_bands.tolist()):
            for b, key in enumerate(row):
                by_band.setdefault((b, key), []).append(q)
        pairs: dict[int, set[int]] = {}
        for t, row in enumerate(t_bands.tolist()):
            for b, key in enumerate(row):
                for q in by_band.get((b, key), ()):
                    pairs.setdefault(q, set()).add(t)
        h_sigs = held.rows("prompt_sigs", np.asarray(rest, dtype=np.int64))
        for q, ts in sorted(pairs.items()):
            cand = np.asarray(sorted(ts), dtype=np.int64)
            est = _estimate(train.rows("prompt_sigs", corpus[cand]), h_sigs[q])
            k = int(np.argmax(est))
            if est[k] >= threshold:
                near[rest[q]] = (int(corpus[cand[k]]), float(est[k]))
    near_examples = [{"heldout": held.ref(h), "train": train.ref(j), "jaccard": _r(jac)}
                     for h, (j, jac) in sorted(near.items())[:max_examples]]
    n, leaked = len(held), exact + len(near)
    return {"heldout_records": n, "leaked": leaked, "share": _r(leaked / n) if n else 0.0,
            "exact": {"records": exact, "examples": exact_examples},
            "near": {"threshold": threshold, "records": len(near), "examples": near_examples,
                     "confirmed_by": "minhash_estimate"}}
