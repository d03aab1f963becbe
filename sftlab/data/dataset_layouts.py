r"""Public data sets' own record layouts, recognised by their shape (no option needed, as no other
layout has that shape) and read as they are:

- ``exchanges``: ``{"conversation": [{"input": ..., "output": ...}, ...]}``, a list of exchanges
  (LDJnr's Capybara and Pure-Dove, XTuner's format, whose first exchange may carry ``system``).
- ``turns``: ``{"conversations": ["user text", "assistant text", ...]}``, alternating strings, the user
  first (GAIR's LIMA).
- ``glaive``: ``{"system": "SYSTEM: ...", "chat": "USER: ...\n\n\nASSISTANT: ... <|endoftext|>..."}``, a
  transcript (Glaive function calling v2). The function definitions written in the system prompt
  become the record's tools, the rest of it the system message; ``<functioncall> {"name", "arguments"}``
  (the arguments often a single-quoted JSON string) a tool call, ``FUNCTION RESPONSE:`` a tool result;
  the ``<|endoftext|>`` closing each assistant turn is the end of the turn the template writes.
- ``xlam``: ``{"query": ..., "answers": "[{\"name\", \"arguments\"}]", "tools": "[...]"}`` (Salesforce's
  xLAM / APIGen function calling): the query, then one assistant turn making the calls.
- ``nemotron``: ``{"input": [messages], "output": "...", "system_prompt": ...}`` (NVIDIA's
  Llama-Nemotron post-training data): the system prompt, the input messages, then the output as the
  assistant's answer (a closing ``<|eot_id|>``, the end of the turn the template writes, left out); its
  ``reasoning``, ``generator``, ``used_in_training`` and ``version`` are metadata.

Every piece is read or the record is refused naming it: a key of an exchange that is not ``input``,
``output`` or ``system`` (``conversation[].KEY`` declares it ignored), a transcript whose turns cannot be
told apart, a call that is not JSON. ``hint`` names what a record nothing reads is, and how to read it.

Example::

    >>> [(m.role, m.content) for m in exchanges({"conversation": [{"input": "Hi", "output": "Hello"}]})]
    [('user', 'Hi'), ('assistant', 'Hello')]
    >>> [(m.role, m.content) for m in turns({"conversations": ["Hi", "Hello"]})]
    [('user', 'Hi'), ('assistant', 'Hello')]
    >>> detect({"query": "Weather in Oslo?", "answers": "[]", "tools": "[]"})
    'xlam'
"""
from __future__ import annotations

import json
import re
from typing import Any

from sftlab.data.conversation import Message, ToolCall
from sftlab.data.message_fields import json_object_text, message_list, sharegpt_calls
from sftlab.data.record_errors import RecordError, empty, kind as _kind

__all__ = ["NAMED", "TITLES", "LAYOUT_METADATA", "detect", "read", "fields", "exchanges", "turns", "glaive", "xlam",
           "nemotron", "hint"]

NAMED = ("exchanges", "turns", "glaive", "xlam", "nemotron")
"""The layouts of this module, as ``sftlab.data.formats.detect_format`` names them."""
TITLES = {"exchanges": "Capybara/XTuner exchanges", "turns": "LIMA string turns", "glaive": "Glaive transcript",
          "xlam": "xLAM query/answers", "nemotron": "Nemotron input/output"}
"""How reasons name each layout."""
LAYOUT_METADATA = {"nemotron": frozenset({"reasoning", "generator", "used_in_training", "version"})}
"""Top-level fields a layout's records carry to describe themselves (kept in ``Conversation.extra``)."""


def detect(row: dict[str, Any]) -> str | None:
    """The layout of this module ``row`` has (``conversations`` lists of strings are decided by
    ``detect_format``, which sees them first), or ``None``."""
    conversation = row.get("conversation")
    if type(conversation) is list and conversation and type(conversation[0]) is dict and (
            {"input", "output"} & conversation[0].keys()) and not ({"role", "from"} & conversation[0].keys()):
        return "exchanges"
    if isinstance(row.get("chat"), str) and row["chat"].lstrip().startswith("USER:"):
        return "glaive"
    if isinstance(row.get("query"), str) and "answers" in row and "response" not in row:
        return "xlam"
    if type(row.get("input")) is list and "output" in row:
        return "nemotron"
    return None


