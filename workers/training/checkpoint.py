"""Atomic, encrypted, checksummed training checkpoints.

A training worker calls ``save_checkpoint`` every N steps and ``load_latest`` when it (re)starts.

Layout of a checkpoint directory (one per training run)::

    ckpt-000000000100.enc   framed AES-256-GCM (workers.crypto) of a torch.save zip of the state
    ckpt-000000000200.enc
    MANIFEST.json           {"format": ..., "checkpoints": [{name, step, size, sha256, created_at}]}
    .lock                   flock serialising writers and temp-file cleanup
    .ckpt-300-<rand>.tmp    only while a save is in progress, or after a crash

Why a crash cannot leave a half checkpoint behind
-------------------------------------------------
A save writes the whole ciphertext to ``.ckpt-<step>-<rand>.tmp`` (created with O_EXCL, mode 0600),
flushes and fsyncs it, and only then ``os.replace``s it to ``ckpt-<step:012d>.enc`` and fsyncs the
directory. rename(2) is atomic: the final name either does not exist yet or names the complete,
fsynced file. A worker killed with SIGKILL (OOM killer, preemption) at any point before the rename
leaves only a ``.tmp``, which ``load_latest`` never reads (and deletes); killed after it, the new
checkpoint is complete. So the newest complete checkpoint is always loadable. Older checkpoints
are deleted only after the new one is durable, and the manifest is replaced the same way.

Even a ``.tmp`` renamed by hand could not pass: ``EncryptingWriter`` seals its last frame with a
"final" flag only on close, so a cut-off ciphertext fails authentication (``IntegrityError``).

What ``load_latest`` refuses
----------------------------
Checkpoints are tried newest first. One is skipped (reported through ``on_corrupt`` and logged,
never returned) when:

* it does not decrypt and authenticate (``IntegrityError``): bit flips, truncation, appended bytes,
  the wrong key or context, or a file renamed to another step. The AEAD context is the caller's
  ``context`` (e.g. ``object_context(tenant_id=..., kind="checkpoint", object_id=run_id)``) with the
  step appended, so ``ckpt-200`` copied over ``ckpt-300`` does not open as step 300, and a checkpoint
  of another run or tenant does not open at all;
* the SHA-256 of its plaintext differs from the one the manifest recorded;
* ``torch.load(weights_only=True)`` refuses it (no arbitrary unpickling, ever), or it is not a dict.

A checkpoint missing from the manifest (a crash between the rename and the manifest update, or an
unreadable manifest) is still accepted on the strength of its authentication tag: AES-GCM under the
run's key is a stronger check than the manifest's hash, which is kept for its second opinion and
for tooling that lists checkpoints without the key.

What ``save_checkpoint`` accepts
--------------------------------
Only what ``torch.load(weights_only=True)`` can read back: tensors (plain, strided, not quantized)
and parameters, None, bool, int, float, complex, str, bytes, torch dtypes, devices and sizes, and
lists, tuples, sets, dicts and OrderedDicts of those. Everything else (numpy arrays, namedtuples,
dataclasses, tensor subclasses, arbitrary objects) is refused with ``UnsupportedState`` before a byte
is written, so a run cannot save a checkpoint it would later be unable to resume from. Convert numpy
RNG state to tensors, e.g. ``torch.from_numpy(np_state[1])``.

Retention: after a save the ``keep`` checkpoints with the highest steps are kept, and always the
one just written (so a run that resumed from step 200 because step 300 was corrupt keeps its new
step-250 checkpoint next to the corrupt 300 until 300 is overwritten or ages out).

One writer per directory is assumed; the ``.lock`` makes concurrent savers and a concurrent
``load_latest`` (which cleans temp files) wait for each other instead of deleting a live temp file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch

from workers.crypto import DEFAULT_FRAME_SIZE, CryptoError, DecryptingReader, EncryptingWriter
from workers.durable import fsync_dir

logger = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "cohort.checkpoints.v1"
_LOCK_NAME = ".lock"
_CKPT_RE = re.compile(r"ckpt-(\d{12})\.enc")
_TMP_RE = re.compile(r"\.(ckpt-\d+|MANIFEST)-[0-9a-f]+\.tmp")
_MAX_STEP = 10**12 - 1
_CONTEXT_LABEL = b"cohort.checkpoint.v1"
_CONTEXT_SUFFIX = struct.Struct(">I20sQ")  # len(label) | label | step: fixed size, so the join is injective

_SCALARS: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    torch.dtype,
    torch.device,
)
_SEQUENCES: tuple[type, ...] = (list, tuple, set, torch.Size)
_MAPPINGS: tuple[type, ...] = (dict, OrderedDict)
_TENSORS: tuple[type, ...] = (torch.Tensor, torch.nn.Parameter)
_MAX_DEPTH = 64


class CheckpointError(Exception):
    """Base class for checkpoint failures."""


class UnsupportedState(CheckpointError, TypeError):
    """The state holds a value ``torch.load(weights_only=True)`` could not read back; nothing was written."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One durable checkpoint.

    ``size`` is the size of the encrypted file on disk; ``sha256`` the hex SHA-256 of the plaintext
    (the ``torch.save`` bytes); ``created_at`` is timezone-aware UTC.
    """

    path: Path
    step: int
    size: int
    sha256: str
    created_at: datetime


def checkpoint_name(step: int) -> str:
    """``ckpt-<step:012d>.enc``."""
    _check_step(step)
    return f"ckpt-{step:012d}.enc"


def save_checkpoint(
    state: Mapping[str, Any],
    directory: str | os.PathLike[str],
    *,
    key: bytes,
    context: bytes,
    step: int,
    keep: int = 3,
    reserve: Callable[[int], None] | None = None,
) -> CheckpointInfo:
    """Write ``state`` as checkpoint ``step`` atomically, then prune to the newest ``keep``.

    ``key`` is the run's 32-byte data key and ``context`` the object context naming the run (the
    step is bound in on top). ``reserve`` is passed to ``EncryptingWriter`` for the key's frame
    budget. Raises ``UnsupportedState`` (before writing anything) for values ``torch.load`` with
    ``weights_only=True`` could not read back. Returns the new checkpoint once it is durable.
    """
    _check_step(step)
    if keep < 1:
        raise ValueError("keep must be at least 1")
    if not isinstance(state, Mapping):
        raise UnsupportedState(f"checkpoint state must be a mapping, got {type(state).__name__}")
    storage_bytes = _check_state(state)
    payload = dict(state)
    # Reserve about the frames this checkpoint will seal in one call (torch.save writes each
    # storage whole, plus a little pickle and zip framing); a shortfall just reserves another batch.
    reserve_batch = storage_bytes // DEFAULT_FRAME_SIZE + 2

    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    with _locked(directory):
        tmp = directory / f".ckpt-{step}-{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as sink:
                # torch.save streams its zip records straight into the writer, which holds at most
                # one frame of plaintext: no second copy of the state in memory.
                with EncryptingWriter(
                    sink, key, _step_context(context, step), reserve=reserve, reserve_batch=reserve_batch
                ) as writer:
                    torch.save(payload, cast(BinaryIO, writer))
                sink.flush()
                os.fsync(sink.fileno())
                size = os.fstat(sink.fileno()).st_size
            os.replace(tmp, final)
        except BaseException:
            with suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(directory)
        info = CheckpointInfo(
            path=final, step=step, size=size, sha256=writer.sha256, created_at=datetime.now(UTC).replace(microsecond=0)
        )
        _prune(directory, info, keep)
    return info


def load_latest(
    directory: str | os.PathLike[str],
    *,
    key: bytes,
    context: bytes,
    on_corrupt: Callable[[Path, str], None] | None = None,
    map_location: str | torch.device | None = "cpu",
) -> tuple[dict[str, Any], CheckpointInfo] | None:
    """The newest checkpoint that decrypts, matches the manifest and loads with ``weights_only=True``.

    Every checkpoint skipped on the way is logged and passed to ``on_corrupt(path, reason)``; the
    reason names the check that failed, never plaintext. Leftover temp files are deleted. Returns
    None when the directory holds no valid checkpoint (or does not exist).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    _clean_temp_files(directory)
    manifest = _read_manifest(directory)
    for step, path in sorted(_scan(directory).items(), reverse=True):
        try:
            return _load_one(path, step, key, context, manifest.get(path.name), map_location)
        except FileNotFoundError:  # pruned by a concurrent save between listing and opening
            continue
        except _Corrupt as exc:
            reason = str(exc)
            logger.warning("skipping checkpoint %s: %s", path, reason)
            if on_corrupt is not None:
                on_corrupt(path, reason)
    return None


