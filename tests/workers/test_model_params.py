"""Model parameters: one declared schema per model, checked by ``TrainSpec.validate`` at job
creation (with field paths) and resolved by ``build`` on the worker -- the same source of truth."""

from __future__ import annotations

from typing import Any

import pytest

from workers.training.models import available, build, param_schema
from workers.training.models.params import Bool, Float, Int, IntList, ParamError, defaults, errors_for, resolve
from workers.training.spec import SpecError, TrainSpec


def _errors(name: str, params: Any) -> dict[str, list[str]]:
    try:
        TrainSpec.from_dict({"model": {"name": name, "params": params}}).validate()
    except SpecError as exc:
        return exc.fields
    return {}


def test_every_model_declares_a_schema_and_its_defaults_validate() -> None:
    for name in available():
        schema = param_schema(name)
        assert errors_for(schema, defaults(schema)) == {}, name
        assert {k: v for k, v in _errors(name, {}).items() if k.startswith("model.params")} == {}, name


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"hidden": ["abc"]}, {"model.params.hidden[0]"}),
        ({"nope": 1}, {"model.params.nope"}),
        ({"hidden": [100000]}, {"model.params.hidden[0]"}),
        ({"hidden": [1] * 17}, {"model.params.hidden"}),
        ({"hidden": [True]}, {"model.params.hidden[0]"}),
        ({"dropout": 1.0}, {"model.params.dropout"}),
        ({"dropout": "0.1"}, {"model.params.dropout"}),
        ({"dropout": float("nan")}, {"model.params.dropout"}),
        ({"hidden": [], "dropout": 0.5}, set()),
    ],
)
def test_mlp_params_are_checked_with_paths(params: dict[str, Any], expected: set[str]) -> None:
    assert set(_errors("mlp", params)) == expected


def test_build_uses_the_same_schema() -> None:
    info = {"n_features": 3, "n_outputs": 2}
    model = build("mlp", {"hidden": [5]}, info)
    assert [m.out_features for m in model if hasattr(m, "out_features")] == [5, 2]
    for bad in ({"hidden": ["abc"]}, {"nope": 1}, {"hidden": [100000]}):
        with pytest.raises(ParamError) as ei:
            build("mlp", bad, info)
        assert set(ei.value.fields) == set(_errors("mlp", bad))
    with pytest.raises(ValueError, match="Unknown model parameter"):
        build("logistic_regression", {"c": 1}, info)


def test_cross_field_and_nullable() -> None:
    assert set(_errors("text_transformer", {"dim": 30, "heads": 4})) == {"model.params.dim"}
    assert _errors("text_transformer", {"dim": 32, "heads": 4}) == {}
    schema = {"n": Int(None, 0, 3, nullable=True), "b": Bool(False), "f": Float(0.5, 0.0, 1.0)}
    assert resolve(schema, {"n": None}) == {"n": None, "b": False, "f": 0.5}
    assert set(errors_for(schema, {"n": 4, "b": 1, "f": -1})) == {"model.params.n", "model.params.b", "model.params.f"}
    assert errors_for({"h": IntList((1,), 1, 2, 2)}, {"h": [1, 3, "x"]}) == {
        "model.params.h": ["At most 2 items."],
        "model.params.h[1]": ["Expected an integer from 1 to 2."],
        "model.params.h[2]": ["Expected an integer from 1 to 2."],
    }
    assert errors_for({}, []) == {"model.params": ["Expected an object."]}
