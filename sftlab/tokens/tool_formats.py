"""Tool calls, tool results, tool schemas and reasoning in the built-in chat formats.

A built-in format renders plain ``{role, content}`` messages. A conversation with tools is first
rewritten into such messages (``flatten``), in Python for training and in Jinja (``jinja_prelude``,
put in front of the format's template) for inference, so that ``apply_chat_template(messages,
tools=tools)`` on a trained model reproduces the training text. The tool calls become part of the
assistant message's content, so they are trained with it; schemas land in the system message and
results in tool messages, which are never trained.

- ``chatml``: the Hermes / Qwen2.5 format. The schemas follow the system text (or make the
  system message) inside ``<tools></tools>``, one JSON object per line; each call is
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` after the content; a result
  is ``<tool_response>\\n...\\n</tool_response>`` in a ``tool`` turn; reasoning is a
  ``<think>\\n...\\n</think>\\n\\n`` block before the content (Qwen3).
- ``llama3``: the Llama 3.1 JSON tool-call format with the schemas in the system message
  (``Environment: ipython``, each schema as indented JSON), one call per assistant message
  written as ``{"name": ..., "parameters": {...}}`` with no other text, results in ``ipython``
  turns. Llama 3.1 has no reasoning format.
- Every other built-in has no tool or reasoning format: such a record is refused with that reason.

Example::

    >>> msgs = [{"role": "user", "content": "Oslo?"},
    ...         {"role": "assistant", "content": "", "tool_calls": [
    ...             {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]}]
    >>> flatten("chatml", msgs, [{"name": "weather"}])[2]["content"]
    '<tool_call>\\n{"name": "weather", "arguments": {"city": "Oslo"}}\\n</tool_call>'
"""
from __future__ import annotations

import json

from sftlab.tokens.template_errors import TemplateError

TOOL_FORMATS = ("chatml", "llama3")
REASONING_FORMATS = ("chatml",)

_HERMES_TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_HERMES_TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and "
                      "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                      "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")
_LLAMA_TOOLS_HEAD = ("Environment: ipython\n\nYou have access to the following functions. To call a function, "
                     "please respond with JSON for a function call.Respond in the format {\"name\": function "
                     "name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n")


