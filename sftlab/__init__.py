"""sftlab: instruction tuning (SFT) that is correct by construction and auditable after the fact.

The public API is imported lazily so that ``import sftlab`` (and the CLI's ``--help``)
stays fast; torch and transformers load only when a function that needs them is called.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "Conversation": "sftlab.data.conversation",
    "Message": "sftlab.data.conversation",
    "encode": "sftlab.tokens.encoding",
    "EncodedExample": "sftlab.tokens.encoding",
    "get_template": "sftlab.tokens.templates",
    "pack": "sftlab.tokens.packing",
    "PackedRow": "sftlab.tokens.packing",
    "detect_refusal": "sftlab.evaluation.detector",
    "Policy": "sftlab.data.policy",
    "load_policy": "sftlab.data.policy",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sftlab' has no attribute {name!r}")
