"""Tests for workers.ingest: sniffing, streaming CSV/TSV/JSONL/Parquet, scan/infer/validate,
convert + Parquet output, privacy of errors and reports. Zip safety is in test_ingest_archive.py."""

from __future__ import annotations

import io
import json
import os
import random
import resource
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.ingest import (
    IngestError,
    Limits,
    ScanResult,
    TableSource,
    convert,
    detect_encoding,
    detect_format,
    scan,
    sniff_delimiter,
    write_parquet,
)
from workers.schema import Column, DatasetSchema

CANARY = "CANARY-7f3a9c-PII"


def _write(tmp_path: Path, name: str, data: bytes | str, encoding: str = "utf-8") -> str:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return str(p)


def _open(path: str, **kw: object) -> TableSource:
    return TableSource.open(path, detect_format(path), **kw)  # type: ignore[arg-type]


def _types(result: object) -> dict[str, str]:
    return {c.name: c.type for c in result.schema.columns}  # type: ignore[attr-defined]


def _raises(code: str, fn: object, *args: object, **kw: object) -> IngestError:
    with pytest.raises(IngestError) as ei:
        fn(*args, **kw)  # type: ignore[operator]
    assert ei.value.code == code, ei.value.to_dict()
    json.dumps(ei.value.to_dict())
    return ei.value


class _NullSink:
    """A write-only, non-seekable sink like the encrypting writer."""

    def __init__(self) -> None:
        self.n = 0
        self.closed = False
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> int:
        self.buf.write(data)
        self.n += len(data)
        return len(data)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _DiscardSink(_NullSink):
    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


# ---------------------------------------------------------------------- sniffing / encodings
@pytest.mark.parametrize(
    ("name", "text", "fmt", "delim"),
    [
        ("a.csv", "a,b,c\n1,2,3\n4,5,6\n", "csv", ","),
        ("a.tsv", "a\tb\tc\n1\t2\t3\n", "tsv", "\t"),
        ("a.csv", "a;b;c\n1,5;2;3\n4;5;6\n", "csv", ";"),
        ("a.txt", "a|b\nx|y\n", "csv", "|"),
    ],
)
def test_delimited_formats(tmp_path: Path, name: str, text: str, fmt: str, delim: str) -> None:
    path = _write(tmp_path, name, text)
    assert detect_format(path) == fmt
    src = _open(path)
    assert src.delimiter == delim
    res = scan(src)
    assert res.report.rows == text.count("\n") - 1
    assert res.schema.names == text.splitlines()[0].split(delim)


def test_semicolon_decimal_comma_stays_string(tmp_path: Path) -> None:
    res = scan(_open(_write(tmp_path, "a.csv", "a;b\n1,5;x\n2,5;y\n3,5;z\n")))
    assert _types(res)["a"] in ("string", "category")


def test_sniff_delimiter_quoted() -> None:
    assert sniff_delimiter('a,b\n"x;y;z",2\n"p;q",3\n') == ","
    assert sniff_delimiter("single\nvalue\n") == ","


def test_utf8_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.csv", b"\xef\xbb\xbfname,age\nJos\xc3\xa9,3\n")
    assert detect_encoding(path) == "utf-8-sig"
    src = _open(path)
    assert src.column_names == ["name", "age"]
    batch = next(iter(convert(src, scan(src).schema)))
    assert batch.column("name").to_pylist() == ["José"]


def test_cp1252_accents(tmp_path: Path) -> None:
    text = "nom,ville\n" + "".join(
        f"Fran\u00e7ois {i},G\u00e9n\u00e8ve \u00e0 c\u00f4t\u00e9 \u2013 \u00e9t\u00e9\n" for i in range(50)
    )
    path = _write(tmp_path, "a.csv", text, encoding="cp1252")
    enc = detect_encoding(path)
    assert enc in ("cp1252", "latin-1", "iso8859-15")
    src = _open(path)
    rows = [r for b in convert(src, scan(src).schema) for r in b.to_pylist()]
    assert rows[0]["nom"] == "François 0"
    assert rows[0]["ville"] == "Génève à côté – été"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16(tmp_path: Path, encoding: str) -> None:
    path = _write(tmp_path, "a.csv", "a,b\n1,Zoë\n2,Ünal\n", encoding=encoding)
    assert detect_encoding(path).startswith("utf-16")
    src = _open(path)
    res = scan(src)
    assert _types(res)["a"] == "integer"
    assert [r["b"] for b in convert(src, res.schema) for r in b.to_pylist()] == ["Zoë", "Ünal"]


