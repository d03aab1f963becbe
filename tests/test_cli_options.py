"""Options generated from the config classes that own them: one help text and default per field,
whichever command takes it, and the README's command reference generated from the same parsers."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from sftlab.cli import build_parser
from sftlab.commands.options import add_options, field_docs, help_text
from sftlab.evaluation.evaluate import EvalOptions
from sftlab.evaluation.generation import DecoderSettings
from sftlab.train.config import EncodingConfig, TrainConfig

ENCODING = {"template": TrainConfig, "tokenizer": TrainConfig, "max_length": EncodingConfig,
            "last_turn_only": EncodingConfig, "turns": EncodingConfig, "overflow": EncodingConfig,
            "reasoning": EncodingConfig}


def _commands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def _option(parser, flag):
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_encoding_flag_says_what_its_config_field_says_in_every_command():
    seen = {}
    for command, parser in _commands().items():
        for name, owner in ENCODING.items():
            action = _option(parser, "--" + name.replace("_", "-"))
            if action is None or command == "eval":
                continue
            assert action.help.startswith(help_text(field_docs(owner)[name])), (command, name)
            seen.setdefault(name, set()).add(command)
            if name in ("turns", "overflow", "reasoning"):
                assert tuple(action.choices) == EncodingConfig.model_fields[name].annotation.__args__
                assert action.default == EncodingConfig.model_fields[name].default
    assert seen["template"] == {"validate", "stats", "inspect", "check-template"}
    assert seen["reasoning"] == {"validate", "stats", "inspect"}


def test_every_eval_option_of_a_field_has_that_fields_doc_as_its_help():
    parser = _commands()["eval"]
    fields = {**{f: EvalOptions for f in field_docs(EvalOptions)}, **{f: DecoderSettings for f in field_docs(DecoderSettings)}}
    generated = 0
    for name, owner in fields.items():
        flag = "--heldout-conversations" if name == "heldout" else "--" + name.replace("_", "-")
        action = _option(parser, flag)
        if action is None:
            continue
        generated += 1
        assert action.help.startswith(help_text(field_docs(owner)[name])), name
        default = {f.name: f.default for f in dataclasses.fields(owner)}[name]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert action.default == default and f"(default: {default})" in action.help, name
    assert generated >= 24


def test_generated_options_parse_as_the_hand_written_ones_did():
    sub = _commands()
    args = sub["validate"].parse_args(["f.jsonl", "--tokenizer", "t", "--turns", "expand", "--last-turn-only",
                                       "--max-length", "64"])
    assert (args.turns, args.last_turn_only, args.max_length, args.overflow, args.reasoning) == \
        ("expand", True, 64, "drop", "keep")
    args = sub["eval"].parse_args(["--model", "m", "--prompts", "a.jsonl", "b.csv", "--stop", "x", "y",
                                   "--gate-on", "corrected", "--heldout-conversations", "h.jsonl"])
    assert (args.prompts, args.stop, args.gate_on, args.heldout_conversations, args.conditions.count(",")) == \
        (["a.jsonl", "b.csv"], ["x", "y"], "corrected", "h.jsonl", 4)
    args = sub["stats"].parse_args(["f.jsonl", "--role", "bot=assistant", "--role", "human=user", "--column",
                                    "task=category", "--ignore-field", "meta", "--field-messages", "body.turns"])
    assert (args.role, args.column, args.tag, args.ignore_field, args.field_messages, args.formatting) == \
        (["bot=assistant", "human=user"], ["task=category"], [], ["meta"], "body.turns", None)
    with pytest.raises(SystemExit) as e:
        sub["inspect"].parse_args(["f.jsonl", "--tokenizer", "t", "--reasoning", "hide"])
    assert e.value.code == 2


def test_a_flag_defaults_to_false_and_unknown_adaptations_are_refused():
    @dataclasses.dataclass(frozen=True)
    class Opts:
        on: bool = True
        """Switched on."""

    with pytest.raises(TypeError, match="default to False"):
        add_options(argparse.ArgumentParser(), Opts, "on")
    with pytest.raises(TypeError, match="cannot adapt"):
        add_options(argparse.ArgumentParser(), EncodingConfig, "turns", turns={"help": "other words"})


def test_every_command_loads_its_tokenizer_through_the_one_loader(tmp_path, monkeypatch, capsys):
    """validate, stats, inspect, check-template and prepare (a config's tokenizer) all call
    ``sftlab.model.loading.load_tokenizer``: replaced by one that refuses, each exits 2 with its reason."""
    import sftlab.model.loading as loading
    from sftlab.cli import main
    from sftlab.errors import UsageError

    seen = []

    def refuse(name, **kw):
        seen.append((str(name), kw.get("what", "--tokenizer")))
        raise UsageError(f"{kw.get('what', '--tokenizer')} {name}: refused here")

    monkeypatch.setattr(loading, "load_tokenizer", refuse)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{path: base}}\ndata: {{train: [{data}]}}\nout: {tmp_path / 'run'}\n")
    for argv in (["validate", str(data), "--tokenizer", "tok", "--quarantine", str(tmp_path / "q.jsonl")],
                 ["stats", str(data), "--tokenizer", "tok"], ["inspect", str(data), "--tokenizer", "tok"],
                 ["check-template", "--tokenizer", "tok"], ["prepare", str(config)], ["stats", str(config)]):
        assert main(argv) == 2, argv
        assert "refused here" in capsys.readouterr().err, argv
    assert seen == [("tok", "--tokenizer")] * 4 + [("base", "model.path=")] * 2
