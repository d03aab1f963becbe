"""Plain-text prompt/completion records: the layout of a continuation, with no chat template.

A record ``{"prompt": "The sky is", "completion": " blue."}`` of two strings is read as plain text
(``Conversation.plain``, the default ``prompt_completion: continuation``) and trained as TRL's
``SFTTrainer`` trains a non-conversational prompt/completion dataset: the tokens of the prompt,
then those of the completion, then the tokenizer's eos token, with the tokenizer's own leading
special tokens (a BOS where ``tokenizer(text)`` adds one); the completion and the eos are trained,
the prompt is not. No system prompt, no role headers. With ``prompt_completion: chat`` the same
record is a user and an assistant message rendered by the chat template.

The layout is an ordinary ``Layout`` (the prompt the span of message 0, the completion and the eos
the trained turn of message 1), so encoding tokenizes and weights it as it does a template's
rendering: content that spells a special token stays text, ``max_length`` refuses what does not
fit, and ``inspect`` shows it token by token.

Example (a tokenizer without BOS, eos ``<|im_end|>``)::

    prompt "The sky is", completion " blue."  renders as
    The sky is blue.<|im_end|>
    weights:  0 0 0 1 1 1            (" blue", ".", and the eos are trained)
"""
from __future__ import annotations

import weakref

from sftlab.tokens.layout import Layout, Span, Turn
from sftlab.tokens.template_errors import TemplateError

_PREFIX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def leading_special_text(enc) -> str:
    """The text of the special tokens the tokenizer puts before any text (``tokenizer(text)``'s
    BOS), ``""`` where it adds none; ``enc`` is an encoder of ``sftlab.tokens.encoding``."""
    if enc not in _PREFIX:
        with_specials = enc.backend.encode("a", add_special_tokens=True).ids
        plain = enc.backend.encode("a", add_special_tokens=False).ids
        k = next((k for k in range(len(with_specials) - len(plain) + 1)
                  if with_specials[k:k + len(plain)] == plain), 0)
        _PREFIX[enc] = "".join(enc.backend.id_to_token(i) for i in with_specials[:k])
    return _PREFIX[enc]


def continuation_layout(enc, conv) -> Layout:
    """The layout of a plain prompt/completion conversation: ``[BOS] prompt completion eos``."""
    eos = getattr(enc.tokenizer, "eos_token", None)
    if not eos:
        raise TemplateError("the tokenizer has no eos token to end a plain-text completion with; set "
                            "prompt_completion: chat to render the record with the chat template")
    prompt, completion = conv.messages[0].content, conv.messages[1].content
    bos = leading_special_text(enc)
    a = len(bos) + len(prompt)
    b = a + len(completion)
    return Layout(text=f"{bos}{prompt}{completion}{eos}",
                  spans=(Span(0, "user", len(bos), a), Span(1, "assistant", a, b, b + len(eos))),
                  turns=(Turn(1, a, b + len(eos), b),))