def tojson(value, indent: int | None = None) -> str:
    """What transformers' Jinja ``tojson`` filter writes (``ensure_ascii=False``, key order kept)."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _arguments(args) -> str:
    return args if isinstance(args, str) else tojson(args)


def uses_tools(messages: list[dict], tools) -> bool:
    return bool(tools) or any(m.get("tool_calls") for m in messages)


def flatten(name: str, messages: list[dict], tools: list | None) -> list[dict]:
    """Plain ``{role, content}`` messages that the built-in format ``name`` renders as the tool
    format above; a system message is inserted first when there are tools and none (callers map
    span indices back). Raises ``TemplateError`` for a format without a tool or reasoning format."""
    calls = any(m.get("tool_calls") for m in messages)
    reasoning = any(m.get("reasoning_content") is not None for m in messages)
    if (tools or calls) and name not in TOOL_FORMATS:
        raise TemplateError(f"the {name} format has no tool-call format (built-ins with one: "
                            f"{', '.join(TOOL_FORMATS)}); use one of them or the tokenizer's own template")
    if reasoning and name not in REASONING_FORMATS:
        raise TemplateError(f"the {name} format has no reasoning format (built-ins with one: "
                            f"{', '.join(REASONING_FORMATS)}); use encoding.reasoning: drop, chatml or the "
                            "tokenizer's own template")
    if not (tools or calls or reasoning or any(m["role"] == "tool" for m in messages)):
        return messages
    head = _tools_block(name, tools)
    out = []
    rest = messages
    if head is not None:
        if messages and messages[0]["role"] == "system":
            system = messages[0]["content"]
            out.append({"role": "system", "content": (system + "\n\n" + head) if name == "chatml" else head + system})
            rest = messages[1:]
        else:
            out.append({"role": "system", "content": head})
    for m in rest:
        role, content = m["role"], m.get("content") or ""
        text, at = content, 0
        if role == "assistant":
            text, at = _assistant(name, m, content)
        elif role == "tool" and name == "chatml":
            text, at = "<tool_response>\n" + content + "\n</tool_response>", len("<tool_response>\n")
        # ``content_at``: where the message's own content lies in the text written for it (its span).
        out.append({"role": role, "content": text, "content_at": (at, len(content))})
    return out


def _tools_block(name: str, tools) -> str | None:
    if not tools:
        return None
    if name == "chatml":
        return _HERMES_TOOLS_HEAD + "".join("\n" + tojson(t) for t in tools) + _HERMES_TOOLS_TAIL
    return _LLAMA_TOOLS_HEAD + "".join(tojson(t, indent=4) + "\n\n" for t in tools)


def _assistant(name: str, m: dict, content: str) -> tuple[str, int]:
    """The text the format writes for an assistant message, and where its content starts in it."""
    calls = m.get("tool_calls") or []
    if name == "llama3":
        if not calls:
            return content, 0
        if len(calls) != 1 or content:
            raise TemplateError("the llama3 tool-call format (Llama 3.1) writes one call per assistant message "
                                "and nothing else; split parallel calls or text into separate turns")
        fn = calls[0].get("function", calls[0])
        return '{"name": "' + fn["name"] + '", "parameters": ' + _arguments(fn["arguments"]) + "}", 0
    reasoning = m.get("reasoning_content")
    head = "<think>\n" + reasoning + "\n</think>\n\n" if reasoning is not None else ""
    text = head + content
    for j, call in enumerate(calls):
        fn = call.get("function", call)
        text += ("\n" if j or content else "") + '<tool_call>\n{"name": "' + fn["name"] + '", "arguments": ' \
            + _arguments(fn["arguments"]) + "}\n</tool_call>"
    return text, len(head)


def jinja_prelude(name: str) -> str:
    """Jinja that rewrites ``messages`` (with ``tools``) as ``flatten`` does, for the format's template."""
    if name not in TOOL_FORMATS:
        return ("{%- if tools or (messages | selectattr('tool_calls') | list) %}{{- raise_exception('the " + name
                + " format has no tool-call format') }}{%- endif %}")
    j = json.dumps
    lines = ["{%- set tf = namespace(msgs=[], head='') %}"]
    if name == "chatml":
        lines.append("{%- if tools %}{%- set tf.head = " + j(_HERMES_TOOLS_HEAD) + " %}{%- for t in tools %}"
                     "{%- set tf.head = tf.head + '\\n' + (t | tojson) %}{%- endfor %}"
                     "{%- set tf.head = tf.head + " + j(_HERMES_TOOLS_TAIL) + " %}{%- endif %}")
        system = "messages[0]['content'] + '\\n\\n' + tf.head"
    else:
        lines.append("{%- if tools %}{%- set tf.head = " + j(_LLAMA_TOOLS_HEAD) + " %}{%- for t in tools %}"
                     "{%- set tf.head = tf.head + (t | tojson(indent=4)) + '\\n\\n' %}{%- endfor %}{%- endif %}")
        system = "tf.head + messages[0]['content']"
    lines.append("{%- set tf.rest = messages %}{%- if tf.head %}{%- if messages and messages[0]['role'] == 'system' %}"
                 "{%- set tf.msgs = [{'role': 'system', 'content': " + system + "}] %}{%- set tf.rest = messages[1:] %}"
                 "{%- else %}{%- set tf.msgs = [{'role': 'system', 'content': tf.head}] %}{%- endif %}{%- endif %}")
    lines.append("{%- for m in tf.rest %}{%- set c = namespace(text=(m['content'] or '')) %}")
    args = "(f['arguments'] if f['arguments'] is string else (f['arguments'] | tojson))"
    if name == "chatml":
        lines.append(
            "{%- if m['role'] == 'assistant' %}{%- set content = c.text %}"
            "{%- if m['reasoning_content'] is defined and m['reasoning_content'] is not none %}"
            "{%- set c.text = '<think>\\n' + m['reasoning_content'] + '\\n</think>\\n\\n' + c.text %}{%- endif %}"
            "{%- if m['tool_calls'] %}{%- for call in m['tool_calls'] %}"
            "{%- set f = call['function'] if call['function'] is defined else call %}"
            "{%- set c.text = c.text + ('\\n' if (not loop.first or content) else '') + '<tool_call>\\n{\"name\": \"' "
            "+ f['name'] + '\", \"arguments\": ' + " + args + " + '}\\n</tool_call>' %}{%- endfor %}{%- endif %}"
            "{%- elif m['role'] == 'tool' %}{%- set c.text = '<tool_response>\\n' + c.text + '\\n</tool_response>' %}"
            "{%- endif %}")
    else:
        lines.append(
            "{%- if m['role'] == 'assistant' and m['reasoning_content'] is defined and m['reasoning_content'] is not none %}"
            "{{- raise_exception('the llama3 format has no reasoning format') }}{%- endif %}"
            "{%- if m['role'] == 'assistant' and m['tool_calls'] %}"
            "{%- if m['tool_calls'] | length != 1 or c.text %}{{- raise_exception('the llama3 tool-call format writes "
            "one call per assistant message and nothing else') }}{%- endif %}"
            "{%- set call = m['tool_calls'][0] %}{%- set f = call['function'] if call['function'] is defined else call %}"
            "{%- set c.text = '{\"name\": \"' + f['name'] + '\", \"parameters\": ' + " + args + " + '}' %}{%- endif %}")
    lines.append("{%- set tf.msgs = tf.msgs + [{'role': m['role'], 'content': c.text}] %}{%- endfor %}"
                 "{%- set messages = tf.msgs %}")
    return "".join(lines)