def test_invalid_utf8_in_the_middle_is_rejected(tmp_path: Path) -> None:
    # Valid UTF-8 multibyte text plus invalid bytes: mixed/corrupt, so no single-byte guess (see
    # detect_encoding's docstring) -- rejected rather than turned into mojibake.
    data = "name,city\n" + "Zoë,Genève\n" * 100
    raw = data.encode() + b"bad\xff\xfe\xfdrow,x\n" + ("Zoë,Genève\n" * 100).encode()
    err = _raises("wrong_encoding", _open, _write(tmp_path, "a.csv", raw))
    assert "bad" not in json.dumps(err.to_dict())


def test_invalid_utf8_beyond_the_sample(tmp_path: Path) -> None:
    raw = b"a,b\n" + b"1,x\n" * 2000 + b"2,\xc3\x28\n"
    path = _write(tmp_path, "a.csv", raw)
    src = TableSource.open(path, "csv", limits=Limits(sniff_bytes=1024))
    assert src.encoding == "utf-8"
    _raises("wrong_encoding", scan, src)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.csv", b"")
    _raises("empty_file", detect_format, path)
    _raises("empty_file", TableSource.open, path, "csv")


def test_header_only(tmp_path: Path) -> None:
    err = _raises("empty_file", scan, _open(_write(tmp_path, "a.csv", "a,b,c\n")))
    assert err.details["columns"] == ["a", "b", "c"]


def test_binary_junk(tmp_path: Path) -> None:
    rnd = random.Random(1)
    path = _write(tmp_path, "a.csv", bytes(rnd.getrandbits(8) for _ in range(100_000)))
    _raises("binary_content", detect_format, path)
    _raises("binary_content", TableSource.open, path, "csv")


def test_gzip_is_unsupported(tmp_path: Path) -> None:
    _raises("unsupported_format", detect_format, _write(tmp_path, "a.csv.gz", b"\x1f\x8b\x08\x00junk"))


def test_no_header_and_duplicates(tmp_path: Path) -> None:
    _raises("no_header", _open, _write(tmp_path, "a.csv", "1,2,3\n4,5,6\n"))
    err = _raises("duplicate_columns", _open, _write(tmp_path, "b.csv", "a,b,a\n1,2,3\n"))
    assert err.details["columns"] == ["a"]


def test_too_many_columns(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(30))
    path = _write(tmp_path, "a.csv", header + "\n" + ",".join("1" * 30) + "\n")
    _raises("too_large", TableSource.open, path, "csv", limits=Limits(max_columns=10))


# ---------------------------------------------------------------------- structure / lines
def test_ragged_rows_with_line_numbers(tmp_path: Path) -> None:
    text = 'a,b,c\n1,2,3\n4,5\n\n7,8,9\n1,2,3,4\n"multi\nline",2,3\n5,6\n'
    err = _raises("ragged_rows", scan, _open(_write(tmp_path, "a.csv", text)))
    assert err.details["count"] == 3
    assert err.details["first_lines"] == [3, 6, 9]


def test_quoted_fields_with_newlines_and_delimiters(tmp_path: Path) -> None:
    text = 'id,note,x\n1,"a, b; c",1\n2,"line one\nline two\r\nline three",2\n3,"say ""hi""",oops\n'
    src = _open(_write(tmp_path, "a.csv", text))
    declared = DatasetSchema(
        columns=[Column("id", "integer"), Column("note", "text"), Column("x", "integer")],
    )
    err = _raises("row_errors", scan, src, declared=declared)
    assert err.details["first"] == [{"line": 6, "column": "x", "reason": "expected integer"}]
    chunks = list(src.iter_chunks())
    assert chunks[0].lines.tolist() == [2, 3, 6]
    assert chunks[0].batch.column("note").to_pylist()[2] == 'say "hi"'


def test_label_missing(tmp_path: Path) -> None:
    err = _raises("unknown_label_column", scan, _open(_write(tmp_path, "a.csv", "a,b\n1,2\n")), label="y")
    assert err.details["label"] == "y"


def test_declared_schema_mismatch(tmp_path: Path) -> None:
    declared = DatasetSchema(columns=[Column("a", "integer"), Column("c", "string")])
    err = _raises("schema_mismatch", scan, _open(_write(tmp_path, "a.csv", "a,b\n1,2\n")), declared=declared)
    assert err.details == {"missing": ["c"], "extra": ["b"]}


