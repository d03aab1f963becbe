"""Data statistics before training: task diversity, lengths, refusal coverage, duplicates, leakage.

``compute_stats(conversations, heldout=None, policy=None, near_threshold=0.8, encoded=None)``
is pure over ``Conversation`` values and returns one JSON-serialisable dict of the shape
``sftlab.data.stats_schema.Stats`` (checked by ``validate_stats``), written by ``sftlab stats``;
``with_files`` adds the loaders' per-file counts. It runs the statistics engine
(``sftlab.data.chunk_stats``) over the conversations held in memory, the engine a prepared-data
store runs a chunk at a time for ``RUN/data/stats.json``: the same data gives the same figures.

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

Texts are NFKC-normalised, lowercased and split on whitespace by pyarrow's kernels
(``sftlab.data.dedup.MinHasher``); two texts are exact duplicates when their word sequences are
equal (compared by a 128-bit hash). Near-duplicate candidates come from MinHash LSH (64
permutations by default, datasketch's ``MinHashLSH`` bands chosen for recall, signatures computed
in bulk with NumPy exactly as datasketch's ``MinHash(scheme="affine32")`` would), and every
candidate is confirmed with the exact Jaccard similarity of the two shingle sets. 100k
conversations take about 5 s on 2 cores (``bench/stats_speed.py``).

Example::

    >>> from sftlab.data.conversation import Conversation, Message
    >>> conv = lambda task, q: Conversation((Message("user", q), Message("assistant", "ok")), task=task)
    >>> s = compute_stats([conv("qa", "a b"), conv("qa", "c d"), conv("math", "1+1"), conv(None, "x")])
    >>> s["counts"]["task"], round(s["tasks"]["effective_tasks"], 3)
    ({'qa': 2, '(none)': 1, 'math': 1}, 2.828)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftlab.data.chunk_stats import (COUNTED_FIELDS, MAX_EXAMPLES, NEAR_THRESHOLD, NONE, Summaries,
                                     conversation_text, distribution, diversity, merge, prompt_text, with_leakage)
from sftlab.data.conversation import Conversation
from sftlab.data.dedup import DEFAULT_NUM_PERM
from sftlab.data.stats_schema import SCHEMA_VERSION, Stats, validate_stats

__all__ = ["compute_stats", "with_files", "EncodedLengths", "distribution", "task_diversity", "word_lengths",
           "tool_counts", "tool_stats", "conversation_text", "prompt_text", "Stats", "validate_stats",
           "SCHEMA_VERSION", "COUNTED_FIELDS", "NONE", "DEFAULT_NUM_PERM"]


@dataclass(frozen=True)
class EncodedLengths:
    """What the statistics need of an encoding: the examples (anything with ``input_ids`` and
    ``trained_tokens``), how many records could not be encoded, and the template's name."""
    examples: Sequence[Any]
    unencoded: int
    template: str


def compute_stats(conversations: Sequence[Conversation], heldout: Sequence[Conversation] | None = None,
                  policy: Any = None, near_threshold: float = NEAR_THRESHOLD, *,
                  encoded: EncodedLengths | None = None, num_perm: int = DEFAULT_NUM_PERM,
                  max_examples: int = MAX_EXAMPLES, progress: bool = False) -> dict[str, Any]:
    """All statistics of the training ``conversations`` (and their leakage into ``heldout``), with
    a progress bar when ``progress``.

    ``policy`` (a ``sftlab.data.policy.Policy``) names the refusal categories and their benign
    contrasts; without it the categories are the ``policy_category`` values of refusal records.
    ``encoded`` (the training encoding of these conversations, handed forward by the caller that
    encoded them) switches lengths and the reasoning share from words to tokens.
    """
    if not 0.0 < near_threshold <= 1.0:
        raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold}")
    train = Summaries.in_memory(conversations, num_perm, near_threshold, progress=progress)
    stats = merge(train, policy, encoded=_token_lengths(encoded), threshold=near_threshold,
                  max_examples=max_examples)
    if encoded is not None:
        _with_tokens(stats, encoded.examples)
    if heldout is not None:
        held = Summaries.in_memory(heldout, num_perm, near_threshold, progress=progress)
        stats = with_leakage(stats, train, held, near_threshold, max_examples)
    return stats


def _token_lengths(encoded: EncodedLengths | None) -> tuple | None:
    """The engine's ``encoded``: ``(lengths, trained tokens, unencoded records, template name)``."""
    if encoded is None:
        return None
    lengths = np.asarray([len(e.input_ids) for e in encoded.examples], dtype=np.int64)
    trained = np.asarray([e.trained_tokens for e in encoded.examples], dtype=np.int64)
    return lengths, trained, encoded.unencoded, encoded.template


