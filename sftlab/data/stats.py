"""Data statistics before training: task diversity, lengths, refusal coverage, duplicates, leakage.

``compute_stats(conversations, heldout=None, policy=None, near_threshold=0.8, encoded=None)``
is pure over ``Conversation`` values and returns one JSON-serialisable dict, written by
``sftlab stats`` and kept by ``train`` in ``RUN/data/stats.json``. Its keys (stable, schema 1)::

    schema_version   1
    records          number of training conversations analysed
    policy           {"version", "sha256"} of the policy given, or null
    counts           {"task"|"slice"|"source"|"policy_category"|"expected": {value: n}},
                     most frequent first; a missing value counts as "(none)"
    tasks            {"distinct", "entropy_nats", "effective_tasks", "largest": {"task", "share"}}
                     Shannon entropy H = -sum p ln p over task shares; effective tasks = exp(H)
    turns            assistant turns per conversation: DIST
    lengths          {"unit": "words"|"tokens", "prompt": DIST, "response": DIST,
                      "template": name or null, "unencoded": n}
    tools            {"unit": "words"|"tokens", "slices": {"all"|slice: {"records", "with_tools", "share",
                      "calls": DIST of tool calls per record, "reasoning_share"}}}: records
                     with tools (a tools list or a tool call), and reasoning as a share of what is
                     trained: trained reasoning tokens / trained tokens with an encoding, else
                     reasoning words / assistant words (content, reasoning and call arguments)
    refusals         {"refuse", "comply", "share" (refuse / records), "uncategorised",
                      "categories": [{"name", "refusals", "benign_contrast", "contrasts",
                                      "has_contrast"}]}
    duplicates       {"exact": {"records", "groups", "examples": [{"a", "b"}]},
                      "near": {"threshold", "num_perm", "records", "examples": [{"a", "b", "jaccard"}]}}
    leakage          null without held-out data, else {"heldout_records", "leaked", "share",
                      "exact": {"records", "examples": [{"heldout", "train"}]},
                      "near": {"threshold", "records", "examples": [{"heldout", "train", "jaccard"}]}}
    warnings         [{"code", "message"}]: worth a look, not a failure
    checks           [{"name", "passed", "message"}]: a failed one makes ``sftlab stats`` exit 1
    passed           every check passed
    files, quarantined   added by ``with_files`` from the loaders' reports (not by compute_stats)

DIST is ``{"n", "min", "p50", "p90", "p99", "max", "mean"}`` (nearest-rank percentiles; null
values when n = 0). A record reference (``a``, ``b``) is ``{"id", "where"}`` with ``where`` =
``file:line`` (or ``#index`` for records built in memory).

What is compared:

- **Duplicates** (inside the training data) use the whole conversation: every message as
  ``role: content``. ``exact.records`` counts records that repeat an earlier one (what exact
  dedup would drop); ``near.records`` counts records, exact copies left out, whose word 3-shingle
  Jaccard similarity with an earlier record is at least ``threshold`` (what near dedup would
  then drop).
- **Leakage** (held-out against training) uses the prompt side only: the user messages joined.
  A held-out prompt that training saw, even with another answer, no longer measures
  generalisation. ``exact.records`` counts held-out records whose prompt equals a training
  prompt; ``near.records`` those with a near (but not exact) one. Empty prompts are skipped.

Texts are lowercased and split on whitespace (as ``str.lower().split()``) by pyarrow's kernels;
two texts are exact duplicates when their word sequences are equal (compared by a 128-bit hash).
Near duplicates are found with datasketch's ``MinHashLSH`` (64 permutations by default, bands
chosen for recall). The MinHash signatures are computed in bulk with numpy, exactly as
datasketch's ``MinHash(scheme="affine32")`` would compute them from the same 32-bit shingle
hashes (MurmurHash3 pre-mix, then ``a*h + b mod 2^32`` per permutation), so one pass over a flat
array replaces 100k Python objects' updates. Every LSH candidate is confirmed with the exact
Jaccard similarity of the two shingle sets. 100k conversations take about 5 s on 2 cores
(``bench/stats_speed.py``).

Example::

    >>> from sftlab.data.conversation import Conversation, Message
    >>> conv = lambda task, q: Conversation((Message("user", q), Message("assistant", "ok")), task=task)
    >>> s = compute_stats([conv("qa", "a b"), conv("qa", "c d"), conv("math", "1+1"), conv(None, "x")])
    >>> s["counts"]["task"], round(s["tasks"]["effective_tasks"], 3)
    ({'qa': 2, '(none)': 1, 'math': 1}, 2.828)
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftlab.data.conversation import Conversation
from sftlab.data.dedup import (DEFAULT_NUM_PERM, MinHasher, TextSets, band_keys, colliding, lsh_index,
                          shared_keys)

SCHEMA_VERSION = 1
NONE = "(none)"
COUNTED_FIELDS = ("task", "slice", "source", "policy_category", "expected")
MAX_EXAMPLES = 5
DOMINANT_TASK_SHARE = 0.5


def compute_stats(conversations: Sequence[Conversation], heldout: Sequence[Conversation] | None = None,
                  policy: Any = None, near_threshold: float = 0.8, *,
                  encoded: "EncodedLengths | None" = None, num_perm: int = DEFAULT_NUM_PERM,
                  max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """All statistics of the training ``conversations`` (and their leakage into ``heldout``).

    ``policy`` (a ``sftlab.data.policy.Policy``) names the refusal categories and their benign
    contrasts; without it the categories are the ``policy_category`` values of refusal records.
    ``encoded`` (the training encoding of these conversations, handed forward by the caller that
    encoded them) switches lengths from words to tokens.
    """
    if not 0.0 < near_threshold <= 1.0:
        raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold}")
    convs = list(conversations)
    signer = MinHasher(num_perm)
    stats: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "records": len(convs),
        "policy": policy.manifest_entry() if policy is not None else None,
        "counts": {f: field_counts(convs, f) for f in COUNTED_FIELDS},
        "tasks": task_diversity(convs),
        "turns": distribution([len(c.assistant_indices) for c in convs]),
        "lengths": length_stats(convs, encoded),
        "tools": tool_stats(convs, encoded),
        "refusals": refusal_stats(convs, policy),
        "duplicates": duplicate_stats(convs, signer, near_threshold, max_examples),
        "leakage": (leakage_stats(convs, list(heldout), signer, near_threshold, max_examples)
                    if heldout is not None else None),
    }
    stats["warnings"], stats["checks"] = _warnings(stats), _checks(stats)
    stats["passed"] = all(c["passed"] for c in stats["checks"])
    return stats


# ---------------------------------------------------------------- counts, diversity, lengths

def field_counts(convs: Iterable[Conversation], name: str) -> dict[str, int]:
    """``{value: n}`` of one metadata field, most frequent first (ties by name), None as "(none)"."""
    counts = Counter(getattr(c, name) or NONE for c in convs)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def task_diversity(convs: Sequence[Conversation]) -> dict[str, Any]:
    """Entropy (nats) of the task shares, its exponential, and the largest task.

    Tasks a, a, b, c: shares 1/2, 1/4, 1/4; H = 1.5 ln 2 = 1.0397; effective tasks 2^1.5 = 2.828.
    """
    counts = field_counts(convs, "task")
    n = sum(counts.values())
    if n == 0:
        return {"distinct": 0, "entropy_nats": 0.0, "effective_tasks": 0.0, "largest": None}
    entropy = max(0.0, -sum(k / n * math.log(k / n) for k in counts.values()))  # never -0.0
    top, k = next(iter(counts.items()))
    return {"distinct": len(counts), "entropy_nats": _r(entropy),
            "effective_tasks": _r(math.exp(entropy)), "largest": {"task": top, "share": _r(k / n)}}


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """n, min, nearest-rank p50/p90/p99, max and mean: ``[1, 2, 3, 10]`` -> p50 2, p90 10."""
    if not len(values):
        return {"n": 0, **dict.fromkeys(("min", "p50", "p90", "p99", "max", "mean"))}
    v = np.sort(np.asarray(values))
    pick = lambda pct: v[-(-pct * len(v) // 100) - 1].item()  # noqa: E731  (ceil in integers)
    return {"n": len(v), "min": v[0].item(), "p50": pick(50), "p90": pick(90),
            "p99": pick(99), "max": v[-1].item(), "mean": _r(float(v.mean()))}


@dataclass(frozen=True)
class EncodedLengths:
    """What the statistics need of an encoding: the examples (anything with ``input_ids`` and
    ``trained_tokens``), how many records could not be encoded, and the template's name."""
    examples: Sequence[Any]
    unencoded: int
    template: str


