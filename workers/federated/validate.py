"""Checks one site's update must pass before it is stored for aggregation (RELIABILITY FL-1).

An **update is a delta**: ``local - global``, the site's trained state minus the global state the
round handed it, with the global's keys, shapes and dtypes. Strategies consume it as such
(``strategy.aggregate(global_state, updates, deltas=True)``), and the L2 bound applies to it
directly: the norm is ``sqrt(sum of squares)`` over the update's floating-point tensors, computed
in float64 (:func:`update_l2_norm`). Integer and bool entries (``num_batches_tracked``) are
counters, not parameters: strategies take an actual participant's value for them, and they are
left out of the norm. Sites clip with :func:`clip_update`, the same norm, before sending.

Updates travel as safetensors bytes: :func:`load_update` refuses an oversized payload before
parsing it, and anything that is not a complete safetensors file (pickle, ``torch.save``,
TorchScript, numpy) without deserialising it (``workers.training.weights``).

:func:`validate_update` raises :class:`UpdateRejected` with one stable ``code`` (:data:`CODES`),
a message, and ``details`` that are JSON-safe and hold names, counts, shapes, dtypes and norms,
never tensor values. It checks, in this order, so the cheap identity checks refuse a forged or
replayed submission before any tensor is read: ``not_selected``, ``stale_round``,
``replayed_nonce``, ``too_large``, ``keys_mismatch``, ``shape_mismatch``, ``dtype_mismatch``,
``non_finite``, ``norm_exceeded``. It records nothing: the caller stores the update and its nonce
together (a unique constraint makes a concurrent replay lose) and audits each rejection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Container, Mapping
from typing import Any

import torch
from torch import Tensor

from workers.training.weights import UnsafeWeights, load_weights

CODES = (
    "not_selected",  # the site is not in this round's selection (or claims an identity that is not)
    "stale_round",  # the update names another round than the open one
    "replayed_nonce",  # the nonce was seen before, or is missing or malformed
    "too_large",  # the payload or its tensors exceed max_bytes
    "not_safetensors",  # the payload is not a complete safetensors file (pickle, torch.save...)
    "keys_mismatch",  # tensor names differ from the global state's
    "shape_mismatch",  # a tensor's shape differs from the global's
    "dtype_mismatch",  # a tensor's dtype (or layout) differs from the global's, or it is not a tensor
    "non_finite",  # NaN or Inf in a floating-point tensor
    "norm_exceeded",  # the delta's L2 norm is above the bound
)
"""Every :class:`UpdateRejected` code; stable, so stored rejections and audit rows can be counted."""

MAX_LISTED = 20  # names listed in details; the rest are counted
MAX_NAME_CHARS = 200  # a listed name (a client-chosen key) is cut to this
MAX_NONCE_CHARS = 256
NORM_TOLERANCE = 1e-6  # relative: a delta clipped to exactly the bound may round a hair above it


class UpdateRejected(ValueError):
    """An update refused before storage: ``code`` (one of :data:`CODES`), ``message``, ``details``."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        assert code in CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class GlobalNotFinite(ValueError):
    """The global model holds NaN or Inf: aggregation must not publish it. ``details`` as above."""

    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details)


def load_update(data: bytes | bytearray | memoryview, max_bytes: int) -> dict[str, Tensor]:
    """The tensors of a safetensors payload, refusing oversized or non-safetensors bytes unread.

    Raises:
        UpdateRejected: ``too_large`` (checked before any parsing) or ``not_safetensors``.
    """
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise UpdateRejected(
            "too_large",
            f"The payload is {size} bytes; at most {max_bytes}.",
            {"payload_bytes": size, "max_bytes": max_bytes},
        )
    try:
        tensors, _metadata = load_weights(bytes(data))
    except UnsafeWeights as exc:
        raise UpdateRejected("not_safetensors", str(exc)[:500], {"payload_bytes": size}) from None
    return tensors


