"""An independent audit of encoding (DESIGN.md, invariants 2, 4 and 9): public data in its own
layouts (tests/data/public, tests/data/tools) and records built to probe the hard cases, encoded
under the official chat templates (tests/data/chat_templates, tests/data/templates) with each
combination of options that changes what is rendered or trained.

The auditor reads the *raw record* (not the ``Conversation`` sftlab made of it) and the decoded
tokens of the record's examples. For every accepted record it checks that

- every text leaf (message text, reasoning, tool-call name and argument values, tool schema names
  and descriptions, system prompt) is in the decoded rendering of some example of the record with
  the status the options give it: trained where its assistant turn is trained (reasoning under
  ``reasoning: keep``), untrained context otherwise, absent under ``reasoning: drop``;
- a leaf found is ordinary text: no character of it came from a control token (user text spelling
  ``<|im_end|>`` stays text);
- every trained span is text the record gave a trained assistant turn, or template markup (words
  of the template's own source, JSON punctuation, argument keys): nothing else is trained.

Records a template cannot render honestly must be refused (quarantined with a reason); the audit
counts accepted and refused per case. It shares no code with sftlab's own accounting.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sftlab.data.loading import load_files
from sftlab.tokens.encoding import encode_all
from sftlab.train.config import DataFile
from tests.test_real_templates import INDEX, tokenizer_for

DATA = Path(__file__).parent / "data"
PUBLIC = DATA / "public"
TOOLS = DATA / "tools"
DOLLY = {"prompt": "instruction", "query": "context", "response": "response", "task": "category"}

# -- the raw record's text leaves -----------------------------------------------------------------

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "bot": "assistant", "system": "system", "function_call": "assistant", "observation": "tool",
         "tool": "tool", "function": "tool", "ipython": "tool"}
# The inline reasoning conventions of public data, as the audit reads them (its own reading, not sftlab's):
# a block that opens the answer, or the text before a closer that comes before any opener (DeepSeek-R1
# data whose prompt ended with the opener).
CONVENTIONS = (("<think>", "</think>"), ("<thinking>", "</thinking>"), ("<|begin_of_thought|>", "<|end_of_thought|>"),
               ("[THINK]", "[/THINK]"), ("◁think▷", "◁/think▷"), ("<reasoning>", "</reasoning>"),
               ("<seed:think>", "</seed:think>"), ("<|START_THINKING|>", "<|END_THINKING|>"))
MARKERS = [m for pair in CONVENTIONS for m in pair]


def split_reasoning(content: str):
    """``(reasoning, answer, tags)`` of an answer that opens with reasoning, else ``None``."""
    for opener, closer in CONVENTIONS:
        block = re.match(r"\s*" + re.escape(opener) + "(.*?)" + re.escape(closer), content, re.S)
        if block:
            return block.group(1), content[block.end():], opener + closer
    found = {m: content.find(m) for m in MARKERS if m in content}
    if found:
        first = min(found, key=found.get)
        if any(first == closer for _, closer in CONVENTIONS):
            return content[:found[first]], content[found[first] + len(first):], first
    return None


@dataclass
class Leaf:
    kind: str  # content, reasoning, call, arg, schema, system
    text: str
    turn: int | None = None  # the assistant message (its index among messages) it belongs to
    trained: bool = False


@dataclass
class Raw:
    leaves: list[Leaf] = field(default_factory=list)
    words: set = field(default_factory=set)  # words a trained span may hold besides leaves (argument keys)


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _strings(value, keys: set, path=()):
    """String leaves of a JSON value (and its dict keys into ``keys``); numbers and booleans too."""
    if isinstance(value, dict):
        for k, v in value.items():
            keys.add(str(k))
            yield from _strings(v, keys, path + (k,))
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, keys, path)
    elif isinstance(value, bool):
        keys.update((str(value), str(value).lower()))
    elif isinstance(value, (int, float)):
        keys.update(re.findall(r"\w+", str(value)))
    elif isinstance(value, str) and value.strip():
        yield value


def _calls(value):
    value = _json(value)
    calls = value if isinstance(value, list) else [value]
    for c in calls:
        if isinstance(c, dict):
            fn = c.get("function", c)
            yield fn.get("name", ""), _json(fn.get("arguments", fn.get("parameters", {})))


def _schema_leaves(tools) -> list[str]:
    out = []
    for t in _json(tools) or []:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        out += [s for s in (fn.get("name"), fn.get("description")) if isinstance(s, str) and s.strip()]
    return out


def _messages(raw: dict, columns: dict | None) -> list[dict]:
    """``[{role, parts: [(kind, text)], calls, train}]`` of a raw record in any of the layouts here."""
    msgs = raw.get("messages", raw.get("conversations"))
    out = []
    if isinstance(raw.get("system"), str) and raw["system"].strip():
        out.append({"role": "system", "parts": [("content", raw["system"])]})
    if msgs is None:  # Alpaca (or its columns)
        cols = {"prompt": "instruction", "query": "input", "response": "output", **(columns or {})}
        for q, a in raw.get("history") or []:
            out += [{"role": "user", "parts": [("content", q)]}, {"role": "assistant", "parts": [("content", a)]}]
        out.append({"role": "user", "parts": [("content", raw.get(cols["prompt"], "")),
                                               ("content", raw.get(cols["query"], ""))]})
        out.append({"role": "assistant", "parts": [("content", raw.get(cols["response"], ""))]})
        return out
    for m in msgs:
        role = ROLES[m.get("role", m.get("from"))]
        content = m.get("content", m.get("value"))
        parts, calls = [], []
        if m.get("from") == "function_call":
            calls += list(_calls(content))
            content = None
        if isinstance(content, list):
            for p in content:
                kind, text = p.get("type"), p.get("text", p.get("value"))
                if kind == "tool_call":
                    calls += list(_calls(text))
                else:
                    parts.append(("reasoning" if kind in ("reasoning", "thinking") else "content", text))
        elif isinstance(content, str):
            think = split_reasoning(content) if role == "assistant" else None
            if think:  # reasoning the record writes in its answer: its tags are the record's text
                parts += [("reasoning", think[0]), ("content", think[1]), ("tags", think[2])]
            else:
                parts.append(("content", content))
        for key in ("reasoning_content", "reasoning", "thinking"):
            if isinstance(m.get(key), str):
                parts.append(("reasoning", m[key]))
        for c in m.get("tool_calls") or []:
            calls += list(_calls(c))
        weight = m.get("weight", m.get("loss_weight"))
        out.append({"role": role, "parts": parts, "calls": calls,
                    "train": m.get("train") is not False and (weight is None or weight > 0)})
    return out


def raw_leaves(raw: dict, columns: dict | None, last_turn_only: bool) -> Raw:
    msgs = _messages(raw, columns)
    assistant = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    out = Raw()
    for text in _schema_leaves(raw.get("tools")):
        out.leaves.append(Leaf("schema", text))
    for i, m in enumerate(msgs):
        mine = m["role"] == "assistant"
        trained = mine and m.get("train", True) and (not last_turn_only or i == assistant[-1])
        for kind, text in m["parts"]:
            if kind == "tags":
                out.words.update(WORD.findall(text))
                continue
            if isinstance(text, str) and text.strip():
                out.leaves.append(Leaf(kind if mine or m["role"] != "system" else "system", text,
                                       i if mine else None, trained))
        for name, args in m.get("calls", []):
            out.words.add(name)
            out.leaves.append(Leaf("call", name, i, trained))
            for s in _strings(args, out.words):
                out.leaves.append(Leaf("arg", s, i, trained))
    return out


# -- the decoded examples -------------------------------------------------------------------------

@dataclass
class Decoded:
    """An example's decoded text with, per character, whether its token is trained and whether it
    is a control token."""
    text: str
    trained: list[bool]
    special: list[bool]


def decode(tok, ex) -> Decoded:
    specials = set(tok.all_special_ids)
    ids, w = list(ex.input_ids), list(ex.loss_weights)
    text, trained, special = [], [], []
    run: list[int] = []

    def flush(t, s):
        piece = tok.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text.append(piece)
        trained.extend([t] * len(piece))
        special.extend([s] * len(piece))

    state = None
    for i, tid in enumerate(ids):
        st = (w[i] > 0, tid in specials)
        if st != state or st[1]:
            if run:
                flush(*state)
            run, state = [], st
        run.append(tid)
    if run:
        flush(*state)
    return Decoded("".join(text), trained, special)


def _normalised(text: str) -> tuple[str, list[int]]:
    """``text`` with whitespace runs as one space, and the index in ``text`` of each character."""
    out, where, space = [], [], False
    for i, ch in enumerate(text):
        if ch.isspace():
            if not space:
                out.append(" ")
                where.append(i)
            space = True
        else:
            out.append(ch)
            where.append(i)
            space = False
    return "".join(out), where


def _variants(text: str) -> list[str]:
    """How a template may write ``text``: as is, JSON-escaped (in a ``tojson`` of the arguments or the
    schema), or with non-ASCII escaped."""
    out = [text.strip()]
    for ascii_ in (False, True):
        dumped = json.dumps(text.strip(), ensure_ascii=ascii_)[1:-1]
        if dumped not in out:
            out.append(dumped)
    return out


def find(d: Decoded, leaf: str, want: str) -> str | None:
    """``None`` where some occurrence of ``leaf`` in ``d`` has status ``want`` (``trained`` or
    ``untrained``) and no control-token character; else what was found instead."""
    norm, where = _normalised(d.text)
    seen = "absent"
    for variant in _variants(leaf):
        needle, _ = _normalised(variant)
        start = norm.find(needle)
        while start >= 0:
            chars = range(where[start], where[start + len(needle) - 1] + 1)
            specials = any(d.special[c] for c in chars)
            status = {all(d.trained[c] for c in chars): "trained",
                      not any(d.trained[c] for c in chars): "untrained"}.get(True, "partly trained")
            if not specials and status == want:
                return None
            seen = "made of control tokens" if specials else status
            start = norm.find(needle, start + 1)
    return seen


def trained_spans(d: Decoded) -> list[str]:
    spans, cur = [], []
    for ch, t in zip(d.text, d.trained):
        if t:
            cur.append(ch)
        elif cur:
            spans.append("".join(cur))
            cur = []
    if cur:
        spans.append("".join(cur))
    return spans


WORD = re.compile(r"\w+")


def audit(raw: Raw, decoded: list[Decoded], reasoning: str, last_turn_only: bool, lost: tuple[bool, bool],
          markup: set, source: str = "") -> list[str]:
    """The violations of one accepted record: leaves missing or with the wrong status, trained text
    that is neither the record's trained assistant text nor markup, and under ``reasoning: mask |
    drop`` any reasoning text or reasoning marker (one the template ``source`` does not write
    itself) in trained text. ``lost``: whether truncation may have dropped (context, trained text),
    from the examples' ``dropped_turns`` and ``lost_trained_tokens``."""
    problems = []
    if reasoning != "keep":
        problems += untrained_reasoning(raw, decoded, source)
    for leaf in raw.leaves:
        want = "trained" if leaf.trained else "untrained"
        if leaf.kind == "reasoning":
            if reasoning == "drop":
                hits = [d for d in decoded if _normalised(leaf.text.strip())[0] in _normalised(d.text)[0]]
                if hits:
                    problems.append(f"reasoning present under reasoning: drop: {leaf.text[:60]!r}")
                continue
            if reasoning == "mask":
                want = "untrained"
        results = [find(d, leaf.text, want) for d in decoded]
        if None in results:
            continue
        # May be absent: under last_turn_only earlier answers are context as the template shows them at
        # inference; max_length truncation drops whole early exchanges (trained text: counted as lost).
        if all(r == "absent" for r in results) and (
                lost[leaf.trained] or (last_turn_only and not leaf.trained and leaf.turn is not None)):
            continue
        got = sorted(set(results))
        problems.append(f"{leaf.kind} of {'message ' + str(leaf.turn) if leaf.turn is not None else 'record'} "
                        f"should be {want}, is {'/'.join(got)}: {leaf.text[:60]!r}")
    allowed = [_normalised(v)[0] for leaf in raw.leaves if leaf.trained and leaf.kind != "schema"
               and not (leaf.kind == "reasoning" and reasoning != "keep") for v in _variants(leaf.text)]
    allowed.sort(key=len, reverse=True)
    for d in decoded:
        for span in trained_spans(d):
            rest = _normalised(span)[0]
            for a in allowed:
                if a:
                    rest = rest.replace(a, " ")
            extra = {w for w in WORD.findall(rest) if w not in markup and w not in raw.words}
            if extra:
                problems.append(f"trained text the record does not give a trained assistant turn: {sorted(extra)} in "
                                f"{rest[:120]!r}")
    return problems


