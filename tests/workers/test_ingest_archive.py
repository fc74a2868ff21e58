"""Zip safety for image uploads (reliability spec API-3): every hostile archive is rejected with its
own code, fast, in bounded memory, and nothing is written to disk."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import stat
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from workers.ingest import IngestError, Limits, image_zip_table, inspect_image_zip, iter_zip_members


def _png(color: tuple[int, int, int] = (200, 10, 10), size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def _no_writes() -> Iterator[None]:
    """Fail any open() for writing while the code under test runs (nothing is ever extracted)."""
    real_open = builtins.open

    def guarded(file: object, mode: str = "r", *args: object, **kw: object) -> object:
        if any(c in mode for c in "wax+"):
            raise AssertionError(f"ingest tried to write {file!r}")
        return real_open(file, mode, *args, **kw)  # type: ignore[call-overload]

    builtins.open, io.open = guarded, guarded  # type: ignore[assignment]
    try:
        yield
    finally:
        builtins.open, io.open = real_open, real_open


def _rejected(code: str, fn: Callable[[], object], tmp_path: Path) -> IngestError:
    before = sorted(os.listdir(tmp_path))
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(IngestError) as ei, _no_writes():
            fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    elapsed = time.monotonic() - t0
    assert ei.value.code == code, ei.value.to_dict()
    # API-3's bar (reject within 5 s) is measured and reported by tests/security/test_archive_upload.py;
    # here only a generous bound that catches a hang or a quadratic blow-up on a loaded machine.
    assert elapsed <= 30, f"took {elapsed:.1f}s"
    assert peak <= 256 * 1024 * 1024, f"peak {peak / 2**20:.0f} MB"
    assert sorted(os.listdir(tmp_path)) == before
    json.dumps(ei.value.to_dict())
    return ei.value


def _full(path: Path) -> Callable[[], object]:
    return lambda: image_zip_table(str(path), Limits())


def test_good_zip_with_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.zip"
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"img/{i}.png", _png((i * 40, 0, 0)))
        zf.writestr(
            "labels.csv", "file,label\n" + "".join(f"img/{i}.png,{'cat' if i % 2 else 'dog'}\n" for i in range(6))
        )
        zf.writestr("__MACOSX/._x", b"junk")
    with _no_writes():
        schema, report, batches = image_zip_table(str(path))
        rows = [r for b in batches for r in b.to_pylist()]
    assert schema.task == "image_classification"
    assert schema.column("image").type == "image"
    assert rows[0] == {"image": "img/0.png", "label": "dog"}
    assert report.to_dict()["class_balance"] == {"cat": 3, "dog": 3}
    assert report.rows == 6


def test_good_zip_with_folders(tmp_path: Path) -> None:
    path = tmp_path / "ok.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        for lab in ("benign", "malignant"):
            for i in range(3):
                zf.writestr(f"scans/{lab}/{i}.png", _png())
    manifest = inspect_image_zip(str(path), Limits())
    assert manifest.mode == "folders"
    assert manifest.labels["scans/benign/0.png"] == "benign"
    assert len(list(iter_zip_members(str(path), manifest, Limits()))) == 6


def test_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        zf.writestr("a.png", _png())
        zf.writestr("b/c.png", _png())
    _rejected("zip_no_labels", _full(path), tmp_path)


def test_labels_row_names_missing_image(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        zf.writestr("a.png", _png())
        zf.writestr("labels.csv", "file,label\na.png,x\nmissing.png,y\n")
    err = _rejected("zip_bad_image", _full(path), tmp_path)
    assert err.details["first_lines"] == [3]


def test_bad_image(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        zf.writestr("a/1.png", _png())
        zf.writestr("b/2.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        zf.writestr("b/3.png", b"just text")
    _rejected("zip_bad_image", _full(path), tmp_path)


def test_nested_zip(tmp_path: Path) -> None:
    # 42.zip style, small: a zip of zips.
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0.png", b"\x00" * 100_000)
    path = tmp_path / "42.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        for i in range(4):
            zf.writestr(f"lib{i}.zip", inner.getvalue())
    _rejected("zip_nested_archive", _full(path), tmp_path)
    # Renamed: a zip posing as a .png is caught by its magic bytes.
    path2 = tmp_path / "renamed.zip"
    with zipfile.ZipFile(str(path2), "w") as zf:
        zf.writestr("a/1.png", _png())
        zf.writestr("b/2.png", inner.getvalue())
    _rejected("zip_nested_archive", _full(path2), tmp_path)


def test_ratio_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    chunk = b"\x00" * (1 << 20)
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/ok.png", _png())
        with zf.open("b/zeros.png", "w", force_zip64=True) as w:
            for _ in range(50):
                w.write(chunk)
    info = zipfile.ZipFile(str(path)).getinfo("b/zeros.png")
    assert info.file_size / info.compress_size > 900
    err = _rejected("zip_bomb", _full(path), tmp_path)
    assert err.details["reason"] == "ratio"


def _patch_sizes(data: bytearray, member: str, new_size: int) -> None:
    """Rewrite a member's uncompressed size in its local header and central directory entry."""
    name = member.encode()
    local = data.find(b"PK\x03\x04" + data[4:4])  # first local header search below
    pos = 0
    while True:
        local = data.find(b"PK\x03\x04", pos)
        assert local >= 0
        n_len = struct.unpack("<H", data[local + 26 : local + 28])[0]
        if bytes(data[local + 30 : local + 30 + n_len]) == name:
            data[local + 22 : local + 26] = struct.pack("<L", new_size)
            break
        pos = local + 4
    pos = 0
    while True:
        cd = data.find(b"PK\x01\x02", pos)
        assert cd >= 0
        n_len = struct.unpack("<H", data[cd + 28 : cd + 30])[0]
        if bytes(data[cd + 46 : cd + 46 + n_len]) == name:
            data[cd + 24 : cd + 28] = struct.pack("<L", new_size)
            return
        pos = cd + 4


