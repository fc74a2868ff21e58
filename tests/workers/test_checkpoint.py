"""Training checkpoints and registry weights (workers.training.checkpoint / .weights).

Pure Python and CPU torch, no database. Covers: encrypted round trip of model + optimizer + RNG state,
retention, every way a newest checkpoint can be bad (bit flip, truncation, renamed step, wrong
context, manifest hash, a pickle that only full unpickling would accept) falling back to the previous
one, SIGKILL mid-write, and API-4 (uploads accept safetensors only; a pickle payload never runs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import random
import shlex
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from workers.crypto import EncryptingWriter, generate_data_key, object_context
from workers.crypto.frames import FRAME_OVERHEAD, HEADER_SIZE
from workers.training.checkpoint import (
    MANIFEST_NAME,
    CheckpointInfo,
    UnsupportedState,
    _step_context,
    checkpoint_name,
    load_latest,
    save_checkpoint,
)
from workers.training.weights import (
    ALIASES_KEY,
    UnsafeWeights,
    export_torchscript,
    load_weights,
    refuse_pickle,
    save_weights,
)

REPO = Path(__file__).resolve().parents[2]
CONTEXT = object_context(tenant_id=7, kind="checkpoint", object_id="run-1")


class _Point(NamedTuple):
    x: int
    y: int


@pytest.fixture
def key() -> bytes:
    return generate_data_key()


class Skipped:
    """An ``on_corrupt`` callback recording what load_latest skipped."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __call__(self, path: Path, reason: str) -> None:
        self.items.append((path.name, reason))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.items]


def _training_state(seed: int = 0) -> tuple[nn.Linear, torch.optim.Adam, dict[str, Any]]:
    torch.manual_seed(seed)
    model = nn.Linear(8, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
    rng = np.random.default_rng(seed)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": torch.tensor(rng.bit_generator.state["state"]["state"] % (1 << 62), dtype=torch.int64),
        },
        "epoch": 2,
        "best_metric": 0.875,
        "spec_hash": "abc123",
        "history": [{"loss": 1.5}, {"loss": 1.25}],
    }
    return model, optimizer, state


def _small_state(step: int) -> dict[str, Any]:
    return {"w": torch.full((4, 4), float(step)), "step": step}


def _save_steps(directory: Path, key: bytes, steps: range | list[int], keep: int = 10) -> list[CheckpointInfo]:
    return [save_checkpoint(_small_state(s), directory, key=key, context=CONTEXT, step=s, keep=keep) for s in steps]


# --- round trip, format, retention ---------------------------------------------------------------


def test_round_trip_model_optimizer_and_rng(tmp_path: Path, key: bytes) -> None:
    model, optimizer, state = _training_state()
    reserved: list[int] = []
    info = save_checkpoint(state, tmp_path, key=key, context=CONTEXT, step=300, reserve=reserved.append)

    assert info.path == tmp_path / "ckpt-000000000300.enc" == tmp_path / checkpoint_name(300)
    assert info.step == 300 and info.size == info.path.stat().st_size and len(info.sha256) == 64
    assert info.created_at.tzinfo is not None
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert reserved and sum(reserved) >= 1  # the key's frame budget was consulted
    assert b"abc123" not in info.path.read_bytes()  # encrypted at rest

    loaded = load_latest(tmp_path, key=key, context=CONTEXT)
    assert loaded is not None
    restored, loaded_info = loaded
    assert loaded_info == info
    assert restored["epoch"] == 2 and restored["best_metric"] == 0.875 and restored["spec_hash"] == "abc123"
    assert restored["history"] == state["history"]
    assert restored["rng"]["python"] == state["rng"]["python"]
    assert torch.equal(restored["rng"]["torch"], state["rng"]["torch"])
    assert torch.equal(restored["rng"]["numpy"], state["rng"]["numpy"])

    # The restored model and optimizer continue exactly as the originals would.
    model2 = nn.Linear(8, 3)
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    model2.load_state_dict(restored["model"])
    optimizer2.load_state_dict(restored["optimizer"])
    torch.set_rng_state(restored["rng"]["torch"])
    batch = torch.randn(4, 8)
    for m, opt in ((model, optimizer), (model2, optimizer2)):
        opt.zero_grad()
        m(batch).pow(2).sum().backward()
        opt.step()
    for p1, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p1, p2)

    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (entry,) = manifest["checkpoints"]
    assert entry["name"] == info.path.name and entry["step"] == 300
    assert entry["sha256"] == info.sha256 and entry["size"] == info.size
    assert stat.S_IMODE((tmp_path / MANIFEST_NAME).stat().st_mode) == 0o600


