"""The HTML report of a run: one self-contained page (inline CSS, inline PNG plots, no
script, nothing fetched), sections in a fixed order with stable ids::

    summary, data, masks, packing, training, evaluation, manifest

Every string from data, model outputs or files is HTML-escaped. Inputs are the files of
the run directory (DESIGN.md, "Run directory"); each is optional.
"""
from __future__ import annotations

import os
from pathlib import Path

from sftlab.files import write_atomic
from sftlab.manifest import ManifestError, update_manifest
from sftlab.report import sections as s
from sftlab.report.data_section import data_section
from sftlab.report.evaluation import evaluation_section
from sftlab.report.inputs import read_run
from sftlab.report.markup import not_recorded, page, section

SECTIONS = (("summary", "Summary"), ("data", "Data"), ("masks", "Masks"),
            ("packing", "Packing"), ("training", "Training"), ("evaluation", "Evaluation"),
            ("manifest", "Manifest"))


def build_report(run_dir: str | os.PathLike):
    """``(html, files)``: the page for ``run_dir`` and the ``RunFiles`` it was built from."""
    files = read_run(run_dir)
    m = files.manifest or {}
    title = f"sftlab run report: {Path(run_dir).resolve().name}"
    subtitle = " · ".join(str(x) for x in (m.get("kind"), (m.get("model") or {}).get("base"),
                                           m.get("created")) if x)
    builders = (s.summary_section, data_section, s.masks_section, s.packing_section, s.training_section,
                evaluation_section, s.manifest_section)
    body = [_section(build, files, id_, title) for build, (id_, title) in zip(builders, SECTIONS)]
    return page(title, subtitle or "no run manifest", list(SECTIONS), body), files


def _section(build, files, id_: str, title: str):
    """One section; a run file holding a value of another type or shape than sftlab writes (an
    edited or foreign stats.json, mask_preview.json, eval.json) leaves that section out with a
    note and counts as unreadable (exit 1), instead of ending the report with a traceback."""
    try:
        return build(files)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError,
            OverflowError, RecursionError) as e:
        files.problems.append(f"{title} section left out: the run's files hold a value of another type "
                              f"or shape than sftlab writes ({type(e).__name__}: {str(e)[:160]})")
        files.unreadable.append(f"{title} section")
        return section(id_, title, not_recorded(f"{title.lower()} (a file holds values of an unexpected type)"))


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None):
    """Write the report (default ``RUN/report.html``) atomically and record it in run.json.

    Returns ``(path, files)``.
    """
    run = Path(run_dir)
    path = Path(out) if out is not None else run / "report.html"
    text, files = build_report(run)
    write_atomic(path, text, what="--out" if out is not None else "")
    try:
        update_manifest(run, artifacts={"report": os.path.relpath(path, run)})
    except ManifestError as e:  # shown in the report already; the page itself is written
        files.problems.append(f"report not recorded in run.json: {e}")
    return path, files