def read(fmt: str, row: dict[str, Any], ignore: tuple[str, ...]) -> tuple[list[Message], str | None]:
    """``(messages, tools as JSON text or None)`` of ``row`` in layout ``fmt`` (``NAMED``); the tools
    are those the layout writes elsewhere than ``tools`` (Glaive's system prompt), else ``None``."""
    if fmt == "exchanges":
        return exchanges(row, ignore), None
    if fmt == "turns":
        return turns(row), None
    if fmt == "glaive":
        return glaive(row)
    if fmt == "xlam":
        return xlam(row), None
    return nemotron(row, ignore), None


def fields(fmt: str, row: dict[str, Any], n: int) -> list[str]:
    """Where each of the ``n`` messages read from ``row`` (layout ``fmt``) sits in it, for reasons that point
    into the file (``conversation[1].output``, ``input[0]``, ``chat``).

    >>> fields("xlam", {"query": "q", "answers": "[]"}, 2)
    ['query', 'answers']
    """
    if fmt == "exchanges":
        return [f"conversation[{i}].{key}" for i, ex in enumerate(row["conversation"]) for key in _EXCHANGE_KEYS
                if key != "system" or ex.get("system") not in (None, "")]
    if fmt == "turns":
        return [f"conversations[{i}]" for i in range(len(row["conversations"]))]
    if fmt == "glaive":
        turns = len(_GLAIVE_TURN.split(row["chat"])) // 2
        return ["system"] * (n - turns) + ["chat"] * turns
    if fmt == "xlam":
        return ["query", "answers"]
    listed = [f"input[{j}]" for j in range(len(row["input"]))]
    return ["system_prompt"] * (n - len(listed) - 1) + listed + ["output"]


_EXCHANGE_KEYS = ("system", "input", "output")


