"""The one progress bar every long step shows (preparation, encoding, training, generation,
scoring), so they all look and behave alike: on stderr (stdout stays the command's output),
redrawn at most twice a second on a terminal and every ten seconds in a log file, counts shown
as they are ("999/1000", never "999/1.00k"), and off when the user asked for quiet or the work
is too small to be worth a bar.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = progress_bar(total=3, desc="encode", unit="conv", file=out)
    >>> _ = bar.update(3); bar.close()
    >>> "encode: 100%" in out.getvalue() and "3/3" in out.getvalue()
    True
    >>> list(progress_bar(range(2), desc="x", enabled=False))
    [0, 1]

tqdm is the library; this module only fixes its settings in one place.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
                 enabled: bool = True, initial: int = 0, file: TextIO | None = None) -> tqdm:
    """A tqdm bar with sftlab's settings; ``enabled=False`` gives one that draws nothing but still
    iterates and counts."""
    out = file if file is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=out,
                dynamic_ncols=True, mininterval=0.5 if tty else 10.0)
