"""Envelope encryption at rest (workers.crypto): framing, tamper detection, key usage, keyrings.

Pure Python, no database. Frames are 4 KiB here (the minimum) so multi-frame cases stay fast.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import secrets
import shutil
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.crypto import (
    CryptoError,
    DecryptingReader,
    EncryptingWriter,
    EnvKeyring,
    IntegrityError,
    KeyProvider,
    KeyUsageExhausted,
    LocalKeyring,
    WrappedKey,
    decrypt_bytes,
    derive_key,
    encrypt_bytes,
    generate_data_key,
    load_provider,
    object_context,
    rewrap,
)
from workers.crypto.frames import FRAME_OVERHEAD, HEADER_SIZE, NONCE_SIZE

FS = 4096
STRIDE = FS + FRAME_OVERHEAD
CTX = object_context(tenant_id=7, kind="dataset_version", object_id="123")
SECRET = b"SECRET-PATIENT-RECORD "


@pytest.fixture
def key() -> bytes:
    return generate_data_key()


def payload(size: int, seed: int = 0) -> bytes:
    """Recognisable plaintext (so error messages can be checked for leaks) with random tails."""
    body = (SECRET * (size // len(SECRET) + 1))[:size]
    noise = random.Random(seed).randbytes(size)
    return bytes(a ^ (b & 1) for a, b in zip(body, noise, strict=True))


def encrypt(data: bytes, key: bytes, context: bytes = CTX, chunk: int = 1000) -> bytes:
    """Through the writer in odd-sized writes, so frames straddle write boundaries."""
    sink = io.BytesIO()
    with EncryptingWriter(sink, key, context, frame_size=FS) as writer:
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
    return sink.getvalue()


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(header, raw frames) of a ciphertext."""
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i : i + STRIDE] for i in range(0, len(body), STRIDE)]


def expect_integrity_error(blob: bytes, key: bytes, context: bytes = CTX) -> IntegrityError:
    with pytest.raises(IntegrityError) as excinfo:
        decrypt_bytes(blob, key, context)
    assert b"SECRET" not in str(excinfo.value).encode()
    return excinfo.value


