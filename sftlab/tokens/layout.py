"""What a chat template produces: the rendered text, where each message's content lies in it, and
which characters of each assistant turn are trained (``Turn``).

These are plain values shared by the built-in formats (``sftlab.tokens.chat_formats``) and the
span certification of Jinja templates (``sftlab.tokens.content_spans``, ``sftlab.tokens.trained_turns``);
nothing here renders or tokenizes. A template that cannot render a conversation exactly raises
``sftlab.tokens.template_errors.TemplateError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """Where message ``index``'s content lies in the rendered text (``text[start:end]``).

    ``eot_end`` is set for assistant messages only: ``text[end:eot_end]`` is the stop sequence
    the template writes right after the content (for example ``<|im_end|>``); ``None`` when the
    template writes none there.
    """
    index: int
    role: str
    start: int
    end: int
    eot_end: int | None = None


@dataclass(frozen=True)
class Turn:
    """The trained characters of assistant message ``index``: ``text[start:end]``.

    By the generation-parity contract (DESIGN.md, invariant 2) they are what the model must
    generate after the generation prompt of that turn: openers the template makes the model
    write (a think block, a channel header), the content, and the stop sequence
    ``text[stop_start:end]``. ``appended`` is true when the template writes no stop of its own and
    the token that ends the turn in the next rendering (the next role token) was written here.
    """
    index: int
    start: int
    end: int
    stop_start: int
    appended: bool = False


@dataclass(frozen=True)
class Layout:
    text: str
    spans: tuple[Span, ...]
    rerendered: tuple[int, ...] = ()
    """Assistant messages this rendering does not show as the model generates them: the template
    re-renders them once the conversation goes on (for example it drops their reasoning or writes
    another stop), so their tokens here are not what follows the generation prompt at their turn.
    They are never trained from this text: ``encoding.turns: expand`` gives each its own example
    with its inference context, otherwise the record is refused."""
    rewritten: tuple[int, ...] = ()
    """Messages whose content the template changes beyond trimming (strips reasoning, upper-cases,
    ...): their span is the text the template wrote in the content's place, kept from becoming
    control tokens like content."""
    turns: tuple[Turn, ...] = ()
    """The trained characters of every assistant message that can be trained from this text."""
    untrainable: dict = field(default_factory=dict, compare=False, hash=False)
    """Assistant message index -> why it cannot be trained with this template (no stop sequence,
    a turn that does not start with its generation prompt, ...)."""
    data_ranges: tuple[tuple[int, int], ...] = ()
    """Character ranges of record text outside content spans (tool-call arguments and names, tool
    schemas, reasoning) that spell a special token: encoded as ordinary text, like content."""
    reasoning_spans: tuple[tuple[int, int, int], ...] = ()
    """``(message index, start, end)`` of the reasoning each trained turn shows (for ``inspect``)."""
    unweighted: tuple[tuple[int, int], ...] = ()
    """Character ranges inside trained turns that are rendered but get weight 0 (reasoning under
    ``encoding.reasoning: mask``): a token holding any character of one is not trained (one that
    starts in the template's text before it too, such as SentencePiece's " I")."""

    def turn(self, index: int) -> Turn | None:
        return next((t for t in self.turns if t.index == index), None)