class _Corrupt(Exception):
    pass


def _load_one(
    path: Path,
    step: int,
    key: bytes,
    context: bytes,
    entry: Mapping[str, Any] | None,
    map_location: str | torch.device | None,
) -> tuple[dict[str, Any], CheckpointInfo]:
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        try:
            with DecryptingReader(handle, key, _step_context(context, step)) as reader:
                plaintext = reader.readall()
        except CryptoError as exc:
            raise _Corrupt(f"decryption failed: {exc}") from None
    sha256 = hashlib.sha256(plaintext).hexdigest()
    if entry is not None and entry.get("sha256") != sha256:
        raise _Corrupt("plaintext SHA-256 differs from the manifest")
    try:
        state = torch.load(io.BytesIO(plaintext), map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for refused globals, RuntimeError for a bad zip, ...
        raise _Corrupt(f"torch.load(weights_only=True) refused it: {type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise _Corrupt(f"state is a {type(state).__name__}, not a dict")
    created_at = _parse_time(entry.get("created_at")) if entry is not None else None
    if created_at is None:
        created_at = datetime.fromtimestamp(stat.st_mtime, UTC).replace(microsecond=0)
    return state, CheckpointInfo(path=path, step=step, size=stat.st_size, sha256=sha256, created_at=created_at)


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
        raise ValueError(f"step must be an int between 0 and {_MAX_STEP}")


def _step_context(context: bytes, step: int) -> bytes:
    if not isinstance(context, bytes | bytearray):
        raise TypeError("context must be bytes")
    return bytes(context) + _CONTEXT_SUFFIX.pack(len(_CONTEXT_LABEL), _CONTEXT_LABEL, step)


def _check_state(state: Mapping[str, Any]) -> int:
    """Refuse what weights_only loading cannot rebuild (exact types: no subclasses); returns storage bytes."""
    active: set[int] = set()  # containers on the current path: a cycle, not mere sharing, is refused
    storages: dict[tuple[str, int], int] = {}

    def walk(value: Any, where: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise UnsupportedState(f"checkpoint state nests deeper than {_MAX_DEPTH} levels at {where}")
        kind = type(value)
        if kind in _SCALARS:
            return
        if kind in _TENSORS:
            if value.layout != torch.strided or value.is_quantized:
                raise UnsupportedState(f"{where}: only dense, non-quantized tensors can be checkpointed")
            storage = value.untyped_storage()
            storages[(str(value.device), storage.data_ptr())] = storage.nbytes()
            return
        if kind in _SEQUENCES or kind in _MAPPINGS:
            if id(value) in active:
                raise UnsupportedState(f"{where}: the state contains a reference cycle")
            active.add(id(value))
            if kind in _MAPPINGS:
                for k, v in value.items():
                    if type(k) not in _SCALARS or type(k) in (torch.dtype, torch.device):
                        raise UnsupportedState(f"{where}: dict key of type {type(k).__name__} is not supported")
                    walk(v, f"{where}[{k!r}]", depth + 1)
            else:
                for index, item in enumerate(value):
                    walk(item, f"{where}[{index}]", depth + 1)
            active.discard(id(value))
            return
        raise UnsupportedState(
            f"{where}: {kind.__module__}.{kind.__qualname__} cannot be checkpointed: only tensors, numbers, "
            "str, bytes, None, torch dtypes/devices/sizes and lists, tuples, sets and dicts of those load "
            "back with torch.load(weights_only=True)"
        )

    for name, value in state.items():
        if not isinstance(name, str):
            raise UnsupportedState(f"top-level checkpoint keys must be str, got {type(name).__name__}")
        walk(value, name, 0)
    return sum(storages.values())


def _scan(directory: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _CKPT_RE.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                found[int(match.group(1))] = Path(entry.path)
    return found


def _prune(directory: Path, new: CheckpointInfo, keep: int) -> None:
    """Rewrite the manifest for the kept checkpoints, then delete the rest (the new one is already durable)."""
    existing = _scan(directory)
    kept_steps = set(sorted(existing, reverse=True)[:keep]) | {new.step}
    old = _read_manifest(directory)
    entries: list[dict[str, Any]] = []
    for step in sorted(kept_steps):
        if step == new.step:
            entries.append(_entry(new))
        else:
            previous = old.get(checkpoint_name(step))
            if previous is not None:  # not listed (crash before a manifest update): stays on its tag alone
                entries.append(dict(previous))
    _write_manifest(directory, entries)
    for step, path in existing.items():
        if step not in kept_steps:
            with suppress(FileNotFoundError):
                path.unlink()
    fsync_dir(directory)


def _entry(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "name": info.path.name,
        "step": info.step,
        "size": info.size,
        "sha256": info.sha256,
        "created_at": info.created_at.isoformat(),
    }


def _read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Manifest entries by file name; an absent or unreadable manifest is empty (logged)."""
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable checkpoint manifest %s: %s", path, type(exc).__name__)
        return {}
    entries = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        logger.warning("ignoring checkpoint manifest %s without a checkpoints list", path)
        return {}
    result: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and _CKPT_RE.fullmatch(entry["name"]):
            result[entry["name"]] = entry
    return result


def _write_manifest(directory: Path, entries: list[dict[str, Any]]) -> None:
    body = json.dumps({"format": MANIFEST_FORMAT, "checkpoints": entries}, indent=2).encode() + b"\n"
    tmp = directory / f".MANIFEST-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / MANIFEST_NAME)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _clean_temp_files(directory: Path) -> None:
    """Delete temp files of interrupted saves, under the lock so a live save's temp file is never touched."""
    try:
        with _locked(directory):
            with os.scandir(directory) as entries:
                stale = [Path(e.path) for e in entries if _TMP_RE.fullmatch(e.name)]
            for path in stale:
                logger.info("removing leftover checkpoint temp file %s", path)
                with suppress(FileNotFoundError):
                    path.unlink()
    except OSError as exc:  # a read-only directory (an evaluator's mount): nothing to clean up
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = [
    "MANIFEST_NAME",
    "CheckpointError",
    "CheckpointInfo",
    "UnsupportedState",
    "checkpoint_name",
    "load_latest",
    "save_checkpoint",
]
