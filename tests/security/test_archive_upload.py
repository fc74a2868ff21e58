"""API-3: hostile archives uploaded through the real API are rejected with their own code, fast,
in bounded memory, leaving nothing behind and writing nothing outside the private scratch folder.

Cases: nested zip (42.zip style), a 1000:1 ratio member, a member whose header lies about its size,
path traversal, a symlink member, 10^5 members. Figures: reports/API-3.json.
"""

from __future__ import annotations

import io
import os
import resource
import stat
import struct
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from PIL import Image

from apps.datasets.models import DatasetVersion, UploadPart
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope
from tests.apps.datasets.helpers import create_dataset
from tests.conftest import write_report

pytestmark = pytest.mark.django_db


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(build: Callable[[zipfile.ZipFile], None], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        build(zf)
    return buf.getvalue()


def nested() -> bytes:
    inner = _zip(lambda z: z.writestr("0.png", b"\x00" * 100_000))
    return _zip(lambda z: [z.writestr(f"lib{i}/x{i}.zip", inner) for i in range(4)], zipfile.ZIP_STORED)


def ratio_bomb() -> bytes:
    def build(zf: zipfile.ZipFile) -> None:
        zf.writestr("a/ok.png", _png())
        with zf.open("b/zeros.png", "w", force_zip64=True) as w:
            for _ in range(50):
                w.write(b"\x00" * (1 << 20))

    return _zip(build)


def lying_size() -> bytes:
    data = bytearray(
        _zip(lambda z: (z.writestr("a/1.png", _png()), z.writestr("b/2.png", _png() + os.urandom(300_000))))
    )
    name = b"b/2.png"
    for sig, size_at, name_len_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        pos = 0
        while (at := data.find(sig, pos)) >= 0:
            n = struct.unpack("<H", data[at + name_len_at : at + name_len_at + 2])[0]
            if bytes(data[at + name_at : at + name_at + n]) == name:
                data[at + size_at : at + size_at + 4] = struct.pack("<L", 1000)
                break
            pos = at + 4
    return bytes(data)


def traversal() -> bytes:
    return _zip(lambda z: (z.writestr("a/1.png", _png()), z.writestr(zipfile.ZipInfo("../../evil.png"), _png())))


def symlink() -> bytes:
    def build(zf: zipfile.ZipFile) -> None:
        zf.writestr("a/1.png", _png())
        info = zipfile.ZipInfo("b/2.png")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")

    return _zip(build)


def many_members() -> bytes:
    return _zip(lambda z: [z.writestr(f"{'ab'[i % 2]}/{i}.png", b"x") for i in range(100_000)], zipfile.ZIP_STORED)


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "nested_zip": (nested, "zip_nested_archive"),
    "ratio_1000_to_1": (ratio_bomb, "zip_bomb"),
    "header_lies_about_size": (lying_size, "zip_bomb"),
    "path_traversal": (traversal, "zip_path_traversal"),
    "symlink_member": (symlink, "zip_symlink"),
    "100k_members": (many_members, "zip_too_many_members"),
}


def _walk(root: Path) -> list[Path]:
    """Every path under ``root``; folders that vanish mid-walk (other processes' temp dirs) are skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda _e: None):
        found += [Path(dirpath, n) for n in (*dirnames, *filenames)]
    return found


def _snapshot(paths: list[Path]) -> set[str]:
    out: set[str] = set()
    for root in paths:
        for p in _walk(root):
            if p.is_file():  # directories of the (encrypted, then deleted) staging object are not writes
                out.add(str(p))
    return out


def test_api3_hostile_archives(tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any]) -> None:
    client = api_client_for(member(Role.OWNER, tenant=tenant))
    ds = create_dataset(client, tenant.slug, "images")
    # Where an extraction would land: the state folder (objects, keys, scratch), the code folders,
    # the working directory; and, by member name, anywhere in the system temp folder (other
    # processes write there too, so only our members' names count).
    state = Path(settings.COHORT_TMP_DIR).parent
    watched = [state, Path(settings.BASE_DIR) / "apps", Path(settings.BASE_DIR) / "workers", Path.cwd() / "tests"]
    member_names = {"evil.png", "zeros.png", "x0.zip", "x1.zip", "passwd", "2.png", "ok.png"}
    results: dict[str, Any] = {}
    for name, (make, code) in CASES.items():
        payload = make()
        before_files = _snapshot(watched)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        f = io.BytesIO(payload)
        f.name = f"{name}.zip"
        t0 = time.perf_counter()
        r = client.post(f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/versions/", {"file": f}, format="multipart")
        seconds = time.perf_counter() - t0
        rss_delta_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        keys_dir = str(Path(settings.COHORT_KEY_DIR))  # the tenant's keys, created on its first upload
        new_files = sorted(f for f in _snapshot(watched) - before_files if not f.startswith(keys_dir))
        new_files += [str(p) for p in _walk(Path(tempfile.gettempdir())) if p.name in member_names]
        scratch_left = [p for p in Path(settings.COHORT_TMP_DIR).rglob("*") if p.is_file()]
        got = r.json().get("error", {}).get("code") if r.status_code != 201 else "accepted"
        results[name] = {
            "status": r.status_code,
            "code": got,
            "expected": code,
            "seconds": round(seconds, 3),
            "rss_delta_mb": round(rss_delta_mb, 1),
            "upload_bytes": len(payload),
            "files_written_outside_scratch": len(new_files),
            "new_files": new_files[:5],
            "scratch_files_left": len(scratch_left),
        }
    with platform_scope():
        kept = (
            DatasetVersion.all_tenants.filter(tenant=tenant).count()
            + UploadPart.all_tenants.filter(tenant=tenant).count()
        )
    rejected = sum(1 for v in results.values() if v["status"] == 422 and v["code"] == v["expected"])
    figures = {
        "cases": len(CASES),
        "rejected_with_expected_code": rejected,
        "max_seconds_to_reject": max(v["seconds"] for v in results.values()),
        "max_rss_delta_mb": max(v["rss_delta_mb"] for v in results.values()),
        "escapes": sum(v["files_written_outside_scratch"] for v in results.values()),
        "rows_or_objects_kept": kept,
        "per_case": results,
    }
    ok = (
        rejected == len(CASES)
        and figures["max_seconds_to_reject"] <= 5
        and figures["max_rss_delta_mb"] <= 256
        and figures["escapes"] == 0
        and kept == 0
    )
    write_report("API-3", figures, ok)
    assert ok, figures
