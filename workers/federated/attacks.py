"""Byzantine attacks on federated updates: what ``f`` malicious sites send instead of an honest delta.

These are the attacks of RELIABILITY FL-2, as pure functions over **deltas** (``local - global``,
the convention of ``workers.federated.rounds`` and ``aggregate(..., deltas=True)``), so a test or a
red-team run can put them in front of any strategy of the registry:

* :func:`sign_flip` — the attacker's own honest delta, negated and scaled (``-scale * delta``).
* :func:`gaussian_noise` — a random delta, ``N(0, sigma^2)`` per coordinate, from a seeded generator.
* :func:`boost` with :func:`replacement_factor` — model replacement (Bagdasaryan et al. 2020): a
  malicious delta scaled by ``n / f``, so that under FedAvg's ``1/n`` averaging the ``f`` colluders
  move the global model all the way to their own model.
* :func:`flip_labels` — data poisoning: the attacker trains on ``num_classes - 1 - y`` (Fang et al.
  2020) and sends the resulting delta as if it were honest.
* :func:`alie` with :func:`alie_z` — "A little is enough" (Baruah et al. 2019): every colluder sends
  ``mean - z * std`` of the honest deltas, coordinate by coordinate, with ``z`` chosen from ``n``
  and ``f`` so that the malicious value still looks like a majority's.

Only floating-point entries are attacked; other entries (integer buffers such as
``num_batches_tracked``) are passed through unchanged, as a real client would have to in order to
pass ``workers.federated.validate``. Every function returns new tensors and leaves its inputs alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import torch
from torch import Tensor

ATTACKS = ("sign_flip", "gaussian", "scaling", "label_flip", "alie")
"""The attacks of FL-2 by name, in the order the report lists them."""


def sign_flip(delta: Mapping[str, Tensor], *, scale: float = 1.0) -> dict[str, Tensor]:
    """``-scale * delta`` on the floating entries.

    Args:
        delta: the attacker's honest delta.
        scale: magnitude of the reversed step (``1.0`` is the plain sign flip; larger values are
            the "reversed gradient" variants that stall or reverse a mean).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"sign_flip scale must be finite and > 0, got {scale!r}")
    return {k: -scale * t if t.is_floating_point() else t.clone() for k, t in delta.items()}


def gaussian_noise(delta: Mapping[str, Tensor], *, sigma: float, generator: torch.Generator) -> dict[str, Tensor]:
    """A delta of ``delta``'s shapes and dtypes drawn from ``N(0, sigma^2)`` per coordinate.

    Args:
        delta: any delta of the round (only its structure is used).
        sigma: standard deviation of each coordinate.
        generator: the source of randomness (seed it for a reproducible attack).
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"gaussian sigma must be finite and >= 0, got {sigma!r}")
    out: dict[str, Tensor] = {}
    for k, t in delta.items():
        if t.is_floating_point():
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float64) * sigma
            out[k] = noise.to(dtype=t.dtype, device=t.device)
        else:
            out[k] = t.clone()
    return out


def replacement_factor(num_participants: int, num_byzantine: int) -> float:
    """Bagdasaryan et al.'s boost ``gamma = n / f`` for ``f`` colluders among ``n`` equally weighted
    participants (server learning rate 1): FedAvg then adds ``f * gamma / n = 1`` times the
    malicious delta, i.e. replaces the global model with the attackers' one (plus the honest mean)."""
    if not 0 < num_byzantine <= num_participants:
        raise ValueError(f"need 0 < f <= n, got n={num_participants}, f={num_byzantine}")
    return num_participants / num_byzantine


def boost(delta: Mapping[str, Tensor], *, factor: float) -> dict[str, Tensor]:
    """``factor * delta`` on the floating entries (the scaling / model-replacement attack)."""
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"boost factor must be finite and > 0, got {factor!r}")
    return {k: factor * t if t.is_floating_point() else t.clone() for k, t in delta.items()}


def flip_labels(labels: Tensor, num_classes: int) -> Tensor:
    """``num_classes - 1 - y``: the label-flipping data poisoning of Fang et al. 2020 (digit 0 is
    learnt as 9, 1 as 8, ...). ``labels`` are integer class indices in ``[0, num_classes)``."""
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return (num_classes - 1) - labels


def alie_z(num_participants: int, num_byzantine: int) -> float:
    """Baruah et al. 2019's ``z_max``: with ``s = floor(n/2 + 1) - f`` honest participants the
    attackers need on their side for a majority, ``z = Phi^-1((n - s) / n)``.

    Raises:
        ValueError: unless ``0 < f < n`` and the formula's quantile is in ``(0, 1)``.
    """
    n, f = num_participants, num_byzantine
    if not 0 < f < n:
        raise ValueError(f"need 0 < f < n, got n={n}, f={f}")
    s = n // 2 + 1 - f
    quantile = (n - s) / n
    if not 0 < quantile < 1:
        raise ValueError(f"ALIE's quantile (n - s)/n = {quantile:g} is outside (0, 1) for n={n}, f={f}")
    return NormalDist().inv_cdf(quantile)


def alie(
    honest: Sequence[Mapping[str, Tensor]],
    *,
    num_participants: int,
    num_byzantine: int,
    z: float | None = None,
) -> dict[str, Tensor]:
    """The delta every ALIE colluder sends: per coordinate ``mean - z * std`` of the honest deltas.

    The attackers are taken to know the honest deltas of the round (the strong, omniscient form;
    the paper's attackers estimate the same statistics from their own data). ``std`` is the sample
    standard deviation (Bessel-corrected), computed in float64.

    Args:
        honest: the round's honest deltas (at least two), all with the same keys and shapes.
        num_participants: ``n``, honest and Byzantine together.
        num_byzantine: ``f``.
        z: overrides :func:`alie_z` (``n``, ``f``).
    """
    if len(honest) < 2:
        raise ValueError(f"ALIE needs at least 2 honest deltas for a standard deviation, got {len(honest)}")
    z_value = alie_z(num_participants, num_byzantine) if z is None else z
    out: dict[str, Tensor] = {}
    for k, first in honest[0].items():
        if not first.is_floating_point():
            out[k] = first.clone()
            continue
        stacked = torch.stack([d[k].to(torch.float64) for d in honest])
        value = stacked.mean(dim=0) - z_value * stacked.std(dim=0, correction=1)
        out[k] = value.to(dtype=first.dtype, device=first.device)
    return out
