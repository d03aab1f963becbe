"""``sftlab validate``: exit codes 0/1/2, the JSON shape, the quarantine file, human output."""
import json
import subprocess
import sys
from pathlib import Path

from sftlab.cli import main

GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
BAD = {"messages": [{"role": "user", "content": "q"}]}
POLICY = 'version: "v1"\ncategories:\n  - {name: weapons, benign_contrast: [weapons_history]}\n'


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_json(capsys, *argv):
    code = main(["validate", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)  # exactly one JSON object on stdout


def test_all_accepted_exits_0_and_writes_an_empty_quarantine(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "id": str(i)} for i in range(3)])
    code, out = run_json(capsys, data)
    assert code == 0
    assert out == {"records": 3, "accepted": 3, "quarantined": 0,
                   "files": [{"path": str(data), "records": 3, "accepted": 3, "quarantined": 0}],
                   "reasons": {}, "warnings": {}, "quarantine": str(tmp_path / "quarantine.jsonl")}
    assert (tmp_path / "quarantine.jsonl").read_text() == ""


def test_quarantined_records_exit_1_with_counts_per_file(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD, BAD, "{nope"])
    b = write_jsonl(tmp_path / "b.jsonl", [GOOD])
    q = tmp_path / "out" / "q.jsonl"
    code, out = run_json(capsys, a, b, "--quarantine", q)
    assert code == 1
    assert {k: out[k] for k in ("records", "accepted", "quarantined")} == {
        "records": 4, "accepted": 2, "quarantined": 2}
    assert out["files"] == [
        {"path": str(a), "records": 3, "accepted": 1, "quarantined": 2},
        {"path": str(b), "records": 1, "accepted": 1, "quarantined": 0}]
    assert out["reasons"] == {"no_assistant": 1, "bad_json": 1}
    entries = [json.loads(line) for line in q.read_text().splitlines()]
    assert [(e["file"], e["line"], e["code"]) for e in entries] == [
        (str(a), 2, "no_assistant"), (str(a), 3, "bad_json")]
    assert entries[0]["record"] == BAD


def test_a_file_whose_every_record_is_bad_exits_1(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [BAD, BAD])
    code, out = run_json(capsys, data)
    assert code == 1 and out["accepted"] == 0 and out["quarantined"] == 2


