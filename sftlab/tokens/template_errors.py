"""The errors of chat templates: a template that cannot render a conversation exactly, and one that
ran past a rendering limit (time, output size, steps).

Both are ``ValueError`` s whose message says why, so a command reports them in one line::

    >>> issubclass(RenderLimitError, TemplateError) and issubclass(TemplateError, ValueError)
    True
"""
from __future__ import annotations

__all__ = ["TemplateError", "RenderLimitError"]


class TemplateError(ValueError):
    """The template cannot render this conversation exactly (reason in the message)."""


class RenderLimitError(TemplateError):
    """A rendering ran past the time, output-size or step limit: the template is refused, not waited on."""
