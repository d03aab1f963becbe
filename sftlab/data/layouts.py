"""LLaMA-Factory's dataset descriptions (``dataset_info.json``) as sftlab column mappings.

An entry of LLaMA-Factory's ``dataset_info.json`` says how a file names its fields:
``formatting`` (``alpaca``, the default, or ``sharegpt``), ``columns`` (``prompt``, ``query``,
``response``, ``history``, ``messages``, ``system``, ``tools``, ``chosen``, ``rejected``, ...) and,
for ``sharegpt``, ``tags`` (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``,
``observation_tag``, ``function_tag``, ``system_tag``), and ``ranking`` for preference data. sftlab
reads such an entry as it is, or the same keys written in a data entry of its own config, and
turns them into ``sftlab.data.formats.Columns``. ``columns`` may also name sftlab's metadata
(``task: category``), as LLaMA-Factory has no such column. Columns LLaMA-Factory uses for other
training (``images``, ``videos``, ``audios``, ``kto_tag``) are accepted and not read: records
that fill them are refused naming the field (sftlab trains text SFT), unless it is declared ignored.

Example::

    >>> cols = columns_kwargs(None, {"prompt": "instruction", "query": "input", "response": "output",
    ...                              "system": "system", "history": "history"}, {})
    >>> cols["prompt"], cols["query_join"], cols["history"]
    ('instruction', '\\n', 'history')
    >>> sorted(columns_kwargs("sharegpt", {"messages": "conversations"},
    ...                       {"user_tag": "human", "assistant_tag": "gpt"})["roles"].items())
    [('gpt', 'assistant'), ('human', 'user')]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftlab.errors import UsageError
from sftlab.data.formats import META_FIELDS

COLUMNS = ("prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos",
           "audios", "chosen", "rejected", "kto_tag")
"""LLaMA-Factory's column names (``dataset_info.json``); sftlab's metadata names may be mapped too."""
UNREAD_COLUMNS = ("images", "videos", "audios", "kto_tag")
"""Columns for multimodal or KTO training: named fields stay unread (refused unless ignored)."""
TAGS = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool", "system_tag": "system"}
"""LLaMA-Factory's speaker tags and the role each names (``role_tag``, ``content_tag`` and
``function_tag`` name keys and the tool-call speaker)."""
ANY_LAYOUT = ("system", "tools", "chosen", "rejected")
"""Columns every layout may have: naming only these (and metadata) keeps each record's own layout."""
FORMATTINGS = ("alpaca", "sharegpt")
# How LLaMA-Factory joins the instruction and the input (its AlpacaDatasetConverter: "\n".join).
LLAMAFACTORY_QUERY_JOIN = "\n"


