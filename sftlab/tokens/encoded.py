"""What encoding produces: ``EncodedExample`` (token ids and loss weights of one example, with the
record's metadata and what truncation or expansion did), the ``Trace`` of how it was made, and
``EncodingError`` for a record that cannot be encoded exactly.

Example::

    >>> ex = EncodedExample([1, 2, 3], [0.0, 1.0, 1.0], trained_tokens=2, trained_weight=2.0)
    >>> len(ex), ex.input_ids == [1, 2, 3], ex.loss_weights == [0.0, 1.0, 1.0]
    (3, True, True)
"""
from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass

from sftlab.data.conversation import Origin
from sftlab.tokens.arrays import TokenArray, loss_weights, token_ids
from sftlab.tokens.layout import Layout

__all__ = ["EncodedExample", "EncodingError", "Trace", "KEEP_TRACE"]


class EncodingError(ValueError):
    """This record cannot be encoded exactly; the message is the quarantine reason, ``code`` the
    short name of the rule (as in the loaders' quarantine entries)."""

    def __init__(self, reason: str, code: str = "encode_failed"):
        super().__init__(reason)
        self.code = code



class Trace:
    """The rendering an example was encoded from: its ``Layout``, the character offsets of its
    tokens, and the messages it holds (after truncation or expansion)."""
    __slots__ = ("layout", "offsets", "messages")

    def __init__(self, layout: Layout, offsets, messages):
        self.layout, self.offsets, self.messages = layout, list(offsets), tuple(messages)


KEEP_TRACE: "contextvars.ContextVar[bool]" = contextvars.ContextVar("sftlab_keep_trace", default=False)


@dataclass(frozen=True)
class EncodedExample:
    input_ids: TokenArray
    """Token ids, stored compactly (``sftlab.tokens.arrays``: int32, 4 bytes a token); equal to a list of them."""
    loss_weights: TokenArray
    """Same length as ``input_ids``; the weight of predicting that token (shifted by the objective),
    float32."""
    slice: str | None = None
    task: str | None = None
    id: str | None = None
    expected: str | None = None
    policy_category: str | None = None
    trained_tokens: int = 0
    """Tokens with a weight > 0."""
    trained_weight: float = 0.0
    """Sum of the weights."""
    dropped_turns: int = 0
    """Messages removed from the front by ``max_length`` truncation."""
    origin: Origin | None = None
    derived: str | None = None
    """``None`` for a record's own example; ``"turn"`` for an extra example made by
    ``turns="expand"`` (one re-rendered assistant turn with its inference context); ``"overflow"``
    for one made by ``overflow="split"`` (exchanges truncation dropped, with the context that fits)."""
    lost_trained_tokens: int = 0
    """Trained tokens of this record that no example holds (dropped by ``max_length`` truncation
    and not split into further examples); counted on the record's own example."""
    reasoning_tokens: int = 0
    """Trained tokens inside reasoning (``encoding.reasoning: keep``), for the statistics."""
    trace: "Trace | None" = dataclasses.field(default=None, compare=False, repr=False)
    """How the example was made (rendering, spans, token offsets), kept only where asked
    (``encode_expanded(..., trace=True)``, ``sftlab.tokens.masks.annotate``), never in bulk encoding."""

    def __post_init__(self):
        object.__setattr__(self, "input_ids", token_ids(self.input_ids))
        object.__setattr__(self, "loss_weights", loss_weights(self.loss_weights))

    def __len__(self) -> int:
        return len(self.input_ids)