def test_member_lying_about_its_size(tmp_path: Path) -> None:
    path = tmp_path / "liar.zip"
    payload = _png() + os.urandom(300_000)  # incompressible: the ratio check cannot fire
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", _png())
        zf.writestr("b/2.png", payload)
    data = bytearray(path.read_bytes())
    _patch_sizes(data, "b/2.png", 1000)
    path.write_bytes(bytes(data))
    err = _rejected("zip_bomb", _full(path), tmp_path)
    assert err.details["reason"] == "exceeds_declared_size"


def test_total_uncompressed_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        for i in range(4):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", _png() + os.urandom(100_000))
    with pytest.raises(IngestError) as ei:
        image_zip_table(str(path), Limits(max_total_uncompressed=250_000))
    assert ei.value.code == "zip_bomb"


@pytest.mark.parametrize("name", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png", "a\\..\\evil.png"])
def test_path_traversal(tmp_path: Path, name: str) -> None:
    path = tmp_path / "trav.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        zf.writestr("a/1.png", _png())
        zf.writestr(zipfile.ZipInfo(name), _png())
    _rejected("zip_path_traversal", _full(path), tmp_path)


def test_symlink(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        zf.writestr("a/1.png", _png())
        info = zipfile.ZipInfo("b/2.png")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    _rejected("zip_symlink", _full(path), tmp_path)


def test_too_many_members(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        for i in range(100_000):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", b"x")
    _rejected("zip_too_many_members", _full(path), tmp_path)


def test_too_many_members_with_lying_count(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(str(path), "w") as zf:
        for i in range(200):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", b"x")
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 8 : eocd + 12] = struct.pack("<HH", 3, 3)  # claims 3 entries
    path.write_bytes(bytes(data))
    with pytest.raises(IngestError) as ei:
        inspect_image_zip(str(path), Limits(max_members=50))
    assert ei.value.code in ("zip_too_many_members", "zip_invalid")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK\x03\x04" + os.urandom(1000))
    _rejected("zip_invalid", _full(path), tmp_path)
