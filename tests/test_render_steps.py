"""Templates that loop without writing or calling anything are stopped by the step limit, not waited on.

Each case runs with the deadline set out of reach (``RENDER_SECONDS`` = one day), so only the step
count can stop it, and under a SIGALRM time limit, so a case that is not stopped fails instead of
hanging the suite.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from sftlab.tokens.encoding import encode
from sftlab.tokens.templates import TemplateError, get_template

LIMIT_S = 60
ECHO = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
CONV = {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}

LOOPS = {
    "nested ranges, nothing called inside": "{% set r = range(100000) %}"
                                           "{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
    "three loops over one range": "{% set r = range(1000) %}"
                                  "{% for i in r %}{% for j in r %}{% for k in r %}{% endfor %}{% endfor %}{% endfor %}",
    "characters of a long string": "{% set s = 'ab' * 50000 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}",
    "a list built by *": "{% set xs = [0] * 100000 %}{% for x in xs %}{% for y in xs %}{% endfor %}{% endfor %}",
    "whitespace-trimmed body": "{%- for i in range(100000) -%}{%- for j in range(100000) -%}"
                               "{{- '' -}}{%- endfor -%}{%- endfor -%}",
    "loop with an inline filter that drops every item": "{% for i in range(100000) %}"
                                                         "{% for j in range(100000) if j < 0 %}{% endfor %}{% endfor %}",
    "the messages, over and over": "{% for i in range(100000) %}{% for j in range(100000) %}"
                                   "{% for m in messages %}{% endfor %}{% endfor %}{% endfor %}",
    "recursive loop": "{% for x in range(1000) recursive %}{% if loop.depth < 4 %}{{ loop(range(1000)) }}"
                      "{% endif %}{% endfor %}",
    "macro recursion writing nothing": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
                                       "{% endmacro %}{{ f(40) }}",
    "filter calls in a loop": "{% set r = range(100000) %}{% for i in r %}{% set n = r | length %}"
                              "{% for j in r %}{% endfor %}{% endfor %}",
    "a filter over a long list in a loop": "{% set r = range(100000) %}{% for i in r %}"
                                           "{% set n = r | list | length %}{% endfor %}",
    "recursive loop over a list built once": "{% set r = range(1000) | list %}{% for x in r recursive %}"
                                             "{% if loop.depth < 5 %}{{ loop(r) }}{% endif %}{% endfor %}",
}


@pytest.fixture(autouse=True)
def time_limit(monkeypatch, alarm_after):
    """The deadline out of reach (only steps can stop a case) and a hard limit on the case itself."""
    import sftlab.tokens.jinja_render as jinja_render

    monkeypatch.setattr(jinja_render, "RENDER_SECONDS", 86400.0)

    with alarm_after(LIMIT_S, "template case"):
        yield


@pytest.fixture(scope="module")
def tok():
    from sftlab.demo.tiny import build_tokenizer

    return build_tokenizer(vocab_size=300)


@pytest.mark.parametrize("shape", sorted(LOOPS))
def test_a_template_that_loops_silently_is_refused_by_its_step_count(shape, tok):
    with pytest.raises(TemplateError) as e:
        encode(CONV, tok, get_template(LOOPS[shape] + ECHO, tok))
    message = str(e.value)
    assert re.search(r"more than [0-9,]+ steps", message) and "\n" not in message


def test_check_template_on_a_silent_loop_is_one_line_and_exit_2(tok, tmp_path, capsys):
    from sftlab.cli import main

    tok.save_pretrained(tmp_path / "tok")
    loop = tmp_path / "loop.jinja"
    loop.write_text(LOOPS["nested ranges, nothing called inside"] + ECHO)
    code = main(["check-template", "--tokenizer", str(tmp_path / "tok"), "--template", str(loop)])
    err = capsys.readouterr().err
    assert code == 2 and "steps" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


FIXTURES = Path(__file__).parent / "data" / "chat_templates"


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.jinja")))
def test_real_templates_render_long_conversations_within_the_step_budget(name, tok):
    """The budget leaves room for what real templates do: 200 messages with every published template
    of the fixture set render (or refuse for their own reasons, never for the step limit)."""
    from sftlab.tokens.jinja_render import render_jinja
    from sftlab.tokens.templates import ChatTemplate

    t = ChatTemplate(name, (FIXTURES / f"{name}.jinja").read_text(), (), (), "",
                     {"bos_token": "<s>", "eos_token": "</s>"})
    msgs = [{"role": "user" if k % 2 == 0 else "assistant", "content": f"message {k} " * 20} for k in range(200)]
    try:
        render_jinja(t, msgs, False)
    except TemplateError as e:
        assert "steps" not in str(e), str(e)