class Stream(io.RawIOBase):
    """A non-seekable source (a socket or pipe stand-in) that also returns short reads."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(buffer), 777))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class CountingReads(io.BytesIO):
    """Counts ciphertext bytes read, to show the reader only touches the frames it needs."""

    bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


# --- framing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, FS - 1, FS, FS + 1, 3 * FS + FS // 2])
def test_round_trip_sizes(key: bytes, size: int) -> None:
    data = payload(size)
    sink = io.BytesIO()
    with EncryptingWriter(sink, key, CTX, frame_size=FS) as writer:
        for start in range(0, size, 1000):
            writer.write(data[start : start + 1000])
            assert writer.tell() == min(start + 1000, size)
    blob = sink.getvalue()

    frames = max(1, -(-size // FS))
    assert writer.frames == frames
    assert len(blob) == writer.ciphertext_bytes == HEADER_SIZE + frames * FRAME_OVERHEAD + size
    assert writer.plaintext_bytes == size
    assert writer.sha256 == hashlib.sha256(data).hexdigest()
    assert decrypt_bytes(blob, key, CTX) == data
    assert decrypt_bytes(encrypt_bytes(data, key, CTX, frame_size=FS), key, CTX) == data
    with DecryptingReader(io.BytesIO(blob), key, CTX) as reader:
        assert reader.size == size
        assert reader.read() == data
        assert reader.read(10) == b""


def test_same_plaintext_encrypts_differently(key: bytes) -> None:
    data = payload(FS * 2)
    first, second = encrypt(data, key), encrypt(data, key)
    assert first != second
    assert first[:8] == second[:8] == b"COHENC01"


def test_random_seeks_and_reads_match_plaintext(key: bytes) -> None:
    data = payload(10 * FS + 1234, seed=1)
    blob = encrypt(data, key)
    rng = random.Random(20261129)
    reader = DecryptingReader(io.BytesIO(blob), key, CTX)
    assert reader.seekable()
    for _ in range(500):
        whence = rng.choice([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END])
        target = rng.randrange(0, len(data) + 100)
        offset = {io.SEEK_SET: target, io.SEEK_CUR: target - reader.tell(), io.SEEK_END: target - len(data)}[whence]
        assert reader.seek(offset, whence) == target
        size = rng.choice([0, 1, 17, FS - 1, FS, FS + 1, 3 * FS, rng.randrange(1, 5 * FS)])
        if rng.random() < 0.5:
            assert reader.read(size) == data[target : target + size]
        else:
            buffer = bytearray(size)
            count = reader.readinto(buffer)
            assert buffer[:count] == data[target : target + size]
        assert reader.tell() == min(max(target, target + size), max(target, len(data)))
    with pytest.raises(ValueError):
        reader.seek(-1)
    buffered = io.BufferedReader(DecryptingReader(io.BytesIO(blob), key, CTX), buffer_size=1000)
    for _ in range(200):
        start, size = rng.randrange(0, len(data)), rng.randrange(0, 3 * FS)
        buffered.seek(start)
        assert buffered.read(size) == data[start : start + size]


def test_reader_touches_only_the_frames_it_needs(key: bytes) -> None:
    data = payload(50 * FS)
    source = CountingReads(encrypt(data, key))
    reader = DecryptingReader(source, key, CTX)
    opened = source.bytes_read
    assert opened == HEADER_SIZE + STRIDE  # header plus the final frame, authenticated at open
    reader.seek(25 * FS + 10)
    assert reader.read(100) == data[25 * FS + 10 : 25 * FS + 110]
    assert reader.read(100) == data[25 * FS + 110 : 25 * FS + 210]  # served from the cached frame
    assert source.bytes_read == opened + STRIDE


def test_copyfileobj_and_files_on_disk(key: bytes, tmp_path: Path) -> None:
    data = payload(5 * FS + 3)
    (tmp_path / "plain").write_bytes(data)
    with (
        (tmp_path / "plain").open("rb") as src,
        (tmp_path / "enc").open("wb") as dst,
        EncryptingWriter(dst, key, CTX, frame_size=FS) as writer,
    ):
        shutil.copyfileobj(src, writer, length=1500)
    with (tmp_path / "enc").open("rb") as src, (tmp_path / "out").open("wb") as dst:
        shutil.copyfileobj(io.BufferedReader(DecryptingReader(src, key, CTX)), dst)
    assert (tmp_path / "out").read_bytes() == data


def test_parquet_round_trip_through_python_file(key: bytes) -> None:
    table = pa.table(
        {
            "patient_id": [f"p{i:05d}" for i in range(20_000)],
            "age": [i % 97 for i in range(20_000)],
            "glucose": [i * 0.37 for i in range(20_000)],
        }
    )
    sink = io.BytesIO()
    with (
        EncryptingWriter(sink, key, CTX, frame_size=FS) as writer,
        pq.ParquetWriter(pa.PythonFile(writer, mode="w"), table.schema) as parquet,
    ):
        parquet.write_table(table, row_group_size=5_000)
    assert writer.frames > 3
    assert b"p00042" not in sink.getvalue()

    sink.seek(0)
    parquet_file = pq.ParquetFile(pa.PythonFile(DecryptingReader(sink, key, CTX)))
    assert parquet_file.metadata.num_row_groups == 4
    assert parquet_file.read().equals(table)
    assert (
        parquet_file.read_row_group(2, columns=["age"]).column("age").to_pylist()
        == table.column("age")[10_000:15_000].to_pylist()
    )


def test_non_seekable_source_streams(key: bytes) -> None:
    for size in (0, FS, 3 * FS + 5):
        data = payload(size)
        reader = DecryptingReader(Stream(encrypt(data, key)), key, CTX)  # type: ignore[arg-type]
        assert not reader.seekable()
        with pytest.raises(io.UnsupportedOperation):
            reader.seek(0)
        with pytest.raises(io.UnsupportedOperation):
            _ = reader.size
        out = io.BytesIO()
        shutil.copyfileobj(reader, out, length=999)
        assert out.getvalue() == data
        assert reader.tell() == size


@pytest.mark.parametrize("size", [FS, 3 * FS, 3 * FS + 5])
def test_non_seekable_source_detects_truncation_and_extension(key: bytes, size: int) -> None:
    data = payload(size)
    blob = encrypt(data, key)
    header, frames = split(blob)
    _, other_frames = split(encrypt(data, key))
    for bad in (
        header + b"".join(frames[:-1]),  # dropped the final frame
        blob[:-1],  # cut inside the final frame
        blob + frames[0],  # something after the final frame
        blob + b"\x00",
        header + b"".join(frames) + other_frames[-1],
    ):
        reader = DecryptingReader(Stream(bad), key, CTX)  # type: ignore[arg-type]
        with pytest.raises(IntegrityError):
            reader.read()


# --- tampering ------------------------------------------------------------------------------------


def test_wrong_key_fails(key: bytes) -> None:
    blob = encrypt(payload(2 * FS), key)
    expect_integrity_error(blob, generate_data_key())


@pytest.mark.parametrize(
    "context",
    [
        object_context(tenant_id=8, kind="dataset_version", object_id="123"),
        object_context(tenant_id=7, kind="dataset_version", object_id="124"),
        object_context(tenant_id=7, kind="model_artifact", object_id="123"),
        b"",
    ],
)
def test_wrong_context_fails(key: bytes, context: bytes) -> None:
    expect_integrity_error(encrypt(payload(FS + 1), key), key, context)


def test_object_context_is_unambiguous() -> None:
    assert object_context(tenant_id=1, kind="k", object_id="23") != object_context(
        tenant_id=12, kind="k", object_id="3"
    )
    assert object_context(tenant_id=1, kind="ab", object_id="c") != object_context(
        tenant_id=1, kind="a", object_id="bc"
    )
    for bad in ({"tenant_id": -1}, {"tenant_id": True}, {"kind": ""}, {"object_id": ""}):
        kwargs: dict = {"tenant_id": 1, "kind": "k", "object_id": "o", **bad}
        with pytest.raises(ValueError):
            object_context(**kwargs)


@pytest.mark.parametrize("size", [3 * FS, 3 * FS + 100])
def test_rearranged_frames_fail(key: bytes, size: int) -> None:
    blob = encrypt(payload(size), key)
    header, frames = split(blob)
    assert len(frames) == 3 + (size % FS > 0)
    swapped = [frames[1], frames[0], *frames[2:]]
    rotated = [*frames[1:-1], frames[0], frames[-1]]
    duplicated = [frames[0], frames[0], *frames[2:]]
    for arrangement in (swapped, rotated, duplicated, frames[:-1], [*frames, frames[0]], [*frames, frames[-1]]):
        assert arrangement != frames
        expect_integrity_error(header + b"".join(arrangement), key)


def test_frames_from_another_file_fail(key: bytes) -> None:
    data = payload(3 * FS)
    header, frames = split(encrypt(data, key))
    other_header, other_frames = split(encrypt(data, key))  # same key, context and plaintext
    assert header[:13] == other_header[:13] and header != other_header  # only the file_id differs
    spliced = [
        header + b"".join([frames[0], other_frames[1], frames[2]]),
        header + b"".join([*frames, other_frames[-1]]),
        other_header + b"".join(frames),
        header + b"".join(frames[:-1]) + other_frames[-1],
    ]
    for blob in spliced:
        expect_integrity_error(blob, key)


def test_bit_flips_anywhere_fail(key: bytes) -> None:
    blob = encrypt(payload(2 * FS + 10), key)
    positions = {
        "magic": 0,
        "version": 8,
        "frame_size": 11,
        "file_id": 20,
        "nonce": HEADER_SIZE + 3,
        "ciphertext": HEADER_SIZE + NONCE_SIZE + 100,
        "tag": HEADER_SIZE + STRIDE - 1,
        "last nonce": HEADER_SIZE + 2 * STRIDE,
        "last tag": len(blob) - 1,
    }
    for position in positions.values():
        for bit in (0, 7):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            expect_integrity_error(bytes(tampered), key)


def test_bad_lengths_and_headers_fail(key: bytes) -> None:
    blob = encrypt(payload(FS + 10), key)
    for bad in (b"", blob[:HEADER_SIZE], blob[: HEADER_SIZE - 1], blob[: HEADER_SIZE + 27], blob[:-1], blob + b"x"):
        expect_integrity_error(bad, key)
    assert "magic" in str(expect_integrity_error(b"NOTCOHEN" + blob[8:], key))
    assert "version" in str(expect_integrity_error(blob[:8] + b"\x02" + blob[9:], key))
    assert "frame size" in str(expect_integrity_error(blob[:9] + b"\xff\xff\xff\xff" + blob[13:], key))


def test_tampered_middle_frame_fails_when_read_not_at_open(key: bytes) -> None:
    data = payload(4 * FS)
    tampered = bytearray(encrypt(data, key))
    tampered[HEADER_SIZE + STRIDE + 50] ^= 1
    reader = DecryptingReader(io.BytesIO(bytes(tampered)), key, CTX)
    assert reader.read(FS) == data[:FS]
    with pytest.raises(IntegrityError, match="frame 1"):
        reader.read(1)
    reader.seek(2 * FS)
    assert reader.read() == data[2 * FS :]


# --- the writer -----------------------------------------------------------------------------------


def test_writer_rejects_bad_parameters(key: bytes) -> None:
    with pytest.raises(CryptoError):
        EncryptingWriter(io.BytesIO(), key[:16], CTX)
    for frame_size in (FS - 1, (16 << 20) + 1):
        with pytest.raises(ValueError):
            EncryptingWriter(io.BytesIO(), key, CTX, frame_size=frame_size)
    with pytest.raises(ValueError):
        EncryptingWriter(io.BytesIO(), key, CTX, reserve_batch=0)
    writer = EncryptingWriter(io.BytesIO(), key, CTX)
    assert writer.writable() and not writer.readable() and not writer.seekable()
    writer.close()
    writer.close()
    assert writer.closed
    with pytest.raises(ValueError):
        writer.write(b"x")


def test_writer_abandoned_inside_with_never_decrypts(key: bytes) -> None:
    sink = io.BytesIO()
    writers: list[EncryptingWriter] = []

    def interrupted_upload() -> None:
        with EncryptingWriter(sink, key, CTX, frame_size=FS) as writer:
            writers.append(writer)
            writer.write(payload(2 * FS + 5))
            raise RuntimeError("upload interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted_upload()
    writer = writers[0]
    assert writer.closed and writer.sha256 == ""
    expect_integrity_error(sink.getvalue(), key)


class Reservations:
    """Stands in for the Django layer's per-DEK counter; ``limit`` frames, then KeyUsageExhausted."""

    def __init__(self, sink: io.BytesIO | None = None, limit: int | None = None) -> None:
        self.calls: list[int] = []
        self.sink_sizes: list[int] = []
        self.sink = sink
        self.limit = limit
        self.total = 0

    def __call__(self, count: int) -> None:
        if self.limit is not None and self.total + count > self.limit:
            raise KeyUsageExhausted("rotate the data key")
        self.calls.append(count)
        self.sink_sizes.append(len(self.sink.getvalue()) if self.sink is not None else 0)
        self.total += count