def test_reserve_covers_the_frames_in_one_call(tmp_path: Path, key: bytes) -> None:
    reserved: list[int] = []
    big = torch.zeros(3 << 20, dtype=torch.uint8)  # 3 MiB: four 1 MiB frames with the pickle and zip framing
    info = save_checkpoint(
        {"big": big, "view": big[:10]}, tmp_path, key=key, context=CONTEXT, step=1, reserve=reserved.append
    )
    frames = -(-(info.size - HEADER_SIZE) // ((1 << 20) + FRAME_OVERHEAD))
    assert len(reserved) == 1 and frames <= reserved[0] <= frames + 2


def test_keep_retention(tmp_path: Path, key: bytes) -> None:
    for step in (100, 200, 300, 400, 500):
        save_checkpoint(_small_state(step), tmp_path, key=key, context=CONTEXT, step=step, keep=3)
    names = sorted(p.name for p in tmp_path.glob("ckpt-*.enc"))
    assert names == [checkpoint_name(s) for s in (300, 400, 500)]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert [e["step"] for e in manifest["checkpoints"]] == [300, 400, 500]
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_latest(tmp_path, key=key, context=CONTEXT)
    assert loaded is not None and loaded[1].step == 500 and loaded[0]["step"] == 500


def test_resaving_a_step_replaces_it_and_a_lower_step_is_kept(tmp_path: Path, key: bytes) -> None:
    _save_steps(tmp_path, key, [100, 200, 300], keep=2)
    save_checkpoint({"w": torch.zeros(2), "step": -1}, tmp_path, key=key, context=CONTEXT, step=300, keep=2)
    loaded = load_latest(tmp_path, key=key, context=CONTEXT)
    assert loaded is not None and loaded[0]["step"] == -1
    # A run that resumed from 200 (say 300 was corrupt) and saves 250 keeps its new checkpoint.
    save_checkpoint(_small_state(250), tmp_path, key=key, context=CONTEXT, step=250, keep=1)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.enc")) == [checkpoint_name(250), checkpoint_name(300)]


def test_empty_or_missing_directory_loads_nothing(tmp_path: Path, key: bytes) -> None:
    assert load_latest(tmp_path / "absent", key=key, context=CONTEXT) is None
    assert load_latest(tmp_path, key=key, context=CONTEXT) is None


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"obj": object()}, id="object"),
        pytest.param({"arr": np.zeros(3)}, id="numpy"),
        pytest.param({"nt": _Point(1, 2)}, id="namedtuple"),
        pytest.param({"nested": {"deep": [1, {"x": Path("/tmp")}]}}, id="nested-path"),
        pytest.param({"sub": torch.zeros(2).as_subclass(type("MyTensor", (torch.Tensor,), {}))}, id="tensor-subclass"),
        pytest.param({"sparse": torch.zeros(2, 2).to_sparse()}, id="sparse"),
        pytest.param({1: torch.zeros(1)}, id="non-str-key"),
    ],
)
def test_unsupported_state_is_refused_before_writing(tmp_path: Path, key: bytes, bad: dict[Any, Any]) -> None:
    directory = tmp_path / "ckpts"
    with pytest.raises(UnsupportedState):
        save_checkpoint(bad, directory, key=key, context=CONTEXT, step=1)
    assert not directory.exists() or not [p for p in directory.iterdir() if p.name != ".lock"]


def test_cyclic_state_is_refused_but_shared_values_are_fine(tmp_path: Path, key: bytes) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(UnsupportedState, match="cycle"):
        save_checkpoint({"c": cyclic}, tmp_path, key=key, context=CONTEXT, step=1)
    shared = [1, 2]
    tensor = torch.ones(3)
    save_checkpoint(
        {"a": shared, "b": shared, "t": tensor, "u": tensor, "od": OrderedDict(x=1), "dt": torch.float16},
        tmp_path,
        key=key,
        context=CONTEXT,
        step=2,
    )
    loaded = load_latest(tmp_path, key=key, context=CONTEXT)
    assert loaded is not None and loaded[0]["a"] == [1, 2] and loaded[0]["dt"] is torch.float16


