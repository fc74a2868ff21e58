"""Model registry: a name in a :class:`~workers.training.spec.TrainSpec` becomes an ``nn.Module``.

Each builder takes the spec's ``params`` (JSON) and the data's ``input_info`` (what
:mod:`workers.training.data` learned: ``n_features``, ``n_outputs``, ``vocab_size``, ``pad_id``,
``max_len``, ``channels``, ``image_size``; ``tokenizer`` when a model's own tokenizer encoded the
text) so a tenant can only choose hyper-parameters, never shapes. Unknown params raise
``ValueError`` rather than being silently ignored.

Each model declares its parameters when it registers (``params=``: name -> type, bounds, default;
see :mod:`workers.training.models.params`). That one schema is what :meth:`TrainSpec.validate`
checks at job creation (``model.params.hidden[0]``-style field paths) and what :func:`build`
resolves before calling the builder, so a spec accepted by the API is one the engine can build.

A model may also declare, when it registers:

* ``check(spec) -> {field path: [messages]}``: spec-level checks of its params (and of the data
  options it depends on), which :meth:`TrainSpec.validate` reports as a ``SpecError`` before any
  data is read;
* ``tokenizer() -> TextTokenizer``: its own text preprocessing. A pretrained text model needs its
  vocabulary, so :func:`workers.training.data.prepare_text` then encodes with it instead of
  building a word vocabulary from the data;
* ``inputs``: the kind of input it reads (``"tabular"``, the default, ``"text"`` or ``"image"``),
  so a federation can refuse, from the schemas alone, a model that cannot read the sites' data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from workers.training.models.params import ParamError, Schema, errors_for, resolve

if TYPE_CHECKING:
    from workers.training.spec import TrainSpec

Builder = Callable[[dict[str, Any], dict[str, Any]], nn.Module]
Checker = Callable[["TrainSpec"], dict[str, list[str]]]


class TextTokenizer(Protocol):
    """Text preprocessing a model brings with it; ``fingerprint`` names its vocabulary (stored with encoders)."""

    name: str
    pad_id: int
    vocab_size: int
    max_len: int  # the longest sequence the model accepts
    fingerprint: str

    def encode(self, texts: Sequence[str | None], max_len: int) -> torch.Tensor:
        """``(len(texts), max_len)`` int64 ids, right-padded with ``pad_id``."""
        ...


_REGISTRY: dict[str, Builder] = {}
_PARAMS: dict[str, Schema] = {}
_CHECKS: dict[str, Checker] = {}
_TOKENIZERS: dict[str, Callable[[], TextTokenizer]] = {}
_INPUTS: dict[str, str] = {}
_DESCRIPTIONS: dict[str, str] = {}
INPUT_KINDS = ("tabular", "text", "image")


def register(
    name: str,
    *,
    params: Schema,
    check: Checker | None = None,
    tokenizer: Callable[[], TextTokenizer] | None = None,
    inputs: str = "tabular",
    description: str = "",
) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn(params, input_info) -> nn.Module`` buildable as ``name``. The builder
    receives ``params`` already checked against the declared schema and merged over its defaults."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {', '.join(INPUT_KINDS)}.")

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is already registered.")
        _REGISTRY[name] = fn
        _PARAMS[name] = params
        _INPUTS[name] = inputs
        _DESCRIPTIONS[name] = description
        if check is not None:
            _CHECKS[name] = check
        if tokenizer is not None:
            _TOKENIZERS[name] = tokenizer
        return fn

    return deco


def param_schema(name: str) -> Schema:
    """The declared parameters of model ``name`` (KeyError when unknown)."""
    return _PARAMS[name]


def check_spec(spec: TrainSpec) -> dict[str, list[str]]:
    """The spec's ``model.params`` against the model's declared schema, then the model's own spec
    checks (cross-field, environment); empty when valid or the name is unknown."""
    schema = _PARAMS.get(spec.model.name)
    if schema is None:
        return {}
    errors = errors_for(schema, spec.model.params)
    if errors:
        return errors
    checker = _CHECKS.get(spec.model.name)
    return checker(spec) if checker is not None else {}


def text_tokenizer(name: str) -> TextTokenizer | None:
    """The tokenizer model ``name`` declares, or ``None`` when it uses the data's word vocabulary."""
    factory = _TOKENIZERS.get(name)
    return factory() if factory is not None else None


def model_inputs(name: str) -> str | None:
    """The kind of input model ``name`` reads (``"tabular"``, ``"text"``, ``"image"``), or ``None`` when unknown."""
    return _INPUTS.get(name)


def build(name: str, params: dict[str, Any], input_info: dict[str, Any]) -> nn.Module:
    if name not in _REGISTRY:
        raise KeyError(f"Unknown model {name!r}; one of {', '.join(available())}.")
    return _REGISTRY[name](resolve(_PARAMS[name], dict(params)), dict(input_info))


def available() -> list[str]:
    return sorted(_REGISTRY)


def catalogue() -> list[dict[str, Any]]:
    """Every registered model as JSON: ``name``, ``inputs``, a one-line ``description`` and
    ``params`` (name -> type, bounds, default: the schema :meth:`TrainSpec.validate` checks), so a
    client can build a valid ``model`` section."""
    out = []
    for name in available():
        out.append({
            "name": name,
            "inputs": _INPUTS.get(name, "tabular"),
            "description": _DESCRIPTIONS.get(name, ""),
            "params": {k: p.describe() for k, p in _PARAMS[name].items()},
        })  # fmt: skip
    return out


def take(params: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """Return ``allowed`` defaults overridden by ``params``; unknown keys are an error. (Builders
    get resolved params from :func:`build`; kept for callers that merge by hand.)"""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown model parameter(s): {', '.join(unknown)}.")
    return {**allowed, **params}


# Importing the modules registers them.
from workers.training.models import (  # noqa: E402
    cnn_small,
    logistic_regression,
    minilm,
    mlp,
    text_bag,
    text_transformer,
)

__all__ = [
    "ParamError",
    "TextTokenizer",
    "available",
    "build",
    "catalogue",
    "check_spec",
    "cnn_small",
    "logistic_regression",
    "minilm",
    "mlp",
    "model_inputs",
    "param_schema",
    "register",
    "take",
    "text_bag",
    "text_tokenizer",
    "text_transformer",
]
