"""Model weights for the registry: safetensors only, never pickle.

``torch.save`` files (a zip holding ``data.pkl``), legacy ``torch.save`` files and bare pickles run
arbitrary code when loaded with full unpickling: a ``__reduce__`` can call ``os.system``. The
registry therefore stores and accepts only safetensors (a JSON header plus raw tensor bytes, parsed
without any code execution). ``refuse_pickle`` is the gate uploads go through: it accepts a byte
string only if it is a structurally complete safetensors file, checked here in Python before the
safetensors parser sees it, and names the format it recognised otherwise (pickle, torch.save zip,
TorchScript zip, numpy, gzip). The check is structural, not a magic-byte blacklist: a safetensors
file starts with its header length, whose low byte may legitimately be 0x80 (a pickle's first byte).

Shared tensors (tied embeddings): safetensors refuses tensors that share memory. ``save_weights``
stores an exact alias (same storage, offset, shape, stride and dtype) once and records it in the
reserved metadata key ``cohort.aliases``; ``load_weights`` restores the alias as the same tensor
object and hides the key. Tensors that overlap only partially are cloned (stored twice).

``export_torchscript`` (here for existing callers; it lives in :mod:`workers.training.export`,
next to ONNX export) produces a download artifact; TorchScript is itself a zip with pickled
constants and code, so the registry never accepts one back (``refuse_pickle`` refuses it), and
``torch.jit.load`` must only be run on artifacts this platform produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch
from torch import Tensor, nn

from workers.durable import write_atomic

ALIASES_KEY = "cohort.aliases"
MAX_HEADER_SIZE = 100_000_000  # the safetensors library's own limit
_HEADER_LENGTH = struct.Struct("<Q")
_DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2": 1,
    "F8_E5M2FNUZ": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


class UnsafeWeights(ValueError):
    """Not a complete safetensors file (pickle, torch.save, TorchScript, truncated...): refused unread."""


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header in one canonical form.

    The library writes the tensors' bytes in a fixed order (alignment, then name), but serialises
    the header's maps in hash order, which varies from process to process: equal tensors and
    metadata gave different file bytes, hence different digests, in two workers. Re-writing the
    header with sorted keys and no spaces (padded to 8 bytes, as the library pads it) leaves every
    data offset as it was and makes the file a function of its contents alone, so a digest can be
    recomputed anywhere (FL-6: re-aggregating a round gives the stored model's hash).
    """
    (n,) = _HEADER_LENGTH.unpack_from(data, 0)
    header = json.loads(data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-(len(text) + _HEADER_LENGTH.size) % 8)
    return _HEADER_LENGTH.pack(len(text)) + text + data[_HEADER_LENGTH.size + n :]


def save_weights(
    state_dict: Mapping[str, Tensor],
    path_or_file: str | os.PathLike[str] | BinaryIO,
    metadata: Mapping[str, str],
) -> str:
    """Write ``state_dict`` as safetensors with ``metadata``; returns the hex SHA-256 of the file bytes.

    Tensors are detached, moved to the CPU and made contiguous; exact aliases are stored once (see
    the module docstring). The bytes are canonical (``canonical_safetensors``): the same tensors and
    metadata give the same file, and digest, in any process. A path is written atomically (temp
    file, fsync, rename; mode 0600); a file object gets the bytes written at its position and is
    flushed, not closed.
    """
    meta = _check_metadata(metadata)
    tensors, aliases = _prepare(state_dict)
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    data = canonical_safetensors(safetensors.torch.save(tensors, metadata=meta))
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(path_or_file, str | os.PathLike):
        write_atomic(Path(path_or_file), data)
    else:
        path_or_file.write(data)
        path_or_file.flush()
    return digest


