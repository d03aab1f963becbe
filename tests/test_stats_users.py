"""`sftlab stats` on data as users have it: one task, no refusal category, Chinese text."""
import json
from pathlib import Path

from sftlab.cli import main
from sftlab.data.formats import Columns
from sftlab.data.loading import load_files
from sftlab.data.stats import compute_stats

PUBLIC = Path(__file__).parent / "data" / "public"


def test_one_task_has_entropy_zero_not_minus_zero_and_no_category_is_no_pass(tmp_path, capsys):
    convs = load_files([PUBLIC / "llamafactory_alpaca_en_demo.json"]).conversations
    stats = compute_stats(convs)
    assert str(stats["tasks"]["entropy_nats"]) == "0.0"
    contrast = next(c for c in stats["checks"] if c["name"] == "contrast")
    assert contrast.get("skipped") and "every refusal category" not in contrast["message"]
    assert main(["stats", str(PUBLIC / "llamafactory_alpaca_en_demo.json")]) == 0
    out = capsys.readouterr().out
    assert "-0.000" not in out and "skip" in out


def test_near_duplicates_of_chinese_text(tmp_path):
    """Word shingles see a Chinese sentence as one word; character shingles find the near-copy."""
    rows = json.loads((PUBLIC / "llamafactory_mllm_demo.json").read_text())
    chinese = rows[1]
    copy = json.loads(json.dumps(chinese))
    copy["messages"][3]["content"] = copy["messages"][3]["content"].replace("庆祝", "庆贺")
    path = tmp_path / "zh.json"
    path.write_text(json.dumps([rows[0], chinese, copy], ensure_ascii=False))
    stats = compute_stats(load_files([path], columns=[Columns(ignore=("images",))]).conversations)
    near = stats["duplicates"]["near"]
    assert near["records"] == 1 and near["examples"][0]["jaccard"] >= 0.8