# --- a bad newest checkpoint falls back to the previous one ------------------------------------------


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x00" * 64)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "damage", [_flip_byte, _truncate, _append, _empty], ids=["flip", "truncate", "append", "empty"]
)
def test_damaged_newest_falls_back_to_previous(tmp_path: Path, key: bytes, damage: Any) -> None:
    _save_steps(tmp_path, key, [1, 2, 3])
    damage(tmp_path / checkpoint_name(3))
    skipped = Skipped()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped)
    assert loaded is not None
    state, info = loaded
    assert info.step == 2 and state["step"] == 2 and torch.equal(state["w"], torch.full((4, 4), 2.0))
    assert skipped.names == [checkpoint_name(3)]
    assert "decryption failed" in skipped.items[0][1]


def test_swapped_checkpoint_names_are_both_refused(tmp_path: Path, key: bytes) -> None:
    """The step is bound into the AEAD context: a renamed file does not open as another step."""
    _save_steps(tmp_path, key, [1, 2, 3])
    a, b, tmp = tmp_path / checkpoint_name(2), tmp_path / checkpoint_name(3), tmp_path / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    skipped = Skipped()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped)
    assert loaded is not None and loaded[1].step == 1 and loaded[0]["step"] == 1
    assert skipped.names == [checkpoint_name(3), checkpoint_name(2)]
    assert all("decryption failed" in reason for _, reason in skipped.items)  # the tag, not just the manifest


def test_other_runs_context_or_key_is_refused(tmp_path: Path, key: bytes) -> None:
    _save_steps(tmp_path, key, [1])
    other = object_context(tenant_id=8, kind="checkpoint", object_id="run-1")
    skipped = Skipped()
    assert load_latest(tmp_path, key=key, context=other, on_corrupt=skipped) is None
    assert load_latest(tmp_path, key=generate_data_key(), context=CONTEXT, on_corrupt=skipped) is None
    assert skipped.names == [checkpoint_name(1)] * 2


def test_manifest_sha_mismatch_is_skipped(tmp_path: Path, key: bytes) -> None:
    _save_steps(tmp_path, key, [1, 2])
    manifest_path = tmp_path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["checkpoints"]:
        if entry["step"] == 2:
            entry["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    skipped = Skipped()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped)
    assert loaded is not None and loaded[1].step == 1
    assert skipped.items == [(checkpoint_name(2), "plaintext SHA-256 differs from the manifest")]


def test_checkpoint_missing_from_manifest_is_accepted_on_its_tag(tmp_path: Path, key: bytes) -> None:
    """A crash between the rename and the manifest update: the checkpoint is complete and authenticated."""
    infos = _save_steps(tmp_path, key, [1, 2])
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    loaded = load_latest(tmp_path, key=key, context=CONTEXT)
    assert loaded is not None and loaded[1].step == 2 and loaded[1].sha256 == infos[1].sha256
    (tmp_path / MANIFEST_NAME).unlink()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT)
    assert loaded is not None and loaded[1].step == 2


def test_all_corrupt_returns_none(tmp_path: Path, key: bytes) -> None:
    _save_steps(tmp_path, key, [1, 2])
    for step in (1, 2):
        _flip_byte(tmp_path / checkpoint_name(step))
    skipped = Skipped()
    assert load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped) is None
    assert skipped.names == [checkpoint_name(2), checkpoint_name(1)]


class _Canary:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


def test_load_uses_weights_only(tmp_path: Path, key: bytes) -> None:
    """A correctly encrypted checkpoint whose pickle needs a non-allow-listed global is skipped, not run."""
    _save_steps(tmp_path, key, [1])
    canary = tmp_path / "canary"
    with open(tmp_path / checkpoint_name(2), "wb") as sink, EncryptingWriter(sink, key, _step_context(CONTEXT, 2)) as w:
        torch.save({"w": torch.zeros(1), "evil": _Canary(canary)}, cast(BinaryIO, w))
    skipped = Skipped()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped)
    assert loaded is not None and loaded[1].step == 1
    assert skipped.names == [checkpoint_name(2)] and "weights_only" in skipped.items[0][1]
    assert not canary.exists()


def test_leftover_tmp_files_are_ignored_and_cleaned(tmp_path: Path, key: bytes) -> None:
    _save_steps(tmp_path, key, [1])
    leftovers = [tmp_path / ".ckpt-2-0123abcd.tmp", tmp_path / ".MANIFEST-deadbeef.tmp"]
    leftovers[0].write_bytes(b"COHENC01 partial")
    leftovers[1].write_text("{}")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("keep me")
    skipped = Skipped()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped)
    assert loaded is not None and loaded[1].step == 1 and skipped.items == []
    assert not any(p.exists() for p in leftovers)
    assert unrelated.exists()


