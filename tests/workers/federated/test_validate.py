"""Update validation (RELIABILITY FL-1): every bad submission is refused with its code, good ones pass,
and the global model stays finite after every round. Figures: ``reports/FL-1.json``.

A submission goes the way a real one does: the site's delta is serialised to safetensors bytes,
:func:`load_update` reads them, and :func:`validate_update` checks the result against the round.
Accepted deltas are aggregated by the strategy registry's FedAvg with ``deltas=True`` (the
convention ``validate`` documents), and :func:`check_global_finite` runs on each new global model.
Auditing each rejection belongs to the Django side (apps/federation), not to these workers.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import Tensor

from tests.conftest import write_report
from workers.federated import validate as fvalidate
from workers.federated.strategies import make_strategy
from workers.federated.validate import (
    CODES,
    MAX_LISTED,
    MAX_NAME_CHARS,
    GlobalNotFinite,
    UpdateRejected,
    check_global_finite,
    clip_update,
    load_update,
    update_l2_norm,
    validate_update,
)

MAX_BYTES = 64 * 1024
BOUND = 1.0
ROUNDS = 3
SITES = ("site-a", "site-b", "site-c")


def _global(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(4, 3, generator=g),
        "layer.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(5, dtype=torch.int64),
    }


def _delta(global_state: Mapping[str, Tensor], seed: int, norm: float = 0.5) -> dict[str, Tensor]:
    """A site's delta with L2 norm ``norm`` over its float tensors (the counter advances by 2)."""
    g = torch.Generator().manual_seed(seed)
    raw = {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else torch.full_like(v, 2)
        for k, v in global_state.items()
    }
    scale = norm / update_l2_norm(raw)
    return {k: v * scale if v.is_floating_point() else v for k, v in raw.items()}


def _bytes(tensors: Mapping[str, Tensor]) -> bytes:
    return safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()})


@dataclass
class Submission:
    """What arrives for one round: payload bytes and the envelope around them."""

    data: bytes
    site_id: str | int = "site-a"
    round_id: int = 1
    nonce: str = "nonce-fresh"
    max_bytes: int = MAX_BYTES
    payload_bytes: int | None = None  # None: len(data)
    seen: Any = field(default_factory=lambda: {"nonce-old"})


def _submit(sub: Submission, global_state: Mapping[str, Tensor], *, round_id: int) -> dict[str, Tensor]:
    update = load_update(sub.data, sub.max_bytes)
    validate_update(
        update,
        global_state,
        round_id=sub.round_id,
        expected_round_id=round_id,
        nonce=sub.nonce,
        seen_nonces=sub.seen,
        site_id=sub.site_id,
        selected_sites=SITES,
        l2_bound=BOUND,
        max_bytes=sub.max_bytes,
        payload_bytes=len(sub.data) if sub.payload_bytes is None else sub.payload_bytes,
    )
    return update


def _with(global_state: Mapping[str, Tensor], seed: int, **changes: Any) -> dict[str, Tensor]:
    d = _delta(global_state, seed)
    for key, value in changes.items():
        if value is None:
            d.pop(key)
        else:
            d[key] = value
    return d


def _poisoned(global_state: Mapping[str, Tensor], seed: int, value: float) -> dict[str, Tensor]:
    d = _delta(global_state, seed)
    d["layer.weight"][1, 2] = value
    return d