def _declared() -> DatasetSchema:
    return DatasetSchema(
        columns=[
            Column("id", "integer", nullable=False),
            Column("amount", "float"),
            Column("ok", "boolean"),
            Column("day", "date"),
            Column("y", "integer", role="label"),
        ],
        label="y",
        task="binary_classification",
    )


ROWS_WITH_ERRORS = (
    "id,amount,ok,day,y\n"
    "1,1.5,TRUE,2024-01-01,0\n"
    "2,abc,no,2024-01-02,1\n"  # line 3: amount
    ",2.5,yes,2024-01-03,0\n"  # line 4: missing id (not nullable)
    "4,3.5,maybe,2024-02-30,1\n"  # line 5: ok and day
    "5,4.5,0,03/01/2024,1\n"
)


def test_row_errors_reject(tmp_path: Path) -> None:
    err = _raises("row_errors", scan, _open(_write(tmp_path, "a.csv", ROWS_WITH_ERRORS)), declared=_declared())
    assert err.details["count"] == 4
    assert err.details["rows"] == 3
    assert err.details["position"] == "line"
    assert err.details["first"] == [
        {"line": 3, "column": "amount", "reason": "expected float"},
        {"line": 4, "column": "id", "reason": "missing value"},
        {"line": 5, "column": "ok", "reason": "expected boolean"},
        {"line": 5, "column": "day", "reason": "expected date"},
    ]


def test_row_errors_skip(tmp_path: Path) -> None:
    src = _open(_write(tmp_path, "a.csv", ROWS_WITH_ERRORS))
    res = scan(src, declared=_declared(), on_row_error="skip")
    rep = res.report.to_dict()
    assert rep["skipped_rows"] == 3
    assert rep["row_errors"]["count"] == 4
    assert rep["class_balance"] == {"0": 1, "1": 1}
    rows = [r for b in convert(src, res.schema, on_row_error="skip") for r in b.to_pylist()]
    assert [r["id"] for r in rows] == [1, 5]
    assert rows[1]["ok"] is False
    assert str(rows[1]["day"]) == "2024-01-03"
    with pytest.raises(IngestError) as ei:
        list(convert(src, res.schema))
    assert ei.value.code == "row_errors"


def test_row_errors_report_cap(tmp_path: Path) -> None:
    text = "a\n" + "x\n" * 500
    declared = DatasetSchema(columns=[Column("a", "integer")])
    src = TableSource.open(_write(tmp_path, "a.csv", text), "csv", limits=Limits(max_row_errors_reported=10))
    err = _raises("row_errors", scan, src, declared=declared)
    assert err.details["count"] == 500
    assert len(err.details["first"]) == 10
    assert err.details["first"][0]["line"] == 2


# ---------------------------------------------------------------------- inference
def test_type_inference_per_type(tmp_path: Path) -> None:
    n = 200
    rnd = random.Random(3)
    lines = ["i,f,w,b,d,dmy,dt,cat,s,t,mixed_dt"]
    for k in range(n):
        lines.append(
            ",".join(
                [
                    str(k - 50),
                    f"{rnd.random():.4f}",
                    str(k) if k < 150 else f"{k}.5",  # integer widened to float late in the file
                    rnd.choice(["yes", "No", "TRUE", "f"]),
                    f"2023-{1 + k % 12:02d}-{1 + k % 28:02d}",
                    f"{1 + k % 28:02d}/{1 + k % 12:02d}/2020",
                    f"2024-01-01T{k % 24:02d}:00:00+01:00",
                    rnd.choice(["red", "green", "blue"]),
                    f"ID-{k:06d}",
                    f'"{" ".join(["word"] * (5 + k % 5))}"',
                    "2024-01-01" if k % 2 else "2024-01-01 10:00:00",
                ]
            )
        )
    src = TableSource.open(_write(tmp_path, "a.csv", "\n".join(lines) + "\n"), "csv", batch_rows=64)
    res = scan(src)
    assert _types(res) == {
        "i": "integer",
        "f": "float",
        "w": "float",
        "b": "boolean",
        "d": "date",
        "dmy": "date",
        "dt": "datetime",
        "cat": "category",
        "s": "string",
        "t": "text",
        "mixed_dt": "datetime",
    }
    cols = {c["name"]: c for c in res.report.to_dict()["columns"]}
    assert cols["i"]["min"] == -50
    assert cols["i"]["max"] == 149
    assert cols["i"]["mean"] == pytest.approx(49.5)
    assert cols["s"]["distinct"] == n
    assert cols["d"]["min"] == "2023-01-01"
    assert "min_length" in cols["t"]
    assert res.report.task is None


