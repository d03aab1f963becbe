"""``sftlab validate``: check conversation files record by record and write the quarantine.

The quarantine file is written on every run, empty when nothing was quarantined, so that the
counts it backs can always be audited (and a stale file from an earlier run never misleads).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from sftlab.commands.options import add_options
from sftlab.data.conversation import ROLES
from sftlab.errors import UsageError
from sftlab.files import check_output_file
from sftlab.terminal import terminal_safe
from sftlab.train.config import DataFile, EncodingConfig, TrainConfig

_SHOWN_REASONS = 5
TRUNCATE = "Here: truncate as training at max_length N does (the smaller of encoding.max_length and " \
           "packing.max_length); default: no limit."


def register(sub) -> None:
    p = sub.add_parser(
        "validate", help="check conversation files and quarantine the records that cannot be used",
        description="Read conversation files (JSONL, JSON array, Parquet, CSV/TSV, gzip/bz2/xz "
                    "compressed or not, or a directory written "
                    "by datasets' save_to_disk; OpenAI messages, ShareGPT, Alpaca or "
                    "prompt/completion records, and public data sets' own layouts: Glaive v2 "
                    "transcripts, xLAM, Nemotron input/output, Capybara/XTuner exchanges, LIMA "
                    "string turns) and check every record. Each one is accepted or "
                    "written to the quarantine file with its file, line, id, field and reason. "
                    "With --tokenizer (and --max-length) records are also encoded as training "
                    "encodes them, so a file that validates loses nothing at training time. "
                    "Exit 0: all accepted; 1: something was quarantined; 2: unusable input.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="conversation files or saved datasets directories")
    p.add_argument("--policy", metavar="POLICY", default=None,
                   help="policy YAML: refusal records (expected: refuse) must name one of its "
                        "categories, benign contrasts (expected: comply) one it knows")
    p.add_argument("--quarantine", metavar="PATH", default=None,
                   help="where to write the quarantined records as JSONL (written on every run, "
                        "empty when none; a regular file or a new name, never a device, FIFO or "
                        "link); default: quarantine.jsonl beside the first input (in the current "
                        "directory when that input is a pipe)")
    p.add_argument("--max-record-mb", type=float, default=10.0, metavar="MB",
                   help="records larger than this are quarantined (default: 10)")
    g = p.add_argument_group("encoding (as training encodes: the config's tokenizer, template and encoding keys)")
    add_options(g, TrainConfig, "tokenizer", "template", tokenizer=dict(
        metavar="TOKENIZER", note="Also encode every accepted record with it and its template, quarantining "
                                  "what training would (too long, nothing trained)."))
    add_options(g, EncodingConfig, "max_length", "last_turn_only", "turns", "overflow", "reasoning",
                max_length=dict(default=None, metavar="N", note=TRUNCATE))
    add_mapping_arguments(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: records, accepted, quarantined, files, reasons, "
                        "quarantine")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: the modules that do the work load when the command runs, not for `sftlab --help`
    from sftlab.data.loading import load_files
    from sftlab.data.policy import load_policy

    if not 0 < args.max_record_mb <= 1024 * 1024:  # also refuses nan and inf
        raise UsageError(f"--max-record-mb: expected a number of megabytes in (0, 1048576], got "
                         f"{args.max_record_mb}")
    if (args.max_length is not None or args.template or args.last_turn_only) and not args.tokenizer:
        raise UsageError("--max-length, --template and --last-turn-only check the encoding: pass "
                         "--tokenizer too")
    if args.max_length is not None and args.max_length <= 0:
        raise UsageError(f"--max-length must be > 0, got {args.max_length}")
    quarantine = _quarantine_path(args.files, args.quarantine)
    policy = load_policy(args.policy) if args.policy else None
    columns = columns_from_args(args)
    report = load_files(args.files, policy=policy,
                        max_record_bytes=int(args.max_record_mb * 1024 * 1024),
                        columns=[columns] * len(args.files), progress=True)
    if args.tokenizer:
        report = _encode(report, args)
    report.write_quarantine(quarantine)
    if args.json:
        print(json.dumps({**report.summary(), "reasons": report.reasons(),
                          "quarantine": str(quarantine)}))
    else:
        _print_human(report, quarantine, policy)
    return 1 if report.quarantined else 0


def add_mapping_arguments(p) -> None:
    """The options that say how the input files name things: a data entry's keys (``DataFile``), as flags."""
    g = p.add_argument_group("column mapping (as a data entry of the config; one mapping for every file)")
    pairs = dict(action="append", default=[], type=str)
    add_options(g, DataFile, "field_messages", "role_key", "content_key", "roles", "formatting", "columns", "tags",
                "dataset_info", "dataset", "layout", "ignore_fields", "prompt_completion",
                field_messages=dict(metavar="KEY"), role_key=dict(metavar="KEY"), content_key=dict(metavar="KEY"),
                roles=dict(pairs, flag="--role", metavar="NAME=ROLE", note="Repeatable: --role bot=assistant."),
                columns=dict(pairs, flag="--column", metavar="NAME=FIELD", note="Repeatable: --column task=category."),
                tags=dict(pairs, flag="--tag", metavar="NAME=VALUE", note="Repeatable."),
                dataset_info=dict(metavar="JSON"), dataset=dict(metavar="NAME"),
                ignore_fields=dict(pairs, flag="--ignore-field", metavar="FIELD", note="Repeatable."))