# name -> (expected code, builder of the submission for a round's global state and round id)
BAD: dict[str, tuple[str, Callable[[Mapping[str, Tensor], int], Submission]]] = {
    "nan": ("non_finite", lambda g, r: Submission(_bytes(_poisoned(g, 1, math.nan)), round_id=r)),
    "inf": ("non_finite", lambda g, r: Submission(_bytes(_poisoned(g, 2, math.inf)), round_id=r)),
    "minus_inf": ("non_finite", lambda g, r: Submission(_bytes(_poisoned(g, 3, -math.inf)), round_id=r)),
    "wrong_shape": (
        "shape_mismatch",
        lambda g, r: Submission(_bytes(_with(g, 4, **{"layer.weight": torch.zeros(3, 4)})), round_id=r),
    ),
    "wrong_dtype": (
        "dtype_mismatch",
        lambda g, r: Submission(_bytes(_with(g, 5, **{"layer.bias": torch.zeros(4, dtype=torch.float64)})), round_id=r),
    ),
    "missing_key": ("keys_mismatch", lambda g, r: Submission(_bytes(_with(g, 6, **{"layer.bias": None})), round_id=r)),
    "extra_key": ("keys_mismatch", lambda g, r: Submission(_bytes(_with(g, 7, backdoor=torch.ones(2))), round_id=r)),
    "over_l2_bound": ("norm_exceeded", lambda g, r: Submission(_bytes(_delta(g, 8, norm=BOUND * 1.01)), round_id=r)),
    "scaled_model_replacement": (
        "norm_exceeded",
        lambda g, r: Submission(_bytes(_delta(g, 9, norm=BOUND * 100)), round_id=r),
    ),
    "stale_round": ("stale_round", lambda g, r: Submission(_bytes(_delta(g, 10)), round_id=r - 1)),
    "future_round": ("stale_round", lambda g, r: Submission(_bytes(_delta(g, 11)), round_id=r + 1)),
    "replayed_nonce": ("replayed_nonce", lambda g, r: Submission(_bytes(_delta(g, 12)), round_id=r, nonce="nonce-old")),
    "replayed_nonce_store": (
        "replayed_nonce",
        lambda g, r: Submission(_bytes(_delta(g, 13)), round_id=r, seen=lambda n: n == "nonce-fresh"),
    ),
    "missing_nonce": ("replayed_nonce", lambda g, r: Submission(_bytes(_delta(g, 14)), round_id=r, nonce="")),
    "not_selected": ("not_selected", lambda g, r: Submission(_bytes(_delta(g, 15)), round_id=r, site_id="site-z")),
    "forged_site_id_case": (
        "not_selected",
        lambda g, r: Submission(_bytes(_delta(g, 16)), round_id=r, site_id="SITE-A"),
    ),
    "forged_site_id_type": ("not_selected", lambda g, r: Submission(_bytes(_delta(g, 17)), round_id=r, site_id=1)),
    "oversized_payload": ("too_large", lambda g, r: Submission(_bytes(_delta(g, 18)) + b" " * MAX_BYTES, round_id=r)),
    "oversized_declared": (
        "too_large",
        lambda g, r: Submission(_bytes(_delta(g, 19)), round_id=r, payload_bytes=MAX_BYTES + 1),
    ),
    "pickle_payload": ("not_safetensors", lambda g, r: Submission(pickle.dumps(_delta(g, 21)), round_id=r)),
    "torch_save_payload": ("not_safetensors", lambda g, r: Submission(_torch_save(_delta(g, 22)), round_id=r)),
    "truncated_payload": ("not_safetensors", lambda g, r: Submission(_bytes(_delta(g, 23))[:-7], round_id=r)),
}