@pytest.mark.parametrize(("frames", "calls"), [(1, [1]), (2, [64]), (64, [64]), (65, [64, 1]), (200, [64] * 4)])
def test_reserve_is_batched_called_first_and_an_upper_bound(key: bytes, frames: int, calls: list[int]) -> None:
    sink = io.BytesIO()
    reservations = Reservations(sink)
    data = payload(frames * FS)
    with EncryptingWriter(sink, key, CTX, frame_size=FS, reserve=reservations) as writer:
        for start in range(0, len(data), 5000):
            writer.write(data[start : start + 5000])
    assert writer.frames == frames
    assert reservations.calls == calls
    assert frames <= reservations.total < frames + 64
    reserved_before = 0
    for size, count in zip(reservations.sink_sizes, reservations.calls, strict=True):
        assert size == HEADER_SIZE + reserved_before * STRIDE  # called before any frame it covers
        reserved_before += count
    assert decrypt_bytes(sink.getvalue(), key, CTX) == data


def test_encrypt_bytes_reserves_exactly_its_frames(key: bytes) -> None:
    for size, frames in ((0, 1), (FS, 1), (3 * FS + 1, 4)):
        reservations = Reservations()
        encrypt_bytes(payload(size), key, CTX, frame_size=FS, reserve=reservations)
        assert reservations.calls == [frames]


