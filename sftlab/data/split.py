"""The held-out split taken from training data: by a hash of each record's messages.

A record goes to the held-out side when the first 8 bytes of the sha256 of its messages (roles and
contents, canonical JSON), read as a fraction of 2**64, fall below ``share``. The choice depends on
the record alone: it is the same on every run, in any order, whatever else the file holds, and two
copies of one conversation (with different ids or metadata) always fall on the same side, so an
exact duplicate never crosses from training into held-out data (DESIGN invariant 7).

Example::

    >>> from sftlab.data.conversation import Conversation, Message
    >>> convs = [Conversation((Message("user", f"q{i}"), Message("assistant", f"a{i}"))) for i in range(200)]
    >>> train, held = split_by_hash(convs, 0.1)
    >>> len(train) + len(held), len(held), split_by_hash(convs[::-1], 0.1)[1] == held[::-1]
    (200, 20, True)
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from sftlab.data.conversation import Conversation
from sftlab.fingerprints import sha256_hex


def heldout_key(conv: Conversation) -> float:
    """The record's place in [0, 1): a hash of its messages only."""
    text = json.dumps([[m.role, m.content] for m in conv.messages], ensure_ascii=False,
                      separators=(",", ":"))
    return int(sha256_hex(text)[:16], 16) / 2 ** 64


def split_by_hash(conversations: Sequence[Conversation], share: float
                  ) -> tuple[list[Conversation], list[Conversation]]:
    """``(training, held-out)``, each in input order; ``share`` of 0 holds out nothing."""
    train, held = [], []
    for conv in conversations:
        (held if share > 0 and heldout_key(conv) < share else train).append(conv)
    return train, held