def columns_kwargs(formatting: str | None, columns: dict[str, str], tags: dict[str, str],
                   ranking: bool = False, where: str = "columns") -> dict[str, Any]:
    """``Columns`` keyword arguments for LLaMA-Factory's ``formatting``, ``columns`` and ``tags``.

    ``ranking`` is accepted (preference records are recognised by their chosen/rejected fields
    whatever it says). Raises ``UsageError`` naming an unknown key. ``columns`` that name only
    sftlab's metadata and the fields every layout may have (``system``, ``tools``, ``chosen``,
    ``rejected``), without a ``formatting``, keep each record's own layout:

        >>> columns_kwargs(None, {"slice": "channel"}, {})
        {'metadata': {'slice': 'channel'}}
        >>> columns_kwargs(None, {"system": "system_prompt"}, {})
        {'system': 'system_prompt', 'metadata': {}}
    """
    if formatting is None and columns and not tags and set(columns) <= set(META_FIELDS) | set(ANY_LAYOUT):
        return {**{k: columns[k] for k in ANY_LAYOUT if k in columns},
                "metadata": {k: v for k, v in columns.items() if k in META_FIELDS}}
    formatting = formatting or "alpaca"
    if formatting not in FORMATTINGS:
        raise UsageError(f"{where}: formatting {formatting!r} is not one of {', '.join(FORMATTINGS)}")
    for key, value in {**columns, **tags}.items():
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: {key} must name a field (a non-empty string), got {value!r}")
    unknown = sorted(set(columns) - set(COLUMNS) - set(META_FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown column {unknown[0]!r}; expected LLaMA-Factory's "
                         f"{', '.join(COLUMNS)} or sftlab's metadata {', '.join(META_FIELDS)}")
    unknown = sorted(set(tags) - set(TAGS) - {"role_tag", "content_tag", "function_tag"})
    if unknown:
        raise UsageError(f"{where}: unknown tag {unknown[0]!r}; expected one of role_tag, content_tag, "
                         f"{', '.join(TAGS)}, function_tag")
    if tags and formatting != "sharegpt":
        raise UsageError(f"{where}: tags apply to formatting: sharegpt (message lists), not {formatting}")
    out: dict[str, Any] = {k: columns[k] for k in ANY_LAYOUT if k in columns}
    out["metadata"] = {k: v for k, v in columns.items() if k in META_FIELDS}
    if formatting == "alpaca":
        misplaced = sorted(set(columns) & {"messages"})
        if misplaced:
            raise UsageError(f"{where}: column 'messages' belongs to formatting: sharegpt")
        out.update(prompt=columns.get("prompt", "instruction"), query=columns.get("query", "input"),
                   response=columns.get("response", "output"), history=columns.get("history"),
                   query_join=LLAMAFACTORY_QUERY_JOIN)
        return out
    misplaced = sorted(set(columns) & {"prompt", "query", "response", "history"})
    if misplaced:
        raise UsageError(f"{where}: column {misplaced[0]!r} belongs to formatting: alpaca; a sharegpt "
                         "entry names its message list with 'messages'")
    out.update(field_messages=columns.get("messages", "conversations"), role_key=tags.get("role_tag"),
               content_key=tags.get("content_tag"), function_tag=tags.get("function_tag"),
               roles={tags[t]: role for t, role in TAGS.items() if t in tags})
    return out


ENTRY_KEYS = ("file_name", "file_sha1", "hf_hub_url", "subset", "split", "formatting", "columns", "tags", "ranking")
"""The keys of a ``dataset_info.json`` entry that sftlab reads."""
OTHER_SOURCES = ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
"""Where an entry may say its data is that sftlab does not fetch from (a local file or a Hugging Face hub
name is read instead, when the entry has one)."""


def dataset_info_entry(path: str | Path, name: str) -> tuple[Path, dict[str, Any]]:
    """``(data, entry)`` of entry ``name`` in LLaMA-Factory's ``dataset_info.json`` at ``path``.
    The data is the entry's ``file_name`` beside it (its ``file_sha1``, where given, checked; only
    the ``train`` split a local file has), else its ``hf_hub_url`` as sftlab names a hub dataset
    (``name:subset:split``, split ``train`` unless the entry says). An entry key sftlab does not
    read, or one that would change which records are trained (``num_samples``: a sample of the
    file; ``folder``), is a ``UsageError`` naming it, so an entry never trains other records than
    it describes. Raises ``UsageError``.

        >>> import tempfile
        >>> info = Path(tempfile.mkdtemp()) / "dataset_info.json"
        >>> _ = info.write_text(json.dumps({"ultrachat_200k": {"hf_hub_url": "HuggingFaceH4/ultrachat_200k",
        ...     "ms_hub_url": "AI-ModelScope/ultrachat_200k", "split": "train_sft", "formatting": "sharegpt"},
        ...     "sample": {"file_name": "a.json", "num_samples": 100}}))
        >>> str(dataset_info_entry(info, "ultrachat_200k")[0])
        'HuggingFaceH4/ultrachat_200k::train_sft'
        >>> dataset_info_entry(info, "sample")
        Traceback (most recent call last):
        sftlab.errors.UsageError: ...[sample]: num_samples: LLaMA-Factory trains a sample of 100 records of the file, sftlab trains every record it reads; write the sample to a file of its own and name that, or remove num_samples
    """
    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read dataset_info {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a JSON object ({e})") from None
    if not isinstance(info, dict):
        raise UsageError(f"{path}: expected a JSON object of dataset entries")
    entry = info.get(name)
    if not isinstance(entry, dict):
        close = ", ".join(sorted(k for k in info if isinstance(info[k], dict))[:8])
        raise UsageError(f"{path}: no dataset entry {name!r} (entries: {close}, ...)")
    where = f"{path} [{name}]"
    _check_entry_keys(entry, where)
    split, subset = entry.get("split") or "train", entry.get("subset")
    if "file_name" in entry:
        if split != "train" or subset:
            key = "split" if split != "train" else "subset"
            raise UsageError(f"{where}: {key}: {entry[key]!r} names part of a hub dataset; a local file_name is "
                             "read whole (LLaMA-Factory reads it as the train split): remove it")
        data = path.parent / entry["file_name"]
        if entry.get("file_sha1"):
            _check_sha1(data, str(entry["file_sha1"]), where)
        return data, entry
    if entry.get("hf_hub_url"):
        return Path(f"{entry['hf_hub_url']}:{subset or ''}:{split}"), entry
    source = next((k for k in OTHER_SOURCES if k in entry), None)
    raise UsageError(f"{where}: no file_name" + (
        f" (its data is at {source}: {entry[source]}; download it and give the file as the path)" if source
        else ""))


def _check_entry_keys(entry: dict[str, Any], where: str) -> None:
    if entry.get("num_samples") is not None:
        raise UsageError(f"{where}: num_samples: LLaMA-Factory trains a sample of {entry['num_samples']} records "
                         "of the file, sftlab trains every record it reads; write the sample to a file of its own "
                         "and name that, or remove num_samples")
    if entry.get("folder"):
        raise UsageError(f"{where}: folder: {entry['folder']!r} (a folder of a hub repository) is not read; "
                         "download that folder and give its files as the data")
    unknown = [k for k in entry if k not in ENTRY_KEYS + OTHER_SOURCES + ("num_samples", "folder")]
    if unknown:
        raise UsageError(f"{where}: {', '.join(unknown)}: not a dataset_info key sftlab reads (it reads "
                         f"{', '.join(ENTRY_KEYS)}); remove {'it' if len(unknown) == 1 else 'them'}")


def _check_sha1(data: Path, expected: str, where: str) -> None:
    """LLaMA-Factory's ``file_sha1``: the SHA-1 of the file the entry describes."""
    import hashlib  # lazy: only entries that give a checksum need it

    if not data.is_file():
        return  # the readers name a missing file
    digest = hashlib.sha1()
    with open(data, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise UsageError(f"{where}: file_sha1 {expected} does not match {data} (its SHA-1 is {digest.hexdigest()}): "
                         "the file is not the one the entry describes")


def entry_kwargs(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """``Columns`` keyword arguments of one ``dataset_info.json`` entry."""
    for key in ("columns", "tags"):
        if not isinstance(entry.get(key, {}), dict):
            raise UsageError(f"{where}: {key} must be an object")
    return columns_kwargs(entry.get("formatting"), entry.get("columns", {}), entry.get("tags", {}),
                          bool(entry.get("ranking", False)), where)