def test_exhausted_key_stops_the_write_before_the_batch(key: bytes) -> None:
    sink = io.BytesIO()
    reservations = Reservations(sink, limit=64)
    data = payload(100 * FS)
    writer = EncryptingWriter(sink, key, CTX, frame_size=FS, reserve=reservations)
    with pytest.raises(KeyUsageExhausted):
        writer.write(data)
    assert writer.frames == 64
    assert len(sink.getvalue()) == HEADER_SIZE + 64 * STRIDE
    with pytest.raises(CryptoError, match="discarded"):
        writer.write(b"more")
    writer.close()
    assert len(sink.getvalue()) == HEADER_SIZE + 64 * STRIDE  # close does not seal a final frame
    expect_integrity_error(sink.getvalue(), key)


def test_exhausted_key_at_close_leaves_no_final_frame(key: bytes) -> None:
    sink = io.BytesIO()
    with pytest.raises(KeyUsageExhausted), EncryptingWriter(sink, key, CTX, reserve=Reservations(limit=0)) as writer:
        writer.write(b"small")
    assert len(sink.getvalue()) == HEADER_SIZE
    with pytest.raises(IntegrityError):
        decrypt_bytes(sink.getvalue(), key, CTX)


def test_a_million_frames_under_one_key_never_repeat_a_nonce(key: bytes) -> None:
    """ENC-3: random 96-bit nonces do not collide at realistic per-key volumes, and every frame is counted."""
    reservations = Reservations()
    nonces = set()
    for i in range(1_000_000):
        blob = encrypt_bytes(i.to_bytes(4, "big"), key, CTX, reserve=reservations)
        nonces.add(blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE])
    assert len(nonces) == 1_000_000
    assert reservations.total == 1_000_000