def untrained_reasoning(raw: Raw, decoded: list[Decoded], source: str) -> list[str]:
    """Under ``reasoning: mask | drop``: trained text holding the text of a reasoning leaf of the
    record, or a reasoning marker of any convention the template does not write itself."""
    thoughts = [_normalised(leaf.text.strip())[0] for leaf in raw.leaves if leaf.kind == "reasoning"]
    markers = [m for m in MARKERS if m not in source]
    problems = []
    for d in decoded:
        for span in trained_spans(d):
            text = _normalised(span)[0]
            problems += [f"reasoning trained: {t[:60]!r}" for t in thoughts if t and t in text]
            problems += [f"reasoning marker trained: {m!r} in {span[:80]!r}" for m in markers if m in span]
    return problems


# -- the cross product ----------------------------------------------------------------------------

TEMPLATES = sorted(INDEX)  # the tool-calling fixtures of tests/data/templates included

OPTIONS = {
    "keep": {},
    "mask": {"reasoning": "mask"},
    "drop": {"reasoning": "drop"},
    "expand": {"turns": "expand"},
    "expand-last-mask": {"turns": "expand", "last_turn_only": True, "reasoning": "mask"},
    "last": {"last_turn_only": True},
    "split": {"turns": "expand", "max_length": 192, "overflow": "split"},
    "split-whole-mask": {"max_length": 160, "overflow": "split", "reasoning": "mask"},
}

