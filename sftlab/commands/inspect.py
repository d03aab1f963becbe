"""``sftlab inspect``: every token of an encoded conversation, coloured by its loss weight."""
from __future__ import annotations

import sys

from sftlab.commands.options import add_options
from sftlab.commands.validate import add_mapping_arguments, columns_from_args
from sftlab.errors import UsageError
from sftlab.files import write_atomic
from sftlab.terminal import terminal_safe
from sftlab.train.config import EncodingConfig, TrainConfig


def register(sub) -> None:
    p = sub.add_parser(
        "inspect", help="show the tokens of encoded conversations coloured by loss weight",
        description="Encode conversations exactly as training does and show every token with its loss "
                    "weight: trained answers on green, trained tool calls on magenta, trained reasoning on "
                    "cyan (masked reasoning cyan text), tool results yellow, template scaffolding dimmed, "
                    "a tag where each message's content starts. --html writes a self-contained page.")
    p.add_argument("file", help="conversation file (JSONL, JSON, Parquet, CSV/TSV, compressed or not, or a saved datasets directory)")
    add_options(p, TrainConfig, "tokenizer", "template", tokenizer=dict(required=True, metavar="TOKENIZER"))
    p.add_argument("--line", type=int, action="append", default=None, metavar="N",
                   help="the record on line N of the file (1-based, as validate and the quarantine file count "
                        "lines; repeatable)")
    p.add_argument("--index", type=int, action="append", default=None, metavar="I",
                   help="the I-th accepted record (0-based, quarantined records skipped; repeatable; default "
                        "without --line: the first 3)")
    add_options(p, EncodingConfig, "max_length", "last_turn_only", "reasoning",
                max_length=dict(default=None, metavar="N", note="Here: truncate as training would; default: no limit."))
    p.add_argument("--html", metavar="OUT", default=None, help="also write a self-contained HTML view")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom tokenizer code (off by default)")
    add_mapping_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: the modules that do the work load when the command runs, not for `sftlab --help`
    from sftlab.data.loading import load_files
    from sftlab.model.loading import load_tokenizer_and_template
    from sftlab.tokens.encoding import EncodingError
    from sftlab.tokens.masks import annotate, to_ansi, to_html
    from sftlab.tokens.templates import TemplateError

    tok, template = load_tokenizer_and_template(args.tokenizer, args.template,
                                                trust_remote_code=args.trust_remote_code)
    report = load_files([args.file], columns=[columns_from_args(args)], progress=True)
    convs = report.conversations
    if not convs:
        raise UsageError(f"{args.file}: no accepted record to inspect ({len(report.quarantined)} quarantined)")
    indices = list(args.index or [])
    for line in args.line or []:
        indices.append(_index_of_line(report, line, args.file))
    if not indices:
        indices = list(range(min(3, len(convs))))
    if not sys.stdout.isatty():
        print(PLAIN_LEGEND)
    items, status = [], 0
    for i in indices:
        if not 0 <= i < len(convs):
            raise UsageError(f"--index {i} is out of range: {len(convs)} accepted records (0 to {len(convs) - 1}); "
                             "--line N picks the record on line N of the file")
        c = convs[i]
        label = terminal_safe(f"record {i}" + (f" (id {c.id})" if c.id else "") + (
            f" {c.origin.file}:{c.origin.line}" if c.origin else ""))
        try:
            ex, views = annotate(c, tok, template, max_length=args.max_length,
                                 last_turn_only=args.last_turn_only, reasoning=args.reasoning)
        except TemplateError as e:
            raise UsageError(str(e)) from None
        except EncodingError as e:
            print(f"== {label}: not encodable: {terminal_safe(e)}")
            status = 1
            continue
        kinds = {k: sum(1 for v in views if v.role == k and v.weight > 0) for k in ("tool_call", "reasoning")}
        extra = "".join(f", {n} {k.replace('_', ' ')} tokens trained" for k, n in kinds.items() if n)
        print(f"== {label}: {len(ex)} tokens, {ex.trained_tokens} trained, weight {ex.trained_weight:g}{extra}, "
              f"reasoning: {args.reasoning}")
        print(to_ansi(views) if sys.stdout.isatty() else _plain(views))
        items.append((label, views, ex))
    if args.html:
        write_atomic(args.html, to_html(items, f"sftlab inspect: {args.file}"), what="--html")
        print(f"wrote {args.html}")
    return status


def _index_of_line(report, line: int, path: str) -> int:
    """The accepted record that starts on ``line``; a quarantined one is a ``UsageError`` with its reason."""
    for i, c in enumerate(report.conversations):
        if c.origin and c.origin.line == line:
            return i
    for q in report.quarantined:
        if q.line == line:
            raise UsageError(f"--line {line}: the record on line {line} of {path} is quarantined: {q.reason}")
    raise UsageError(f"--line {line}: no record starts on line {line} of {path}")


PLAIN_LEGEND = ("legend: [[text]] trained (loss weight 1), [[text]]{w} trained with weight w, plain text "
                "not trained; a character split over several tokens is shown once")


def _plain(views) -> str:
    """Without a terminal: trained tokens in [[...]] (their weight in {} when not 1), after a
    legend; control characters escaped (the output may still reach a terminal through a pager)."""
    out = []
    for v in views:
        if v.weight > 0:
            out.append(f"[[{terminal_safe(v.text)}]]" + ("" if v.weight == 1 else f"{{{v.weight:g}}}"))
        else:
            out.append(terminal_safe(v.text))
    return "".join(out)
