"""Read conversation files, validate every record, and quarantine the ones that cannot be used.

Readers: JSONL (one record per line; a ``.json`` file that does not start with ``[`` is read this
way too), a JSON array, Parquet, a directory written by ``datasets``' ``save_to_disk``
(a ``DatasetDict`` is read split by split, each reported as ``DIR[split]``), and a folder of such
files, each read and reported as itself (``sftlab.data.readers.folder_files``). Every record is either
accepted or quarantined with a reason that names the file, line, record id, field and message
index, what was expected and how to fix it, so that per file ``records = accepted + quarantined``.

What is quarantined and what is only warned about (warnings are counted per rule in the summary,
``warnings``, and the record is used):

- quarantined: no assistant message, an empty assistant or **user** message (a response to
  nothing teaches the model to answer an empty prompt), broken turn order, a record with both
  ``messages`` and ``conversations`` (which one is meant cannot be told), and every row problem
  that ``sftlab.data.formats`` names, among them a top-level field that nothing reads
  (``unused_field``: not read by the layout, not known metadata, not declared ignored; ``images``,
  ``videos`` and ``audios`` too, as sftlab trains on text only) and a preference record
  (``preference_record``, unless its entry says ``layout: chosen``);
- warned: a conversation that **ends on a user turn** (``ends_on_user``: the earlier turns train as
  usual, the last user message is context for nothing).

Example::

    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.jsonl")
    >>> rows = [{"id": "a", "messages": [{"role": "user", "content": "2+2?"},
    ...                                  {"role": "assistant", "content": "4"}]},
    ...         {"id": "b", "messages": [{"role": "user", "content": "hi"}]}]
    >>> _ = open(path, "w").write("\\n".join(json.dumps(r) for r in rows))
    >>> report = load_files([path])
    >>> report.accepted, report.quarantined[0].line, report.quarantined[0].code
    (1, 2, 'no_assistant')
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab import collector
from sftlab.errors import UsageError
from sftlab.files import atomic_file
from sftlab.progress import progress_bar
from sftlab.data.conversation import Conversation, Origin, unpaired_surrogate
from sftlab.data.formats import Columns, RecordError, to_conversation

from sftlab.data.readers import DEFAULT_MAX_RECORD_BYTES, RawItem, check_readable, sources


@dataclass(frozen=True)
class QuarantineEntry:
    """One record that was not accepted, with enough context to find and fix it."""
    file: str
    line: int | None
    """1-based line (JSONL), record number (JSON array) or row (Parquet, datasets)."""
    reason: str
    """``field: what is wrong; what was expected; how to fix it``."""
    record: Any
    """The raw record; the raw text when it did not parse (invalid UTF-8 bytes backslash-escaped)."""
    id: str | None = None
    field: str | None = None
    message_index: int | None = None
    code: str = "invalid"
    """A short name of the rule (``unknown_role``, ``bad_json``, ...), for counts."""
    file_line: int | None = None
    """In a JSON array: the file line where the record starts (``line`` is its record number)."""
    stage: str = "load"
    """``load`` (reading and validation) or ``encode`` (rendering and tokenizing, e.g. too long)."""

    @property
    def message(self) -> str:
        """``file:line: record 'id': reason`` (``file: record N (line L)`` in a JSON array), the
        line printed to people."""
        return f"{where(self.file, self.line, self.file_line, self.id)} {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        d = {"file": self.file, "line": self.line, "file_line": self.file_line, "id": self.id,
             "code": self.code, "stage": self.stage, "reason": self.reason, "field": self.field,
             "message_index": self.message_index, "record": self.record}
        return {k: v for k, v in d.items() if v is not None or k in ("line", "record")}


def where(file: str, line: int | None, file_line: int | None = None, rid: str | None = None) -> str:
    """``file:line:`` or, in a JSON array, ``file: record N (line L):``, then the record id."""
    if file_line is not None:
        at = f"{file}: record {line} (line {file_line}):"
    else:
        at = f"{file}:{line}:" if line is not None else f"{file}:"
    return at + (f" record {rid!r}:" if rid is not None else "")


@dataclass(frozen=True)
class RecordWarning:
    """A record that was accepted, with something its author may not expect (counted per ``code``)."""
    file: str
    line: int | None
    code: str
    message: str
    id: str | None = None

    def __str__(self) -> str:
        return f"{where(self.file, self.line, None, self.id)} {self.message}"


@dataclass
class FileReport:
    """Counts for one input (a file, or one split of a saved dataset)."""
    path: str
    records: int = 0
    accepted: int = 0
    quarantined: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "records": self.records, "accepted": self.accepted,
                "quarantined": self.quarantined}


@dataclass
class LoadReport:
    conversations: list[Conversation] = field(default_factory=list)
    """Accepted records, in file order, each with its ``origin``."""
    quarantined: list[QuarantineEntry] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)
    warnings: list[RecordWarning] = field(default_factory=list)
    """Accepted records with something to say (see the module docstring)."""

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def accepted(self) -> int:
        return len(self.conversations)

    @property
    def quarantined_count(self) -> int:
        return len(self.quarantined)

    def reasons(self) -> dict[str, int]:
        """How many records each rule quarantined, most frequent first."""
        return dict(Counter(e.code for e in self.quarantined).most_common())

    def warning_counts(self) -> dict[str, int]:
        """How many accepted records each warning rule flagged, most frequent first."""
        return dict(Counter(w.code for w in self.warnings).most_common())

    def summary(self) -> dict[str, Any]:
        """The counts as ``sftlab validate --json`` prints them (and the run manifest keeps)."""
        return {"records": self.records, "accepted": self.accepted,
                "quarantined": self.quarantined_count,
                "files": [f.to_dict() for f in self.files], "warnings": self.warning_counts()}

    def write_quarantine(self, path: str | os.PathLike) -> Path:
        """Write one JSON object per quarantined record (an empty file when there is none)."""
        with atomic_file(path, what="quarantine") as f:
            for e in self.quarantined:
                f.write(quarantine_line(e.to_dict()))
        return Path(path)


def load_files(paths: Iterable[str | os.PathLike], policy: Any = None,
               max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
               allow_empty: bool = False, columns: Iterable[Columns | None] | None = None,
               progress: bool = False) -> LoadReport:
    """Read and validate every record of ``paths`` (with a progress bar of the records read when
    ``progress``: 100k records take about ten seconds).

    ``columns``, one per path (``None`` for the usual names), says how an input names its message
    list, speaker and content keys and speakers (``sftlab.data.formats.Columns``).
    ``policy`` (a ``sftlab.data.policy.Policy``), when given, must know the ``policy_category`` of
    every refusal record (``expected: refuse``) and benign contrast (``expected: comply``).
    Raises ``UsageError`` for a missing or unreadable input, a directory that is not a saved
    dataset, and (unless ``allow_empty``) an input with no record at all.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("no input files given")
    columns = list(columns) if columns is not None else [None] * len(paths)
    for p in paths:
        check_readable(p)
    report = LoadReport()
    first_seen = DuplicateIds()
    bar = _ReadBar(progress and _worth_a_bar(paths))
    with collector.paused(), contextlib.closing(bar):
        for p, cols in zip(paths, columns):
            for name, items in sources(p, max_record_bytes):
                file_report = FileReport(name)
                report.files.append(file_report)
                _load_source(name, _counted(items, bar) if progress else items, policy, first_seen, report,
                             file_report, cols)
                if file_report.records == 0 and not allow_empty:
                    raise UsageError(f"{name}: no records (the input is empty or has only blank "
                                     "lines)")
    return report


