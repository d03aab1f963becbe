"""Every command exits quietly on a closed pipe (`sftlab manifest RUN | head`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_line_then_close(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    p = subprocess.Popen([sys.executable, "-m", "sftlab", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    first = p.stdout.read(100)
    p.stdout.close()  # what `head -c 100` does after its bytes
    err = p.stderr.read().decode()
    return p.wait(timeout=120), first, err


def test_manifest_into_a_closed_pipe_exits_quietly(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # a manifest far larger than a pipe's buffer, so the writer meets the closed pipe
    config = {f"key_{i}": "x" * 60 for i in range(3000)}
    (run / "run.json").write_text(json.dumps({"schema_version": 1, "kind": "train", "config": config}))
    code, first, err = _first_line_then_close(["manifest", str(run), "--json"], tmp_path)
    assert first and "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 141
    code, first, err = _first_line_then_close(["manifest", str(run)], tmp_path)
    assert first and "Traceback" not in err and "BrokenPipe" not in err, err


def test_validate_into_a_closed_pipe_exits_quietly(tmp_path):
    rows = [{"id": str(i), "messages": [{"role": "user", "content": "q"}]} for i in range(3000)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, first, err = _first_line_then_close(["validate", str(data), "--json"], tmp_path)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