def test_unusable_input_exits_2_with_one_json_error(tmp_path, capsys):
    code, out = run_json(capsys, tmp_path / "missing.jsonl")
    assert code == 2 and out == {"error": f"{tmp_path / 'missing.jsonl'}: no such file or directory"}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, out = run_json(capsys, empty)
    assert code == 2 and "no records" in out["error"]
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    code, out = run_json(capsys, data, "--policy", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml: no such policy file" in out["error"]
    code, out = run_json(capsys, data, "--quarantine", data)
    assert code == 2 and "also an input" in out["error"]
    assert (tmp_path / "d.jsonl").read_text().strip() == json.dumps(GOOD)  # not overwritten


def test_bad_policy_field_exits_2_naming_the_field(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    policy = tmp_path / "p.yaml"
    policy.write_text("version: v1\ncategories:\n  - {description: x}\n")
    code = main(["validate", str(data), "--policy", str(policy)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"sftlab validate: error: {policy}: categories[0].name: Field required"


def test_policy_categories_are_checked(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    data = write_jsonl(tmp_path / "d.jsonl", [
        {**GOOD, "expected": "refuse", "policy_category": "weapons"},
        {**GOOD, "meta": {"expected": "refuse", "policy_category": "drugs"}},
        {**GOOD, "expected": "comply", "policy_category": "weapons_history"}])
    code, out = run_json(capsys, data, "--policy", policy)
    assert code == 1 and out["reasons"] == {"unknown_category": 1}


def test_human_output_shows_the_table_and_first_reasons(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"id": "x7", **BAD}])
    code = main(["validate", str(data)])
    out = capsys.readouterr().out
    assert code == 1
    assert "records  accepted  quarantined" in out
    assert f"{data}:2: record 'x7': messages: no assistant message" in out
    assert str(tmp_path / "quarantine.jsonl") in out


def test_console_script_subprocess(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, BAD])
    script = Path(sys.executable).with_name("sftlab")
    proc = subprocess.run([str(script), "validate", str(data), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["files"] == [
        {"path": str(data), "records": 2, "accepted": 1, "quarantined": 1}]
    proc = subprocess.run([str(script), "validate", str(tmp_path / "missing.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("missing.jsonl: no such file or directory")


PUBLIC = Path(__file__).parent / "data" / "public"


def test_the_column_mapping_options_match_a_data_entry(tmp_path, capsys):
    """validate takes a config entry's mapping as flags: LLaMA-Factory's dataset_info.json read as it is,
    --layout chosen for preference data, --column for Dolly, --ignore-field for images."""
    lf = PUBLIC / "llamafactory"
    q = ["--quarantine", tmp_path / "q.jsonl"]
    code, out = run_json(capsys, lf / "dpo_en_demo.json", *q)
    assert code == 1 and out["reasons"] == {"preference_record": 20}
    code, out = run_json(capsys, lf / "dpo_en_demo.json", "--dataset-info", lf / "dataset_info.json",
                         "--dataset", "dpo_en_demo", "--layout", "chosen", *q)
    assert code == 0 and out["accepted"] == 20
    code, out = run_json(capsys, PUBLIC / "dolly_15k_sample.jsonl", "--column", "prompt=instruction", "--column",
                         "query=context", "--column", "response=response", "--column", "task=category", *q)
    assert code == 0 and out["accepted"] == 22
    code, out = run_json(capsys, lf / "mllm_demo.json", "--ignore-field", "images", *q)
    assert code == 0 and out["accepted"] == 6


def test_a_bad_mapping_option_exits_2_naming_it(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "hello"}]}])
    assert main(["validate", str(data), "--column", "answer=x"]) == 2
    assert "unknown column 'answer'" in capsys.readouterr().err
    assert main(["validate", str(data), "--dataset-info", str(PUBLIC / "llamafactory" / "dataset_info.json"),
                 "--dataset", "nope"]) == 2
    assert "no dataset entry 'nope'" in capsys.readouterr().err
    assert main(["validate", str(data), "--role", "bot=robot"]) == 2
    assert "robot" in capsys.readouterr().err


def test_long_reads_and_encodings_show_progress_bars_short_ones_none(tmp_path, capsys, monkeypatch):
    """Reading and encoding show tqdm bars on stderr (100k records: seconds to read, minutes to
    encode) once the input is large enough to take a while; a small input prints none, so an error
    stays one line. The thresholds are lowered here instead of writing 32 MiB."""
    from sftlab.commands import validate
    from sftlab.data import loading
    from sftlab.demo.tiny import build_tokenizer

    tok = build_tokenizer(vocab_size=300)
    tok.save_pretrained(tmp_path / "tok")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q {i}"},
                                                     {"role": "assistant", "content": f"a {i}"}]}) + "\n"
                            for i in range(30)))
    argv = ["validate", str(data), "--tokenizer", str(tmp_path / "tok"), "--template", "chatml",
            "--quarantine", str(tmp_path / "q.jsonl"), "--json"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(loading, "BAR_BYTES", 100)
    monkeypatch.setattr(validate, "ENCODE_BAR_RECORDS", 10)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accepted"] == 30
    assert "read: 30rec" in captured.err and "encode: 100%" in captured.err and "30/30" in captured.err


def test_a_hub_dataset_name_with_no_hub_is_read_offline_and_fails_at_once(tmp_path, capsys, monkeypatch):
    """Where no hub answers, a dataset name is looked up in the local cache in the datasets
    library's offline mode (no retries: tens of seconds before), and one that is not cached is
    one line saying why and what to do, with no progress bar before it; the library's flags are
    restored afterwards."""
    import datasets
    from huggingface_hub import constants

    from sftlab.data import columnar

    monkeypatch.setattr(columnar, "hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    before = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    code = main(["validate", "someone/not-cached::train", "--quarantine", str(tmp_path / "q.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "someone/not-cached::train: not a loadable dataset" in err and "OfflineModeIsEnabled" in err
    assert "HF_HUB_OFFLINE is set, and the local Hugging Face cache does not hold it" in err
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == before