def validate_update(
    update: Mapping[str, Tensor],
    global_state: Mapping[str, Tensor],
    *,
    round_id: int,
    expected_round_id: int,
    nonce: str,
    seen_nonces: Container[str] | Callable[[str], bool],
    site_id: str | int,
    selected_sites: Collection[str | int],
    l2_bound: float | None,
    max_bytes: int,
    payload_bytes: int,
) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` may be stored for aggregation.

    Args:
        update: the site's delta (``local - global``), e.g. from :func:`load_update`.
        global_state: the state the round handed out; fixes keys, shapes and dtypes.
        round_id: the round the submission names; ``expected_round_id``: the round now open.
        nonce: the submission's one-time value; ``seen_nonces`` holds (or, if callable, answers
            for) the nonces already stored for this federation.
        site_id: the *authenticated* site identity (never one the payload claims);
            ``selected_sites``: this round's selection.
        l2_bound: bound on :func:`update_l2_norm` (``FederationSpec.update_bound``); None: no bound.
        max_bytes: the largest payload, and the largest total tensor size, accepted.
        payload_bytes: the size of the payload as received.
    """
    assert max_bytes >= 0, max_bytes
    assert l2_bound is None or l2_bound > 0, l2_bound
    if not _json_id(site_id) or site_id not in selected_sites:
        raise UpdateRejected("not_selected", "This site is not selected for the round.", {"site_id": _safe_id(site_id)})
    if not _is_int(round_id) or round_id != expected_round_id:
        raise UpdateRejected(
            "stale_round",
            "The update is for another round than the open one.",
            {"round_id": round_id if _is_int(round_id) else None, "expected_round_id": expected_round_id},
        )
    if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_CHARS:
        raise UpdateRejected(
            "replayed_nonce",
            f"An update carries a fresh nonce of 1 to {MAX_NONCE_CHARS} characters.",
            {"reason": "malformed"},
        )
    seen = seen_nonces(nonce) if callable(seen_nonces) else nonce in seen_nonces
    if seen:
        raise UpdateRejected("replayed_nonce", "This nonce was used before: a replayed update.", {"reason": "seen"})
    if payload_bytes > max_bytes:
        raise UpdateRejected(
            "too_large",
            f"The payload is {payload_bytes} bytes; at most {max_bytes}.",
            {"payload_bytes": payload_bytes, "max_bytes": max_bytes},
        )
    if not isinstance(update, Mapping):
        raise UpdateRejected("keys_mismatch", "An update maps tensor names to tensors.", {"got": type(update).__name__})
    tensor_bytes = sum(t.numel() * t.element_size() for t in update.values() if isinstance(t, Tensor))
    if tensor_bytes > max_bytes:
        raise UpdateRejected(
            "too_large",
            f"The update's tensors are {tensor_bytes} bytes; at most {max_bytes}.",
            {"payload_bytes": payload_bytes, "tensor_bytes": tensor_bytes, "max_bytes": max_bytes},
        )

    missing = [k for k in global_state if k not in update]
    extra = [k for k in update if k not in global_state]
    if missing or extra:
        raise UpdateRejected(
            "keys_mismatch",
            f"{len(missing)} tensors missing and {len(extra)} unexpected.",
            {"missing": _names(missing), "extra": _names(extra), "num_missing": len(missing), "num_extra": len(extra)},
        )
    shapes: list[dict[str, Any]] = []
    dtypes: list[dict[str, Any]] = []
    for key, ref in global_state.items():
        tensor = update[key]
        if not isinstance(tensor, Tensor):
            dtypes.append({"key": key, "expected": str(ref.dtype), "got": type(tensor).__name__})
        elif tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            dtypes.append({"key": key, "expected": "dense tensor", "got": str(tensor.layout)})
        elif tensor.shape != ref.shape:
            shapes.append({"key": key, "expected": list(ref.shape), "got": list(tensor.shape)})
        elif tensor.dtype != ref.dtype:
            dtypes.append({"key": key, "expected": str(ref.dtype), "got": str(tensor.dtype)})
    if shapes:
        raise UpdateRejected(
            "shape_mismatch",
            f"{len(shapes)} tensors have another shape than the global model's.",
            {"tensors": shapes[:MAX_LISTED], "num_tensors": len(shapes)},
        )
    if dtypes:
        raise UpdateRejected(
            "dtype_mismatch",
            f"{len(dtypes)} tensors have another dtype than the global model's.",
            {"tensors": dtypes[:MAX_LISTED], "num_tensors": len(dtypes)},
        )
    counts = _non_finite(update)
    if counts is not None:
        raise UpdateRejected("non_finite", "The update holds NaN or Inf values.", counts)
    if l2_bound is not None:
        norm = update_l2_norm(update)
        if not norm <= l2_bound * (1 + NORM_TOLERANCE):
            raise UpdateRejected(
                "norm_exceeded",
                # The norm itself is in the details only: it is a per-site figure, which the coordinator
                # sees where the owner shares metrics; the message and code are public.
                f"The update's L2 norm exceeds the bound {l2_bound:g}.",
                {"norm": norm if math.isfinite(norm) else None, "bound": l2_bound},
            )


def update_l2_norm(update: Mapping[str, Tensor]) -> float:
    """L2 norm of a delta over its floating-point tensors, in float64 (integer entries excluded)."""
    norms = [
        float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64))
        for t in update.values()
        if t.is_floating_point() and t.numel()
    ]
    return math.hypot(*norms)  # hypot scales: no overflow from squaring large per-tensor norms


def clip_update(update: Mapping[str, Tensor], bound: float) -> dict[str, Tensor]:
    """The delta scaled so that :func:`update_l2_norm` is at most ``bound`` (a site's clip).

    Floating-point tensors are scaled by ``min(1, bound / norm)`` and keep their dtype; other
    entries are returned unchanged. New tensors; the input is not modified.
    """
    assert bound > 0, bound
    norm = update_l2_norm(update)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: (t * scale).to(t.dtype) if t.is_floating_point() else t.clone() for k, t in update.items()}


def check_global_finite(state: Mapping[str, Tensor]) -> None:
    """Raise :class:`GlobalNotFinite` if any floating-point tensor of ``state`` holds NaN or Inf.

    Run on every new global state before it is published (FL-1: finite after every round).
    """
    counts = _non_finite(state)
    if counts is not None:
        raise GlobalNotFinite(f"The global model holds NaN or Inf in {counts['num_keys']} tensors.", counts)


def _non_finite(state: Mapping[str, Tensor]) -> dict[str, Any] | None:
    keys: list[str] = []
    num_nan = num_inf = 0
    for key, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        if nan or inf:
            keys.append(key)
            num_nan += nan
            num_inf += inf
    if not keys:
        return None
    return {"keys": _names(keys), "num_keys": len(keys), "num_nan": num_nan, "num_inf": num_inf}


def _names(keys: list[Any]) -> list[str]:
    return [(k if isinstance(k, str) else repr(k))[:MAX_NAME_CHARS] for k in keys[:MAX_LISTED]]


def _json_id(v: Any) -> bool:
    return isinstance(v, str) or _is_int(v)


def _safe_id(v: Any) -> str | int:
    return v[:MAX_NAME_CHARS] if isinstance(v, str) else v if _is_int(v) else repr(v)[:MAX_NAME_CHARS]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


__all__ = [
    "CODES",
    "NORM_TOLERANCE",
    "GlobalNotFinite",
    "UpdateRejected",
    "check_global_finite",
    "clip_update",
    "load_update",
    "update_l2_norm",
    "validate_update",
]
