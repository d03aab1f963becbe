#!/usr/bin/env python3
"""Regenerate the README's generated sections from their single sources.

- the config reference, from the field docs of ``sftlab.train.config`` (the same text ``sftlab train
  --help`` prints);
- the command list, from each sub-command's ``--help`` summary;
- the command reference, every option of every command as its ``--help`` shows it (the options
  that set a config field take their help from the field's docs, ``sftlab.commands.options``).

Run ``python docs/update_readme.py`` after changing either; ``tests/test_readme.py`` fails when
the README is out of date.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def generated() -> dict[str, str]:
    from sftlab.cli import build_parser
    from sftlab.train.config import config_reference_markdown

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    rows = ["| command | what it does |", "| --- | --- |"]
    for choice in sub._choices_actions:
        rows.append(f"| `sftlab {choice.dest}` | {choice.help} |")
    return {"config-reference": config_reference_markdown().strip(), "commands": "\n".join(rows),
            "cli-reference": cli_reference(sub)}


def cli_reference(sub) -> str:
    """One table per command: each option (with its metavar or choices) and its help."""
    out = []
    for choice in sub._choices_actions:
        parser = sub.choices[choice.dest]
        out += [f"#### `sftlab {choice.dest}`", "", "| option | meaning |", "| --- | --- |"]
        for action in parser._actions:
            if "-h" in action.option_strings:
                continue
            name = ", ".join(action.option_strings) or action.dest
            shown = parser._get_formatter()._format_args(action, action.metavar or action.dest.upper()) \
                if action.nargs != 0 else ""
            cell = f"`{name} {shown}`" if shown and action.option_strings else f"`{shown or name}`"
            text = (action.help or "").replace("%%", "%")
            if action.required and action.option_strings:
                text = "(required) " + text
            cells = (cell, " ".join(text.split()))
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out).strip()


def render(text: str) -> str:
    for name, body in generated().items():
        pattern = re.compile(rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> block")
        block = f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->"
        text = pattern.sub(lambda m: block, text)
    return text


if __name__ == "__main__":
    old = README.read_text(encoding="utf-8")
    new = render(old)
    if "--check" in sys.argv:
        sys.exit(0 if new == old else 1)
    README.write_text(new, encoding="utf-8")
    print("README.md updated" if new != old else "README.md already up to date")