def word_lengths(conv: Conversation) -> tuple[int, int]:
    """``(prompt words, response words)``: whitespace-separated words of the system, user and tool
    messages, and of the assistant messages.

        >>> from sftlab.data.conversation import Message
        >>> word_lengths(Conversation((Message("user", "two words"), Message("assistant", "one"))))
        (2, 1)
    """
    p = r = 0
    for m in conv.messages:
        n = len(m.content.split())
        if m.role == "assistant":
            r += n
        else:
            p += n
    return p, r


def length_stats(convs: Sequence[Conversation], encoded: EncodedLengths | None = None) -> dict:
    """Prompt and response lengths per conversation.

    Words (whitespace-separated, without ``encoded``): prompt = system, user and tool messages,
    response = assistant messages. Tokens (``encoded``, the examples as training encodes them):
    response = trained tokens, prompt = every other token of the rendering (template scaffolding
    included); records the template cannot encode are counted as ``unencoded``.
    """
    if encoded is None:
        prompt, response = zip(*map(word_lengths, convs)) if convs else ((), ())
        return {"unit": "words", "prompt": distribution(prompt), "response": distribution(response),
                "template": None, "unencoded": 0}
    examples = encoded.examples
    out = {"unit": "tokens",
           "prompt": distribution([len(e.input_ids) - e.trained_tokens for e in examples]),
           "response": distribution([e.trained_tokens for e in examples]),
           "template": encoded.template, "unencoded": encoded.unencoded}
    derived = [getattr(e, "derived", None) for e in examples]
    out["extra"] = {  # examples made by encoding.turns: expand / overflow: split, and tokens truncation lost
        "expanded_examples": derived.count("turn"),
        "expanded_tokens": sum(len(e.input_ids) for e, d in zip(examples, derived) if d == "turn"),
        "overflow_examples": derived.count("overflow"),
        "overflow_tokens": sum(len(e.input_ids) for e, d in zip(examples, derived) if d == "overflow"),
        "lost_trained_tokens": sum(getattr(e, "lost_trained_tokens", 0) for e in examples)}
    return out


