"""Checking a response against a prompt's expected answer (``task_accuracy``).

Three answer types:

- ``exact``: the normalised answer equals the normalised whole response, or the response's
  *final answer*: the text after its last "answer is" / "answer:" marker, or its last line,
  or its last sentence. Normalised = lower case, straight quotes, single spaces, markdown
  emphasis and surrounding quotes/punctuation removed. Containment alone does not count
  ("4" is not found in "14 or 40").
- ``numeric``: the last number in the response is within ``tolerance`` of the answer
  (thousands separators allowed: "1,234.5").
- ``regex``: ``re.search(answer, response)`` finds a match (add ``(?i)`` for case-insensitive).
  The match runs under a time limit (``REGEX_TIMEOUT_S``, with the ``regex`` package): a pattern
  that backtracks catastrophically, such as ``^(.+)+!!!$``, raises :class:`UnmatchableAnswer`
  instead of hanging the evaluation.
- ``tool_call``: the answer is ``{"name", "arguments"}`` JSON; the first tool call the response
  makes has the same function name and arguments equal as JSON (parsed, so key order and
  spacing do not matter, ``1`` equals ``1.0``). A call is any JSON object in the response with a
  ``name`` and ``arguments`` (or ``parameters``, the Llama 3.1 spelling), inside ``<tool_call>``
  tags (Hermes, Qwen), a ``[TOOL_CALLS]`` list (Mistral) or bare (Llama 3.1).

Examples::

    >>> check_answer("Let me think. 2 + 2 = 4, so the answer is **4**.", "4", "exact")
    True
    >>> check_answer("It is about 3.1416", "3.14159", "numeric", tolerance=0.001)
    True
    >>> check_answer("14 or 40", "4", "exact")
    False
    >>> check_answer('<tool_call>\\n{"name": "weather", "arguments": {"days": 2, "city": "Oslo"}}\\n</tool_call>',
    ...              '{"name": "weather", "arguments": {"city": "Oslo", "days": 2.0}}', "tool_call")
    True
"""
from __future__ import annotations

import json
import math
import re

ANSWER_TYPES = ("exact", "numeric", "regex", "tool_call")
REGEX_TIMEOUT_S = 1.0


class UnmatchableAnswer(ValueError):
    """A regular-expression answer that could not be matched within the time limit."""


_STRAIGHTEN = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
_EDGE = " \t\n.,;:!?\"'`*_()[]{}"
_MARKER = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def normalise_answer(text: str) -> str:
    """``'**Paris**.'`` -> ``'paris'``."""
    t = text.translate(_STRAIGHTEN).replace("**", "").replace("__", "")
    return " ".join(t.lower().split()).strip(_EDGE)


def final_answer_candidates(response: str) -> list[str]:
    """The whole response, the text after the last answer marker, the last line and sentence."""
    out = [response]
    markers = list(_MARKER.finditer(response))
    if markers:
        rest = response[markers[-1].end():]
        out.append(re.split(r"(?<=[.!?])\s|\n", rest.strip(), maxsplit=1)[0])
    lines = [ln for ln in response.splitlines() if ln.strip()]
    if lines:
        out.append(lines[-1])
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", lines[-1]) if s.strip()]
        if sentences:
            out.append(sentences[-1])
    return out


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (``None`` when there is none)."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def check_answer(response: str, answer: str, answer_type: str = "exact",
                 tolerance: float | None = None) -> bool:
    """Whether ``response`` gives ``answer`` by the rule of ``answer_type`` (module docstring)."""
    if answer_type == "exact":
        want = normalise_answer(str(answer))
        return any(normalise_answer(c) == want for c in final_answer_candidates(response))
    if answer_type == "numeric":
        got = last_number(response)
        if got is None:
            return False
        want = float(answer)
        tol = tolerance if tolerance is not None else 0.0
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=tol + 1e-12)
    if answer_type == "regex":
        import regex  # lazy: only answers checked by pattern need the regex engine

        try:
            return regex.search(str(answer), response, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            raise UnmatchableAnswer(f"answer {str(answer)[:80]!r}: the regular expression did not finish "
                                    f"within {REGEX_TIMEOUT_S:g} s (catastrophic backtracking); "
                                    "unmatchable, counted as not checkable") from None
    if answer_type == "tool_call":
        want = json.loads(answer)
        calls = tool_calls_in(response)
        return bool(calls) and calls[0] == (want["name"], _arguments(want["arguments"]))
    raise ValueError(f"answer_type must be one of {', '.join(ANSWER_TYPES)}, got {answer_type!r}")


def tool_calls_in(response: str) -> list[tuple[str, object]]:
    """``(name, arguments)`` of every tool call written in ``response``, in order (see the module
    docstring): each JSON object (also inside a JSON list) with a string ``name`` and an
    ``arguments`` / ``parameters`` object or JSON string of one.

        >>> tool_calls_in('[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": "{}"}]')
        [('a', {'x': 1}), ('b', {})]
    """
    decoder, calls, i = json.JSONDecoder(), [], 0
    while True:
        i = min((k for k in (response.find("{", i), response.find("[", i)) if k >= 0), default=-1)
        if i < 0:
            return calls
        try:
            value, end = decoder.raw_decode(response, i)
        except json.JSONDecodeError:
            i += 1
            continue
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item)
            if call is not None:
                calls.append(call)
        i = end


def _as_call(item) -> tuple[str, object] | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    args = item.get("arguments", item.get("parameters"))
    try:
        args = _arguments(args)
    except (ValueError, TypeError):
        return None
    return (item["name"], args) if isinstance(args, dict) else None


def _arguments(args):
    """Arguments as a parsed JSON object (a JSON string of one is parsed)."""
    return json.loads(args) if isinstance(args, str) else args


def answer_problem(answer, answer_type: str, tolerance) -> str | None:
    """Why this answer specification cannot be checked (``None`` when it can)."""
    if answer_type not in ANSWER_TYPES:
        return f"answer_type {answer_type!r} is not one of {', '.join(ANSWER_TYPES)}"
    if answer_type == "numeric":
        try:
            float(answer)
        except (TypeError, ValueError):
            return f"answer {answer!r} is not a number (answer_type numeric)"
    if answer_type == "regex":
        import regex  # lazy: only answers checked by pattern need the regex engine

        try:  # with the package that matches it; a repeat count past 2**32 is an OverflowError
            regex.compile(str(answer))
        except (regex.error, OverflowError, ValueError, RecursionError) as e:
            return f"answer {str(answer)[:80]!r} is not a valid regular expression: {e}"
    if answer_type == "tool_call":
        try:
            want = json.loads(answer) if isinstance(answer, str) else answer
        except json.JSONDecodeError as e:
            return f"the expected tool call is not valid JSON ({e.msg})"
        try:
            ok = isinstance(want, dict) and isinstance(want.get("name"), str) and \
                isinstance(_arguments(want.get("arguments")), dict)
        except (ValueError, TypeError):
            ok = False
        if not ok:
            return 'the expected tool call must be {"name": ..., "arguments": {...}}'
    if tolerance is not None:
        try:
            if float(tolerance) < 0 or not math.isfinite(float(tolerance)):
                return f"tolerance {tolerance!r} must be a finite number >= 0"
        except (TypeError, ValueError):
            return f"tolerance {tolerance!r} is not a number"
    return None