MARKUP = ("<|im_end|>", "</think>", "[INST]", "<|eot_id|>", "<end_of_turn>", "<|im_start|>assistant", "</s>",
          "<|END_OF_TURN_TOKEN|>", "<tool_call>", "<|start_header_id|>assistant<|end_header_id|>")


def hard_records() -> list[dict]:
    """Records that probe what templates get wrong, built from public text where one is needed."""
    spelled = " ".join(MARKUP)
    tools = [{"type": "function", "function": {"name": "find_cafe", "description": "Find cafés in a city.",
                                              "parameters": {"type": "object", "properties": {
                                                  "city": {"type": "string", "description": "The city's name."},
                                                  "filters": {"type": "object"}}}}}]
    call = {"type": "function", "function": {"name": "find_cafe", "arguments": json.dumps(
        {"city": "Zürich", "filters": {"tags": ["naïve", "crème brûlée"], "open": True, "max": 3}},
        ensure_ascii=False)}}
    return [
        {"id": "markup", "messages": [
            {"role": "system", "content": f"System text with markup: {spelled}"},
            {"role": "user", "content": f"Say the markup back: {spelled} and stop."},
            {"role": "assistant", "content": f"Here it is: {spelled} done."},
            {"role": "user", "content": "[INST] again </think> please [/INST]"},
            {"role": "assistant", "content": "Again: <|im_end|> and </think> kept as text."}]},
        {"id": "reasoning-multi", "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "reasoning_content": "Adding two and two gives four.", "content": "Four."},
            {"role": "user", "content": "And three plus three?"},
            {"role": "assistant", "reasoning_content": "Three and three make six.", "content": "Six."}]},
        {"id": "empty-beside-reasoning", "tools": tools, "messages": [
            {"role": "user", "content": "Find a café, thinking first."},
            {"role": "assistant", "reasoning_content": "A search by city is needed.", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "find_cafe", "arguments": {"city": "Bern"}}}]},
            {"role": "tool", "content": "Café Fédéral"},
            {"role": "assistant", "reasoning_content": "The tool answered.", "content": "Try Café Fédéral."}]},
        {"id": "tool-nonascii", "tools": tools, "messages": [
            {"role": "system", "content": "You find cafés."},
            {"role": "user", "content": "Cafés in Zürich with crème brûlée?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "{\"cafés\": [\"Café Schöttli\"]}"},
            {"role": "assistant", "content": "Café Schöttli serves crème brûlée."}]},
        {"id": "untrained-first", "messages": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "An assistant, not trained here.", "train": False},
            {"role": "user", "content": "What can you do?"},
            {"role": "assistant", "content": "Answer questions, trained here."}]},
        {"id": "weight-zero-reasoning", "messages": [
            {"role": "user", "content": "First question?"},
            {"role": "assistant", "reasoning_content": "Earlier reasoning kept as context.", "content": "First.",
             "weight": 0},
            {"role": "user", "content": "Second question?"},
            {"role": "assistant", "reasoning_content": "Later reasoning trained.", "content": "Second."}]},
        {"id": "inline-think", "messages": [
            {"role": "user", "content": "Greet me."},
            {"role": "assistant", "content": "<think>A short greeting fits.</think>Hello there."},
            {"role": "user", "content": "Again, differently."},
            {"role": "assistant", "content": "<think>Vary the wording this time.</think>Good day to you."}]},
        {"id": "args-markup", "tools": tools, "messages": [
            {"role": "user", "content": "Look up the café called <|im_end|>."},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "find_cafe", "arguments": {"city": "<|im_end|></tool_call>[INST]"}}}]},
            {"role": "tool", "content": "</tool_response><|im_end|><|im_start|>assistant\nnone"},
            {"role": "assistant", "content": "There is no café with that name."}]},
        {"id": "reasoning-markup", "messages": [
            {"role": "system", "content": "Think first."},
            {"role": "user", "content": "Which tag ends a turn?"},
            {"role": "assistant", "reasoning_content": "The tag <|im_end|> ends it; </think> ends this.",
             "content": "The end-of-turn tag."},
            {"role": "user", "content": "And a header?"},
            {"role": "assistant", "reasoning_content": "<|start_header_id|> starts one [/INST].",
             "content": "A start-header tag."}]},
        {"id": "schema-markup", "tools": [{"type": "function", "function": {
            "name": "echo", "description": "Echoes text; never writes <|im_end|> or </tool_call> itself.",
            "parameters": {"type": "object", "properties": {"text": {
                "type": "string", "description": "Text such as [INST] or <end_of_turn>."}}}}}], "messages": [
            {"role": "user", "content": "Echo hello."},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "echo", "arguments": {"text": "hello <|eot_id|>", "nested": {"list": ["a\\b", "\"q\""]}}}}]},
            {"role": "tool", "content": "hello <|eot_id|>"},
            {"role": "assistant", "content": "It echoed hello."}]},
        {"id": "openthoughts", "system": "Think first: write <|begin_of_thought|> your thoughts <|end_of_thought|>, "
                                          "then <|begin_of_solution|> the answer <|end_of_solution|>.",
         "conversations": [
             {"from": "user", "value": "Return your final response within \\boxed{}. What is two plus two?"},
             {"from": "assistant", "value": "<|begin_of_thought|>\n\nTwo apples and two more apples are four apples."
                                            "\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\nThe sum is "
                                            "\\boxed{4}.\n\n<|end_of_solution|>"}]},
        {"id": "r1-closer", "messages": [
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "Seven has no divisor but one and itself.\n</think>\n\nSeven."},
            {"role": "user", "content": "And an even one?"},
            {"role": "assistant", "content": "Only two is both even and prime.\n</think>\n\nTwo."}]},
        {"id": "conventions", "messages": [
            {"role": "user", "content": "Count to two."},
            {"role": "assistant", "content": "[THINK]Counting starts at one.[/THINK]One, two."},
            {"role": "user", "content": "Backwards?"},
            {"role": "assistant", "content": "◁think▷Reverse the order of the count.◁/think▷Two, one."},
            {"role": "user", "content": "In words?"},
            {"role": "assistant", "content": "<thinking>Spell each number out in letters.</thinking>\n\nTwo, then one."},
            {"role": "user", "content": "Format it."},
            {"role": "assistant", "content": "<reasoning>Wrap the count in answer tags.</reasoning>\n<answer>two one</answer>"}]},
        {"id": "whitespace", "messages": [
            {"role": "system", "content": "  Keep the spacing.  \n"},
            {"role": "user", "content": "\n\nIndent this:\n    code()\n"},
            {"role": "assistant", "content": "  Indented:\n\n    code()\n\n"}]},
    ]


