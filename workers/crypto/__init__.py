"""Envelope encryption at rest: framed AES-256-GCM under per-tenant data keys wrapped by KEKs.

``frames`` seals and opens data streams under a data key; ``keys`` makes, wraps and rotates the
keys. Pure Python: the Django layer stores wrapped keys and usage counters and calls in here.
"""

from workers.crypto.frames import (
    DEFAULT_FRAME_SIZE,
    CryptoError,
    DecryptingReader,
    EncryptingWriter,
    IntegrityError,
    KeyUsageExhausted,
    decrypt_bytes,
    encrypt_bytes,
    object_context,
)
from workers.crypto.keys import (
    EnvKeyring,
    KeyProvider,
    LocalKeyring,
    WrappedKey,
    derive_key,
    generate_data_key,
    load_provider,
    rewrap,
)

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "CryptoError",
    "DecryptingReader",
    "EncryptingWriter",
    "EnvKeyring",
    "IntegrityError",
    "KeyProvider",
    "KeyUsageExhausted",
    "LocalKeyring",
    "WrappedKey",
    "decrypt_bytes",
    "derive_key",
    "encrypt_bytes",
    "generate_data_key",
    "load_provider",
    "object_context",
    "rewrap",
]
