"""The keys of a message beyond its speaker, text, calls and reasoning: whether it is trained
(``train``, also spelt ``loss`` as ms-swift does), its loss weight (``weight``, also spelt
``loss_weight`` as LLaMA-Factory does and ``loss_scale`` as ms-swift does), message metadata, and the
accounting of every other key (DESIGN.md, invariant 9): empty, declared ignored
(``messages[].KEY``), or the record is refused naming it.

Example::

    >>> message_train({"loss": False}, "assistant", "messages[1]", 1)
    False
    >>> message_weight({"loss_scale": 2}, "assistant", "messages[1]", 1)
    2.0
    >>> account_keys({"role": "user", "content": "hi", "mood": "glad"}, ["role", "content", "mood"], "user",
    ...              "role", "content", "messages", 0, 0, ignore=("messages[].mood",))
    >>> account_keys({"role": "user", "content": "hi", "mood": "glad"}, ["role", "content", "mood"], "user",
    ...              "role", "content", "messages", 0, 0, ignore=())
    Traceback (most recent call last):
    ...
    sftlab.data.record_errors.RecordError: messages[0].mood: message key 'mood' is not read by sftlab and is not message metadata it knows (id, timestamp, created_at), so its content would be lost; fix: map it (role_key, content_key), drop it or declare it ignored (the data entry's ignore_fields: [messages[].mood], validate --ignore-field 'messages[].mood')
"""
from __future__ import annotations

import math
from typing import Any

from sftlab.data.record_errors import RecordError, empty

__all__ = ["MESSAGE_METADATA", "TRAINING_KEYS", "MAX_WEIGHT", "message_train", "message_weight", "account_keys"]

MESSAGE_METADATA = ("id", "timestamp", "created_at")
"""Message keys that describe a message rather than hold content (accepted, not trained)."""
TRAINING_KEYS = ("train", "loss", "weight", "loss_weight", "loss_scale")
"""The keys ``message_train`` and ``message_weight`` read."""
MAX_WEIGHT = 1e6  # larger weights overflow float32 losses (1e39 is inf) long before they mean more


def account_keys(m: dict, keys: list, role: str, role_key: str, content_key: str, base: str, pos: int,
             index: int, ignore: tuple[str, ...]) -> None:
    """Every key of ``keys`` (the message's keys that are not read whatever the speaker) is its speaker
    or text key, a tool result's ``name``/``tool_call_id``, empty or declared ignored; otherwise the
    record is refused naming it (``unused_field``) and the option that ignores it, with the message's other
    such keys (one run of validate names them all)."""
    unread: list[str] = []
    for key in keys:
        if key == role_key or key == content_key or role == "tool" and key in ("name", "tool_call_id"):
            continue
        value = m[key]
        if empty(value) or f"{base}[].{key}" in ignore:
            continue
        if key == "type" and value == "message":
            continue  # OpenAI's Responses API marks its message items so
        hint = (f"declare it ignored (the data entry's ignore_fields: [{base}[].{key}], validate "
                f"--ignore-field '{base}[].{key}')")
        if key == "name":
            reason = (f"a {role} message with name {value!r} (the speaker's name, as OpenAI's API allows): chat "
                      "templates do not show names to the model, so it would be lost; fix: write it into the "
                      f"content, or {hint} to train without it")
        elif key == "tool_call_id":
            reason = (f"a {role} message with tool_call_id {value!r}: only a tool result answers a call; fix: "
                      f"make it a tool message, drop the key or {hint}")
        else:
            unread.append(key)
            continue
        raise RecordError("unused_field", reason, field=f"{base}[{pos}].{key}", message_index=index)
    if unread:
        _unread(m, unread, base, pos, index)


def _unread(m: dict, unread: list[str], base: str, pos: int, index: int) -> None:
    """Refuse the record naming the message keys nothing reads, and the options that keep it."""
    key, value = unread[0], m[unread[0]]
    if len(unread) == 1:
        guess = (" (if it says whether the turn is trained, write that as train: true or false)" if type(value) is bool
                 else " (if it is the turn's loss weight, write it as weight)" if type(value) in (int, float) else "")
        what, it, its = f"message key {key!r} is", "it", "its"
    else:
        guess, what, it, its = "", f"message keys {', '.join(map(repr, unread))} are", "them", "their"
    hint = (f"declare {it} ignored (the data entry's ignore_fields: [{', '.join(f'{base}[].{k}' for k in unread)}], "
            f"validate {' '.join(f'--ignore-field {chr(39)}{base}[].{k}{chr(39)}' for k in unread)})")
    raise RecordError("unused_field", f"{what} not read by sftlab and {'is' if it == 'it' else 'are'} not message "
                      f"metadata it knows ({', '.join(MESSAGE_METADATA)}), so {its} content would be lost{guess}; fix: "
                      f"map {it} (role_key, content_key), drop {it} or {hint}", field=f"{base}[{pos}].{key}",
                      message_index=index)


def message_train(m: dict, role: str, base: str, index: int) -> bool | None:
    """``train``, also spelt ``loss`` (ms-swift's per-message field, a boolean: whether the assistant
    turn is trained). Only assistant messages are trained, so others may only say false."""
    train = None
    for key in ("train", "loss"):
        value = m.get(key)
        if value is None:
            continue
        if type(value) is not bool:
            raise RecordError("bad_train", f"expected true or false, got {value!r}; fix: use a JSON "
                              "boolean (or leave the field out)", field=f"{base}.{key}", message_index=index)
        if train is not None and value != train:
            raise RecordError("bad_train", f"train given twice with different values (train and loss); fix: "
                              "keep one", field=f"{base}.{key}", message_index=index)
        if value and role != "assistant":
            raise RecordError("bad_train", f"a {role} message with {key} true: only assistant messages are "
                              f"trained, so its text would not be; fix: set {key} to false (or leave it out), or "
                              "make the text an assistant turn", field=f"{base}.{key}", message_index=index)
        train = value
    return train


def message_weight(m: dict, role: str, base: str, index: int) -> float | None:
    """``weight``, also spelt ``loss_weight`` (LLaMA-Factory) and ``loss_scale`` (ms-swift): the loss
    weight of an assistant message (0 trains nothing). Other messages are never trained, so they may
    only say 0."""
    weight = None
    for key in ("weight", "loss_weight", "loss_scale"):
        value = m.get(key)
        if value is None:
            continue
        value = _weight(value, f"{base}.{key}", index)
        if weight is not None and value != weight:
            raise RecordError("bad_weight", f"weight given twice with different values ({weight:g} and "
                              f"{value:g}); fix: keep one", field=f"{base}.{key}", message_index=index)
        if role != "assistant" and value > 0:
            raise RecordError("bad_weight", f"a {role} message with {key} {value:g}: only assistant messages "
                              f"are trained, so its text would not be; fix: set {key} to 0 (or leave it out), "
                              "or make the text an assistant turn", field=f"{base}.{key}", message_index=index)
        weight = value
    return weight


def _weight(value: Any, field: str, index: int) -> float:
    if type(value) is bool or not isinstance(value, (int, float)):
        raise RecordError("bad_weight", f"expected a number >= 0, got {value!r}; fix: use a "
                          "JSON number such as 1.0 (0 trains nothing)", field=field,
                          message_index=index)
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= MAX_WEIGHT:
        raise RecordError("bad_weight", f"expected a finite number >= 0 and <= {MAX_WEIGHT:g}, got {value!r}; fix: "
                          "use a weight such as 1.0 (0 trains nothing)", field=field,
                          message_index=index)
    return value