def _torch_save(tensors: Mapping[str, Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(tensors), buffer)
    return buffer.getvalue()


def _values(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in _values(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [item for v in obj for item in _values(v, f"{path}[]")]
    return [(path, obj)]


def _details_are_safe(details: dict[str, Any]) -> bool:
    """JSON (no NaN), and no tensor values: the only floats are a norm and its bound."""
    json.dumps(details, allow_nan=False)
    return all(not isinstance(v, float) or path in (".norm", ".bound") for path, v in _values(details))


def test_fl1_every_bad_update_is_rejected_and_the_global_stays_finite() -> None:
    global_state = _global()
    cases = rejected = wrong_code = unsafe_details = 0
    good_submitted = good_accepted = finite_rounds = 0
    codes_seen: set[str] = set()
    misses: list[str] = []
    for round_id in range(1, ROUNDS + 1):
        for name, (code, build) in BAD.items():
            cases += 1
            try:
                _submit(build(global_state, round_id), global_state, round_id=round_id)
            except UpdateRejected as exc:
                if exc.code == code:
                    rejected += 1
                    codes_seen.add(exc.code)
                else:
                    wrong_code += 1
                    misses.append(f"round {round_id} {name}: {exc.code} (expected {code})")
                unsafe_details += not _details_are_safe(exc.details)
            else:
                misses.append(f"round {round_id} {name}: accepted")
        accepted: list[tuple[dict[str, Tensor], int]] = []
        good = [
            Submission(
                _bytes(_delta(global_state, 100 * round_id + i)),
                site_id=site,
                round_id=round_id,
                nonce=f"r{round_id}-{site}",
            )
            for i, site in enumerate(SITES)
        ]
        # A delta clipped to exactly the bound passes too (the tolerance covers float32 rounding).
        good.append(
            Submission(
                _bytes(clip_update(_delta(global_state, 7, norm=5.0), BOUND)),
                round_id=round_id,
                nonce=f"r{round_id}-clipped",
            )
        )
        for sub in good:
            good_submitted += 1
            try:
                accepted.append((_submit(sub, global_state, round_id=round_id), 10))
            except UpdateRejected as exc:
                misses.append(f"round {round_id} good update from {sub.site_id}: {exc}")
            else:
                good_accepted += 1
        global_state = make_strategy("fedavg").aggregate(global_state, accepted, deltas=True)
        check_global_finite(global_state)
        finite_rounds += 1

    # Control: had the NaN update been accepted, the finiteness check would have caught the result.
    nan_delta = _poisoned(_global(), 1, math.nan)
    poisoned_global = make_strategy("fedavg").aggregate(
        _global(), [(nan_delta, 1), (_delta(_global(), 2), 1)], deltas=True
    )
    control_caught = False
    try:
        check_global_finite(poisoned_global)
    except GlobalNotFinite:
        control_caught = True

    figures = {
        "cases": cases,
        "rejected": rejected,
        "rejected_with_other_code": wrong_code,
        "case_kinds": len(BAD),
        "rounds": ROUNDS,
        "codes": sorted(codes_seen),
        "details_unsafe": unsafe_details,
        "good_submitted": good_submitted,
        "good_accepted": good_accepted,
        "global_finite_rounds": finite_rounds,
        "control_nan_global_caught": control_caught,
        "audit": "rejections are audited by the Django side (apps/federation); not measured here",
    }
    passed = (
        rejected == cases
        and good_accepted == good_submitted
        and finite_rounds == ROUNDS
        and control_caught
        and not unsafe_details
    )
    write_report("FL-1", figures, passed)
    assert not misses, misses
    assert passed, figures
    assert set(CODES) - codes_seen == set(), set(CODES) - codes_seen


# --- the codes one by one ------------------------------------------------------------------------------
def _check(update: Any, global_state: Mapping[str, Tensor] | None = None, **overrides: Any) -> None:
    kwargs: dict[str, Any] = {
        "round_id": 1,
        "expected_round_id": 1,
        "nonce": "n",
        "seen_nonces": set(),
        "site_id": "site-a",
        "selected_sites": SITES,
        "l2_bound": BOUND,
        "max_bytes": MAX_BYTES,
        "payload_bytes": 0,
    }
    kwargs.update(overrides)
    validate_update(update, _global() if global_state is None else global_state, **kwargs)


def _code(update: Any, **overrides: Any) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as info:
        _check(update, **overrides)
    return info.value


def test_good_update_passes_and_counters_are_not_in_the_norm() -> None:
    d = _delta(_global(), 1, norm=BOUND)
    d["bn.num_batches_tracked"] = torch.tensor(10**6)  # integer entries are counters, not parameters
    _check(d)
    _check(d, l2_bound=None)


def test_keys_mismatch_lists_missing_and_extra_names_cut_to_size() -> None:
    d = _delta(_global(), 1)
    d.pop("layer.bias")
    for i in range(MAX_LISTED + 5):
        d[f"{'x' * 1000}{i}"] = torch.zeros(1)
    exc = _code(d)
    assert exc.code == "keys_mismatch"
    assert exc.details["missing"] == ["layer.bias"]
    assert exc.details["num_extra"] == MAX_LISTED + 5
    assert len(exc.details["extra"]) == MAX_LISTED
    assert all(len(name) == MAX_NAME_CHARS for name in exc.details["extra"])


def test_shape_and_dtype_details_name_the_tensor() -> None:
    exc = _code(_with(_global(), 1, **{"layer.weight": torch.zeros(2, 6)}))
    assert exc.details == {"tensors": [{"key": "layer.weight", "expected": [4, 3], "got": [2, 6]}], "num_tensors": 1}
    exc = _code(_with(_global(), 1, **{"layer.bias": torch.zeros(4, dtype=torch.bfloat16)}))
    assert exc.code == "dtype_mismatch"
    assert exc.details["tensors"] == [{"key": "layer.bias", "expected": "torch.float32", "got": "torch.bfloat16"}]
    assert _code(_with(_global(), 1, **{"layer.bias": [0.0] * 4})).code == "dtype_mismatch"
    assert _code(_with(_global(), 1, **{"layer.bias": torch.zeros(4).to_sparse()})).code == "dtype_mismatch"
    assert _code([1, 2]).code == "keys_mismatch"


def test_non_finite_details_count_without_values() -> None:
    d = _poisoned(_global(), 1, math.nan)
    d["layer.bias"][0] = math.inf
    exc = _code(d)
    assert exc.details == {"keys": ["layer.weight", "layer.bias"], "num_keys": 2, "num_nan": 1, "num_inf": 1}


def test_norm_is_the_float64_l2_norm_of_the_delta() -> None:
    d = _delta(_global(), 3, norm=2.0)
    flat = torch.cat([v.double().flatten() for v in d.values() if v.is_floating_point()])
    assert update_l2_norm(d) == pytest.approx(float(flat.norm()), rel=1e-12)
    exc = _code(d)
    assert exc.code == "norm_exceeded"
    assert exc.details["bound"] == BOUND
    assert exc.details["norm"] == pytest.approx(2.0, rel=1e-6)
    big = {k: v * 1e30 if v.is_floating_point() else v for k, v in _delta(_global(), 3).items()}
    assert math.isfinite(update_l2_norm(big))  # no overflow from squaring


def test_clip_update_scales_floats_only() -> None:
    d = _delta(_global(), 4, norm=3.0)
    clipped = clip_update(d, 1.5)
    assert update_l2_norm(clipped) == pytest.approx(1.5, rel=1e-6)
    assert torch.equal(clipped["bn.num_batches_tracked"], d["bn.num_batches_tracked"])
    assert all(clipped[k].dtype == d[k].dtype for k in d)
    small = _delta(_global(), 4, norm=0.5)
    assert all(torch.equal(clip_update(small, 1.5)[k], small[k]) for k in small)


def test_identity_checks_come_before_any_tensor_is_read() -> None:
    # Not even a mapping: the identity, round and nonce checks refuse it first.
    assert _code(object(), site_id="site-z").code == "not_selected"
    assert _code(object(), round_id=0).code == "stale_round"
    assert _code(object(), round_id=True).code == "stale_round"
    assert _code(object(), nonce="n", seen_nonces={"n"}).code == "replayed_nonce"
    assert _code(object(), nonce="x" * 257).code == "replayed_nonce"
    assert _code(object(), payload_bytes=MAX_BYTES + 1).code == "too_large"
    # Tensors larger than the limit, however few bytes the caller says arrived.
    exc = _code({"huge": torch.zeros(MAX_BYTES // 4 + 1)}, payload_bytes=10)
    assert exc.code == "too_large"
    assert exc.details["tensor_bytes"] == MAX_BYTES + 4


def test_load_update_refuses_oversized_payloads_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(data: bytes) -> Any:
        raise AssertionError("parsed an oversized payload")

    monkeypatch.setattr(fvalidate, "load_weights", must_not_parse)
    with pytest.raises(UpdateRejected) as info:
        load_update(b"\x80\x04" + b"x" * 100, max_bytes=50)
    assert info.value.code == "too_large"
    assert info.value.details == {"payload_bytes": 102, "max_bytes": 50}


def test_load_update_returns_the_tensors() -> None:
    d = _delta(_global(), 5)
    loaded = load_update(memoryview(_bytes(d)), MAX_BYTES)
    assert set(loaded) == set(d)
    assert all(torch.equal(loaded[k], d[k]) for k in d)


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pickle executed",))


def test_load_update_never_unpickles(capsys: pytest.CaptureFixture[str]) -> None:
    for data in (pickle.dumps(_Boom()), pickle.dumps({"w": _Boom()}, protocol=0), _torch_save({"w": torch.ones(1)})):
        with pytest.raises(UpdateRejected) as info:
            load_update(data, MAX_BYTES)
        assert info.value.code == "not_safetensors"
    assert "pickle executed" not in capsys.readouterr().out


def test_check_global_finite() -> None:
    check_global_finite(_global())
    bad = _global()
    bad["layer.bias"][2] = math.nan
    with pytest.raises(GlobalNotFinite) as info:
        check_global_finite(bad)
    assert info.value.details == {"keys": ["layer.bias"], "num_keys": 1, "num_nan": 1, "num_inf": 0}


def test_strategies_consume_the_delta_as_validated() -> None:
    """The validated delta is what FedAvg adds to the global with deltas=True (one site: global + delta)."""
    g = _global()
    d = _delta(g, 6)
    _check(d)
    new = make_strategy("fedavg").aggregate(g, [(d, 3)], deltas=True)
    assert torch.allclose(new["layer.weight"], g["layer.weight"] + d["layer.weight"])
    assert int(new["bn.num_batches_tracked"]) == int(g["bn.num_batches_tracked"]) + 2


def test_unknown_code_is_a_bug() -> None:
    with pytest.raises(AssertionError):
        UpdateRejected("nope", "message")
