"""Inputs as public data is often published: gzip, bz2 or xz compressed JSONL and JSON, and CSV or
TSV tables (sftlab.data.readers). The records read are exactly those of the plain file, line and
field names included; what cannot be streamed (zstd, zip) or is damaged is a one-line error
naming the file; a compressed line far larger than the file is refused without being held.

Material from elsewhere: databricks-dolly-15k's records and LLaMA-Factory's alpaca_en_demo
(tests/data/public, sources and licences in its README), written compressed or as a table here."""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.data.loading import load_files
from sftlab.data.readers import folder_files
from sftlab.demo.tiny import build_tokenizer
from sftlab.errors import UsageError
from sftlab.prepare import prepare
from sftlab.tokens.templates import get_template
from sftlab.train.config import DataFile

PUBLIC = Path(__file__).parent / "data" / "public"
DOLLY = PUBLIC / "dolly_15k_sample.jsonl"
ALPACA = PUBLIC / "llamafactory" / "alpaca_en_demo.json"
DOLLY_COLUMNS = {"prompt": "instruction", "query": "context", "response": "response", "task": "category"}
CODECS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def _read(path, columns=None):
    report = load_files([path], columns=[DataFile(path=str(path), columns=columns).mapping()] if columns else None)
    return ([(c.origin.line, [(m.role, m.content) for m in c.messages], c.task) for c in report.conversations],
            [(q.line, q.code) for q in report.quarantined])


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("source,columns", [(DOLLY, DOLLY_COLUMNS), (ALPACA, None)])
def test_a_compressed_file_reads_as_the_plain_one(tmp_path, codec, source, columns):
    packed = tmp_path / f"{source.name}.{codec}"
    packed.write_bytes(CODECS[codec](source.read_bytes()))
    plain = _read(source, columns)
    assert plain[0] and not plain[1]
    assert _read(packed, columns) == plain
    odd = tmp_path / source.name  # the contents decide, not the name: a gzipped file named .jsonl
    odd.write_bytes(CODECS[codec](source.read_bytes()))
    assert _read(odd, columns) == plain


def test_a_multi_member_gzip_reads_every_member(tmp_path):
    lines = DOLLY.read_bytes().splitlines(keepends=True)
    path = tmp_path / "parts.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(lines[:7])) + gzip.compress(b"".join(lines[7:])))
    assert _read(path, DOLLY_COLUMNS) == _read(DOLLY, DOLLY_COLUMNS)


def test_damaged_or_unreadable_compression_is_one_line_naming_the_file(tmp_path, capsys):
    whole = gzip.compress(DOLLY.read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UsageError, match=r"cut\.jsonl\.gz: damaged gzip data after [\d,]+ decompressed bytes"):
        load_files([cut])
    zst = tmp_path / "data.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    assert main(["validate", str(zst)]) == 2
    assert "zstd-compressed, which sftlab does not read; decompress it first" in capsys.readouterr().err
    zipped = tmp_path / "data.zip"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 26)
    with pytest.raises(UsageError, match="is a zip archive"):
        load_files([zipped])
    pq = tmp_path / "t.parquet.gz"
    pq.write_bytes(gzip.compress(b"PAR1" + b"\0" * 8))
    with pytest.raises(UsageError, match="Parquet compresses its own pages"):
        load_files([pq])


def test_a_line_larger_than_the_file_is_refused_and_the_next_read(tmp_path):
    big = 20 * 2 ** 20  # 20 MiB of one line: about 20 KiB compressed
    record = json.dumps({"messages": [{"role": "user", "content": "x" * big}, {"role": "assistant", "content": "y"}]})
    path = tmp_path / "bomb.jsonl.gz"
    text = (record + "\n" + DOLLY.read_text().splitlines()[0] + "\n").encode()
    path.write_bytes(gzip.compress(text))
    assert path.stat().st_size < 100_000
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(text)
    reports = [load_files([p], max_record_bytes=2 ** 20, columns=[DataFile(path=str(p), columns=DOLLY_COLUMNS).mapping()])
               for p in (path, plain)]
    for report in reports:
        assert [(q.line, q.code) for q in report.quarantined] == [(1, "too_large")]
        assert f"the record is {len(record) + 1:,} bytes" in report.quarantined[0].reason
        assert [c.origin.line for c in report.conversations] == [2]
    assert reports[0].quarantined[0].record == reports[1].quarantined[0].record