def test_inference_nulls_and_warnings(tmp_path: Path) -> None:
    text = "a,b,c\n" + "1,,k\n" * 10 + "NA,,k\n"
    rep = scan(_open(_write(tmp_path, "a.csv", text))).report.to_dict()
    cols = {c["name"]: c for c in rep["columns"]}
    assert cols["a"]["nulls"] == 1
    assert cols["b"]["null_ratio"] == 1.0
    assert any("'b' is empty" in w for w in rep["warnings"])
    assert any("'c' is constant" in w for w in rep["warnings"])


def test_distinct_cap(tmp_path: Path) -> None:
    text = "a\n" + "".join(f"v{i}\n" for i in range(300))
    src = TableSource.open(_write(tmp_path, "a.csv", text), "csv", limits=Limits(max_distinct_tracked=100))
    rep = scan(src).report.to_dict()
    assert rep["columns"][0]["distinct"] == ">100"


def test_task_inference_breast_cancer(tmp_path: Path) -> None:
    sklearn = pytest.importorskip("sklearn.datasets")
    df = sklearn.load_breast_cancer(as_frame=True).frame
    path = str(tmp_path / "bc.csv")
    df.to_csv(path, index=False)
    res = scan(_open(path), label="target")
    types = _types(res)
    assert sum(1 for t in types.values() if t == "float") == 30
    assert types["target"] == "integer"
    assert res.schema.task == "binary_classification"
    assert res.schema.column("target").role == "label"
    assert res.report.class_balance == {"1": 357, "0": 212}


def test_task_inference_variants(tmp_path: Path) -> None:
    rnd = random.Random(5)
    rows = ["x,reg,multi,cls,note"]
    for _ in range(300):
        note = " ".join(rnd.choice(["pain", "chest", "left", "arm", "since", "monday"]) for _ in range(12))
        rows.append(
            f"{rnd.random()},{rnd.random() * 10:.3f},{rnd.randint(0, 4)},{rnd.choice(['spam', 'ham', 'eggs'])},{note}"
        )
    path = _write(tmp_path, "a.csv", "\n".join(rows) + "\n")
    assert scan(_open(path), label="reg").schema.task == "regression"
    assert scan(_open(path), label="multi").schema.task == "multiclass_classification"
    res = scan(_open(path), label="cls")
    assert res.schema.task == "text_classification"
    assert _types(res)["note"] == "text"
    assert set(res.report.class_balance or {}) == {"spam", "ham", "eggs"}


def test_label_imbalance_warning(tmp_path: Path) -> None:
    text = "x,y\n" + "1,a\n" * 210 + "2,b\n" * 10
    rep = scan(_open(_write(tmp_path, "a.csv", text)), label="y").report.to_dict()
    assert rep["task"] == "binary_classification"
    assert any("imbalanced" in w for w in rep["warnings"])


# ---------------------------------------------------------------------- JSON Lines
def test_jsonl_good(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": i, "v": i / 2, "flag": i % 2 == 0, "name": f"n{i}", "tags": ["a", i]}) for i in range(100)
    ]
    lines.insert(10, "")
    path = _write(tmp_path, "a.jsonl", "\n".join(lines) + "\n")
    assert detect_format(path) == "jsonl"
    src = TableSource.open(path, "jsonl", batch_rows=16)
    res = scan(src)
    assert _types(res)["id"] == "integer"
    assert _types(res)["v"] == "float"
    assert _types(res)["flag"] == "boolean"
    assert _types(res)["tags"] in ("string", "text")
    chunks = list(src.iter_chunks())
    assert chunks[0].lines[:12].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    rows = [r for b in convert(src, res.schema) for r in b.to_pylist()]
    assert rows[3] == {"id": 3, "v": 1.5, "flag": False, "name": "n3", "tags": '["a",3]'}


def test_jsonl_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.jsonl", '{"a": 1}\n{"a": 2}\n[1, 2]\n')
    err = _raises("jsonl_invalid", lambda: scan(TableSource.open(path, "jsonl", batch_rows=1)))
    assert err.details["line"] == 3
    _raises("jsonl_invalid", TableSource.open, path, "jsonl")