# --- SIGKILL mid-write --------------------------------------------------------------------------------

_SLOW_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    import workers.training.checkpoint as checkpoint

    class SlowWriter(checkpoint.EncryptingWriter):
        def write(self, data):
            written = super().write(data)
            if self.frames >= 2:
                self._sink.flush()  # make the partial ciphertext visible on disk
                open(os.environ["MARKER"], "w").close()
                time.sleep(120)
            return written

    checkpoint.EncryptingWriter = SlowWriter
    checkpoint.save_checkpoint(
        {"w": torch.randn(1_000_000), "step": 2},
        os.environ["CKPT_DIR"],
        key=bytes.fromhex(os.environ["KEY"]),
        context=bytes.fromhex(os.environ["CONTEXT"]),
        step=2,
    )
    """
)

_LOOP_CHILD = textwrap.dedent(
    """
    import os
    import torch
    from workers.training.checkpoint import save_checkpoint

    step = 0
    while True:
        step += 1
        save_checkpoint(
            {"w": torch.full((500_000,), float(step)), "step": step},
            os.environ["CKPT_DIR"],
            key=bytes.fromhex(os.environ["KEY"]),
            context=bytes.fromhex(os.environ["CONTEXT"]),
            step=step,
            keep=2,
        )
    """
)


def _child(script: str, directory: Path, key: bytes, **extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CKPT_DIR=str(directory), KEY=key.hex(), CONTEXT=CONTEXT.hex(), PYTHONPATH=str(REPO), **extra)
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)


def _wait_for(condition: Any, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"child exited early with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError("child did not reach the expected point in time")
        time.sleep(0.02)


def test_sigkill_mid_write_leaves_previous_checkpoint_loadable(tmp_path: Path, key: bytes) -> None:
    save_checkpoint(_small_state(1), tmp_path, key=key, context=CONTEXT, step=1)
    marker = tmp_path.parent / f"{tmp_path.name}.marker"
    process = _child(_SLOW_CHILD, tmp_path, key, MARKER=str(marker))
    try:
        _wait_for(marker.exists, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    (partial,) = tmp_path.glob(".ckpt-2-*.tmp")
    assert partial.stat().st_size > 2 * (1 << 20)  # two 1 MiB frames made it to disk
    assert not (tmp_path / checkpoint_name(2)).exists()
    skipped = Skipped()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped)
    assert loaded is not None and loaded[1].step == 1 and loaded[0]["step"] == 1
    assert skipped.items == [] and not partial.exists()


@pytest.mark.parametrize("delay", [0.05, 0.37])
def test_sigkill_at_arbitrary_points_of_a_save_loop(tmp_path: Path, key: bytes, delay: float) -> None:
    process = _child(_LOOP_CHILD, tmp_path, key)
    try:
        _wait_for(lambda: len(list(tmp_path.glob("ckpt-*.enc"))) >= 2, process)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    skipped = Skipped()
    loaded = load_latest(tmp_path, key=key, context=CONTEXT, on_corrupt=skipped)
    assert loaded is not None and skipped.items == []
    state, info = loaded
    assert state["step"] == info.step and torch.equal(state["w"], torch.full((500_000,), float(info.step)))
    assert not list(tmp_path.glob(".*.tmp"))


# --- weights: safetensors only ----------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = torch.randn(6, 4)
    embedding = torch.randn(10, 4)
    state = {
        "layer.weight": base.t(),  # non-contiguous view
        "layer.bias": torch.randn(6).to(torch.bfloat16),
        "embed.weight": embedding,
        "head.weight": embedding,  # tied: stored once
        "steps": torch.tensor(12, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "half": base[:3],  # overlaps the transposed view's storage: cloned
    }
    metadata = {"format": "pt", "spec_hash": "abc"}
    path = tmp_path / "model.safetensors"
    digest = save_weights(state, path, metadata)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    buffer = io.BytesIO()
    assert save_weights(state, buffer, metadata) == hashlib.sha256(buffer.getvalue()).hexdigest()

    for source in (path, str(path), buffer.getvalue()):
        tensors, meta = load_weights(source)
        assert meta == metadata and ALIASES_KEY not in meta
        assert set(tensors) == set(state)
        for name, tensor in state.items():
            assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
        assert tensors["head.weight"] is tensors["embed.weight"]

    model = nn.Linear(4, 6)
    save_weights(model.state_dict(), path, {})
    restored = nn.Linear(4, 6)
    restored.load_state_dict(load_weights(path)[0])
    assert torch.equal(restored.weight, model.weight)


def test_save_weights_rejects_bad_metadata(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_weights({"w": torch.zeros(1)}, tmp_path / "w", {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="reserved"):
        save_weights({"w": torch.zeros(1)}, tmp_path / "w", {ALIASES_KEY: "{}"})


def _repad(data: bytes, header_size: int) -> bytes:
    """The same safetensors file with its JSON header padded with spaces to ``header_size`` bytes."""
    (size,) = struct.unpack_from("<Q", data)
    header = data[8 : 8 + size].rstrip()
    return struct.pack("<Q", header_size) + header.ljust(header_size) + data[8 + size :]


def test_decision_is_structural_not_magic(tmp_path: Path) -> None:
    """A valid file whose header length starts b'\\x80\\x02' (a pickle's first bytes) is accepted."""
    data = _repad(safetensors.torch.save({"w": torch.arange(4.0)}), 0x0280)
    assert data[:2] == b"\x80\x02"
    refuse_pickle(data)
    assert torch.equal(safetensors.torch.load(data)["w"], torch.arange(4.0))
    assert torch.equal(load_weights(data)[0]["w"], torch.arange(4.0))


def test_malformed_safetensors_are_refused(tmp_path: Path) -> None:
    good = safetensors.torch.save({"w": torch.arange(4.0), "b": torch.ones(2)}, metadata={"a": "b"})
    (size,) = struct.unpack_from("<Q", good)
    header = json.loads(good[8 : 8 + size])
    bad_cases = {
        "truncated": good[:-3],
        "appended": good + b"\x00",
        "short": good[:5],
        "huge header length": struct.pack("<Q", 1 << 40) + good[8:],
        "not json": struct.pack("<Q", 4) + b"{abc" + good[8 + size :],
        "duplicate keys": _with_header(
            good,
            size,
            b'{"w":'
            + json.dumps(header["w"]).encode()
            + b',"w":'
            + json.dumps(header["w"]).encode()
            + b',"b":'
            + json.dumps(header["b"]).encode()
            + b"}",
        ),
        "bad dtype": _with_header(good, size, json.dumps({**header, "w": {**header["w"], "dtype": "OBJ"}}).encode()),
        "offsets past end": _with_header(
            good, size, json.dumps({**header, "w": {**header["w"], "data_offsets": [0, 10**9]}}).encode()
        ),
        "non-string metadata": _with_header(good, size, json.dumps({**header, "__metadata__": {"a": 1}}).encode()),
        "bad alias": safetensors.torch.save({"w": torch.zeros(1)}, metadata={ALIASES_KEY: '{"x": "missing"}'}),
    }
    for name, data in bad_cases.items():
        with pytest.raises(UnsafeWeights):
            load_weights(data)
        if name != "bad alias":
            with pytest.raises(UnsafeWeights):
                refuse_pickle(data)


def _with_header(good: bytes, size: int, header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + good[8 + size :]


def _api4_payloads(canary: Path) -> dict[str, bytes]:
    """Every way we know to smuggle a pickle that creates ``canary`` when fully unpickled."""
    evil = _Canary(canary)
    payloads = {f"pickle protocol {p}": pickle.dumps(evil, protocol=p) for p in (0, 1, 2, 4, 5)}
    zipped = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": evil}, zipped)
    payloads["torch.save zip"] = zipped.getvalue()
    legacy = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": evil}, legacy, _use_new_zipfile_serialization=False)
    payloads["torch.save legacy"] = legacy.getvalue()
    payloads["gzip pickle"] = gzip.compress(pickle.dumps(evil, protocol=4))
    npy = io.BytesIO()
    np.save(npy, np.array([evil], dtype=object), allow_pickle=True)
    payloads["numpy object array"] = npy.getvalue()
    payloads["safetensors + pickle trailer"] = safetensors.torch.save({"w": torch.zeros(2)}) + pickle.dumps(evil)
    fake = b'{"__metadata__":{"format":"pt"}}'
    payloads["safetensors header over a pickle body"] = struct.pack("<Q", len(fake)) + fake + pickle.dumps(evil)
    return payloads


def test_api4_pickle_payloads_never_run(tmp_path: Path) -> None:
    """API-4: uploads accept safetensors only; no payload is deserialised and the canary is never created."""
    from tests.conftest import write_report

    canary = tmp_path / "canary"
    payloads = _api4_payloads(canary)

    # Control: the payloads are live, so refusing them means something.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Canary(control), protocol=2))
    assert control.exists()

    refused = 0
    reasons: dict[str, str] = {}
    for name, data in payloads.items():
        path = tmp_path / f"upload-{len(reasons)}.safetensors"
        path.write_bytes(data)
        outcomes = []
        for attempt in (
            lambda d=data: refuse_pickle(d),
            lambda d=data: load_weights(d),
            lambda p=path: load_weights(p),
        ):
            try:
                attempt()
            except UnsafeWeights as exc:
                outcomes.append(str(exc))
        reasons[name] = outcomes[0] if outcomes else "ACCEPTED"
        if len(outcomes) == 3:
            refused += 1
    canary_created = canary.exists()
    passed = not canary_created and refused == len(payloads)
    write_report(
        "API-4",
        {"canary_created": canary_created, "payloads": len(payloads), "refused": refused, "reasons": reasons},
        passed,
    )
    assert not canary_created
    assert refused == len(payloads), reasons
    assert "zip" in reasons["torch.save zip"] and "pickle" in reasons["pickle protocol 2"]


def test_crafted_torch_save_zip_is_refused() -> None:
    """A zip laid out exactly like torch.save output (archive/data.pkl, archive/data/0), benign or not."""
    import zipfile

    crafted = io.BytesIO()
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": 1}, protocol=2))
        archive.writestr("archive/data/0", b"\x00" * 8)
        archive.writestr("archive/version", "3\n")
    for data in (crafted.getvalue(), _torch_save_bytes({"w": torch.zeros(3)})):
        with pytest.raises(UnsafeWeights, match="zip"):
            refuse_pickle(data)
        with pytest.raises(UnsafeWeights):
            load_weights(data)


def _torch_save_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_export_matches_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    data = export_torchscript(model, torch.randn(1, 5))
    assert model.training  # mode restored
    loaded = torch.jit.load(io.BytesIO(data))
    model.eval()
    batch = torch.randn(7, 5)
    with torch.no_grad():
        assert torch.allclose(loaded(batch), model(batch))
    with pytest.raises(UnsafeWeights):  # an export is never accepted back as weights
        refuse_pickle(data)


_DIGEST_CHILD = """
import io, json, sys, torch
from workers.training.weights import save_weights
torch.manual_seed(0)
state = {f"layer{i}.{p}": torch.randn(3, 2) for i in range(6) for p in ("weight", "bias")}
state["step"] = torch.tensor(7)
meta = {f"key{i}": str(i) for i in range(8)}
buf = io.BytesIO()
print(save_weights(state, buf, meta))
"""


def test_weights_digest_is_the_same_in_every_process() -> None:
    """The library serialises its header maps in per-process hash order; ``save_weights`` rewrites
    the header canonically, so equal tensors and metadata give one digest across processes (FL-6
    re-aggregation in another worker depends on it)."""
    root = Path(__file__).resolve().parents[2]
    digests = {
        subprocess.run(
            [sys.executable, "-c", _DIGEST_CHILD], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(6)
    }
    assert len(digests) == 1, digests


def test_canonical_header_loads_with_the_library_and_keeps_the_data() -> None:
    state = {
        "b": torch.arange(5, dtype=torch.float32),
        "a": torch.ones(2, 3, dtype=torch.float64),
        "c": torch.tensor(1),
    }
    buf = io.BytesIO()
    digest = save_weights(state, buf, {"z": "1", "a": "2"})
    data = buf.getvalue()
    assert hashlib.sha256(data).hexdigest() == digest
    (n,) = struct.unpack_from("<Q", data, 0)
    assert (8 + n) % 8 == 0
    header = data[8 : 8 + n].rstrip(b" ")
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
    loaded = safetensors.torch.load(data)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    from safetensors import safe_open  # the library's file reader accepts it, metadata intact

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"canon-{os.getpid()}.safetensors"
    path.write_bytes(data)
    try:
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"z": "1", "a": "2"}
    finally:
        path.unlink()