def tool_stats(convs: Sequence[Conversation], encoded: "EncodedLengths | None" = None) -> dict[str, Any]:
    """Tool use and reasoning per slice (``all`` first, then slices by name).

    A record "has tools" when it lists tool schemas or makes a tool call. The reasoning share is,
    with ``encoded``, trained reasoning tokens over trained tokens (0 under ``reasoning: mask``);
    without, reasoning words over assistant words (content + reasoning + call name and arguments).

        >>> from sftlab.data.conversation import Conversation, Message, ToolCall
        >>> a = Message("assistant", "It is cold.", reasoning="check the weather first",
        ...             tool_calls=(ToolCall("weather", '{"city": "Oslo"}'),))
        >>> s = tool_stats([Conversation((Message("user", "Oslo?"), a)), Conversation((Message("user", "hi"),))])
        >>> s["slices"]["all"]["with_tools"], s["slices"]["all"]["calls"]["max"], s["slices"]["all"]["reasoning_share"]
        (1, 1, 0.4)
    """
    groups: dict[str, list[Conversation]] = {"all": list(convs)}
    for c in convs:
        if c.slice is not None:
            groups.setdefault(c.slice, []).append(c)
    out = {}
    for name in ["all", *sorted(k for k in groups if k != "all")]:
        rows = groups[name]
        calls = [sum(len(m.tool_calls) for m in c.messages) for c in rows]
        with_tools = sum(1 for c, k in zip(rows, calls) if k or c.tools)
        reasoning = trained = 0
        for c in rows:
            for m in c.messages:
                if m.role != "assistant":
                    continue
                r = len(m.reasoning.split()) if m.reasoning else 0
                reasoning += r
                trained += r + len(m.content.split()) + sum(
                    1 + len(t.arguments.split()) for t in m.tool_calls)
        if encoded is not None:
            examples = [e for e in encoded.examples if name == "all" or e.slice == name]
            reasoning = sum(getattr(e, "reasoning_tokens", 0) for e in examples)
            trained = sum(e.trained_tokens for e in examples)
        out[name] = {"records": len(rows), "with_tools": with_tools,
                     "share": _r(with_tools / len(rows)) if rows else 0.0, "calls": distribution(calls),
                     "reasoning_share": _r(reasoning / trained) if trained else 0.0}
    return {"unit": "words" if encoded is None else "tokens", "slices": out}