# --- keys -----------------------------------------------------------------------------------------

KEK_ID = re.compile(r"kek-\d{8}T\d{6}-[0-9a-f]{6}")
DEK_CTX = b"tenant=7;dek=3"


def test_keyring_create_load_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KEK_ID.fullmatch(ring.current_kek_id)
    assert ring.kek_ids() == [ring.current_kek_id]
    with pytest.raises(CryptoError, match="refusing to overwrite"):
        LocalKeyring.create(path)

    dek = generate_data_key()
    wrapped = ring.wrap(dek, DEK_CTX)
    assert wrapped.kek_id == ring.current_kek_id and len(wrapped.blob) == 60
    assert ring.wrap(dek, DEK_CTX) != wrapped  # fresh nonce every time
    assert LocalKeyring.load(path).unwrap(wrapped, DEK_CTX) == dek
    assert isinstance(ring, KeyProvider)
    with pytest.raises(CryptoError):
        ring.unwrap(wrapped, b"tenant=8;dek=3")
    with pytest.raises(CryptoError):
        ring.unwrap(WrappedKey(wrapped.kek_id, wrapped.blob[:-1]), DEK_CTX)
    with pytest.raises(CryptoError):
        ring.wrap(dek[:16], DEK_CTX)


def test_keyring_rotate_rewrap_retire(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.create(path)
    old = ring.current_kek_id
    dek = generate_data_key()
    wrapped = ring.wrap(dek, DEK_CTX)

    stale = LocalKeyring.load(path)
    new = ring.rotate(path)
    assert new != old and KEK_ID.fullmatch(new)
    assert ring.current_kek_id == new and ring.kek_ids() == sorted([old, new])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert LocalKeyring.load(path).current_kek_id == new
    assert ring.unwrap(wrapped, DEK_CTX) == dek  # old KEK kept for existing wraps

    rewrapped = rewrap(wrapped, ring, DEK_CTX)
    assert rewrapped.kek_id == new
    assert stale.unwrap(rewrapped, DEK_CTX) == dek  # a stale process re-reads the file on an unknown id
    assert stale.current_kek_id == new

    with pytest.raises(CryptoError, match="current"):
        ring.retire(path, new)
    ring.retire(path, old)
    assert ring.kek_ids() == [new] and LocalKeyring.load(path).kek_ids() == [new]
    assert ring.unwrap(rewrapped, DEK_CTX) == dek
    with pytest.raises(CryptoError, match="unknown KEK"):
        ring.unwrap(wrapped, DEK_CTX)
    with pytest.raises(CryptoError, match="unknown KEK"):
        ring.retire(path, old)


def test_keyring_file_errors_never_show_key_material(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="does not exist"):
        LocalKeyring.load(tmp_path / "missing.json")
    secret = base64.b64encode(b"k" * 31).decode()
    for content in (
        "not json",
        "[]",
        json.dumps({"current": "a", "keys": {"a": secret}}),
        '{"current": "b", "keys": {}}',
    ):
        path = tmp_path / "bad.json"
        path.write_text(content)
        with pytest.raises(CryptoError) as excinfo:
            LocalKeyring.load(path)
        assert secret not in str(excinfo.value)


def test_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    single = base64.b64encode(generate_data_key()).decode()
    ring = EnvKeyring.from_value(single)
    assert ring.current_kek_id == "env-1" and ring.kek_ids() == ["env-1"]
    dek = generate_data_key()
    wrapped = ring.wrap(dek, DEK_CTX)

    keys = {"env-1": single, "env-2": base64.b64encode(generate_data_key()).decode()}
    monkeypatch.setenv("COHORT_TEST_KEYRING", json.dumps({"current": "env-2", "keys": keys}))
    provider = load_provider("env:COHORT_TEST_KEYRING")
    assert provider.current_kek_id == "env-2"
    assert rewrap(wrapped, provider, DEK_CTX).kek_id == "env-2"
    assert provider.unwrap(wrapped, DEK_CTX) == dek
    assert isinstance(provider, EnvKeyring)
    with pytest.raises(CryptoError, match="KMS"):
        provider.rotate()

    monkeypatch.delenv("COHORT_TEST_KEYRING")
    with pytest.raises(CryptoError, match="not set"):
        load_provider("env:COHORT_TEST_KEYRING")
    with pytest.raises(CryptoError):
        EnvKeyring.from_value("%%% not base64")


def make_test_provider() -> KeyProvider:
    """A factory like a KMS adapter's, for the ``module:attr`` spec."""
    return EnvKeyring.from_value(base64.b64encode(bytes(32)).decode())


def make_nothing() -> object:
    return object()


def test_load_provider_specs(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    with pytest.raises(CryptoError, match="does not exist"):
        load_provider(f"file:{path}")
    created = load_provider(f"file:{path}", create_missing=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_provider(f"file:{path}", create_missing=True).current_kek_id == created.current_kek_id
    assert load_provider(f"file:{path}").kek_ids() == created.kek_ids()

    provider = load_provider("tests.workers.test_crypto:make_test_provider")
    assert provider.current_kek_id == "env-1"

    bad_specs: list[tuple[str, str]] = [
        ("nonsense", "bad key provider spec"),
        ("file:", "bad key provider spec"),
        ("not a module:x", "bad key provider spec"),
        ("tests.workers.no_such_module:factory", "cannot be imported"),
        ("tests.workers.test_crypto:no_such_factory", "not found"),
        ("tests.workers.test_crypto:FS", "not callable"),
        ("tests.workers.test_crypto:make_nothing", "not a KeyProvider"),
    ]
    for spec, message in bad_specs:
        with pytest.raises(CryptoError, match=message):
            load_provider(spec)


def test_unknown_kek_id_is_a_crypto_error() -> None:
    with pytest.raises(CryptoError, match="unknown KEK"):
        make_test_provider().unwrap(WrappedKey("kek-19700101T000000-000000", bytes(60)), DEK_CTX)


def test_writer_without_digest_encrypts_the_same_and_reports_no_hash() -> None:
    import io as _io
    import os as _os

    from workers.crypto import DecryptingReader, EncryptingWriter

    key, ctx, data = _os.urandom(32), b"no-digest", _os.urandom(3 * 4096 + 17)
    sink = _io.BytesIO()
    with EncryptingWriter(sink, key, ctx, frame_size=4096, digest=False) as w:
        w.write(data)
    assert w.sha256 == "" and w.plaintext_bytes == len(data)
    sink.seek(0)
    assert DecryptingReader(sink, key, ctx).read() == data


def test_derive_key_is_a_key_per_salt_and_context_and_refuses_a_weak_salt() -> None:
    material, salt = generate_data_key(), secrets.token_bytes(32)
    key = derive_key(material, salt, b"ctx")
    assert len(key) == 32 and key == derive_key(material, salt, b"ctx") and key != material
    others = {derive_key(material, secrets.token_bytes(32), b"ctx"), derive_key(material, salt, b"other"),
              derive_key(generate_data_key(), salt, b"ctx")}  # fmt: skip
    assert key not in others and len(others) == 3
    sealed = encrypt_bytes(b"rows", key, b"ctx")
    assert decrypt_bytes(sealed, key, b"ctx") == b"rows"
    with pytest.raises(IntegrityError):
        decrypt_bytes(sealed, material, b"ctx")  # the data key itself does not open it
    for bad_material, bad_salt in ((material[:16], salt), (material, b"short")):
        with pytest.raises(ValueError):
            derive_key(bad_material, bad_salt, b"ctx")


def test_a_reader_closes_its_source_only_when_it_owns_it() -> None:
    key = generate_data_key()
    sealed = encrypt_bytes(b"rows", key, b"ctx")
    for owns in (False, True):
        source = io.BytesIO(sealed)
        with DecryptingReader(source, key, b"ctx", close_source=owns) as reader:
            assert reader.read() == b"rows"
        assert source.closed is owns
