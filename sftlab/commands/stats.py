"""``sftlab stats``: what the training data holds before any training, and the checks it fails.

``sftlab stats CONFIG.yaml [key=value ...]`` reads the prepared-data stores of a training config
(``sftlab.prepare``; built first, with a progress bar, when none matches, as ``sftlab
prepare`` does): the figures of the run's ``RUN/data/stats.json`` and its report, lengths in
tokens. ``sftlab stats FILES --tokenizer DIR`` reads (or builds) the store of those files
encoded with that tokenizer. ``sftlab stats FILES`` without a tokenizer counts words, in memory
(``sftlab.data.stats.compute_stats``; nothing is encoded, so there is no store).

Exit 0: every check passed; 1: something was quarantined, a refusal category has no benign
contrast, or held-out prompts leak into training; 2: unusable input. The JSON is
``sftlab.data.stats_schema.Stats``; both ways run one statistics engine (``sftlab.data.chunk_stats``),
so the figures of files read in memory equal those of their prepared store (lengths aside).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sftlab.commands.options import add_options
from sftlab.commands.validate import TRUNCATE, add_mapping_arguments, columns_from_args
from sftlab.errors import UsageError
from sftlab.train.config import EncodingConfig, TrainConfig

_TOP = 10  # rows shown per count table


def register(sub) -> None:
    p = sub.add_parser(
        "stats", help="task diversity, lengths, refusal coverage, duplicates and held-out leakage",
        description="Load conversation files as `sftlab validate` does (or the data of a training config, "
                    "given as CONFIG.yaml [key=value ...]) and report: counts per task, "
                    "slice, source, policy_category and expected; task diversity (entropy, effective "
                    "number of tasks); assistant turns and prompt/response lengths; the refusal share "
                    "and the benign contrasts of every refusal category; exact and near-duplicate "
                    "conversations (MinHash LSH over word 3-shingles); and, with --heldout, held-out "
                    "records whose prompt (the user messages) equals or nearly equals a training one. "
                    "With a config or --tokenizer the figures are read from the prepared-data store (built "
                    "first when none matches, as `sftlab prepare` does): a config gives exactly what "
                    "`sftlab train` writes to RUN/data/stats.json. "
                    "Exit 0: every check passed; 1: records quarantined, a refusal category without a "
                    "benign contrast, or leakage; 2: unusable input.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="training conversation files, or a training config CONFIG.yaml followed by key=value "
                        "overrides (its data.train, data.eval, data.eval_split, policy, model tokenizer, "
                        "template and encoding)")
    p.add_argument("--heldout", nargs="+", action="extend", metavar="FILE", default=None,
                   help="held-out conversation files to check for leakage from the training files "
                        "(repeatable; give them after the training files)")
    p.add_argument("--policy", metavar="POLICY", default=None,
                   help="policy YAML: its refusal categories and their benign_contrast lists "
                        "(default: the policy_category values of the refusal records)")
    g = p.add_argument_group("encoding (as training encodes: the config's tokenizer, template and encoding keys)")
    add_options(g, TrainConfig, "tokenizer", "template", tokenizer=dict(
        metavar="TOKENIZER", note="Count lengths in tokens of the rendered conversation (prompt = untrained "
                                  "tokens, response = trained tokens) instead of words."))
    add_options(g, EncodingConfig, "max_length", "turns", "overflow", "reasoning",
                max_length=dict(default=None, metavar="N", note=TRUNCATE),
                turns=dict(note="The extra examples and tokens are reported."),
                overflow=dict(note="Tokens kept and lost by truncation are reported."),
                reasoning=dict(note="The reasoning share of trained tokens is reported."))
    p.add_argument("--near-threshold", type=float, default=0.8, metavar="J",
                   help="word 3-shingle Jaccard similarity from which two texts are near duplicates "
                        "(default: 0.8; the prepared store, with a config or --tokenizer, measures at 0.8)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--out", metavar="PATH", default=None, help="also write the JSON to PATH")
    add_mapping_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if not 0.0 < args.near_threshold <= 1.0:
        raise UsageError(f"--near-threshold must be in (0, 1], got {args.near_threshold}")
    if args.files[0].lower().endswith((".yaml", ".yml")):
        stats = _config_stats(args)
    else:
        if args.template and not args.tokenizer:
            raise UsageError("--template needs --tokenizer (lengths are in words without one)")
        _check_disjoint(args.files, args.heldout or [])
        stats = _store_stats(args) if args.tokenizer else _word_stats(args)
    if args.out:
        _write_json(Path(args.out), stats)
    if args.json:
        print(json.dumps(stats))
    else:
        print_human(stats)
    return 0 if stats["passed"] else 1


def _config_stats(args) -> dict[str, Any]:
    """The statistics of a training config's data, from its prepared stores (``RUN/data/stats.json``'s)."""
    from sftlab.data.chunk_stats import NEAR_THRESHOLD  # the store's LSH bands are built for it
    from sftlab.train.config import load_config
    from sftlab.model.loading import config_tokenizer
    from sftlab.train.data import prepare_stores, store_stats

    config, overrides = args.files[0], args.files[1:]
    given = [flag for flag, value, default in (
        ("--heldout", args.heldout, None), ("--policy", args.policy, None), ("--tokenizer", args.tokenizer, None),
        ("--template", args.template, None), ("--max-length", args.max_length, None), ("--turns", args.turns, "whole"),
        ("--overflow", args.overflow, "drop"), ("--reasoning", args.reasoning, "keep"),
        ("--near-threshold", args.near_threshold, NEAR_THRESHOLD),
        ("column mapping options", columns_from_args(args), None)) if value != default]
    if given:
        raise UsageError(f"{', '.join(given)}: with a config, the data, policy, tokenizer, template and encoding "
                         f"come from {config} (override them as key=value, e.g. encoding.max_length=512)")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UsageError(f"{bad[0]}: after a config give key=value overrides, not files")
    cfg = load_config(config, overrides)
    tokenizer, template, _ = config_tokenizer(cfg)
    stores = prepare_stores(cfg, tokenizer, template)
    return store_stats(stores["train"], stores.get("heldout"))


def _store_stats(args) -> dict[str, Any]:
    """Files encoded with ``--tokenizer``: the statistics of their prepared stores."""
    # lazy: loaded when the command runs, not for `sftlab --help`
    from sftlab.data.chunk_stats import NEAR_THRESHOLD
    from sftlab.data.policy import load_policy
    from sftlab.model.loading import load_tokenizer_and_template
    from sftlab.prepare import Spool, prepare
    from sftlab.tokens.templates import TemplateError
    from sftlab.train.data import store_stats

    if args.near_threshold != NEAR_THRESHOLD:
        raise UsageError(f"--near-threshold {args.near_threshold}: with --tokenizer the statistics come from the "
                         f"prepared-data store, which measures near duplicates at {NEAR_THRESHOLD}; leave out "
                         "--tokenizer to count words at another threshold")
    policy = load_policy(args.policy) if args.policy else None
    tokenizer, template = load_tokenizer_and_template(args.tokenizer, args.template)
    options = {"max_length": args.max_length, "last_turn_only": False, "turns": args.turns,
               "overflow": args.overflow, "reasoning": args.reasoning}
    try:
        with Spool() as spool:
            kw = dict(options=options, policy=policy, progress=True, spool=spool)
            columns = columns_from_args(args)
            train = prepare(args.files, tokenizer, template, label="stats train",
                            columns=[columns] * len(args.files), **kw)
            held = prepare(args.heldout, tokenizer, template, label="stats heldout",
                           columns=[columns] * len(args.heldout), **kw) if args.heldout else None
    except TemplateError as e:  # no chat_template, unknown template name, template and tokenizer do not fit
        raise UsageError(str(e).splitlines()[0]) from None
    return store_stats(train, held)


def _word_stats(args) -> dict[str, Any]:
    """Without a tokenizer: lengths in words, computed in memory (nothing is encoded)."""
    # lazy: loaded when the command runs, not for `sftlab --help`
    from sftlab.data.loading import load_files
    from sftlab.data.policy import load_policy
    from sftlab.data.stats import compute_stats, with_files

    policy = load_policy(args.policy) if args.policy else None
    columns = columns_from_args(args)
    train = load_files(args.files, policy=policy, columns=[columns] * len(args.files), progress=True)
    heldout = (load_files(args.heldout, policy=policy, columns=[columns] * len(args.heldout), progress=True)
               if args.heldout else None)
    stats = compute_stats(train.conversations, heldout.conversations if heldout else None,
                          policy=policy, near_threshold=args.near_threshold, progress=True)
    return with_files(stats, train, heldout)


def _check_disjoint(train: list[str], heldout: list[str]) -> None:
    both = {os.path.realpath(f) for f in train} & {os.path.realpath(f) for f in heldout}  # no raise on a loop
    if both:
        raise UsageError(f"{sorted(both)[0]} is both a training and a held-out file; pass each "
                         "file on one side only")


def _write_json(path: Path, stats: dict[str, Any]) -> None:
    # lazy: loaded when the command runs, not for `sftlab --help`
    from sftlab.files import write_atomic

    write_atomic(path, json.dumps(stats, indent=2, ensure_ascii=False) + "\n", what="--out")


# ---------------------------------------------------------------- human output

def print_human(s: dict[str, Any]) -> None:
    # lazy: rich loads only to print a table, not for `sftlab --help`
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    console.print(_files_table(s))
    counts = [_count_table(name, values, s["records"]) for name, values in s["counts"].items()
              if set(values) != {"(none)"}]
    for table in counts:
        console.print(table)
    t = s["tasks"]
    if t["largest"]:
        console.print(f"tasks: {t['distinct']} distinct, entropy {t['entropy_nats']:.3f} nats, "
                      f"effective tasks {t['effective_tasks']:.2f}, largest {t['largest']['task']!r} "
                      f"{t['largest']['share']:.1%}")
    console.print(_length_table(s))
    extra = s["lengths"].get("extra")
    if extra and any(extra.values()):
        console.print(f"encoding: {extra['expanded_examples']} extra examples for re-rendered turns "
                      f"({extra['expanded_tokens']} tokens), {extra['overflow_examples']} from dropped exchanges "
                      f"({extra['overflow_tokens']} tokens), {extra['lost_trained_tokens']} trained tokens lost "
                      f"to max_length truncation")
    tools = _tool_table(s)
    if tools is not None:
        console.print(tools)
    console.print(_refusal_table(s["refusals"]))
    div = s["refusals"].get("diversity") or {}
    if div.get("n"):
        top = (div["top_sentences"] or [{"count": 0, "share": 0.0}])[0]
        console.print(f"refusal diversity: distinct 1/2/3-grams {div['distinct_1']}/{div['distinct_2']}/"
                      f"{div['distinct_3']}, most common sentence in {top['count']} of {div['n']} refusals "
                      f"({top['share']:.0%}), largest near-identical group {div['largest_group']['size']}"
                      + _reason_note(div) + (" [FLAGGED]" if div["flagged"] else ""), markup=False)
    _print_duplicates(console, s)
    if s["warnings"]:
        console.print("\n[bold]warnings[/bold]")
        for w in s["warnings"]:
            console.print(f"  - {w['message']}", markup=False)
    console.print()
    for c in s["checks"]:
        mark = ("[yellow]skip[/yellow]" if c.get("skipped") else
                "[green]ok[/green]  " if c["passed"] else "[red]FAIL[/red]")
        console.print(f"{mark} {c['name']}: ", end="")
        console.print(c["message"], markup=False)


def _table(title: str, *columns: str):
    # lazy: as above
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    return table


def _files_table(s: dict[str, Any]):
    table = _table("files", "path", "split", "records", "accepted", "quarantined")
    for f in s.get("files", []):
        table.add_row(f["path"], f["split"], str(f["records"]), str(f["accepted"]), str(f["quarantined"]))
    return table


def _count_table(name: str, values: dict[str, int], total: int):
    table = _table(f"by {name}", name, "records", "share")
    for value, n in list(values.items())[:_TOP]:
        table.add_row(value, str(n), f"{n / total:.1%}" if total else "-")
    if len(values) > _TOP:
        rest = sum(list(values.values())[_TOP:])
        table.add_row(f"({len(values) - _TOP} more)", str(rest), f"{rest / total:.1%}")
    return table


def _length_table(s: dict[str, Any]):
    lengths = s["lengths"]
    unit = lengths["unit"] + (f", template {lengths['template']}" if lengths["template"] else "")
    keys = ("min", "p50", "p90", "p99", "max", "mean")
    table = _table(f"lengths per conversation ({unit})", "", *keys)
    for label, d in (("assistant turns", s["turns"]), ("prompt", lengths["prompt"]),
                     ("response", lengths["response"])):
        table.add_row(label, *("-" if d[k] is None else f"{d[k]:.1f}" if k == "mean" else str(d[k])
                               for k in keys))
    return table


def _tool_table(s: dict[str, Any]):
    t = s.get("tools")
    if not t or not any(v["with_tools"] or v["reasoning_share"] for v in t["slices"].values()):
        return None
    table = _table(f"tool use and reasoning ({t['unit']})", "slice", "records", "with tools", "calls/record (mean, max)",
                   "reasoning share of trained")
    for name, v in t["slices"].items():
        calls = v["calls"]
        table.add_row(name, str(v["records"]), f"{v['with_tools']} ({v['share']:.1%})",
                      "-" if calls["n"] == 0 else f"{calls['mean']:.2f}, {calls['max']}",
                      f"{v['reasoning_share']:.1%}")
    return table


def _refusal_table(r: dict[str, Any]):
    table = _table(f"refusals: {r['refuse']} ({r['share']:.1%} of records), benign contrasts: "
                   f"{r['comply']}", "category", "refusals", "contrasts", "contrast categories")
    for c in r["categories"]:
        contrasts = f"{c['contrasts']}" if c["has_contrast"] else "[red]0[/red]"
        table.add_row(c["name"], str(c["refusals"]), contrasts, ", ".join(c["benign_contrast"]) or "-")
    return table


def _reason_note(div: dict) -> str:
    """``, most common reason clause in K (S%) of N stated`` (the clause-level collapse)."""
    r = div.get("reasons") or {}
    if not r.get("top"):
        return ""
    return (f", most common reason clause in {r['top'][0]['count']} ({r['share']:.0%}) of "
            f"{r['with_reason']} that state one: {r['top'][0]['clause']!r}")


def _print_duplicates(console, s: dict[str, Any]) -> None:
    d = s["duplicates"]
    console.print(f"\nduplicates: {d['exact']['records']} exact copies ({d['exact']['groups']} texts "
                  f"repeated), {d['near']['records']} near copies (Jaccard >= {d['near']['threshold']})")
    for e in d["exact"]["examples"][:3] + d["near"]["examples"][:3]:
        console.print(f"  {_ref(e['b'])} ~ {_ref(e['a'])}"
                      + (f" (Jaccard {e['jaccard']:.2f})" if "jaccard" in e else ""), markup=False)
    leak = s["leakage"]
    if leak is None:
        return
    console.print(f"leakage: {leak['leaked']} of {leak['heldout_records']} held-out records "
                  f"({leak['share']:.1%}): {leak['exact']['records']} exact, "
                  f"{leak['near']['records']} near prompts in training")
    for e in leak["exact"]["examples"][:3] + leak["near"]["examples"][:3]:
        console.print(f"  held-out {_ref(e['heldout'])} ~ train {_ref(e['train'])}"
                      + (f" (Jaccard {e['jaccard']:.2f})" if "jaccard" in e else ""), markup=False)


def _ref(ref: dict[str, Any]) -> str:
    return ref["where"] + (f" (id {ref['id']})" if ref.get("id") else "")