def exchanges(row: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[Message]:
    """Each exchange's ``system`` (if any), ``input`` (the user turn) and ``output`` (the answer)."""
    out: list[Message] = []
    for i, ex in enumerate(row["conversation"]):
        where = f"conversation[{i}]"
        if type(ex) is not dict:
            raise RecordError("bad_message", f"expected an exchange object ({{\"input\", \"output\"}}), got "
                              f"{_kind(ex)}", field=where, message_index=len(out))
        for key, value in ex.items():
            if key not in _EXCHANGE_KEYS and not empty(value) and f"conversation[].{key}" not in ignore:
                raise RecordError("unused_field", f"exchange key {key!r} is not read (an exchange holds input, "
                                  "output and, optionally, system), so its content would be lost; fix: drop it or "
                                  "declare it ignored (the data entry's ignore_fields: [conversation[]."
                                  f"{key}], validate --ignore-field 'conversation[].{key}')",
                                  field=f"{where}.{key}", message_index=len(out))
        for key, role in (("system", "system"), ("input", "user"), ("output", "assistant")):
            value = ex.get(key)
            if key == "system" and (value is None or value == ""):
                continue
            if type(value) is not str:
                what = "no such key" if key not in ex else f"got {_kind(value)}"
                raise RecordError("non_string_content", f"expected the {key} as a string, {what}",
                                  field=f"{where}.{key}", message_index=len(out))
            out.append(Message(role, value))
    return out


def turns(row: dict[str, Any]) -> list[Message]:
    """Alternating user and assistant turns given as strings."""
    out = []
    for i, text in enumerate(row["conversations"]):
        if type(text) is not str:
            raise RecordError("bad_message", f"expected a string (this list holds its turns as strings, the user "
                              f"first, as LIMA does), got {_kind(text)}; fix: give every turn as a string, or "
                              "every turn as a message object", field=f"conversations[{i}]", message_index=i)
        out.append(Message("user" if i % 2 == 0 else "assistant", text))
    return out


_GLAIVE_TURN = re.compile(r"(?:\A\s*|\n\n+)(USER|ASSISTANT|FUNCTION RESPONSE): ?")
_GLAIVE_ROLES = {"USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}
_END = "<|endoftext|>"
_CALL = "<functioncall>"
_QUOTED_CALL = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*\'(.*)\'\s*\}\s*\Z',
                          re.DOTALL)


def glaive(row: dict[str, Any]) -> tuple[list[Message], str | None]:
    """The system prompt (its function definitions as tools) and the turns of the ``chat`` transcript.

    >>> messages, tools = glaive({"system": 'SYSTEM: You can call -\\n{"name": "f", "parameters": {}}\\n',
    ...     "chat": "USER: Go\\n\\n\\nASSISTANT: <functioncall> {\\"name\\": \\"f\\", \\"arguments\\": '{}'} "
    ...             "<|endoftext|>\\n\\n\\nFUNCTION RESPONSE: {}\\n\\n\\nASSISTANT: Done. <|endoftext|>"})
    >>> [(m.role, m.content, [c.name for c in m.tool_calls]) for m in messages]
    [('system', 'You can call -', []), ('user', 'Go', []), ('assistant', '', ['f']), ('tool', '{}', []), ('assistant', 'Done.', [])]
    >>> tools
    '[{"name": "f", "parameters": {}}]'
    """
    system, tools = _glaive_system(row.get("system"))
    out = [Message("system", system)] if system else []
    parts = _GLAIVE_TURN.split(row["chat"])
    if parts[0].strip():
        raise RecordError("bad_transcript", "text before the first USER: turn of the transcript; fix: drop it or "
                          "make it a turn", field="chat", message_index=len(out))
    for who, said in zip(parts[1::2], parts[2::2]):
        role, said = _GLAIVE_ROLES[who], said.rstrip()
        index = len(out)
        if role != "assistant":
            if said.endswith(_END):
                raise RecordError("bad_transcript", f"a {who} turn ending with {_END}, which ends assistant turns: "
                                  "the transcript's turns cannot be told apart here (an ASSISTANT: inside a turn); "
                                  "fix: repair or drop the record", field="chat", message_index=index)
            out.append(Message(role, said))
            continue
        if said.endswith(_END):
            said = said[:-len(_END)].rstrip()
        text, _, call = said.partition(_CALL)
        calls = (_glaive_call(call, index),) if _ else ()
        if not calls and out and out[-1].role == "assistant" and not out[-1].tool_calls:
            raise RecordError("bad_transcript", "two ASSISTANT turns in a row, the second no call: one answer cut in "
                              "two by an ASSISTANT: inside it (where the source wrote AI:); fix: join the two turns "
                              "or drop the record", field="chat", message_index=index)
        out.append(Message("assistant", text.rstrip(), tool_calls=calls))
    return out, tools


def _glaive_call(text: str, index: int) -> ToolCall:
    """``{"name": ..., "arguments": '{...}'}`` (the arguments a single-quoted JSON string) or JSON."""
    quoted = _QUOTED_CALL.match(text)
    if quoted:
        name = json.loads(quoted.group(1))
        return ToolCall(name, json_object_text(quoted.group(2), "chat", index), None)
    return sharegpt_calls(text.strip(), "chat", index)[0]


def _glaive_system(system: Any) -> tuple[str, str | None]:
    """``(system prompt, tools)``: the function definitions (JSON objects after the first line) become
    the tools and the words around them the system prompt, ``SYSTEM:`` left out."""
    if system is None or system == "":
        return "", None
    if type(system) is not str:
        raise RecordError("non_string_content", f"expected a string, got {_kind(system)}", field="system",
                          message_index=0)
    text = system[len("SYSTEM:"):].lstrip() if system.startswith("SYSTEM:") else system
    start = text.find("\n{")
    if start < 0:
        return text.strip(), None
    decoder, functions, i = json.JSONDecoder(), [], start + 1
    while i < len(text) and text[i] == "{":
        try:
            fn, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return text.strip(), None  # not function definitions after all: the whole text is the prompt
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            return text.strip(), None
        functions.append(fn)
        i = len(text) - len(text[i:].lstrip())
    prose = "\n\n".join(p for p in (text[:start].strip(), text[i:].strip()) if p)
    return prose, json.dumps(functions, ensure_ascii=False)


def xlam(row: dict[str, Any]) -> list[Message]:
    """The query as the user turn, then the answers (calls) as one assistant turn."""
    answers = row["answers"]
    if isinstance(answers, str):
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError as e:
            raise RecordError("bad_tool_call", f"answers are not valid JSON ({e}); expected a list of calls "
                              "[{\"name\", \"arguments\"}]", field="answers", message_index=1) from None
    if type(answers) is not list:
        raise RecordError("bad_tool_call", f"expected the answers as a list of calls [{{\"name\", \"arguments\"}}], "
                          f"got {_kind(answers)}", field="answers", message_index=1)
    calls = sharegpt_calls(answers, "answers", 1) if answers else ()
    return [Message("user", row["query"]), Message("assistant", "", tool_calls=calls)]


def nemotron(row: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[Message]:
    """The system prompt, the input messages and the output as the assistant's answer."""
    messages = message_list(row["input"], "input", sharegpt=False, ignore=ignore)
    system = row.get("system_prompt")
    if system is not None and system != "":
        if type(system) is not str:
            raise RecordError("non_string_content", f"expected a string, got {_kind(system)}", field="system_prompt",
                              message_index=0)
        if messages and messages[0].role == "system":
            if messages[0].content != system:
                raise RecordError("ambiguous_system", "a system_prompt and a system message in input; expected "
                                  "one system prompt; fix: drop one of them", field="system_prompt")
        else:
            messages.insert(0, Message("system", system))
    output = row["output"]
    if type(output) is not str:
        raise RecordError("non_string_content", f"expected the answer as a string, got {_kind(output)}",
                          field="output", message_index=len(messages))
    if output.endswith(_EOT):  # Llama 3's end of turn, which the template writes
        output = output[:-len(_EOT)]
    return messages + [Message("assistant", output)]


_EOT = "<|eot_id|>"


_CHAT_MARKERS = ("<|im_start|>", "<|start_header_id|>", "[INST]", "<start_of_turn>", "<|user|>", "<|assistant|>",
                 "\n\nHuman:", "### Instruction")


def hint(row: dict[str, Any]) -> str | None:
    """What a record no layout reads is, and how to read it, for layouts sftlab does not read: an
    OpenAssistant message row, a pre-rendered ``text``, a file whose records sit in one object's list.

    >>> hint({"message_id": "a", "parent_id": None, "role": "prompter", "text": "Hi"})[:40]
    '; this is an OpenAssistant message row ('
    """
    if "message_id" in row and "parent_id" in row and row.get("role") in ("prompter", "assistant"):
        return ("; this is an OpenAssistant message row (oasst1/oasst2: one message of a conversation tree per "
                "record, linked by parent_id), and sftlab reads whole conversations: build each conversation "
                "by following parent_id from a reply to its root (role prompter is the user), as the trees "
                "export (*.trees.jsonl) nests them, and write it as messages")
    rendered = row.get("input")
    if isinstance(rendered, str) and "output" in row and any(marker in rendered for marker in _CHAT_MARKERS):
        return ("; its input is a conversation already rendered with a chat template's markers (as the first "
                "release of Llama-Nemotron's post-training data writes it), and sftlab renders conversations itself: "
                "markers inside text are plain text, never control tokens: use a release whose input is a message "
                "list (Llama-Nemotron's v1.1), or write the turns as messages")
    text = row.get("text")
    if isinstance(text, str) and set(row) <= {"text", "id", "source", "meta"}:
        if any(marker in text for marker in _CHAT_MARKERS):
            return ("; this is a conversation already rendered with a chat template's markers (the 'text' "
                    "layout of language modelling), and sftlab renders conversations itself: markers inside "
                    "text are plain text, never control tokens: write the turns as messages "
                    "({\"messages\": [{\"role\": \"user\", \"content\": ...}, ...]})")
        return ("; this is plain text for language modelling (the 'text' layout), and sftlab trains answers to "
                "prompts, not whole texts: split each text into a prompt and the continuation to train, "
                "{\"prompt\": ..., \"completion\": ...} (plain text, no chat template; only the completion is "
                "trained)")
    listed = [k for k, v in row.items() if type(v) is list and v and all(type(x) is dict for x in v)]
    if len(listed) == 1 and len(row) > 1:
        key = listed[0]
        return (f"; this looks like a file holding its records in the list {key!r} of one object (beside "
                f"{', '.join(repr(k) for k in row if k != key)}); sftlab reads records from a JSON array or JSON "
                f"Lines: write the list as its own file (jq '.{key}' FILE > records.json)")
    return None
