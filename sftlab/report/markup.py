"""HTML building blocks for the report: escaping, tables, badges and the page shell.

Every value that reaches the page goes through :func:`esc` unless it is :class:`Markup`,
which only this package creates, from its own fixed strings and from already-escaped
parts. Model outputs, record ids, slice names and file paths are untrusted text.

    >>> table(["slice", "n"], [["<b>x</b>", 3]])
    '<table><thead><tr><th>slice</th><th>n</th></tr></thead><tbody><tr><td>&lt;b&gt;x&lt;/b&gt;</td><td class="num">3</td></tr></tbody></table>'
"""
from __future__ import annotations

import html
import json
import math
from typing import Any, Iterable


class Markup(str):
    """A string that is already safe HTML (built here, from escaped parts)."""


def esc(value: Any) -> Markup:
    """HTML for one value: Markup passes through, everything else is formatted and escaped."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(fmt(value), quote=True))


def fmt(value: Any) -> str:
    """Readable text for a JSON value: 4 significant digits for floats, JSON for containers."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        value = value + 0.0  # -0.0 (an entropy of one task) reads as 0
        text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
        return "0" if text in ("-0", "0") else text
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def join(parts: Iterable[Any]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def tag(name: str, body: Any = "", **attrs: Any) -> Markup:
    """``<name attr="...">body</name>``; attribute values and a non-Markup body are escaped.

    A trailing underscore in an attribute name is dropped (``class_`` -> ``class``).
    """
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{html.escape(str(v), quote=True)}"'
                   for k, v in attrs.items() if v is not None)
    return Markup(f"<{name}{attr}>{esc(body) if body != '' else ''}</{name}>")


def _cell(value: Any, header: bool = False) -> Markup:
    name = "th" if header else "td"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return tag(name, value, class_="num" if numeric and not header else None)


def table(headers: list[Any], rows: Iterable[list[Any]], class_: str | None = None,
          widths: list[int] | None = None) -> Markup:
    """A table with a header row; ``widths`` are column widths in percent."""
    head = Markup("".join(_cell(h, header=True) for h in headers))
    body = "".join(f"<tr>{''.join(_cell(v) for v in row)}</tr>" for row in rows)
    cls = f' class="{html.escape(class_)}"' if class_ else ""
    cols = ("<colgroup>" + "".join(f'<col style="width:{int(w)}%">' for w in widths)
            + "</colgroup>") if widths else ""
    return Markup(f"<table{cls}>{cols}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def kv_table(items: dict[str, Any] | Iterable[tuple[Any, Any]]) -> Markup:
    """A two-column field/value table."""
    pairs = items.items() if isinstance(items, dict) else items
    body = "".join(f"<tr>{tag('th', k)}{_cell(v)}</tr>" for k, v in pairs)
    return Markup(f'<table class="kv"><tbody>{body}</tbody></table>')


def badge(passed: bool | None, text: str | None = None) -> Markup:
    """Green PASS / red FAIL / grey n/a (anything but a bool is n/a)."""
    passed = passed if isinstance(passed, bool) else None
    cls = {True: "pass", False: "fail", None: "na"}[passed]
    label = text or {True: "PASS", False: "FAIL", None: "n/a"}[passed]
    return tag("span", label, class_=f"badge {cls}")


def not_recorded(what: str) -> Markup:
    return tag("p", f"{what}: not recorded", class_="missing")


def section(id_: str, title: str, *parts: Any) -> Markup:
    return Markup(f'<section id="{html.escape(id_)}">{tag("h2", title)}{join(parts)}</section>')


def image(data_uri: str, alt: str) -> Markup:
    """An inline image from a ``data:image/png;base64,...`` URI built by ``plots``."""
    if not data_uri.startswith("data:image/png;base64,"):
        raise ValueError("report images must be inline PNG data URIs")
    return Markup(f'<img src="{data_uri}" alt="{html.escape(alt)}">')


CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --pass:#1a7f37; --fail:#cf222e; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header { background: #24292f; color: #fff; padding: 16px 32px; }
header h1 { margin: 0; font-size: 22px; }
header .sub { color: #c9d1d9; font-size: 13px; }
nav { position: sticky; top: 0; background: var(--bg); border-bottom: 1px solid var(--line);
      padding: 8px 32px; z-index: 1; }
nav a { margin-right: 18px; color: #0969da; text-decoration: none; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 32px 48px; }
section { margin-top: 28px; }
h2 { font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; margin: 6px 0 14px; max-width: 100%; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: var(--bg); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: var(--bg); font-weight: 600; white-space: nowrap; }
table.kv td { overflow-wrap: anywhere; } table.kv td.num { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 0 24px; }
.grid.wide-kv table.kv { width: 100%; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
table.wide { width: 100%; table-layout: fixed; }
table.wide td { overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-weight: 700;
         font-size: 12px; color: #fff; letter-spacing: .3px; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
.badge.na { background: #8c959f; }
.verdict { font-size: 18px; margin: 12px 0; }
.verdict .badge { font-size: 16px; padding: 3px 14px; }
.missing { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .v { font-size: 20px; font-weight: 600; } .card .k { color: var(--muted); font-size: 12px; }
img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
.mask { font: 12.5px/1.7 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; white-space: pre-wrap;
        word-break: break-all; border: 1px solid var(--line); border-radius: 4px; padding: 8px;
        background: #fff; margin-bottom: 10px; }
.tok { border-right: 1px solid #d1d5db; padding: 1px 0; }
.tok.scaffold { color: #9ca3af; } .tok.trained { color: #064e3b; }
.role { color: #fff; border-radius: 3px; padding: 0 4px; margin: 0 3px; font-size: 11px; }
.legend span { display: inline-block; padding: 0 8px; margin-right: 8px; }
h4 { font-size: 14px; margin: 12px 0 4px; color: var(--muted); }
pre.sample { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font-size: 12.5px;
             max-height: 14em; overflow: auto; }
.flag { color: var(--fail); font-weight: 700; }
.ok { color: var(--pass); }
"""


def page(title: str, subtitle: str, nav: list[tuple[str, str]], body: Iterable[Any]) -> str:
    links = "".join(f'<a href="#{html.escape(i)}">{html.escape(t)}</a>' for i, t in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><div class=\"sub\">{esc(subtitle)}</div></header>"
            f"<nav>{links}</nav><main>{join(body)}</main></body></html>\n")