def test_jsonl_invalid_json(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.jsonl", '{"a": 1}\n{"a": 2}\n\n{"a": "' + CANARY + '",}\n')
    err = _raises("jsonl_invalid", lambda: scan(TableSource.open(path, "jsonl", batch_rows=1)))
    assert err.details["line"] == 4
    assert CANARY not in json.dumps(err.to_dict())


def test_jsonl_unexpected_key(tmp_path: Path) -> None:
    lines = [json.dumps({"a": i}) for i in range(10)] + [json.dumps({"a": 1, "b": 2})]
    path = _write(tmp_path, "a.jsonl", "\n".join(lines))
    err = _raises("jsonl_invalid", scan, TableSource.open(path, "jsonl", batch_rows=5))
    assert err.details == {"line": 11, "column": "b", "reason": "unexpected key"}


# ---------------------------------------------------------------------- Parquet
def _parquet_table() -> pa.Table:
    return pa.table(
        {
            "i": pa.array([1, 2, None, 4], pa.int32()),
            "f": pa.array([0.5, 1.5, 2.5, None]),
            "b": pa.array([True, False, True, None]),
            "d": pa.array([18000, 18001, None, 18003], pa.date32()),
            "ts": pa.array([0, 1_000_000, None, 3], pa.timestamp("ms")),
            "s": pa.array(["a", "b", "a", None]).dictionary_encode(),
            "n": pa.array(["1", "2", "3", "4"]),
        }
    )


def test_parquet_good(tmp_path: Path) -> None:
    path = str(tmp_path / "a.bin")
    pq.write_table(_parquet_table(), path)
    assert detect_format(path) == "parquet"
    src = TableSource.open(path, "parquet", batch_rows=3)
    res = scan(src)
    assert _types(res) == {
        "i": "integer",
        "f": "float",
        "b": "boolean",
        "d": "date",
        "ts": "datetime",
        "s": "category",
        "n": "integer",
    }
    assert res.report.position == "record"
    out = pa.Table.from_batches(list(convert(src, res.schema)))
    assert out.schema == res.schema.arrow_schema()
    assert out.column("i").to_pylist() == [1, 2, None, 4]
    assert out.column("n").to_pylist() == [1, 2, 3, 4]
    assert out.column("ts").to_pylist()[1].isoformat() == "1970-01-01T00:16:40+00:00"


def test_parquet_truncated_and_garbage(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(_parquet_table(), str(good))
    data = good.read_bytes()
    trunc = _write(tmp_path, "t.parquet", data[: len(data) // 2])
    assert detect_format(trunc) == "parquet"
    _raises("parquet_unreadable", TableSource.open, trunc, "parquet")
    garbage = _write(tmp_path, "g.parquet", b"PAR1" + os.urandom(5000))
    _raises("parquet_unreadable", TableSource.open, garbage, "parquet")
    junk = _write(tmp_path, "j.parquet", os.urandom(5000) + b"\x00")
    assert detect_format(junk) == "parquet"
    _raises("parquet_unreadable", TableSource.open, junk, "parquet")


# ---------------------------------------------------------------------- convert / parquet output
def test_convert_write_parquet_round_trip(tmp_path: Path) -> None:
    text = (
        "id,amount,ok,day,when,name\n"
        "1,1.25,yes,2024-01-31,2024-01-31T10:00:00Z,Ann\n"
        "2,,N,31/12/2023,2024-01-31T10:00:00+02:00,\n"
        "3,-4e3,true,2020-02-29,2024-01-31 10:00,Bob\n"
    )
    src = _open(_write(tmp_path, "a.csv", text))
    res = scan(src)
    sink = _NullSink()
    n = write_parquet(convert(src, res.schema), res.schema.arrow_schema(), sink, row_group_rows=2)  # type: ignore[arg-type]
    assert n == 3
    assert not sink.closed
    table = pq.read_table(io.BytesIO(sink.buf.getvalue()))
    assert table.schema == res.schema.arrow_schema()
    expected = pa.Table.from_batches(list(convert(src, res.schema)))
    assert table.equals(expected)
    assert pq.ParquetFile(io.BytesIO(sink.buf.getvalue())).metadata.num_row_groups == 2
    rows = table.to_pylist()
    assert [r["when"].hour for r in rows] == [10, 8, 10]
    assert str(rows[1]["day"]) == "2023-12-31"
    assert rows[2]["amount"] == -4000.0


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def observe(self, first_line: int, batch: pa.RecordBatch) -> None:
        assert all(f.type == pa.string() for f in batch.schema)
        self.calls.append((first_line, batch.num_rows))


def test_observers_see_every_string_batch(tmp_path: Path) -> None:
    text = "a,b\n" + "".join(f"{i},x{i}\n" for i in range(100))
    rec = _Recorder()
    scan(TableSource.open(_write(tmp_path, "a.csv", text), "csv", batch_rows=30), observers=[rec])
    assert rec.calls == [(2, 30), (32, 30), (62, 30), (92, 10)]


# ---------------------------------------------------------------------- fast paths
def _multi_block_csv(tmp_path: Path) -> tuple[str, list[int], list[int]]:
    """A ~4 MB CSV (several reader blocks) with ragged rows, blank lines and multi-line quoted
    values scattered through it; returns the path and the expected line numbers of good and ragged rows."""
    rnd = random.Random(3)
    rows, good, ragged, line = ["a,b,c"], [], [], 2
    for i in range(120_000):
        k = rnd.random()
        if k < 0.002:
            rows.append(f"{i},x,y,z")
            ragged.append(line)
            line += 1
        elif k < 0.004:
            rows.append("")
            line += 1
        elif k < 0.01:
            rows.append(f'{i},"multi\nline\nvalue",{i}')
            good.append(line)
            line += 3
        elif k < 0.011:
            rows.append(f'{i},"ragged\nmulti",{i},extra')
            ragged.append(line)
            line += 2
        else:
            rows.append(f"{i},{'w' * rnd.randint(1, 40)},{i}")
            good.append(line)
            line += 1
    return _write(tmp_path, "multi.csv", "\n".join(rows) + "\n"), good, ragged


@pytest.mark.parametrize("batch_rows", [65536, 1000, 7])
def test_line_numbers_across_reader_blocks(tmp_path: Path, batch_rows: int) -> None:
    path, good, ragged = _multi_block_csv(tmp_path)
    src = TableSource.open(path, "csv", batch_rows=batch_rows, limits=Limits(max_row_errors_reported=10**6))
    chunks = list(src.iter_chunks())
    assert [int(x) for c in chunks for x in c.lines] == good
    assert src.ragged_lines == ragged and src.ragged_count == len(ragged)
    # Chunks are re-cut to exactly batch_rows rows (the last one excepted), whatever the blocks.
    assert all(c.batch.num_rows == batch_rows for c in chunks[:-1])
    assert 0 < chunks[-1].batch.num_rows <= batch_rows
    err = _raises("ragged_rows", scan, TableSource.open(path, "csv"))
    assert err.details["first_lines"] == ragged[:100]


def test_abandoned_iteration_stops_the_reader_thread(tmp_path: Path) -> None:
    import threading
    import types

    path, _, _ = _multi_block_csv(tmp_path)
    before = {t.ident for t in threading.enumerate()}
    it = TableSource.open(path, "csv", batch_rows=100).iter_chunks()
    assert isinstance(it, types.GeneratorType)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name == "csv-prefetch"]


def test_fast_and_regex_parsers_agree() -> None:
    from workers.ingest import validate

    samples = {
        "integer": ["1", "-22", "007", "123456789012345678", "1234567890123456789", "+5", " 7", "12.0", "0x1F", "-"],
        "float": ["1", "-2.5", ".5", "5.", "1e5", "1.e5", "+.5", "1E+5", "e5", ".", "1e", "inf", " 2.5", "1.2.3"],
        "date": ["2024-02-29", "2023-02-29", "2024-13-01", "0000-01-01", "31/12/2024", " 2024-01-05", "2024-1-05"],
        "datetime": ["2024-01-05", "2024-01-05 10:30:00", "2024-01-05T25:00:00", "2024-01-05T10:30:00Z", "x"],
    }
    for ltype, values in samples.items():
        parser = validate.PARSERS[ltype]
        cases = [[v] for v in values] + [values, [v for v in values if v.strip() == v], [None, *values[:3]]]
        for vals in cases:
            arr = pa.array(vals, pa.string())
            fast = parser(arr)
            orig = validate._only_bytes, validate._fixed_layout
            validate._only_bytes = lambda *a, **k: False  # type: ignore[assignment]
            validate._fixed_layout = lambda *a, **k: False  # type: ignore[assignment]
            try:
                slow = parser(arr)
            finally:
                validate._only_bytes, validate._fixed_layout = orig
            assert fast.type == slow.type and fast.equals(slow), (ltype, vals)


def test_one_bad_value_in_a_big_batch(tmp_path: Path) -> None:
    # The regex lets 2024-02-30 through; the cast rejects it: only that value becomes an error.
    days = [f"2024-01-{1 + i % 28:02d}" for i in range(5000)]
    days[3777] = "2024-02-30"
    text = "day,y\n" + "".join(f"{d} 10:00:00,{i % 2}\n" for i, d in enumerate(days))
    declared = DatasetSchema(columns=[Column("day", "datetime"), Column("y", "integer")])
    err = _raises("row_errors", scan, _open(_write(tmp_path, "a.csv", text)), declared=declared)
    assert err.details["count"] == 1
    assert err.details["first"] == [{"line": 3779, "column": "day", "reason": "expected datetime"}]


def test_first_row_errors_are_the_first_lines(tmp_path: Path) -> None:
    # Column b's errors come first by line, though column a is checked first in each batch.
    rows = [f"{'x' if i >= 150 else i},{'y' if i < 150 else i}" for i in range(300)]
    declared = DatasetSchema(columns=[Column("a", "integer"), Column("b", "integer")])
    for batch_rows in (65536, 64):
        src = TableSource.open(
            _write(tmp_path, "a.csv", "a,b\n" + "\n".join(rows) + "\n"), "csv", batch_rows=batch_rows
        )
        err = _raises("row_errors", scan, src, declared=declared)
        assert [e["line"] for e in err.details["first"]] == list(range(2, 102))
        assert {e["column"] for e in err.details["first"]} == {"b"}


# ---------------------------------------------------------------------- privacy
def test_privacy_canary(tmp_path: Path) -> None:
    bad_type = f"id,amount\n1,2\n2,{CANARY}\n"
    declared = DatasetSchema(columns=[Column("id", "integer"), Column("amount", "float")])
    src = _open(_write(tmp_path, "a.csv", bad_type))
    err = _raises("row_errors", scan, src, declared=declared)
    assert CANARY not in str(err) and CANARY not in json.dumps(err.to_dict())
    res = scan(src, declared=declared, on_row_error="skip")
    assert CANARY not in json.dumps(res.report.to_dict())
    with pytest.raises(IngestError) as ei:
        list(convert(src, declared))
    assert CANARY not in json.dumps(ei.value.to_dict())

    ragged = f"a,b\n1,2\n{CANARY},3,4\n5,6\n"
    err = _raises("ragged_rows", scan, _open(_write(tmp_path, "b.csv", ragged)))
    assert err.details["first_lines"] == [3]
    assert CANARY not in json.dumps(err.to_dict())

    # Inferred reports hold no values of non-label columns.
    rep = scan(_open(_write(tmp_path, "c.csv", f"note,y\n{CANARY},a\nother,b\n")), label="y").report.to_dict()
    assert CANARY not in json.dumps(rep)


# ---------------------------------------------------------------------- memory
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_flat_memory_on_200mb_csv(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rnd = random.Random(7)
    block = "".join(
        f"{i},{rnd.random() * 1000:.5f},{rnd.randint(0, 99)},cat{i % 7},2024-01-{1 + i % 28:02d},"
        f"note number {i} with some words,{i % 2}\n"
        for i in range(20_000)
    ).encode()
    with path.open("wb") as f:
        f.write(b"id,value,small,cat,day,note,y\n")
        while f.tell() < 200 * 1024 * 1024:
            f.write(block)
    small = tmp_path / "small.csv"
    small.write_bytes(b"id,value,small,cat,day,note,y\n" + block)

    def run(p: Path) -> tuple[int, ScanResult]:
        src = TableSource.open(str(p), "csv")
        res = scan(src, label="y")
        return write_parquet(convert(src, res.schema), res.schema.arrow_schema(), _DiscardSink()), res  # type: ignore[arg-type]

    run(small)  # one-time costs (compute kernels, regex caches, allocator arenas) are not growth
    before = _rss_mb()
    rows, res = run(path)
    growth = _rss_mb() - before
    assert rows == res.report.rows > 1_000_000
    assert res.schema.task == "binary_classification"
    assert growth < 150, f"peak RSS grew by {growth:.0f} MB"
