"""Which characters of each assistant turn of a Jinja template's rendering are trained, and the
whole ``Layout`` of a rendering (content spans from ``sftlab.tokens.content_spans``, trained turns
from here).

For assistant message i, let P_i be the
template's rendering of the messages before it with the generation prompt, and F_i the rendering
of the messages up to and including it. Where F_i starts with P_i, the trained characters are
F_i after P_i up to and including the stop sequence: openers the template makes the model write
(a think block, a channel header), the content, and the stop. The stop is read off the template
itself: the control tokens it writes right after the content, both where the turn is the last
message (F_i) and where the conversation goes on; a closing token written only once after the
whole conversation (an eos) is after the stop and not trained. Where the template writes no stop
at all, the control token that begins the next turn is the stop (and is written after a final
turn that has none). A turn whose characters in the whole rendering differ from those of F_i (the
template re-renders earlier turns: drops their reasoning, writes another stop) is ``rerendered``
and never trained from that text: ``encoding.turns: expand`` trains it in its own example.

Example::

    >>> from sftlab.tokens.templates import ChatTemplate
    >>> t = ChatTemplate("t", "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
    ...                  "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    ...                  control_tokens=("<|user|>", "<|assistant|>", "<|end|>"), end_of_turn=("<|end|>",),
    ...                  fingerprint="")
    >>> lay = jinja_layout(t, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], False)
    >>> [lay.text[x.start:x.end] for x in lay.turns]
    ['yo<|end|>']
"""
from __future__ import annotations

import re
from sftlab.tokens.chat_formats import NOT_FROM_PROMPT
from sftlab.tokens.content_spans import (PROBE, PROBE_NEXT, NotVerbatim, PrefixUnstable, Renders, forms,
                                         incremental_spans, probed_spans)
from sftlab.tokens.layout import Layout, Turn
from sftlab.tokens.template_errors import RenderLimitError, TemplateError

# ``ChatTemplate`` in annotations is sftlab.tokens.templates's (not imported: that module imports this one).

__all__ = ["TRANSFORMS", "jinja_layout", "control_run", "sorted_control"]

TRANSFORMS = ("(a filter or test in the template changes or drops assistant content: escape, title, truncate, "
              "tojson, a test on the text); the trained text would not be the record's answer, so sftlab cannot "
              "certify this template: use one that writes content as it is")
"""Why a turn whose content the template transforms is refused (``check-template`` says it too)."""


def jinja_layout(t: ChatTemplate, messages: list[dict], add_generation_prompt: bool,
                  tools: list | None = None) -> Layout:
    r = Renders(t, messages, tools)
    text = r.prefix(len(messages), add_generation_prompt)
    rewritten: tuple[int, ...] = ()
    try:
        spans = incremental_spans(t, r, messages, text)
    except (PrefixUnstable, NotVerbatim) as e:
        probed = probed_spans(t, r, messages, text, add_generation_prompt)
        if probed is None:
            raise e from None
        spans, rewritten = probed
    if add_generation_prompt:  # a prompt for generation: nothing is trained from it
        return Layout(text, spans, (), rewritten)
    turns, rerendered, untrainable = [], [], {}
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        found = _turn(t, r, messages, i, text)
        if isinstance(found, tuple):
            turn, inserted = found
            if inserted:  # the final turn's stop, written where the template writes none
                text = text[:turn.stop_start] + inserted + text[turn.stop_start:]
            turns.append(turn)
        elif found == "rerendered":
            rerendered.append(i)
        else:
            untrainable[i] = found
    return Layout(text, spans, tuple(rerendered), rewritten, tuple(turns), untrainable)


def control_run(s: str, control: tuple[str, ...]) -> tuple[int, list[str]]:
    """``(w, tokens)``: ``s`` has its first control token at ``w`` and from there the control tokens
    ``tokens`` back to back (the longest token wins at each place); ``tokens`` is empty when ``s``
    has no control token."""
    starts = [(k, -len(c), c) for c in control if (k := s.find(c)) >= 0]
    if not starts:
        return len(s), []
    w = min(starts)[0]
    pos, run = w, []
    while True:
        tok = next((c for c in control if s.startswith(c, pos)), None)
        if tok is None:
            return w, run
        run.append(tok)
        pos += len(tok)


