"""NUL characters in uploaded files: column names and values become metadata (schema, label
classes, reports) stored in PostgreSQL text/jsonb, which cannot hold U+0000, so ingest refuses
them with ``nul_character`` and a position, never echoing the value."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.ingest import IngestError, Limits, TableSource, image_zip_table, scan
from workers.ingest.errors import CODES


def _scan(path: Path, fmt: str, **kw: object) -> IngestError:
    with pytest.raises(IngestError) as ei:
        scan(TableSource.open(str(path), fmt, **kw), label="y")  # type: ignore[arg-type]
    assert ei.value.code == "nul_character", ei.value.to_dict()
    json.dumps(ei.value.to_dict())  # JSON-safe, and no NUL in what would be stored
    assert "\x00" not in json.dumps(ei.value.to_dict(), ensure_ascii=False)
    return ei.value


def test_the_code_is_registered() -> None:
    assert "nul_character" in CODES


def test_a_nul_in_a_csv_value_past_the_sniffed_prefix(tmp_path: Path) -> None:
    # The first bytes are clean text (so sniffing passes); the NUL comes later in a cell.
    lines = ["x,y"] + [f"{i},{'a' if i % 2 else 'b'}" for i in range(200)]
    lines[150] = "149,b\x00c"
    path = tmp_path / "late.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err = _scan(path, "csv", limits=Limits(sniff_bytes=256))
    assert err.details == {"column": "y", "line": 151}


def test_a_nul_in_a_csv_header(tmp_path: Path) -> None:
    path = tmp_path / "head.csv"
    path.write_text("x,y\x00z,y\n1,2,3\n", encoding="utf-8")
    with pytest.raises(IngestError) as ei:
        TableSource.open(str(path), "csv", limits=Limits(sniff_bytes=2))
    assert ei.value.code == "nul_character" and ei.value.details == {"column_positions": [2]}


def test_a_nul_in_jsonl_values_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps({"x": i, "y": "a\u0000" if i == 3 else "a"}) + "\n" for i in range(9)))
    assert _scan(path, "jsonl").details == {"column": "y", "line": 4}
    path = tmp_path / "k.jsonl"
    path.write_text("".join(json.dumps({"x\u0000": i, "y": "a"}) + "\n" for i in range(9)))
    with pytest.raises(IngestError) as ei:
        TableSource.open(str(path), "jsonl")
    assert ei.value.code == "nul_character" and ei.value.details == {"column_positions": [1]}


def test_a_nul_in_parquet_strings_and_names(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3, 4], "y": ["a", "b", "a", "b\x00"]}), str(path))
    assert _scan(path, "parquet").details == {"column": "y", "record": 4}
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"x\x00": [1, 2], "y": ["a", "b"]}), str(path))
    with pytest.raises(IngestError) as ei:
        TableSource.open(str(path), "parquet")
    assert ei.value.code == "nul_character"


def test_clean_files_still_scan(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text("x,y\n" + "".join(f"{i},{'a' if i % 2 else 'b'}\n" for i in range(20)), encoding="utf-8")
    result = scan(TableSource.open(str(path), "csv"), label="y")
    assert result.report.rows == 20 and result.report.class_balance == {"a": 10, "b": 10}


def test_a_nul_in_a_zip_labels_file(tmp_path: Path) -> None:
    from tests.workers.test_ingest_archive import _png

    path = tmp_path / "l.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        for i in range(4):
            zf.writestr(f"img/{i}.png", _png())
        zf.writestr("labels.csv", "file,label\n" + "".join(f"img/{i}.png,c\x00{i % 2}\n" for i in range(4)))
    with pytest.raises(IngestError) as ei:
        image_zip_table(str(path), Limits())
    assert ei.value.code == "nul_character" and ei.value.details == {"member": "labels.csv"}