def refusal_stats(convs: Sequence[Conversation], policy: Any = None) -> dict[str, Any]:
    """Refusal share and, per refusal category, how many benign contrasts (``expected: comply``
    with ``policy_category`` in the category's ``benign_contrast`` list, or the category itself);
    ``diversity``: ``sftlab.data.diversity.response_diversity`` of the refusal records' final
    assistant responses (flagged when a few sentences dominate them)."""
    refuse = [c for c in convs if c.expected == "refuse"]
    comply = Counter(c.policy_category for c in convs if c.expected == "comply")
    refused = Counter(c.policy_category for c in refuse)
    if policy is not None:
        categories = [(c.name, tuple(c.benign_contrast)) for c in policy.categories]
    else:
        categories = [(name, ()) for name in sorted(n for n in refused if n is not None)]
    rows = []
    for name, contrast in categories:
        k = sum(comply[n] for n in dict.fromkeys((*contrast, name)))
        rows.append({"name": name, "refusals": refused[name], "benign_contrast": list(contrast),
                     "contrasts": k, "has_contrast": k > 0})
    from sftlab.data.diversity import response_diversity

    responses = [c.messages[i].content for c in refuse for i in c.assistant_indices[-1:]]
    return {"refuse": len(refuse), "comply": sum(comply.values()),
            "share": _r(len(refuse) / len(convs)) if convs else 0.0,
            "uncategorised": refused[None], "categories": rows,
            "diversity": response_diversity(responses)}


# ---------------------------------------------------------------- text and record references

def conversation_text(c: Conversation) -> str:
    """Every message as ``role: content``, joined (normalised later, word by word)."""
    return " ".join([f"{m.role}: {m.content}" for m in c.messages])


def prompt_text(c: Conversation) -> str:
    """The user messages joined (empty when there is none)."""
    return " ".join([m.content for m in c.messages if m.role == "user"])


def record_ref(c: Conversation, index: int) -> dict[str, Any]:
    """``{"id", "where"}``: ``where`` is ``file:line`` when the record came from a file."""
    o = c.origin
    where = (f"{o.file}:{o.line}" if o.line is not None else o.file) if o else f"#{index}"
    return {"id": c.id, "where": where}


# ---------------------------------------------------------------- duplicates and leakage