def _turn(t: ChatTemplate, r: Renders, messages: list[dict], i: int, text: str):
    """``(Turn, inserted)`` for assistant message i in ``text`` (``inserted``: the stop written after
    a final turn that has none, else ``""``), ``"rerendered"`` when the text does not show the turn
    as generated, or the reason it cannot be trained at all."""
    try:
        prompt = r.prefix(i, True)
        own = r.prefix(i + 1, False)
    except RenderLimitError:
        raise
    except TemplateError as e:
        return f"the template cannot render the prompt of this turn ({e})"
    if not own.startswith(prompt):
        return NOT_FROM_PROMPT
    if not messages[i]["content"]:
        return _turn_without_content(t, r, messages, i, text, prompt, own)
    try:
        probed = r.probed(i + 1, i, PROBE, False)
    except TemplateError as e:
        return f"the template cannot render it with other content ({e})"
    if probed.count(PROBE) != 1:
        return ("the template writes its content more than once" if probed.count(PROBE) > 1
                else "the template does not write its content as given " + TRANSFORMS)
    after = probed[probed.index(PROBE) + len(PROBE):]
    content_end = len(own) - len(after)
    if not own.endswith(after) or content_end < len(prompt):
        return "its content cannot be located in its own rendering"
    # The trained text is the record's content as the model must generate it: what the template
    # writes before a probe content (an opener), then the content itself (trimmed at most).
    # (Or the content alone, where it is laid out as the template lays it out: a think block.)
    opener = probed[len(prompt):probed.index(PROBE)] if probed.startswith(prompt) else ""
    written, accepted = own[len(prompt):content_end], forms(messages[i]["content"])
    if written not in accepted and not (written.startswith(opener) and written[len(opener):] in accepted):
        return (f"the template writes {written[:80]!r} where the record's answer is "
                f"{messages[i]['content'][:80]!r} " + TRANSFORMS)
    control = sorted_control(t)
    w_a, run_a = control_run(after, control)
    nxt = messages[i + 1] if i + 1 < len(messages) else {"role": "user", "content": PROBE_NEXT}
    try:
        cont = r.probed(i + 1, i, PROBE, False, then=nxt)
        k = cont.find(PROBE)
        w_b, run_b = control_run(cont[k + len(PROBE):], control) if k >= 0 else (0, [])
    except RenderLimitError:
        raise
    except TemplateError:
        w_b, run_b = 0, []
    common = []
    if after[:w_a] == cont[k + len(PROBE):][:w_b]:
        for a, b in zip(run_a, run_b):
            if a != b:
                break
            common.append(a)
    stop_run = common or run_a
    eos = t.special.get("eos_token")
    if eos in stop_run[:-1]:  # the run went on into the next turn's opener (a generation prompt always written)
        stop_run = stop_run[:len(stop_run) - stop_run[::-1].index(eos)]
    if stop_run:
        stop = after[:w_a] + "".join(stop_run)
        generated = own[len(prompt):content_end] + stop
        if text.startswith(prompt) and text.startswith(generated, len(prompt)):
            end = len(prompt) + len(generated)
            return Turn(i, len(prompt), end, end - len(stop)), ""
        return "rerendered"
    if not run_b:
        return _no_stop_reason(t)
    # No stop of its own: the control token that begins the next turn ends this one.
    stop = (cont[k + len(PROBE):][:w_b]) + run_b[0]
    return _place_stop(i, len(messages), text, prompt, own[len(prompt):content_end], stop, w_b)


def _place_stop(i: int, n_messages: int, text: str, prompt: str, generated: str, stop: str, w: int):
    """The turn of message ``i`` in the whole rendering ``text``: ``generated`` right after ``prompt``,
    then ``stop`` (its first ``w`` characters are whitespace). A final turn whose rendering has no
    stop gets it appended (whitespace already there is kept): ``(Turn, appended text)``;
    ``"rerendered"`` where the rendering does not hold the turn as generated."""
    start = len(prompt)
    if not (text.startswith(prompt) and text.startswith(generated, start)):
        return "rerendered"
    end_content = start + len(generated)
    if text.startswith(stop, end_content):
        return Turn(i, start, end_content + len(stop), end_content), ""
    if i + 1 == n_messages:
        ws = stop[:w]
        if ws and text.startswith(ws, end_content):  # the whitespace is there already
            end_content += len(ws)
            stop = stop[w:]
        return Turn(i, start, end_content + len(stop), end_content, appended=True), stop
    return "rerendered"