def columns_from_args(args):
    """The ``Columns`` the mapping options describe (``None`` when none is given)."""
    pairs = {}
    for option, items in (("--role", args.role), ("--column", args.column), ("--tag", args.tag)):
        pairs[option] = {}
        for item in items:
            name, sep, value = item.rpartition("=")
            if not sep or not name or not value:
                raise UsageError(f"{option} {item!r}: expected NAME=VALUE, e.g. --role bot=assistant")
            pairs[option][name] = value
    bad = next((f"{n}={r}" for n, r in pairs["--role"].items() if r not in ROLES), None)
    if bad:
        raise UsageError(f"--role {bad}: expected NAME=ROLE with a role of {', '.join(ROLES)}")
    given = dict(field_messages=args.field_messages, role_key=args.role_key, content_key=args.content_key,
                 roles=pairs["--role"], formatting=args.formatting, columns=pairs["--column"],
                 tags=pairs["--tag"], dataset_info=args.dataset_info, dataset=args.dataset, layout=args.layout,
                 ignore_fields=args.ignore_field, prompt_completion=args.prompt_completion)
    given = {k: v for k, v in given.items() if v}
    if not given:
        return None
    try:
        entry = DataFile(path="-", **given)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "mapping"
        raise UsageError(f"{where}: {err['msg']}") from None
    try:
        return entry.mapping(where="--formatting/--column/--tag")
    except ValueError as e:
        raise UsageError(str(e)) from None


ENCODE_BAR_RECORDS = 1000
"""Records that encode in about two seconds: fewer get no progress bar (nor its lines before an error)."""


def _encode(report, args):
    """The report with what encoding quarantines added (``encode_report``, as training does)."""
    # lazy: numpy and transformers, kept off `sftlab --help`
    from sftlab.model.loading import load_tokenizer_and_template
    from sftlab.tokens.encoding import encode_report
    from sftlab.tokens.templates import TemplateError

    tokenizer, template = load_tokenizer_and_template(args.tokenizer, args.template)
    try:
        return encode_report(report, tokenizer, template, max_length=args.max_length,
                             last_turn_only=args.last_turn_only, turns=args.turns, overflow=args.overflow,
                             reasoning=args.reasoning, progress=len(report.conversations) > ENCODE_BAR_RECORDS)[1]
    except TemplateError as e:
        raise UsageError(f"--tokenizer {args.tokenizer}: {e}".splitlines()[0]) from None


def _quarantine_path(files: list[str], given: str | None) -> Path:
    first = Path(files[0])
    # beside the first input, unless that is a pipe or device (``<(cat f)``, /dev/stdin)
    beside = first.parent if first.is_file() or first.is_dir() else Path(".")
    path = Path(given) if given else beside / "quarantine.jsonl"
    inputs = {os.path.realpath(f) for f in files}  # realpath: no error on a symlink loop
    if os.path.realpath(path) in inputs:
        raise UsageError(f"the quarantine file {path} is also an input; pass --quarantine with "
                         "another path")
    return check_output_file(path, what="--quarantine")


def _print_human(report, quarantine: Path, policy) -> None:
    rows = [(f.path, f.records, f.accepted, f.quarantined) for f in report.files]
    rows.append(("total", report.records, report.accepted, report.quarantined_count))
    width = max(len("file"), *(len(r[0]) for r in rows))
    print(f"{'file':<{width}}  {'records':>8}  {'accepted':>8}  {'quarantined':>11}")
    for i, (name, n, ok, bad) in enumerate(rows):
        if i == len(rows) - 1 and len(rows) > 2:
            print("-" * (width + 33))
        if i < len(rows) - 1 or len(rows) > 2:
            print(f"{name:<{width}}  {n:>8}  {ok:>8}  {bad:>11}")
    if policy is not None:
        print(f"policy {policy.version} ({policy.fingerprint[:12]}): categories checked")
    if report.warnings:
        counts = ", ".join(f"{code} {n}" for code, n in report.warning_counts().items())
        print(f"\naccepted with warnings: {len(report.warnings)} ({counts}); first ones:")
        for w in report.warnings[:_SHOWN_REASONS]:
            print(f"  {terminal_safe(w)}")
    if report.quarantined:
        counts = ", ".join(f"{code} {n}" for code, n in report.reasons().items())
        print(f"\nquarantined {report.quarantined_count} ({counts}); first ones:")
        for entry in report.quarantined[:_SHOWN_REASONS]:
            print(f"  {terminal_safe(entry.message)}")
        print(f"all reasons and records: {quarantine}")
    else:
        print(f"\nall {report.accepted} records accepted (empty quarantine file: {quarantine})")