def duplicate_stats(convs: Sequence[Conversation], signer: MinHasher, threshold: float,
                    max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """Exact and near duplicates of whole conversations inside the training data."""
    sets = TextSets(signer, [conversation_text(c) for c in convs])
    first: dict[bytes, int] = {}
    uniques: list[int] = []  # the first record of each distinct text
    groups: set[bytes] = set()
    exact_examples: list[dict] = []
    for i, key in enumerate(sets.keys):
        j = first.setdefault(key, i)
        if j == i:
            uniques.append(i)
            continue
        groups.add(key)
        if len(exact_examples) < max_examples:
            exact_examples.append({"a": record_ref(convs[j], j), "b": record_ref(convs[i], i)})
    near_records, near_examples = 0, []
    lsh = lsh_index(signer, threshold)
    rows = np.asarray(uniques, dtype=np.int64)
    for i in rows[colliding(band_keys(sets.sigs[rows], lsh.hashranges))].tolist():
        m = signer.lean(sets.sigs[i])
        candidates = lsh.query(m)
        match = sets.best_match(i, candidates, sets, threshold) if candidates else None
        if match is None:
            lsh.insert(i, m, check_duplication=False)  # only novel texts stay in the index
            continue
        near_records += 1
        if len(near_examples) < max_examples:
            j = match[0]
            near_examples.append({"a": record_ref(convs[j], j), "b": record_ref(convs[i], i),
                                  "jaccard": _r(match[1])})
    return {"exact": {"records": len(convs) - len(uniques), "groups": len(groups),
                      "examples": exact_examples},
            "near": {"threshold": threshold, "num_perm": signer.num_perm, "records": near_records,
                     "examples": near_examples}}


def leakage_stats(train: Sequence[Conversation], heldout: Sequence[Conversation], signer: MinHasher,
                  threshold: float, max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """Held-out records whose prompt (user messages) equals or nearly equals a training prompt."""
    train_sets = TextSets(signer, [prompt_text(c) for c in train])
    held_sets = TextSets(signer, [prompt_text(c) for c in heldout])
    first: dict[bytes, int] = {}
    for i in np.flatnonzero(train_sets.n_words).tolist():  # an empty prompt leaks nothing
        first.setdefault(train_sets.keys[i], i)
    exact, exact_examples, rest = 0, [], []
    for h in np.flatnonzero(held_sets.n_words).tolist():
        j = first.get(held_sets.keys[h])
        if j is None:
            rest.append(h)
            continue
        exact += 1
        if len(exact_examples) < max_examples:
            exact_examples.append({"heldout": record_ref(heldout[h], h), "train": record_ref(train[j], j)})
    near = _near_matches(signer, held_sets, rest, train_sets, sorted(first.values()), threshold)
    near_examples = [{"heldout": record_ref(heldout[h], h), "train": record_ref(train[j], j),
                      "jaccard": _r(jac)} for h, (j, jac) in sorted(near.items())[:max_examples]]
    n, leaked = len(heldout), exact + len(near)
    return {"heldout_records": n, "leaked": leaked, "share": _r(leaked / n) if n else 0.0,
            "exact": {"records": exact, "examples": exact_examples},
            "near": {"threshold": threshold, "records": len(near), "examples": near_examples}}


def _near_matches(signer: MinHasher, queries: TextSets, query_rows: list[int], corpus: TextSets,
                  corpus_rows: list[int], threshold: float) -> dict[int, tuple[int, float]]:
    """``{query row: (corpus row, Jaccard)}`` for the query rows with a near duplicate among the
    corpus rows.

    The smaller side goes into the LSH index and the larger one queries it, since an insert costs
    datasketch about twice a query (held-out sets are usually far smaller than training).
    """
    if not query_rows or not corpus_rows:
        return {}
    index_queries = len(query_rows) < len(corpus_rows)
    q_rows, c_rows = np.asarray(query_rows), np.asarray(corpus_rows)
    (indexed, i_rows), (probing, p_rows) = (((queries, q_rows), (corpus, c_rows)) if index_queries
                                            else ((corpus, c_rows), (queries, q_rows)))
    lsh = lsh_index(signer, threshold)
    i_keys = band_keys(indexed.sigs[i_rows], lsh.hashranges)
    p_keys = band_keys(probing.sigs[p_rows], lsh.hashranges)
    for k in i_rows[shared_keys(i_keys, p_keys)].tolist():
        lsh.insert(k, signer.lean(indexed.sigs[k]), check_duplication=False)
    found: dict[int, tuple[int, float]] = {}
    for p in p_rows[shared_keys(p_keys, i_keys)].tolist():
        candidates = lsh.query(signer.lean(probing.sigs[p]))
        if index_queries:  # p is a corpus text: confirm each query it may be a near copy of
            for k in candidates:
                if k not in found and (jac := queries.jaccard(k, corpus, p)) >= threshold:
                    found[k] = (p, jac)
        elif candidates and (match := queries.best_match(p, candidates, corpus, threshold)):
            found[p] = match
    return found


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


def with_files(stats: dict[str, Any], train_report: Any, heldout_report: Any = None) -> dict[str, Any]:
    """``stats`` plus the loaders' per-file counts (``sftlab.data.loading.LoadReport``), a ``quarantine``
    check, and ``passed`` recomputed. Returns a new dict."""
    files, quarantined = [], 0
    for split, report in (("train", train_report), ("heldout", heldout_report)):
        for f in report.files if report is not None else ():
            files.append({"path": f.path, "split": split, "records": f.records,
                          "accepted": f.accepted, "quarantined": f.quarantined})
            quarantined += f.quarantined
    check = {"name": "quarantine", "passed": quarantined == 0,
             "message": f"{quarantined} records quarantined" + (
                 "; `sftlab validate` writes them with their reasons" if quarantined else "")}
    checks = [c for c in stats["checks"] if c["name"] != "quarantine"] + [check]
    return {**stats, "files": files, "quarantined": quarantined, "checks": checks,
            "passed": all(c["passed"] for c in checks)}


def _article(kind: str) -> str:
    return {"exact": "an exact", "near": "a near"}[kind]


def _where(ref: dict[str, Any]) -> str:
    return ref["where"] + (f" (id {ref['id']})" if ref.get("id") else "")


def _pair(example: dict[str, Any]) -> str:
    return f"{_where(example['b'])} ~ {_where(example['a'])}"


def _r(x: float) -> float:
    return round(float(x), 6)