def _table(rows: list[dict], delimiter: str) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize("delimiter,suffix", [(",", "csv"), ("\t", "tsv")])
def test_a_table_reads_as_the_jsonl_it_was_made_from(tmp_path, delimiter, suffix):
    rows = [json.loads(x) for x in DOLLY.read_text().splitlines()]
    assert any("\n" in r["response"] or "," in r["context"] for r in rows)  # quoting is exercised
    path = tmp_path / f"dolly.{suffix}"
    path.write_text(_table(rows, delimiter), encoding="utf-8")
    got, want = _read(path, DOLLY_COLUMNS), _read(DOLLY, DOLLY_COLUMNS)
    assert [g[1:] for g in got[0]] == [w[1:] for w in want[0]] and not got[1]
    packed = tmp_path / f"dolly.{suffix}.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert _read(packed, DOLLY_COLUMNS) == got


def test_a_table_keeps_cells_as_text_and_names_bad_rows_by_file_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('instruction,input,output\n"Pad it","7","007"\n"two\nlines",,"x"\nshort,row\n'
                    '"ok",,"1e3"\n', encoding="utf-8")
    report = load_files([path])
    assert [[m.content for m in c.messages] for c in report.conversations] == \
           [["Pad it\n\n7", "007"], ["two\nlines", "x"], ["ok", "1e3"]]
    (q,) = report.quarantined
    assert (q.line, q.file_line, q.code) == (3, 5, "bad_row") and "2 cells under a header of 3 columns" in q.reason
    assert q.record == "short,row"
    wide = tmp_path / "wide.csv"
    wide.write_text("instruction,output\nhi,hello,and more\n", encoding="utf-8")
    (q,) = load_files([wide]).quarantined
    assert q.record == "hi,hello,and more"  # the cell past the header is kept in the quarantine
    dup = tmp_path / "dup.csv"
    dup.write_text("output,output\na,b\n")
    with pytest.raises(UsageError, match="names a column twice"):
        load_files([dup])


def test_a_folder_reads_compressed_files_and_tables(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(ALPACA.read_bytes()))
    (tmp_path / "b.csv").write_text("instruction,output\nhi,hello\n")
    assert [p.name for p in folder_files(tmp_path)] == ["a.jsonl.gz", "b.csv"]
    (tmp_path / "c.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(UsageError, match=r"holds c\.jsonl\.zst, which sftlab does not read"):
        folder_files(tmp_path)


def test_a_prepared_store_of_a_compressed_file_holds_the_plain_files_examples(tmp_path):
    tok = build_tokenizer(special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    packed = tmp_path / "alpaca.json.xz"
    packed.write_bytes(lzma.compress(ALPACA.read_bytes()))
    opts = {"options": {"max_length": 2048, "last_turn_only": False}, "chunk_records": 8}
    plain = prepare([str(ALPACA)], tok, get_template("chatml", tok), cache_dir=tmp_path / "c1", **opts)
    small = prepare([str(packed)], tok, get_template("chatml", tok), cache_dir=tmp_path / "c2", **opts)
    assert len(plain) == len(small) == 30 and plain.files[0]["records"] == small.files[0]["records"] == 30
    assert all(plain.ids(i).tolist() == small.ids(i).tolist() for i in range(30))
    assert all(plain.weights(i).tolist() == small.weights(i).tolist() for i in range(30))


def test_a_compressed_json_array_larger_than_the_limit_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from sftlab.data import readers

    path = tmp_path / "alpaca.json.gz"
    path.write_bytes(gzip.compress(ALPACA.read_bytes()))
    assert len(load_files([path]).conversations) == 30
    monkeypatch.setattr(readers, "MAX_COMPRESSED_ARRAY", 1000)
    with pytest.raises(UsageError, match="gzip-compressed JSON array of more than .* write it as JSONL"):
        load_files([path])
