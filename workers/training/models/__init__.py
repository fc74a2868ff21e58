"""Model registry: a name in a :class:`~workers.training.spec.TrainSpec` becomes an ``nn.Module``.

Each builder takes the spec's ``params`` (JSON) and the data's ``input_info`` (what
:mod:`workers.training.data` learned: ``n_features``, ``n_outputs``, ``vocab_size``, ``pad_id``,
``max_len``, ``channels``, ``image_size``) so a tenant can only choose hyper-parameters, never
shapes. Unknown params raise ``ValueError`` rather than being silently ignored.

Note: a MiniLM fine-tune module (pretrained text encoder) is planned; it will register here as
``minilm`` and need a weights artifact shipped with the worker image (workers have no network).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

Builder = Callable[[dict[str, Any], dict[str, Any]], nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn(params, input_info) -> nn.Module`` buildable as ``name``."""

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is already registered.")
        _REGISTRY[name] = fn
        return fn

    return deco


def build(name: str, params: dict[str, Any], input_info: dict[str, Any]) -> nn.Module:
    if name not in _REGISTRY:
        raise KeyError(f"Unknown model {name!r}; one of {', '.join(available())}.")
    return _REGISTRY[name](dict(params), dict(input_info))


def available() -> list[str]:
    return sorted(_REGISTRY)


def take(params: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """Return ``allowed`` defaults overridden by ``params``; unknown keys are an error."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown model parameter(s): {', '.join(unknown)}.")
    return {**allowed, **params}


# Importing the modules registers them.
from workers.training.models import cnn_small, logistic_regression, mlp, text_bag, text_transformer  # noqa: E402

__all__ = [
    "available",
    "build",
    "cnn_small",
    "logistic_regression",
    "mlp",
    "register",
    "take",
    "text_bag",
    "text_transformer",
]