BAR_BYTES = 32 << 20
"""Inputs of fewer bytes read in about a second: no progress bar (nor its lines before an error)."""


def _worth_a_bar(paths: list[Path]) -> bool:
    """Whether reading ``paths`` takes long enough for a progress bar: more than ``BAR_BYTES``
    in all, or a pipe, a folder or a hub dataset, whose size is not known up front."""
    total = 0
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return True
        if not stat.S_ISREG(st.st_mode):
            return True
        total += st.st_size
    return total > BAR_BYTES


class _ReadBar:
    """The reading bar, drawn from the first records read on: an input that fails to open (a hub
    dataset that is not cached) leaves no bar before its one-line error."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def update(self, n: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(desc="read", unit="rec", enabled=self.enabled)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _counted(items: Iterator[RawItem], bar, every: int = 1024) -> Iterator[RawItem]:
    """``items``, counted on ``bar`` ``every`` items at a time (a bar update per record costs more
    than reading some records)."""
    n = 0
    for item in items:
        yield item
        n += 1
        if n == every:
            bar.update(n)
            n = 0
    if n:
        bar.update(n)


def _load_source(name: str, items: Iterator[RawItem], policy: Any, first_seen: DuplicateIds,
                 report: LoadReport, counts: FileReport, columns: Columns | None = None) -> None:
    accepted, quarantined = report.conversations, report.quarantined
    for item in items:
        line, raw, problem = item[0], item[1], item[2]
        file_line = item[3] if len(item) > 3 else None
        counts.records += 1
        origin = Origin(name, line)
        if problem is None:
            try:
                conv = validate_record(raw, origin, policy, columns)
                if conv.id is not None:
                    first_seen.check(conv.id, origin)
            except RecordError as e:
                problem = e
            else:
                counts.accepted += 1
                accepted.append(conv)
                for code, message in record_warnings(conv):
                    report.warnings.append(RecordWarning(name, line, code, message, conv.id))
                continue
        counts.quarantined += 1
        quarantined.append(quarantine_entry(name, line, raw, problem, file_line))


def validate_record(raw: Any, origin: Origin, policy: Any = None, columns: Columns | None = None) -> Conversation:
    """One raw record -> its ``Conversation``, or ``RecordError`` naming what is wrong. Every
    check but the unique id, which needs the records before it (``DuplicateIds``: ``load_files``
    and the prepared-data store, ``sftlab.prepare``, over its chunks, both apply it)."""
    if type(raw) is not dict:
        raise RecordError("not_an_object", "expected a JSON object per record, got "
                          f"{type(raw).__name__}; fix: wrap it as {{\"messages\": [...]}} or drop it")
    conv = to_conversation(raw, origin, columns)
    check_conversation(conv)
    if policy is not None:
        check_policy(conv, policy)
    return conv


def quarantine_entry(name: str, line: int | None, raw: Any, problem: RecordError,
                     file_line: int | None = None) -> QuarantineEntry:
    return QuarantineEntry(file=name, line=line, reason=str(problem), record=raw, id=_raw_id(raw),
                           field=problem.field, message_index=problem.message_index, code=problem.code,
                           file_line=file_line)


class DuplicateIds:
    """The duplicate-id rule, the one place it is decided: over every input read together (both
    sides of ``data.eval_split`` included), the first accepted record with an id keeps it, and
    each later accepted record with that id is quarantined (``duplicate_id_error``, naming the
    first). A record quarantined for another reason claims no id. Ids are compared by a 16-byte
    key (``key``: blake2b of the id), which is also how the prepared-data store carries them
    between processes.

        >>> ids = DuplicateIds()
        >>> ids.check("a", Origin("x.jsonl", 1)); ids.check("b", Origin("x.jsonl", 2))
        >>> ids.check("a", Origin("y.jsonl", 7))
        Traceback (most recent call last):
        ...
        sftlab.data.record_errors.RecordError: id: duplicate id 'a', first seen at x.jsonl:1; fix: give each record a unique id or drop the copy
    """

    def __init__(self):
        self._first: dict[bytes, Any] = {}

    @staticmethod
    def key(cid: str) -> bytes:
        """The 16-byte key an id is compared by."""
        return hashlib.blake2b(cid.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def first(self, key: bytes, where: Any) -> Any:
        """``None`` when no earlier record had ``key`` (this one, at ``where``, now has it), else
        the ``where`` of the record that has it."""
        found = self._first.get(key)
        if found is None:
            self._first[key] = where
        return found

    def check(self, cid: str, origin: Origin) -> None:
        """Raise ``duplicate_id_error`` when an earlier record has ``cid``; else ``cid`` is taken."""
        first = self.first(self.key(cid), origin)
        if first is not None:
            raise duplicate_id_error(cid, first)


def duplicate_id_error(cid: str, first: Origin) -> RecordError:
    return RecordError("duplicate_id", f"duplicate id {cid!r}, first seen at "
                       f"{first.file}:{first.line}; fix: give each record a unique id or drop "
                       "the copy", field="id")


def record_warnings(conv: Conversation) -> list[tuple[str, str]]:
    """``(code, message)`` for what an accepted record holds that its author may not expect.

    >>> from sftlab.data.formats import to_conversation
    >>> record_warnings(to_conversation({"messages": [{"role": "user", "content": "hi"},
    ...     {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}]}))[0][0]
    'ends_on_user'
    """
    out = []
    if conv.messages and conv.messages[-1].role == "user":
        out.append(("ends_on_user", f"the conversation ends on a user turn (message "
                    f"{len(conv.messages) - 1}) with no response after it: the earlier assistant turns "
                    "are trained, the last user message is not; fix: add the response or drop that turn"))
    return out


def check_conversation(conv: Conversation) -> None:
    """Turn order, content and tool-call checks on an adapted conversation; raises ``RecordError``.

    After an optional first system message, user and assistant turns alternate (several assistant
    messages may follow each other: each is a turn whose prompt is the conversation before it, and
    the template trains it or refuses the record at encoding, DESIGN.md invariants 2 and 5); tool messages
    (results) follow an assistant message that makes tool calls (and each other) before the
    next assistant message. There must be an assistant message, no user message may be empty,
    and no assistant message may be empty (text, tool calls or both). Tool calls: a result must
    answer a call of the assistant message before it (its ``tool_call_id`` one of their ids, its
    ``name`` one of their names), a call must name a function of ``tools`` when the record gives
    tools, and calls followed by more conversation must get their results first (every call id
    answered when the calls have ids). A final assistant message may end on calls. Each reason
    names the message as the record does (``conversations[2].from``, ``output``: ``Conversation.where``).
    """
    prev = None
    has_assistant = False
    known = set(conv.tool_names()) if conv.tools else None
    pending: list = []  # the calls of the last assistant message not yet answered
    for i, m in enumerate(conv.messages):
        role = m.role
        if role != "tool" and pending and prev in ("assistant", "tool"):
            _unanswered(conv, i, pending, prev)
        if role == "system":
            if i != 0:
                raise RecordError("system_not_first", f"system message at position {i}; expected "
                                  "at most one system message, first; fix: move it to the start "
                                  "or merge it into the first one", field=conv.where(i, "role"),
                                  message_index=i)
        elif role == "assistant":  # one after another too: the template says whether it can train that
            if prev not in ("user", "tool", "assistant"):
                _bad_order(conv, i, role, prev, "a user, tool or assistant message")
            if not m.content.strip() and not m.tool_calls:
                raise RecordError("empty_assistant", "assistant message is empty; expected the "
                                  "response text or tool calls; fix: write the response or drop the record",
                                  field=conv.where(i, "content"), message_index=i)
            for j, call in enumerate(m.tool_calls):
                if known is not None and call.name not in known:
                    raise RecordError(
                        "unknown_function", f"call to function {call.name!r}, which is not in the record's "
                        f"tools ({', '.join(sorted(known))}); expected a call to a listed function; fix: add "
                        "its schema to tools or drop the record", field=f"{conv.where(i)}.tool_calls[{j}].function.name",
                        message_index=i)
            pending = list(m.tool_calls)
            has_assistant = True
        elif role == "user":
            if prev not in (None, "system", "assistant"):
                _bad_order(conv, i, role, prev, "the start, a system message or an assistant message")
            if not m.content.strip():
                raise RecordError("empty_user", "user message is empty; expected the prompt the "
                                  "next assistant message answers; fix: write the prompt or drop "
                                  "the record", field=conv.where(i, "content"), message_index=i)
        else:  # tool: after a message that is no assistant or tool message, it answers no call
            calls = conv.messages[_calling(conv.messages, i)].tool_calls if prev in ("assistant", "tool") else ()
            pending = _answer(conv, i, m, pending, calls)
        prev = role
    if not has_assistant:
        raise RecordError("no_assistant", "no assistant message; expected at least one assistant "
                          "turn to train on; fix: add the response or drop the record",
                          field="messages")


def _calling(messages, i: int) -> int:
    """Index of the assistant message whose calls the tool message i answers."""
    while messages[i].role == "tool":
        i -= 1
    return i


def _answer(conv: Conversation, i: int, m, pending: list, calls: tuple) -> list:
    """The calls still unanswered after tool message i (which must answer one of ``calls``)."""
    if not calls:
        raise RecordError("result_without_call", "tool result with no preceding tool call; expected a "
                          "tool message only after an assistant message with tool_calls; fix: give the "
                          "assistant message its tool_calls (or drop the tool message)",
                          field=conv.where(i, "role"), message_index=i)
    if m.tool_call_id is not None:
        ids = [c.id for c in calls if c.id is not None]
        if m.tool_call_id not in ids:
            raise RecordError("unknown_tool_call_id", f"tool_call_id {m.tool_call_id!r} answers no call of "
                              f"the assistant message before it (ids: {', '.join(map(repr, ids)) or 'none'}); "
                              "fix: use the id of the call this is the result of",
                              field=conv.where(i, "tool_call_id"), message_index=i)
        return [c for c in pending if c.id != m.tool_call_id]
    if m.name is not None:
        names = [c.name for c in calls]
        if m.name not in names:
            raise RecordError("unknown_tool_call_id", f"tool result named {m.name!r}, but the assistant message "
                              f"before it calls {', '.join(map(repr, names))}; fix: name the function called",
                              field=conv.where(i, "name"), message_index=i)
        k = next((k for k, c in enumerate(pending) if c.name == m.name), None)
        return pending[:k] + pending[k + 1:] if k is not None else pending
    return pending[1:]  # results without ids answer the calls in order


def _unanswered(conv: Conversation, i: int, pending: list, prev: str) -> None:
    call = pending[0]
    which = f"id {call.id!r}" if call.id is not None else f"{call.name!r}"
    if prev == "tool" and all(c.id is None for c in pending):
        return  # results without ids: one tool message may carry several results
    raise RecordError("call_without_result", f"tool call {which} has no result before message {i}; expected "
                      "a tool message answering each call before the conversation goes on; fix: add the "
                      "result, or end the conversation at the call", field=conv.where(i, "role"),
                      message_index=i)


def _a(role: str) -> str:
    return "an" if role == "assistant" else "a"  # a system, user or tool message


def _bad_order(conv: Conversation, i: int, role: str, prev: str | None, expected: str) -> None:
    after = "the start" if prev is None else f"{_a(prev)} {prev} message"
    raise RecordError("broken_alternation", f"{role} message right after {after}; expected {_a(role)} "
                      f"{role} message only after {expected}; fix: user and assistant turns "
                      "alternate after an optional system message, tool messages come between an "
                      "assistant message and the next (merge or drop the extra turn)",
                      field=conv.where(i, "role"), message_index=i)


def check_policy(conv: Conversation, policy: Any) -> None:
    """Refusal records must name a refusal category of ``policy``; benign contrasts a category
    the policy knows. Raises ``RecordError``."""
    cat = conv.policy_category
    if conv.expected == "refuse" and cat not in policy.refusal_categories:
        known = ", ".join(policy.refusal_categories) or "none"
        raise RecordError("unknown_category", f"refusal record (expected: refuse) names "
                          f"policy_category {cat!r}, which is not a refusal category of policy "
                          f"{policy.version!r} (known: {known}); fix: use one of them or add the "
                          "category to the policy", field="policy_category")
    if conv.expected == "comply" and cat is not None and not policy.knows(cat):
        known = ", ".join([*policy.benign_categories, *policy.refusal_categories]) or "none"
        raise RecordError("unknown_category", f"benign contrast (expected: comply) names "
                          f"policy_category {cat!r}, which policy {policy.version!r} does not know "
                          f"(known: {known}); fix: use a category's benign_contrast name or add it "
                          "to the policy", field="policy_category")


def _raw_id(raw: Any) -> str | None:
    if type(raw) is not dict:
        return None
    rid = raw.get("id")
    if rid is None and isinstance(raw.get("meta"), dict):
        rid = raw["meta"].get("id")
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None


def quarantine_line(entry: dict) -> str:
    """One quarantine entry as a JSON line. Text stays readable (not \\u-escaped) unless the record
    holds what UTF-8 cannot carry (an unpaired surrogate from a JSON escape): that entry is
    written with escapes, so the record is kept exactly as it was read."""
    line = json.dumps(entry, ensure_ascii=False, default=str)
    if unpaired_surrogate(line) is not None:
        line = json.dumps(entry, ensure_ascii=True, default=str)
    return line + "\n"
