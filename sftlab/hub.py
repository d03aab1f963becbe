"""Hub names (``org/model``) when no hub can be reached: the local cache, or a clear error at once.

transformers asks the hub for each file of a model given by name; with no network,
huggingface_hub retries every request with back-off (five tries, tens of seconds) before it
falls back to the local cache or fails with a message about connections. sftlab asks once per
process instead, with one request that is not retried: when ``HF_HUB_OFFLINE`` is set or the
hub's endpoint does not answer, a name in the local Hugging Face cache is read from its snapshot
directory there without touching the network, and a name that is not there fails at once with what to do.
Every ``from_pretrained`` of a name or path goes through :func:`resolve_source`.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from sftlab.errors import UsageError

PROBE_TIMEOUT_S = 5.0
"""How long the one request that checks whether the hub answers may take."""


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why no hub can be reached (``HF_HUB_OFFLINE``, or the endpoint's error), or ``None``."""
    # lazy: huggingface_hub is only needed when a name is not a local path
    from huggingface_hub import constants, is_offline_mode
    from huggingface_hub.utils import get_session

    if is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)  # any answer will do
    except Exception as e:  # noqa: BLE001 - the client's connection, timeout and proxy errors
        return f"{constants.ENDPOINT} cannot be reached ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    return None


def cached_snapshot(name: str) -> str | None:
    """The local snapshot directory of the hub name ``name`` in the Hugging Face cache, or ``None``."""
    from huggingface_hub import snapshot_download  # lazy: only for hub names

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def resolve_source(name_or_path: str | os.PathLike) -> str:
    """What to give ``from_pretrained``: a local path as it is; a hub name as it is where the hub
    answers; where it does not, the name's snapshot directory in the local cache (read with no
    network request at all), or ``UsageError`` (one line: what to do) when the cache lacks it."""
    if Path(name_or_path).exists():
        return str(name_or_path)
    name = str(name_or_path)
    why = hub_unreachable()
    if why is None:
        return name
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    from huggingface_hub import constants  # lazy: only for hub names

    raise UsageError(
        f"{name}: not a local directory and not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and "
        f"{why}: give a local model directory instead (one written by save_pretrained), or download "
        f"the model where the hub is reachable (`hf download {name}`) into this cache (HF_HOME) and set "
        "HF_HUB_OFFLINE=1")
