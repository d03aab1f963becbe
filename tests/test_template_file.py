"""`template:` may name a Jinja file (a released model's chat template), treated as a tokenizer's own."""
from pathlib import Path

import pytest

from sftlab.tokens.encoding import encode
from sftlab.tokens.templates import TemplateError, get_template

QWEN = Path(__file__).parent / "data" / "templates" / "qwen2.5-0.5b-instruct.jinja"
CONV = {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}


@pytest.fixture(scope="module")
def tok():
    from sftlab.demo.tiny import build_tokenizer

    return build_tokenizer(vocab_size=300)


def test_a_jinja_file_encodes_as_the_same_template_in_the_tokenizer(tok, tmp_path):
    from sftlab.demo.tiny import build_tokenizer

    t = get_template(str(QWEN), tok)
    assert t.name == "file:qwen2.5-0.5b-instruct.jinja" and t.source == QWEN.read_text()
    own = build_tokenizer(vocab_size=300)
    own.chat_template = QWEN.read_text()
    a, b = encode(CONV, tok, str(QWEN)), encode(CONV, own, None)
    assert list(a.input_ids) == list(b.input_ids) and list(a.loss_weights) == list(b.loss_weights)

    edited = tmp_path / "edited.jinja"
    edited.write_text(QWEN.read_text().replace("You are Qwen", "You are a helper"))
    assert get_template(str(edited), tok).fingerprint != t.fingerprint


def test_a_jinja_file_is_sandboxed_and_bad_files_are_named(tok, tmp_path):
    evil = tmp_path / "evil.jinja"
    evil.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m.content }}{% endfor %}")
    from sftlab.tokens.encoding import EncodingError

    with pytest.raises((TemplateError, EncodingError), match="SecurityError"):
        encode(CONV, tok, str(evil))
    with pytest.raises(TemplateError, match="missing.jinja: cannot read it"):
        get_template(str(tmp_path / "missing.jinja"), tok)
    empty = tmp_path / "empty.j2"
    empty.write_text("  \n")
    with pytest.raises(TemplateError, match="empty"):
        get_template(str(empty), tok)


def test_validate_takes_a_template_file(tok, tmp_path):
    import json

    from sftlab.cli import main

    tok.save_pretrained(tmp_path / "tok")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(CONV) + "\n")
    assert main(["validate", str(data), "--tokenizer", str(tmp_path / "tok"), "--template", str(QWEN),
                 "--max-length", "512"]) == 0


def test_a_processor_chat_template_json_is_the_tokenizers_own(tok, tmp_path):
    """A vision-language model's directory keeps its template in the processor's
    chat_template.json, which AutoTokenizer does not read: sftlab reads it as the tokenizer's own
    template (as AutoProcessor does), so the model's text trains in the format it is served with;
    a file of another shape is named."""
    import json

    from sftlab.demo.tiny import build_tokenizer
    from sftlab.errors import UsageError
    from sftlab.model.loading import load_tokenizer, load_tokenizer_and_template

    bare = build_tokenizer(vocab_size=300)
    bare.chat_template = None
    bare.save_pretrained(tmp_path / "vlm")
    (tmp_path / "vlm" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(UsageError, match="has no chat_template"):
        load_tokenizer_and_template(str(tmp_path / "vlm"))
    (tmp_path / "vlm" / "chat_template.json").write_text(json.dumps({"chat_template": QWEN.read_text()}))
    own, template = load_tokenizer_and_template(str(tmp_path / "vlm"))
    assert own.chat_template == template.source == QWEN.read_text()
    a, b = encode(CONV, own, None), encode(CONV, tok, str(QWEN))
    assert list(a.input_ids) == list(b.input_ids) and list(a.loss_weights) == list(b.loss_weights)
    (tmp_path / "vlm" / "chat_template.json").write_text(json.dumps({"template": "x"}))
    with pytest.raises(UsageError, match=r"chat_template\.json: expected an object with a 'chat_template' string"):
        load_tokenizer(str(tmp_path / "vlm"))


def test_named_templates_of_a_tokenizer_and_json_template_files(tok, tmp_path):
    """A tokenizer with named templates (Hermes' default and tool_use, as its tokenizer_config.json
    lists them) encodes with the default one, as transformers does without tools; ``template:
    tool_use`` selects the other; a record with tools under the default names the others; and a
    JSON file holding a template (chat_template.json, a tokenizer_config.json's list) is read for
    its template, not as Jinja."""
    import json

    from sftlab.demo.tiny import build_tokenizer

    chats = Path(__file__).parent / "data" / "chat_templates"
    default, tool_use = (chats / "smollm2.jinja").read_text(), (chats / "hermes-3-tool-use.jinja").read_text()
    hermes = build_tokenizer(vocab_size=300)
    hermes.chat_template = {"default": default, "tool_use": tool_use}
    assert get_template(None, hermes).name == "tokenizer:default" and get_template(None, hermes).source == default
    assert get_template("tool_use", hermes).source == tool_use
    with pytest.raises(TemplateError, match="the tokenizer's own named templates: default, tool_use"):
        get_template("nope", hermes)
    call = {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                         {"role": "assistant", "content": "", "tool_calls": [
                             {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                        "parameters": {"type": "object", "properties": {
                                                            "city": {"type": "string"}}}}}]}
    from sftlab.tokens.encoding import EncodingError

    with pytest.raises(EncodingError, match="the tokenizer's own 'default' template writes no tool calls .*"
                                            "template: NAME trains with one of them"):
        encode(call, hermes, None)
    ex = encode(call, hermes, "tool_use")
    assert "get_weather" in hermes.decode([t for t, w in zip(ex.input_ids, ex.loss_weights) if w > 0])

    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN.read_text()}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "default", "template": QWEN.read_text()}, {"name": "tool_use", "template": tool_use}]}))
    for f in ("chat_template.json", "tokenizer_config.json"):
        assert get_template(str(tmp_path / f), tok).source == QWEN.read_text()
    (tmp_path / "other.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(TemplateError, match="a JSON file without a 'chat_template' string"):
        get_template(str(tmp_path / "other.json"), tok)
