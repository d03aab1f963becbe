"""Inputs that can be read only once (pipes, FIFOs, ``/dev/stdin``), copied while hashed so that
preparation can read them as often as it needs."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sftlab.data.readers import open_input
from sftlab.errors import UsageError
from sftlab.files import cache_dir
from sftlab.fingerprints import copy_sha256, files_digest


def is_stream(p: Path) -> bool:
    """Whether ``p`` is an input that can be read only once (a pipe, a FIFO, ``/dev/stdin``)."""
    return os.path.exists(p) and not Path(p).is_file() and not Path(p).is_dir()


class Spool:
    """Inputs that can be read only once, copied as they are read into files under the cache
    folder (``CACHE/.spool-*``, beside the stores' ``.build-*`` folders) while hashed, a block at
    a time: the store is still keyed by the content, and the copy can be read as often as
    preparation needs (worker processes, both sides of ``data.eval_split``). Removed on ``close``
    (or leaving ``with``)."""

    def __init__(self, cache: str | os.PathLike | None = None):
        self.cache = Path(cache) if cache else cache_dir("prepared")
        self.root: Path | None = None
        self.copies: dict[str, tuple[Path, str]] = {}

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        self.copies.clear()

    def read(self, p: Path) -> tuple[Path, str | None]:
        """``(path to read, raw digest)``: a stream's copy and the digest of its bytes (as
        ``sftlab.data.readers.input_digest`` gives it for a file), anything else as it is and ``None``."""
        if not is_stream(p):
            return p, None
        if str(p) not in self.copies:
            if self.root is None:
                self.cache.mkdir(parents=True, exist_ok=True)
                self.root = Path(tempfile.mkdtemp(prefix=".spool-", dir=self.cache))
            dest = self.root / str(len(self.copies)) / (Path(p).name or "input")
            dest.parent.mkdir()
            self.copies[str(p)] = (dest, _copy(p, dest))
        return self.copies[str(p)]


def _copy(p: Path, dest: Path) -> str:
    """Copy the stream ``p`` to ``dest``; the digest ``input_digest`` gives a file of those bytes."""
    with open_input(p) as src:
        try:
            with open(dest, "wb") as out:
                digest = copy_sha256(src, out)
        except OSError as e:
            raise UsageError(f"{p}: cannot copy it into {dest.parent}: {e.strerror or e}") from None
    return files_digest([("", digest)])
