"""encryption_stage: EncryptingWriter / DecryptingReader throughput vs a plain memory copy.

Pure: no database, no disk. The same in-memory bytes (256 MiB; --quick 64 MiB) are written in 1 MiB
chunks, alternating, REPEATS times each:

* through ``workers.crypto.EncryptingWriter`` (AES-256-GCM, 1 MiB frames; the encryption stage
  alone, ``digest=False``) into a sink that discards the ciphertext;
* as a plain copy of each chunk into a preallocated buffer through memoryview slices (the baseline:
  the least any stage that touches every byte must cost).

The same writer with ``digest=True`` (what the platform's store step runs: it also keeps the SHA-256
of the plaintext as the object's content hash) is reported beside it, as ``with_content_sha256_*``.
Decryption is measured on ciphertext held in memory: ``DecryptingReader.readinto`` 1 MiB at a time.
Medians of the runs; MB/s is plaintext bytes (10^6) per second.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import log, write_result

NAME = "encryption_stage"
MiB = 1 << 20
CHUNK = 1 * MiB
FULL_BYTES, QUICK_BYTES = 256 * MiB, 64 * MiB
REPEATS = 5
TARGET_RATIO = 0.5


class _NullSink:
    def write(self, data: Any) -> int:
        return len(memoryview(data))

    def flush(self) -> None:
        pass


def _encrypt(data: memoryview, key: bytes, context: bytes, sink: Any, *, digest: bool = False) -> float:
    from workers.crypto import EncryptingWriter

    t0 = time.perf_counter()
    with EncryptingWriter(sink, key, context, frame_size=CHUNK, digest=digest) as writer:
        for off in range(0, len(data), CHUNK):
            writer.write(data[off : off + CHUNK])
    return time.perf_counter() - t0


def _copy(data: memoryview, dest: memoryview) -> float:
    t0 = time.perf_counter()
    for off in range(0, len(data), CHUNK):
        dest[off : off + CHUNK] = data[off : off + CHUNK]
    return time.perf_counter() - t0


def _bytes_copy(data: memoryview, sink: Any) -> float:
    t0 = time.perf_counter()
    for off in range(0, len(data), CHUNK):
        sink.write(bytes(data[off : off + CHUNK]))
    return time.perf_counter() - t0


def _parts(data: memoryview, key: bytes) -> tuple[float, float]:
    """Seconds for the writer's two primitives alone: SHA-256 of the plaintext, AES-GCM per frame."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    t0 = time.perf_counter()
    h = hashlib.sha256()
    for off in range(0, len(data), CHUNK):
        h.update(data[off : off + CHUNK])
    sha = time.perf_counter() - t0
    aead, out, nonce = AESGCM(key), bytearray(CHUNK + 16), os.urandom(12)
    t0 = time.perf_counter()
    for off in range(0, len(data), CHUNK):
        aead.encrypt_into(nonce, data[off : off + CHUNK], b"aad", out)
    return sha, time.perf_counter() - t0


def _decrypt(blob: bytes, key: bytes, context: bytes, size: int) -> float:
    from workers.crypto import DecryptingReader

    buf = bytearray(CHUNK)
    got = 0
    t0 = time.perf_counter()
    with DecryptingReader(io.BytesIO(blob), key, context) as reader:
        while n := reader.readinto(buf):
            got += n
    elapsed = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"decrypted {got} bytes, expected {size}")
    return elapsed


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return ", ".join(f for f in ("aes", "pclmulqdq", "sha_ni", "avx2", "vaes") if f in flags) or "none"
    except OSError:
        pass
    return "unknown"


def run(ctx: Any) -> dict[str, Any]:
    from workers.crypto import generate_data_key, object_context

    opts = ctx.opts
    size = QUICK_BYTES if opts.quick else FULL_BYTES
    data = memoryview(os.urandom(size))
    dest = memoryview(bytearray(size))
    key = generate_data_key()
    context = object_context(tenant_id=1, kind="bench", object_id="encryption-stage")
    _encrypt(data[: 8 * CHUNK], key, context, _NullSink())  # warm-up (AES/OpenSSL init, allocator)
    _copy(data[: 8 * CHUNK], dest)
    enc_s: list[float] = []
    copy_s: list[float] = []
    for rnd in range(REPEATS):
        for which in ("encrypt", "copy") if rnd % 2 == 0 else ("copy", "encrypt"):
            if which == "encrypt":
                enc_s.append(_encrypt(data, key, context, _NullSink()))
            else:
                copy_s.append(_copy(data, dest))
    sealed = io.BytesIO()
    _encrypt(data, key, context, sealed)
    blob = sealed.getvalue()
    overhead = len(blob) - size
    del sealed
    dec_s = [_decrypt(blob, key, context, size) for _ in range(REPEATS)]
    del blob
    bytes_s = [_bytes_copy(data, _NullSink()) for _ in range(REPEATS)]
    # What the platform's store step does: the same writer also keeps the SHA-256 of the plaintext
    # (the stored object's content hash), which costs more than the encryption.
    digest_s = [_encrypt(data, key, context, _NullSink(), digest=True) for _ in range(REPEATS)]
    parts = [_parts(data, key) for _ in range(REPEATS)]
    enc, cp, dec = statistics.median(enc_s), statistics.median(copy_s), statistics.median(dec_s)
    sha, gcm = statistics.median(p[0] for p in parts), statistics.median(p[1] for p in parts)
    mb = size / 1e6
    enc_rate, copy_rate, dec_rate = mb / enc, mb / cp, mb / dec
    log(f"{NAME}: encrypt {enc_rate:,.0f} MB/s, decrypt {dec_rate:,.0f} MB/s, copy {copy_rate:,.0f} MB/s")
    ratio = enc_rate / copy_rate
    return write_result(
        NAME,
        unit="MB/s",
        value=enc_rate,
        baseline="copying the same 1 MiB chunks into a preallocated buffer (memoryview slices)",
        baseline_value=copy_rate,
        ratio=ratio,
        target=f"encrypt / copy >= {TARGET_RATIO}",
        command=opts.command,
        met=ratio >= TARGET_RATIO,
        bytes=size,
        mib=size // MiB,
        frame_size=CHUNK,
        write_size=CHUNK,
        encrypt_seconds=round(enc, 4),
        copy_seconds=round(cp, 4),
        decrypt_seconds=round(dec, 4),
        decrypt_mb_s=round(dec_rate, 1),
        decrypt_ratio=round(dec_rate / copy_rate, 4),
        ciphertext_overhead_bytes=overhead,
        bytes_copy_mb_s=round(mb / statistics.median(bytes_s), 1),
        sha256_only_mb_s=round(mb / sha, 1),
        with_content_sha256_mb_s=round(mb / statistics.median(digest_s), 1),
        with_content_sha256_ratio=round((mb / statistics.median(digest_s)) / copy_rate, 4),
        aes_gcm_only_mb_s=round(mb / gcm, 1),
        cpu_flags=_cpu_flags(),
        runs=REPEATS,
        statistic="median",
        quick=opts.quick,
    )
