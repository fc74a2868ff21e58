"""dataset_ingest: the platform's dataset pipeline on a generated clinical CSV vs pandas.read_csv.

Pure: no database. A CSV of the target size (1 GiB; --quick 100 MiB) with a realistic clinical mix
is generated into a temporary folder (deleted afterwards). Then, each in a fresh Python process so
that peak RSS (``ru_maxrss``) belongs to one measurement:

* the pipeline: ``workers.pipeline.ingest_file`` (sniff, validate, PII scan, infer, convert, write
  Parquet) into an ``EncryptingWriter`` over a file on disk, then ``workers.deid.transform.deidentify``
  reading that Parquet back through a ``DecryptingReader`` and writing through another
  ``EncryptingWriter`` (pseudonymise the id, drop the email, date of birth to year, redact the notes);
* ingest alone on a smaller file (100 MiB; --quick 20 MiB), for the memory comparison;
* ``pandas.read_csv`` of the big file (the baseline, MB/s and peak RSS).

MB/s is input CSV bytes (10^6) per second of wall time.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, write_result

NAME = "dataset_ingest"
MiB = 1 << 20
FULL_SIZE, FULL_SMALL = 1024 * MiB, 100 * MiB
QUICK_SIZE, QUICK_SMALL = 100 * MiB, 20 * MiB
RSS_RATIO_TARGET = 1.5
LABEL = "outcome"
CHILD_TIMEOUT_S = 3600
POLICY: dict[str, Any] = {
    "columns": {
        "patient_id": {"action": "pseudonymise"},
        "email": {"action": "drop"},
        "date_of_birth": {"action": "generalise", "params": {"to": "year"}},
        "notes": {"action": "redact", "params": {"kinds": "all"}},
    }
}

_FIRST = [
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy",
    "Leo", "Lily", "Arthur", "Freya", "Muhammad", "Florence", "Oscar", "Willow", "Charlie", "Sophia",
    "Thomas", "Grace", "Jacob", "Emily", "William", "Poppy", "Henry", "Ella", "James", "Evie",
    "Alfie", "Rosie", "Joshua", "Chloe", "Zoë", "José", "Aoife", "Priya", "Chen", "Fatima",
    "Siobhán", "Łukasz", "Amir", "Hannah",
]  # fmt: skip
_LAST = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Robinson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson",
    "Clarke", "Müller", "O'Neill", "Nguyen", "Khan", "Hughes", "Edwards", "Lewis", "Harris", "Martin",
    "Cooper", "King", "Lee", "Baker", "Morris", "Ahmed", "Kowalski", "Murphy", "Singh", "Campbell",
]  # fmt: skip
_DOMAINS = ["example.org", "mail.example.com", "nhs.example.net", "post.example.co.uk"]
_OUTWARD = [
    "SW1A", "EC1A", "M1", "B33", "LS1", "CR2", "DN55", "W1A", "G1", "CF10",
    "BS1", "NE1", "L1", "OX1", "CB2", "EH1", "N7", "SE15", "E14", "BT1",
]  # fmt: skip
_INWARD = [f"{d}{a}{b}" for d in "123456789" for a in "ABDEFGHJLNPQRSTUWXYZ" for b in "ABDEFGHJLNPQ"]
_DIAGNOSES = ["hypertension", "type 2 diabetes", "asthma", "COPD", "heart failure", "CKD stage 3", "depression"]
_OUTCOMES = ["discharged", "readmitted", "transferred", "deceased"]
_OUTCOME_P = [0.72, 0.18, 0.07, 0.03]
_OPENERS = [
    "Seen by Dr",
    "Reviewed with",
    "Telephone consult,",
    "Letter copied to",
    "Discussed plan with",
]
_BODIES = [
    "stable, continue current medication.",
    "BP above target, titrate ACE inhibitor.",
    "reports shortness of breath on exertion.",
    "no change since last visit.",
    "bloods requested, review in 2 weeks.",
    "advised lifestyle changes and follow-up.",
]


# ---------------------------------------------------------------------- data
def _chunk(rng: Any, start: int, n: int) -> Any:
    """``n`` rows of the clinical mix as an Arrow record batch (numbers typed, the rest strings)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def pick(pool: list[str], p: list[float] | None = None) -> pa.Array:
        return pc.take(pa.array(pool), pa.array(rng.choice(len(pool), n, p=p)))

    def digits(lo: int, hi: int) -> pa.Array:
        return pc.cast(pa.array(rng.integers(lo, hi, n)), pa.string())

    def maybe_null(arr: pa.Array, rate: float) -> pa.Array:
        return pc.if_else(pa.array(rng.random(n) < rate), pa.scalar(None, arr.type), arr)

    first, last = pick(_FIRST), pick(_LAST)
    ids = pc.binary_join_element_wise(
        "P", pc.utf8_lpad(pc.cast(pa.array(np.arange(start, start + n)), pa.string()), 8, "0"), ""
    )
    email = pc.binary_join_element_wise(
        pc.utf8_lower(first),
        ".",
        pc.utf8_lower(pc.replace_substring(last, "'", "")),
        digits(1, 100),
        "@",
        pick(_DOMAINS),
        "",
    )
    phone = pc.binary_join_element_wise("07", digits(100, 1000), " ", digits(100000, 1000000), "")
    dob_days = rng.integers(-25_000, 19_700, n).astype("int32")  # 1901..2023
    dob = pc.cast(pa.array(dob_days, pa.date32()), pa.string())
    age = pa.array(((20_000 - dob_days) // 365.25).astype("int64"))  # age at an admission in 2024
    postcode = pc.binary_join_element_wise(pick(_OUTWARD), pick(_INWARD), " ")
    weight = maybe_null(pc.round(pa.array(rng.normal(78, 16, n).clip(3, 250)), 1), 0.02)
    systolic = maybe_null(pa.array(rng.normal(132, 18, n).astype("int64")), 0.01)
    chol = pc.round(pa.array(rng.normal(5.2, 1.1, n).clip(1.5, 12)), 2)
    hba1c = maybe_null(pc.round(pa.array(rng.normal(48, 12, n).clip(20, 130)), 1), 0.3)
    diagnosis = pick(_DIAGNOSES)
    who = pc.if_else(
        pa.array(rng.random(n) < 0.5),
        pc.binary_join_element_wise(pick(_FIRST), pick(_LAST), " "),
        pc.binary_join_element_wise("patient", first, last, " "),
    )
    contact = pc.if_else(
        pa.array(rng.random(n) < 0.4),
        pc.binary_join_element_wise(" Call back on", phone, " "),
        pa.scalar(""),
    )
    notes = pc.binary_join_element_wise(pick(_OPENERS), " ", who, "; ", pick(_BODIES), contact, "")
    notes = maybe_null(notes, 0.1)
    outcome = pick(_OUTCOMES, _OUTCOME_P)
    return pa.record_batch(
        [ids, first, last, email, phone, dob, postcode, age, weight, systolic, chol, hba1c, diagnosis, notes, outcome],
        names=[
            "patient_id", "first_name", "last_name", "email", "phone", "date_of_birth", "postcode", "age",
            "weight_kg", "systolic_bp", "cholesterol_mmol", "hba1c", "diagnosis", "notes", LABEL,
        ],
    )  # fmt: skip


def generate_csv(path: Path, size: int, seed: int = 7) -> int:
    """Write a clinical CSV of about ``size`` bytes (whole rows; strings quoted as exporters do);
    returns its size. Memory stays flat (50,000 rows at a time)."""
    import numpy as np
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    start, writer = 1, None
    with path.open("wb") as fh:
        while fh.tell() < size:
            batch = _chunk(rng, start, 50_000)
            start += batch.num_rows
            if writer is None:
                writer = pacsv.CSVWriter(fh, batch.schema)
            writer.write_batch(batch)
            fh.flush()
        if writer is not None:
            writer.close()
    return path.stat().st_size


# ---------------------------------------------------------------------- measured (in a child process)
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _child_ingest(csv_path: str, work: str, deid: bool) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workers.crypto import DecryptingReader, EncryptingWriter, generate_data_key, object_context
    from workers.deid.policy import DeidPolicy
    from workers.deid.transform import deidentify
    from workers.ingest import write_parquet
    from workers.pipeline import ingest_file

    out: dict[str, Any] = {"rss_start_mb": _peak_rss_mb()}
    key = generate_data_key()
    raw_ctx = object_context(tenant_id=1, kind="dataset_version", object_id="bench-raw")
    raw_path = os.path.join(work, "raw.enc")
    t0 = time.perf_counter()
    with open(raw_path, "wb") as fh, EncryptingWriter(fh, key, raw_ctx) as writer:
        result = ingest_file(csv_path, filename="clinical.csv", options={"label": LABEL}, sink=writer)  # type: ignore[arg-type]
    out["ingest_s"] = time.perf_counter() - t0
    out["ingest_rss_mb"] = _peak_rss_mb()
    out["rows"] = result.rows
    out["types"] = {c.name: c.type for c in result.schema.columns}
    out["task"] = result.schema.task
    out["pii_columns"] = result.pii_report.get("summary", {}).get("pii_columns")
    out["stored_bytes"] = os.path.getsize(raw_path)
    if not deid:
        return out

    def batches() -> Any:
        with open(raw_path, "rb") as fh, DecryptingReader(fh, key, raw_ctx) as reader:
            yield from pq.ParquetFile(pa.PythonFile(reader, mode="r"), pre_buffer=False).iter_batches(batch_size=65536)

    out_key = generate_data_key()
    out_ctx = object_context(tenant_id=1, kind="dataset_version", object_id="bench-deid")
    deid_path = os.path.join(work, "deid.enc")
    t0 = time.perf_counter()
    out_schema, stream, _stats = deidentify(batches, result.schema, DeidPolicy.from_dict(POLICY), generate_data_key())
    with open(deid_path, "wb") as fh, EncryptingWriter(fh, out_key, out_ctx) as writer:
        rows = write_parquet(stream, out_schema.arrow_schema(), writer)  # type: ignore[arg-type]
    out["deid_s"] = time.perf_counter() - t0
    out["deid_rows"] = rows
    out["deid_rss_mb"] = _peak_rss_mb()
    out["deid_types"] = {c.name: c.type for c in out_schema.columns}
    out["deid_stored_bytes"] = os.path.getsize(deid_path)
    return out


def _child_pandas(csv_path: str) -> dict[str, Any]:
    import pandas as pd

    out: dict[str, Any] = {"rss_start_mb": _peak_rss_mb()}
    t0 = time.perf_counter()
    frame = pd.read_csv(csv_path)
    out["seconds"] = time.perf_counter() - t0
    out["rss_mb"] = _peak_rss_mb()
    out["rows"] = len(frame)
    return out


def _spawn(mode: str, *args: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its JSON is the last line of its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.dataset_ingest", mode, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{NAME} {mode} child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------- benchmark
def _mb_s(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


def run(ctx: Any) -> dict[str, Any]:
    opts = ctx.opts
    big, small = (QUICK_SIZE, QUICK_SMALL) if opts.quick else (FULL_SIZE, FULL_SMALL)
    work = Path(tempfile.mkdtemp(prefix="cohort-bench-ingest-"))
    try:
        t0 = time.perf_counter()
        big_path, small_path = work / "clinical.csv", work / "clinical-small.csv"
        size = generate_csv(big_path, big)
        small_size = generate_csv(small_path, small, seed=11)
        log(
            f"{NAME}: generated {size / MiB:.0f} MiB and {small_size / MiB:.0f} MiB CSVs "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        pipe = _spawn("pipeline", str(big_path), str(work))
        log(
            f"{NAME}: ingest {pipe['ingest_s']:.1f} s ({_mb_s(size, pipe['ingest_s']):.1f} MB/s, peak RSS "
            f"{pipe['ingest_rss_mb']:.0f} MB), de-identify {pipe['deid_s']:.1f} s "
            f"({_mb_s(size, pipe['deid_s']):.1f} MB/s)"
        )
        for name in ("raw.enc", "deid.enc"):
            (work / name).unlink(missing_ok=True)
        ref = _spawn("ingest", str(small_path), str(work))
        log(
            f"{NAME}: ingest of {small_size / MiB:.0f} MiB: {ref['ingest_s']:.1f} s, "
            f"peak RSS {ref['ingest_rss_mb']:.0f} MB"
        )
        (work / "raw.enc").unlink(missing_ok=True)
        base = _spawn("pandas", str(big_path))
        log(f"{NAME}: pandas.read_csv {base['seconds']:.1f} s, peak RSS {base['rss_mb']:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if pipe["rows"] != base["rows"] or pipe["deid_rows"] != pipe["rows"]:
        raise RuntimeError(
            f"row counts differ: ingest {pipe['rows']}, de-identified {pipe['deid_rows']}, pandas {base['rows']}"
        )
    ingest, deid = _mb_s(size, pipe["ingest_s"]), _mb_s(size, pipe["deid_s"])
    e2e = _mb_s(size, pipe["ingest_s"] + pipe["deid_s"])
    pandas_mb_s = _mb_s(size, base["seconds"])
    rss_ratio = pipe["ingest_rss_mb"] / ref["ingest_rss_mb"]
    return write_result(
        NAME,
        unit="MB/s",
        value=e2e,
        baseline="pandas.read_csv of the same file, same run (parse only: no validation, encryption or output)",
        baseline_value=pandas_mb_s,
        ratio=e2e / pandas_mb_s,
        target=f"report; memory flat (peak RSS of ingest, big file / small file <= {RSS_RATIO_TARGET})",
        command=opts.command,
        met=rss_ratio <= RSS_RATIO_TARGET,
        csv_bytes=size,
        csv_mib=round(size / MiB, 1),
        rows=pipe["rows"],
        columns=len(pipe["types"]),
        inferred_types=pipe["types"],
        task=pipe["task"],
        pii_columns=pipe["pii_columns"],
        ingest_seconds=round(pipe["ingest_s"], 3),
        ingest_mb_s=round(ingest, 2),
        ingest_ratio=round(ingest / pandas_mb_s, 3),
        deidentify_seconds=round(pipe["deid_s"], 3),
        deidentify_mb_s=round(deid, 2),
        end_to_end_mb_s=round(e2e, 2),
        stored_bytes=pipe["stored_bytes"],
        deid_stored_bytes=pipe["deid_stored_bytes"],
        deid_types=pipe["deid_types"],
        policy=POLICY,
        pandas_seconds=round(base["seconds"], 3),
        small_csv_mib=round(small_size / MiB, 1),
        small_ingest_mb_s=round(_mb_s(small_size, ref["ingest_s"]), 2),
        rss_ingest_big_mb=round(pipe["ingest_rss_mb"], 1),
        rss_ingest_small_mb=round(ref["ingest_rss_mb"], 1),
        rss_ratio=round(rss_ratio, 3),
        rss_deidentify_big_mb=round(pipe["deid_rss_mb"], 1),
        rss_pandas_big_mb=round(base["rss_mb"], 1),
        rss_interpreter_mb=round(ref["rss_start_mb"], 1),
        runs=1,
        quick=opts.quick,
    )


def _main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "pipeline":
        out = _child_ingest(argv[1], argv[2], deid=True)
    elif mode == "ingest":
        out = _child_ingest(argv[1], argv[2], deid=False)
    elif mode == "pandas":
        out = _child_pandas(argv[1])
    elif mode == "generate":  # python -m bench.dataset_ingest generate PATH MiB: a file to try things on
        out = {"bytes": generate_csv(Path(argv[1]), int(float(argv[2]) * MiB))}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