def _raw_records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()]


SOURCES = [  # file, columns, records sampled (1-based positions)
    (PUBLIC / "fastchat_dummy_conversation.json", None, (1, 3, 5, 8, 13, 21)),
    (PUBLIC / "dolly_15k_sample.jsonl", DOLLY, (1, 2, 7)),
    (PUBLIC / "llamafactory_alpaca_en_demo.json", None, (1, 2, 3)),
    (PUBLIC / "llamafactory" / "v1_sft_demo.jsonl", None, (1, 4)),
    (TOOLS / "glaive_toolcall_en_demo.sample.json", None, (1, 2, 5, 11)),
    (TOOLS / "reason_tool_use_demo.sample.jsonl", None, (1, 2, 5, 7)),
]


LLAMACPP = json.loads((DATA / "reasoning" / "llamacpp_chat_parser.json").read_text(encoding="utf-8"))


def llamacpp_records() -> list[dict]:
    """The model outputs llama.cpp's parser tests read reasoning from, each as the answer of a record."""
    return [{"messages": [{"role": "user", "content": LLAMACPP["user"]}, {"role": "assistant", "content": c["output"]}]}
            for c in LLAMACPP["parsed"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``[(conversation, raw record, columns)]`` of every sampled record, read by sftlab's loader."""
    out = []
    folder = tmp_path_factory.mktemp("audit")
    hard, llamacpp = folder / "hard.jsonl", folder / "llamacpp.jsonl"
    for path, records in ((hard, hard_records()), (llamacpp, llamacpp_records())):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    for path, columns, picks in [*SOURCES, (hard, None, None), (llamacpp, None, None)]:
        raws = _raw_records(path)
        report = load_files([str(path)], columns=[DataFile(path=str(path), columns=columns).mapping()] if columns else None)
        assert not report.quarantined, [q.reason for q in report.quarantined]
        for conv in report.conversations:
            if picks is None or conv.origin.line in picks:
                out.append((conv, raws[conv.origin.line - 1], columns))
    return out


@pytest.fixture(scope="module")
def tokenizers():
    return {}


COVERAGE: dict = {}


def run_audit(name: str, corpus, cache) -> list[str]:
    tok = tokenizer_for(name, cache)
    markup = set(WORD.findall(tok.chat_template)) | {w for t in tok.all_special_tokens for w in WORD.findall(t)}
    convs = [c for c, _, _ in corpus]
    problems = []
    for opt, kwargs in OPTIONS.items():
        examples, refused = encode_all(convs, tok, None, **kwargs)
        by_record: dict = {}
        for ex in examples:
            by_record.setdefault((ex.origin.file, ex.origin.line), []).append(ex)
        COVERAGE[(name, opt)] = (len(by_record), len(refused))
        assert len(by_record) + len(refused) == len(convs)
        for conv, raw, columns in corpus:
            exs = by_record.get((conv.origin.file, conv.origin.line))
            if exs is None:
                continue
            leaves = raw_leaves(raw, columns, kwargs.get("last_turn_only", False))
            lost_trained = any(ex.lost_trained_tokens for ex in exs)
            lost = (lost_trained or any(ex.dropped_turns for ex in exs), lost_trained)
            for p in audit(leaves, [decode(tok, ex) for ex in exs], kwargs.get("reasoning", "keep"),
                           kwargs.get("last_turn_only", False), lost, markup, tok.chat_template):
                problems.append(f"{opt} {Path(conv.origin.file).name}:{conv.origin.line}: {p}")
    return problems


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_accepted_record_passes_the_audit(name, corpus, tokenizers):
    problems = run_audit(name, corpus, tokenizers)
    assert not problems, "\n".join(problems)


def test_the_audit_covers_every_template_and_option_and_accepts_records_under_most(corpus, tokenizers):
    """Coverage of the cross product above (filled by the audit, computed here where it ran alone)."""
    for name in TEMPLATES:
        if not any((name, opt) in COVERAGE for opt in OPTIONS):
            run_audit(name, corpus, tokenizers)
    assert set(COVERAGE) == {(n, o) for n in TEMPLATES for o in OPTIONS}
    accepted = sum(a for a, _ in COVERAGE.values())
    refused = sum(r for _, r in COVERAGE.values())
    assert accepted + refused == len(corpus) * len(TEMPLATES) * len(OPTIONS)
    # Every template that meets the contract accepts some records under every option.
    from tests.test_real_templates import REFUSED
    assert all(COVERAGE[(n, o)][0] > 0 for n in set(TEMPLATES) - set(REFUSED) for o in OPTIONS if not o.startswith("split")), \
        {k: v for k, v in COVERAGE.items() if v[0] == 0}
    assert accepted > refused


# -- what the audit found, each as a focused regression test --------------------------------------

def _one(name, record, cache, **options):
    from sftlab.data.formats import to_conversation
    examples, refused = encode_all([to_conversation(record)], tokenizer_for(name, cache), None, **options)
    return examples, [q["code"] for q in refused]


SPELLED_SYSTEM = {"messages": [{"role": "system", "content": "Close reasoning with </think> when done."},
                               {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}


@pytest.mark.parametrize("name", ["nemotron-nano-v2", "smollm3"])
def test_a_template_that_deletes_a_flag_inside_a_word_of_the_system_prompt_is_refused(name, tokenizers):
    # Both delete "/think" from the system prompt: "</think>" was rendered as "<>" and trained on.
    examples, refused = _one(name, SPELLED_SYSTEM, tokenizers, turns="expand")
    assert not examples and refused == ["content_rewritten"]


def test_a_flag_the_template_reads_as_a_whole_word_is_not_content_lost(tokenizers):
    record = {"messages": [{"role": "system", "content": "Be brief. /no_think"},
                           {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}
    examples, refused = _one("smollm3", record, tokenizers)
    assert len(examples) == 1 and not refused


def test_lfm25_refuses_an_untrained_answer_it_cuts_at_a_think_tag(tokenizers):
    # LFM2.5 keeps only the text after "</think>" in answers before the last user message: an answer
    # with train: false is context only, and its first half was silently left out.
    record = {"messages": [{"role": "user", "content": "Spell the tag."},
                           {"role": "assistant", "content": "It is written </think> in full."},
                           {"role": "user", "content": "Thanks."}, {"role": "assistant", "content": "Welcome."}]}
    untrained = {"messages": [{**m, "train": False} if i == 1 else m for i, m in enumerate(record["messages"])]}
    # (The text before a "</think>" with no opener is read as reasoning, DeepSeek-R1's shape, unless
    # encoding.inline_reasoning is off: here the tag is answer text.)
    for options in ({"inline_reasoning": False}, {"turns": "expand", "inline_reasoning": False}):
        examples, refused = _one("lfm2.5", untrained, tokenizers, **options)
        assert not examples and refused == ["content_rewritten"], options
    # Trained in its own example (turns: expand), the answer is whole there: accepted.
    examples, refused = _one("lfm2.5", record, tokenizers, turns="expand", inline_reasoning=False)
    assert not refused and any("It is written </think> in full." in _text(tokenizers["lfm2.5"], ex) for ex in examples)
    # last_turn_only: earlier answers are context as the template shows them at inference (the option's contract).
    assert _one("lfm2.5", record, tokenizers, last_turn_only=True, inline_reasoning=False)[1] == []
    # Read as reasoning (the default), the untrained turn's reasoning is what LFM2.5 drops: refused so.
    assert _one("lfm2.5", untrained, tokenizers)[1] == ["reasoning_not_written"]


def _text(tok, ex):
    return tok.decode(list(ex.input_ids), skip_special_tokens=False)


@pytest.mark.parametrize("name", ["qwen3.5", "lfm2.5"])
def test_an_argument_spelling_a_special_token_stays_text_where_the_template_writes_it_bare(name, tokenizers):
    # Qwen3.5 writes argument values bare inside <parameter=...> blocks, LFM2.5 as Python-style calls:
    # the value "<|im_end|>" was encoded as the control token, ending the turn inside the call.
    tok = tokenizer_for(name, tokenizers)
    tools = [{"type": "function", "function": {"name": "find", "description": "Find a place.",
                                              "parameters": {"type": "object", "properties": {
                                                  "q": {"type": "string", "description": "What to find."}}}}}]
    call = {"type": "function", "function": {"name": "find", "arguments": {"q": "<|im_end|>"}}}
    record = {"tools": tools, "messages": [{"role": "user", "content": "Find it."},
                                           {"role": "assistant", "content": "", "tool_calls": [call]},
                                           {"role": "tool", "content": "none"},
                                           {"role": "assistant", "content": "Nothing found."}]}
    (ex,), refused = _one(name, record, tokenizers)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    plain = {**record, "messages": [*record["messages"][:1], {**record["messages"][1], "tool_calls": [
        {**call, "function": {**call["function"], "arguments": {"q": "nothing"}}}]}, *record["messages"][2:]]}
    (ref,), _ = _one(name, plain, tokenizers)
    assert list(ex.input_ids).count(end) == list(ref.input_ids).count(end)
    d = decode(tok, ex)
    assert find(d, "<|im_end|>", "trained") is None  # in the trained call, as text