def _turn_without_content(t: ChatTemplate, r: Renders, messages: list[dict], i: int, text: str, prompt: str,
                          own: str):
    """The turn of an assistant message with no text content (tool calls, perhaps reasoning): all the
    template writes after the generation prompt is generated, up to and including its stop: the
    control tokens at the end of a run in the turn that the template also writes there when the
    conversation goes on (so an opener such as ``[TOOL_CALLS]`` is generated, the stop ends the turn,
    and an eos written once after the whole conversation is not part of it). Where the turn has no
    control token of its own, the one that begins the next turn is the stop, as for text turns."""
    after = own[len(prompt):]
    control = sorted_control(t)
    runs, pos = [], 0  # (start, [control tokens]) of each run of control tokens in the turn
    while True:
        found = [(k, c) for c in control if (k := after.find(c, pos)) >= 0]
        if not found:
            break
        k, c = min(found, key=lambda kc: (kc[0], -len(kc[1])))
        if runs and runs[-1][0] + sum(map(len, runs[-1][1])) == k:
            runs[-1][1].append(c)
        else:
            runs.append((k, [c]))
        pos = k + len(c)
    nxt = messages[i + 1] if i + 1 < len(messages) else {"role": "user", "content": PROBE_NEXT}
    try:
        cont = r.probed(i + 1, i, "", False, then=nxt)
    except RenderLimitError:
        raise
    except TemplateError:
        cont = None
    cont_after = cont[len(prompt):] if cont is not None and cont.startswith(prompt) else None
    start = len(prompt)
    if runs:
        stop = (runs[-1][0], runs[-1][0] + sum(map(len, runs[-1][1])))
        if cont_after is not None:
            k_next = cont_after.find(nxt["content"]) if nxt["content"] else -1
            before_next = cont_after[:k_next] if k_next >= 0 else cont_after
            stop = next(((k, k + len("".join(toks[:n]))) for k, toks in reversed(runs)
                         for n in range(len(toks), 0, -1) if after[:k] + "".join(toks[:n]) in before_next
                         and before_next.find(after[k:k + len("".join(toks[:n]))]) >= 0), stop)
        generated = after[:stop[1]]
        if not (text.startswith(prompt) and text.startswith(generated, start)):
            return "rerendered"
        return Turn(i, start, start + stop[1], start + stop[0]), ""
    # No control token of its own: the control token that begins the next turn ends this one.
    if cont_after is None or not cont_after.startswith(after.rstrip()):
        return _no_stop_reason(t)
    body = after.rstrip()
    w, run = control_run(cont_after[len(body):], control)
    if not run:
        return _no_stop_reason(t)
    stop = cont_after[len(body):][:w] + run[0]
    return _place_stop(i, len(messages), text, prompt, body, stop, w)


_TOKEN_LIKE = re.compile(r"<\|[A-Za-z0-9_]+\|>|<(?:start|end)_of_turn>")


def _no_stop_reason(t: ChatTemplate) -> str:
    """Why a turn has no stop; where the template writes token-like text (``<|eot_id|>``,
    ``<end_of_turn>``) that this tokenizer does not have as a control token, that is the cause."""
    reason = ("the template writes no stop sequence after it and no control token begins the next turn, "
              "so the model could not learn to stop")
    lacking = [x for x in dict.fromkeys(_TOKEN_LIKE.findall(t.source or "")) if x not in t.control_tokens]
    if not lacking:
        return reason
    return (f"{reason}: this tokenizer lacks the template's control token(s) {', '.join(lacking[:4])}, so they "
            "are plain text here; use the built-in template of that family (llama3, gemma...), whose role "
            "tokens sftlab adds (sftlab.tokens.role_tokens.add_role_tokens; sftlab train does it itself), add them "
            "to the tokenizer as special tokens, or use the tokenizer's own template")


def sorted_control(t: ChatTemplate) -> tuple[str, ...]:
    return tuple(sorted((c for c in t.control_tokens if c), key=len, reverse=True))