def _with_tokens(stats: dict[str, Any], examples: Sequence[Any]) -> None:
    """Lengths' ``extra`` (examples made by ``encoding.turns``: expand / ``overflow``: split, and
    the trained tokens truncation lost) and the reasoning share in tokens (trained reasoning
    tokens over trained tokens, 0 under ``reasoning: mask``), as a prepared store records them."""
    derived = [getattr(e, "derived", None) for e in examples]
    stats["lengths"]["extra"] = {
        "expanded_examples": derived.count("turn"),
        "expanded_tokens": sum(len(e.input_ids) for e, d in zip(examples, derived) if d == "turn"),
        "overflow_examples": derived.count("overflow"),
        "overflow_tokens": sum(len(e.input_ids) for e, d in zip(examples, derived) if d == "overflow"),
        "lost_trained_tokens": sum(getattr(e, "lost_trained_tokens", 0) for e in examples)}
    tools = stats["tools"]
    tools["unit"] = "tokens"
    for name, row in tools["slices"].items():
        chosen = [e for e in examples if name == "all" or e.slice == name]
        trained = sum(e.trained_tokens for e in chosen)
        row["reasoning_share"] = round(sum(getattr(e, "reasoning_tokens", 0) for e in chosen) / trained, 6) \
            if trained else 0.0


def task_diversity(convs: Sequence[Conversation]) -> dict[str, Any]:
    """``tasks``: entropy (nats) of the task shares, its exponential, and the largest task."""
    counts = _task_counts(convs)
    return diversity(dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))


def _task_counts(convs: Sequence[Conversation]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in convs:
        out[c.task or NONE] = out.get(c.task or NONE, 0) + 1
    return out


def word_lengths(conv: Conversation) -> tuple[int, int]:
    """``(prompt words, response words)``: whitespace-separated words of the system, user and tool
    messages, and of the assistant messages (the definition the engine's arrays follow).

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


def tool_counts(conv: Conversation) -> tuple[int, bool, int, int]:
    """``(tool calls, has tools, reasoning words, trained words)`` of one conversation: it "has
    tools" when it lists tool schemas or makes a call; trained words are the assistant's content,
    reasoning and call name and arguments (the definition the engine's arrays follow).

        >>> from sftlab.data.conversation import Message, ToolCall
        >>> a = Message("assistant", "It is cold.", reasoning="check the weather first",
        ...             tool_calls=(ToolCall("weather", '{"city": "Oslo"}'),))
        >>> tool_counts(Conversation((Message("user", "Oslo?"), a)))
        (1, True, 4, 10)
    """
    calls = sum(len(m.tool_calls) for m in conv.messages)
    reasoning = trained = 0
    for m in conv.messages:
        if m.role == "assistant":
            r = len(m.reasoning.split()) if m.reasoning else 0
            reasoning += r
            trained += r + len(m.content.split()) + sum(1 + len(t.arguments.split()) for t in m.tool_calls)
    return calls, bool(calls or conv.tools), reasoning, trained


def tool_stats(convs: Sequence[Conversation], encoded: EncodedLengths | None = None) -> dict[str, Any]:
    """The ``tools`` section of ``compute_stats``: tool use and reasoning per slice.

        >>> from sftlab.data.conversation import Conversation, Message, ToolCall
        >>> a = Message("assistant", "It is cold.", reasoning="check the weather first",
        ...             tool_calls=(ToolCall("weather", '{"city": "Oslo"}'),))
        >>> s = tool_stats([Conversation((Message("user", "Oslo?"), a)), Conversation((Message("user", "hi"),))])
        >>> s["slices"]["all"]["with_tools"], s["slices"]["all"]["calls"]["max"], s["slices"]["all"]["reasoning_share"]
        (1, 1, 0.4)
    """
    return compute_stats(convs, encoded=encoded)["tools"]


def with_files(stats: dict[str, Any], train_report: Any, heldout_report: Any = None) -> dict[str, Any]:
    """``stats`` plus the loaders' per-file counts (``sftlab.data.loading.LoadReport``), a ``quarantine``
    check, and ``passed`` recomputed: the whole ``stats.json``, validated (``validate_stats``). Returns a new dict."""
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
    out = {**stats, "files": files, "quarantined": quarantined, "checks": checks,
           "passed": all(c["passed"] for c in checks)}
    validate_stats(out)
    return out
