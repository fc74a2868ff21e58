"""Data keys and the key-encryption keys (KEKs) that wrap them: the envelope around ``frames``.

Each tenant's data is sealed under its own 256-bit data key (DEK). DEKs are only ever stored
wrapped: AES-256-GCM under a KEK, with a fresh nonce, and the caller's context (tenant id and DEK
id) as AAD so a wrapped key copied onto another tenant's row does not unwrap. ``blob`` is
``nonce (12) | ciphertext+tag (48)``. Rotating the KEK therefore re-wraps 60-byte blobs
(``rewrap``) and never touches the data; rotating a DEK is the expensive, separate operation.

Providers
---------
A provider is anything satisfying ``KeyProvider``. ``load_provider(spec)`` builds one from a
setting string:

``file:/etc/cohort/keyring.json``
    ``LocalKeyring``: KEKs in a 0600 JSON file ``{"current": id, "keys": {id: base64}}``. Supports
    ``rotate`` (new current KEK, old ones kept so existing wrapped DEKs still open) and ``retire``.
``env:COHORT_KEYRING``
    ``EnvKeyring``: the same JSON, or one bare base64 key (id ``env-1``), from an environment
    variable. Read-only: rotate in the secret store and redeploy.
``package.module:factory``
    A zero-argument callable returning a ``KeyProvider``. This is how a cloud KMS plugs in: write a
    small adapter class whose ``current_kek_id`` is the KMS key id or ARN, whose ``wrap`` calls the
    KMS Encrypt API (or encrypts locally under a KMS-generated key) passing ``context`` as the
    encryption context and returns ``WrappedKey(kek_id, ciphertext_blob)``, whose ``unwrap`` calls
    Decrypt with the same context and raises ``CryptoError`` when the KMS refuses, and whose
    ``kek_ids`` lists the key versions it can still decrypt with. The blob format is the adapter's
    own; this package only stores and hands it back. Point the setting at the factory, e.g.
    ``myorg.kms:aws_provider``. The KEK then never leaves the KMS.

Operational rule: ``retire`` a KEK only after every process has reloaded the keyring and every
wrapped DEK has been re-wrapped under the current one; a DEK wrapped only by a retired KEK is lost,
and so is the data it protects.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import importlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from workers.crypto.frames import KEY_SIZE, NONCE_SIZE, TAG_SIZE, CryptoError, IntegrityError
from workers.durable import fsync_dir, write_atomic

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_WRAPPED_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE


def generate_data_key() -> bytes:
    """A fresh 256-bit data key from the OS CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def derive_key(material: bytes, salt: bytes, info: bytes) -> bytes:
    """A 256-bit key derived from a data key (HKDF-SHA256, RFC 5869): with a fresh random ``salt``
    per object, a key of its own for that object, usable only while ``material`` exists (a
    crypto-shred of the data key leaves whatever was sealed under it unreadable)."""
    if len(material) != KEY_SIZE or len(salt) < 16:
        raise ValueError("derive_key needs a 256-bit key and a salt of at least 16 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(material)


@dataclass(frozen=True)
class WrappedKey:
    """A DEK as stored: the id of the KEK that wrapped it and the provider's opaque blob."""

    kek_id: str
    blob: bytes


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps DEKs under KEKs it holds or reaches (local keyring, environment, KMS)."""

    @property
    def current_kek_id(self) -> str:
        """The KEK new wraps use."""
        ...

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        """Wrap ``dek`` under the current KEK, binding ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """The DEK, or CryptoError if the KEK is unknown or the blob does not authenticate."""
        ...

    def kek_ids(self) -> list[str]:
        """Every KEK this provider can unwrap with."""
        ...


class _Keyring(KeyProvider):
    """KEKs held in process memory: the shared core of the file and environment keyrings."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        self._adopt(dict(keys), current)

    @property
    def current_kek_id(self) -> str:
        return self._current

    def kek_ids(self) -> list[str]:
        return sorted(self._keys)

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        if len(dek) != KEY_SIZE:
            raise CryptoError(f"data keys are {KEY_SIZE} bytes, got {len(dek)}")
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = AESGCM(self._keys[self._current]).encrypt(nonce, dek, context)
        return WrappedKey(self._current, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        kek = self._keys.get(wrapped.kek_id)
        if kek is None:
            raise CryptoError(f"unknown KEK {wrapped.kek_id!r}; known: {', '.join(self.kek_ids())}")
        blob = wrapped.blob
        if len(blob) != _WRAPPED_SIZE:
            raise IntegrityError(f"wrapped key under {wrapped.kek_id!r} has length {len(blob)}, not {_WRAPPED_SIZE}")
        try:
            return AESGCM(kek).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], context)
        except InvalidTag:
            raise IntegrityError(
                f"wrapped key under {wrapped.kek_id!r} did not authenticate (wrong context or corrupted)"
            ) from None

    def _adopt(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise CryptoError(f"current KEK {current!r} is not among the keys")
        for kek_id, key in keys.items():
            if len(key) != KEY_SIZE:
                raise CryptoError(f"KEK {kek_id!r} is {len(key)} bytes, not {KEY_SIZE}")
        self._keys = keys
        self._current = current


class LocalKeyring(_Keyring):
    """KEKs in a local JSON file (mode 0600), for single-host and development deployments.

    ``rotate`` and ``retire`` re-read the file under an exclusive lock and replace it atomically, so
    two concurrent administrators cannot drop each other's keys. A keyring that was loaded from a
    file re-reads it once when asked to unwrap under an id it does not know, so long-running
    processes keep working after another process rotated.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(keys, current)
        self.path = None if path is None else Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalKeyring:
        return cls(*_read_keyring_file(Path(path)), path=path)

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> LocalKeyring:
        """Write a new keyring with one random KEK; refuses to overwrite an existing file."""
        try:
            return cls._create(Path(path))
        except FileExistsError:
            raise CryptoError(f"keyring {path} already exists; refusing to overwrite it") from None

    @classmethod
    def _create(cls, path: Path) -> LocalKeyring:
        kek_id = _new_kek_id()
        keys = {kek_id: generate_data_key()}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        _write_and_sync(fd, _dump_keyring(keys, kek_id))
        fsync_dir(path.parent)
        return cls(keys, kek_id, path=path)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        if wrapped.kek_id not in self._keys and self.path is not None:
            self._adopt(*_read_keyring_file(self.path))
        return super().unwrap(wrapped, context)

    def rotate(self, path: str | os.PathLike[str]) -> str:
        """Add a new KEK, make it current, keep the old ones; returns the new id."""
        path = Path(path)
        kek_id = _new_kek_id()
        with _locked(path):
            keys, _ = _read_keyring_file(path)
            keys[kek_id] = generate_data_key()
            _replace_keyring_file(path, keys, kek_id)
        self._adopt(keys, kek_id)
        return kek_id

    def retire(self, path: str | os.PathLike[str], kek_id: str) -> None:
        """Remove an old KEK. Only once no wrapped DEK uses it: see the module docstring."""
        path = Path(path)
        with _locked(path):
            keys, current = _read_keyring_file(path)
            if kek_id == current:
                raise CryptoError(f"{kek_id!r} is the current KEK; rotate before retiring it")
            if kek_id not in keys:
                raise CryptoError(f"unknown KEK {kek_id!r}")
            del keys[kek_id]
            _replace_keyring_file(path, keys, current)
        self._adopt(keys, current)


class EnvKeyring(_Keyring):
    """KEKs injected through an environment variable (container secrets); read-only by design."""

    @classmethod
    def from_value(cls, value: str) -> EnvKeyring:
        """Keyring JSON, or a single base64 KEK which gets the id ``env-1``."""
        value = value.strip()
        if value.startswith("{"):
            return cls(*_parse_keyring(value, "environment keyring"))
        return cls({"env-1": _decode_key(value, "env-1")}, "env-1")

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> EnvKeyring:
        value = (os.environ if environ is None else environ).get(name, "")
        if not value.strip():
            raise CryptoError(f"environment variable {name} holding the keyring is not set")
        return cls.from_value(value)

    def rotate(self, path: str | os.PathLike[str] | None = None) -> NoReturn:
        raise CryptoError(
            "an environment keyring is read-only: add the new KEK in the KMS or secret store, "
            "make it current in the variable and restart"
        )


def load_provider(spec: str, *, create_missing: bool = False) -> KeyProvider:
    """The provider a setting names: ``file:PATH``, ``env:VAR`` or ``package.module:factory``."""
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise CryptoError(f"bad key provider spec {spec!r}: expected file:PATH, env:VAR or module.path:factory")
    if scheme == "file":
        path = Path(rest)
        if create_missing:
            with suppress(FileExistsError):
                return LocalKeyring._create(path)
        return LocalKeyring.load(path)
    if scheme == "env":
        return EnvKeyring.from_env(rest)
    if not _DOTTED.fullmatch(scheme) or not _DOTTED.fullmatch(rest):
        raise CryptoError(f"bad key provider spec {spec!r}: expected file:PATH, env:VAR or module.path:factory")
    try:
        target: object = importlib.import_module(scheme)
    except ImportError as exc:
        raise CryptoError(f"key provider module {scheme!r} cannot be imported: {exc}") from exc
    for attr in rest.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise CryptoError(f"key provider factory {spec!r} not found") from None
    if not callable(target):
        raise CryptoError(f"key provider factory {spec!r} is not callable")
    provider = target()
    if not isinstance(provider, KeyProvider):
        raise CryptoError(f"key provider factory {spec!r} returned {type(provider).__name__}, not a KeyProvider")
    return provider


def rewrap(wrapped: WrappedKey, provider: KeyProvider, context: bytes) -> WrappedKey:
    """Re-wrap a DEK under the provider's current KEK (KEK rotation); the data is untouched."""
    return provider.wrap(provider.unwrap(wrapped, context), context)


def _new_kek_id() -> str:
    """Sortable by creation time, and unique even for two rotations in the same second."""
    return f"kek-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _decode_key(text: object, kek_id: str) -> bytes:
    if not isinstance(text, str):
        raise CryptoError(f"KEK {kek_id!r} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise CryptoError(f"KEK {kek_id!r} is not valid base64") from None


def _parse_keyring(text: str, where: str) -> tuple[dict[str, bytes], str]:
    try:
        data = json.loads(text)
    except ValueError:
        raise CryptoError(f"{where} is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), dict) or not isinstance(data.get("current"), str):
        raise CryptoError(f'{where} must look like {{"current": "<id>", "keys": {{"<id>": "<base64>"}}}}')
    keys = {str(kek_id): _decode_key(encoded, str(kek_id)) for kek_id, encoded in data["keys"].items()}
    return keys, data["current"]


def _dump_keyring(keys: Mapping[str, bytes], current: str) -> bytes:
    encoded = {kek_id: base64.b64encode(key).decode() for kek_id, key in sorted(keys.items())}
    return json.dumps({"current": current, "keys": encoded}, indent=2).encode() + b"\n"


def _read_keyring_file(path: Path) -> tuple[dict[str, bytes], str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CryptoError(f"keyring {path} does not exist") from None
    return _parse_keyring(text, f"keyring {path}")


def _replace_keyring_file(path: Path, keys: Mapping[str, bytes], current: str) -> None:
    """Write-to-temp, fsync, rename: a crash leaves the old keyring or the new one, never half of one."""
    write_atomic(path, _dump_keyring(keys, current))


def _write_and_sync(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of a keyring. The lock lives in a sibling file because the
    keyring itself is replaced by rename, and a lock on a replaced inode guards nothing."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
