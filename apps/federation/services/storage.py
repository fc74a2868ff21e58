"""Global models, strategy state and site updates at rest: safetensors, encrypted with the
coordinator's data key (the platform runs the hosted sites, so their updates are the platform's to
keep safe); ``open_decrypted`` authenticates every byte read back."""

from __future__ import annotations

import io
from typing import Any

import torch

from apps.datasets.storage import EncryptedUpload, open_decrypted
from apps.vault.models import DataKey

KIND = "federation"


def object_id(federation_id: int, what: str) -> str:
    return f"fed{int(federation_id)}/{what}"


def store_tensors(
    tenant_id: int, federation_id: int, what: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[str, DataKey, str, bytes]:
    """(storage name, key, sha256 of the safetensors bytes, the bytes). In the tenant's scope."""
    from workers.training.weights import save_weights

    buf = io.BytesIO()
    digest = save_weights(tensors, buf, metadata)
    data = buf.getvalue()
    up = EncryptedUpload(tenant_id, KIND, object_id(federation_id, what), size_hint=len(data))
    up.write(data)
    stored = up.finish()
    return stored.name, stored.key, digest, data


def load_bytes(tenant_id: int, federation_id: int, what: str, name: str, key: DataKey) -> bytes:
    with open_decrypted(tenant_id, KIND, object_id(federation_id, what), name, key) as r:
        return bytes(r.read())


def load_tensors(tenant_id: int, federation_id: int, what: str, name: str, key: DataKey) -> dict[str, Any]:
    from workers.training.weights import load_weights

    tensors, _meta = load_weights(load_bytes(tenant_id, federation_id, what, name, key))
    return tensors