def load_weights(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (bytes or a path); ``UnsafeWeights`` for anything else.

    Nothing is unpickled: the bytes pass ``refuse_pickle`` and are then parsed by safetensors.
    """
    data = Path(source).read_bytes() if isinstance(source, str | os.PathLike) else bytes(source)
    metadata = _parse(data)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError from the Rust parser
        raise UnsafeWeights(f"safetensors refused the file: {exc}") from None
    aliases_text = metadata.pop(ALIASES_KEY, None)
    if aliases_text is not None:
        for alias, target in _parse_aliases(aliases_text).items():
            if alias in tensors or target not in tensors:
                raise UnsafeWeights(f"bad alias {alias!r} -> {target!r} in {ALIASES_KEY}")
            tensors[alias] = tensors[target]
    return tensors, metadata


def refuse_pickle(data: bytes | bytearray | memoryview) -> None:
    """Raise ``UnsafeWeights`` unless ``data`` is a complete, well-formed safetensors file.

    Used by uploads: only safetensors is accepted, and this never deserialises anything.
    """
    _parse(bytes(data))


def export_torchscript(model: nn.Module, example: Tensor) -> bytes:
    """Trace ``model`` on ``example`` and return ``torch.jit.save`` bytes (see :mod:`workers.training.export`)."""
    from workers.training.export import export_torchscript as export  # local: keeps this module light

    return export(model, example)


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("weights metadata must map str to str")
        if k == ALIASES_KEY or k == "__metadata__":
            raise ValueError(f"metadata key {k!r} is reserved")
        result[k] = v
    return result


def _prepare(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous CPU tensors with exact aliases dropped (returned as alias -> kept name) and overlaps cloned."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[Any, ...], str] = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(tensor).__name__}")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            raise ValueError(f"{name}: only dense, non-quantized tensors with data can be saved")
        tensor = tensor.detach()
        if tensor.numel():
            view = (
                tensor.device,
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tensor.stride(),
                tensor.dtype,
            )
            if view in views:
                aliases[name] = views[view]
                continue
            views[view] = name
        tensors[name] = tensor
    owners: dict[tuple[Any, int], str] = {}
    for name, tensor in tensors.items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if tensor.numel() and storage in owners:
            tensor = tensor.clone()  # shares memory with another kept tensor but is not the same view
        elif tensor.numel():
            owners[storage] = name
        tensors[name] = tensor.cpu().contiguous()
    return tensors, aliases


def _parse(data: bytes) -> dict[str, str]:
    """Validate the safetensors structure and return its metadata; UnsafeWeights naming what it is otherwise."""
    try:
        return _parse_safetensors(data)
    except _Malformed as exc:
        recognised = _sniff(data)
        if recognised is not None:
            raise UnsafeWeights(f"{recognised} is not accepted: weights must be safetensors (no pickle)") from None
        raise UnsafeWeights(f"not a safetensors file: {exc}") from None


class _Malformed(Exception):
    pass


def _parse_safetensors(data: bytes) -> dict[str, str]:
    if len(data) < _HEADER_LENGTH.size:
        raise _Malformed("shorter than the 8-byte header length")
    (header_size,) = _HEADER_LENGTH.unpack_from(data)
    if header_size < 2 or header_size > MAX_HEADER_SIZE or _HEADER_LENGTH.size + header_size > len(data):
        raise _Malformed("header length is out of range")
    raw = data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + header_size]
    if raw[:1] != b"{":
        raise _Malformed("header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Malformed(f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _Malformed("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _Malformed("__metadata__ must map strings to strings")
    body = len(data) - _HEADER_LENGTH.size - header_size
    spans: list[tuple[int, int]] = []
    for name, spec in header.items():
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise _Malformed(f"tensor {name!r} entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if dtype not in _DTYPE_SIZES:
            raise _Malformed(f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
            raise _Malformed(f"tensor {name!r} has an invalid shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
            raise _Malformed(f"tensor {name!r} has invalid data_offsets")
        begin, end = offsets
        if not begin <= end <= body or end - begin != math.prod(shape) * _DTYPE_SIZES[dtype]:
            raise _Malformed(f"tensor {name!r} data_offsets do not match its shape or the file size")
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _Malformed("tensor data has gaps or overlaps")
        position = end
    if position != body:
        raise _Malformed(f"{body - position} bytes after the last tensor (truncated header or appended data)")
    return dict(metadata)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for k, v in pairs:
        if k in result:
            raise ValueError(f"duplicate key {k!r}")
        result[k] = v
    return result


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _sniff(data: bytes) -> str | None:
    """What a refused file looks like, for the error message (the decision itself is structural)."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "a zip archive (torch.save or TorchScript format, which embeds a pickle)"
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return f"a pickle (protocol {data[1]}; also legacy torch.save)"
    if data[:6] == b"\x93NUMPY":
        return "a numpy .npy file (may hold pickled objects)"
    if data[:2] == b"\x1f\x8b":
        return "a gzip stream (e.g. a compressed pickle)"
    if data[:1] in (b"(", b"c", b"]", b"}", b"\x80") and data.rstrip()[-1:] == b".":
        return "what looks like a pickle (protocol 0/1)"
    return None


def _parse_aliases(text: str) -> dict[str, str]:
    try:
        aliases = json.loads(text)
    except ValueError:
        raise UnsafeWeights(f"{ALIASES_KEY} metadata is not JSON") from None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise UnsafeWeights(f"{ALIASES_KEY} metadata must map names to names")
    return aliases


__all__ = ["ALIASES_KEY", "UnsafeWeights", "export_torchscript", "load_weights", "refuse_pickle", "save_weights"]
