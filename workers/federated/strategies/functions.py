"""The aggregation mathematics as plain functions over model states (Flower's ``aggregate.py``).

The strategy classes add parameters, requirements and state around these. Intermediate float
results stay in the accumulator dtype (``base.accumulator_dtype``) and are rounded once to the
global's dtype: by :func:`finish` for the mean, per block for the coordinate-wise rules.

Memory
------
* :func:`weighted_mean` streams: it holds one accumulator per floating entry (2x a float32 update,
  as float64) plus the update being added, and drops each update before taking the next, so the
  number of participants does not change its footprint. Updates are widened and added a slice
  (``STEP_ELEMENTS``) at a time through :class:`Scratch` buffers: torch would otherwise make a
  full-size float64 copy of each tensor for the mixed-dtype add (measured: 2x the tensor).
* The coordinate-wise rules (median, trimmed mean, Bulyan) and the Krum distances need every
  participant's value of a coordinate at once: they hold all ``n`` updates (``n x`` one update,
  usually the caller's tensors, not copies), and work through each tensor in column blocks of
  about ``CHUNK_ELEMENTS`` elements in total, so their scratch space (the stacked block, its
  sorted copy and int64 sort indices, float64 temporaries: about 40 bytes an element, ~40 MiB)
  does not grow with the model or with ``n``; results are written straight into tensors of the
  global's dtype. A non-contiguous update tensor is flattened with a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.federated.strategies.base import Tensors, Update, accumulator_dtype, check_update, is_aggregated

CHUNK_ELEMENTS = 1 << 20
"""Participants x columns held at once by the stacking rules (bounds their scratch memory)."""

STEP_ELEMENTS = 1 << 18
"""Elements per slice of the streaming element-wise passes (bounds their temporaries)."""

_ROWSUM_BLOCK = 1024


def slices(numel: int, width: int = STEP_ELEMENTS) -> Iterator[slice]:
    """Consecutive ``slice`` objects of at most ``width`` covering ``range(numel)``."""
    for start in range(0, numel, width):
        yield slice(start, min(numel, start + width))


class Scratch:
    """Reusable slice-sized buffers, one per (dtype, device).

    torch evaluates a mixed-dtype in-place op (``acc64.add_(x32)``) through a full-size converted
    copy of ``x``, so the streaming passes convert one slice at a time into these buffers
    (``copy_`` converts without a temporary) and then operate in a single dtype. Each step is one
    correctly rounded IEEE operation (no ``alpha=``, which torch may evaluate as a fused
    multiply-add on some CPUs and not on others).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, dtype: torch.dtype, device: torch.device, size: int) -> torch.Tensor:
        key = (dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[key] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size]


def add_scaled(acc: torch.Tensor, tensor: torch.Tensor, weight: float | None, scratch: Scratch) -> None:
    """``acc += weight * tensor`` (``acc += tensor`` for ``None``) in ``acc``'s dtype, slice by slice.

    ``acc`` must be contiguous; ``tensor`` may have another dtype or device.
    """
    flat_acc = acc.view(-1)
    flat = tensor.reshape(-1)  # a view unless the tensor is non-contiguous
    for part in slices(flat_acc.numel()):
        buffer = scratch.get(acc.dtype, acc.device, part.stop - part.start)
        buffer.copy_(flat[part])
        if weight is not None:
            buffer.mul_(weight)
        flat_acc[part].add_(buffer)


# --- the streaming weighted mean -----------------------------------------------------------------
@dataclass
class MeanResult:
    """Output of :func:`weighted_mean`.

    Attributes:
        floats: example-weighted mean of each floating entry, in its accumulator dtype, as values
            or as deltas (whichever the updates were).
        others: every non-floating entry's final value (element-wise max; global added for deltas).
        num_participants: updates consumed.
        total_weight: sum of their ``num_examples``.
    """

    floats: dict[str, torch.Tensor]
    others: dict[str, torch.Tensor]
    num_participants: int
    total_weight: int


def weighted_mean(global_state: Tensors, updates: Iterable[Update], *, deltas: bool) -> MeanResult:
    """Example-weighted mean ``sum(n_i * x_i) / sum(n_i)``, consuming ``updates`` one at a time.

    Each update is checked (``base.check_update``) and added as ``acc += n_i * x_i`` in the
    accumulator dtype, in participant order; the division comes once at the end. Non-floating
    entries keep a running element-wise maximum.

    Raises:
        ValueError: no updates, a bad update, or a total weight of 0.
    """
    sums: dict[str, torch.Tensor] = {}
    others: dict[str, torch.Tensor] = {}
    for key, ref in global_state.items():
        if is_aggregated(ref):
            sums[key] = torch.zeros(ref.shape, dtype=accumulator_dtype(ref.dtype), device=ref.device)
    scratch = Scratch()
    num_participants = 0
    total_weight = 0
    # Not enumerate(): it keeps the previous item alive while the iterator builds the next one.
    for update in updates:
        tensors, num_examples = check_update(global_state, update, num_participants)
        for key, ref in global_state.items():
            if key in sums:
                add_scaled(sums[key], tensors[key], num_examples, scratch)
            elif key in others:
                torch.maximum(others[key], tensors[key].to(ref.device), out=others[key])
            else:
                others[key] = tensors[key].to(ref.device, copy=True)
        num_participants += 1
        total_weight += num_examples
        # Drop our references before the iterator builds the next update.
        del update, tensors
    if num_participants == 0:
        raise ValueError("no updates to aggregate")
    if total_weight == 0:
        raise ValueError("the updates' num_examples sum to 0: a weighted mean is undefined")
    for acc in sums.values():
        acc.div_(total_weight)
    if deltas:
        for key, value in others.items():
            others[key] = global_state[key].to(value.device) + value
    return MeanResult(sums, others, num_participants, total_weight)


# --- representation helpers ----------------------------------------------------------------------
def as_values(global_state: Tensors, floats: dict[str, torch.Tensor], *, deltas: bool) -> dict[str, torch.Tensor]:
    """Turn accumulator-dtype deltas into full values in place (``delta + global``)."""
    if deltas:
        scratch = Scratch()
        for key, value in floats.items():
            add_scaled(value, global_state[key], None, scratch)
    return floats


def as_deltas(global_state: Tensors, floats: dict[str, torch.Tensor], *, deltas: bool) -> dict[str, torch.Tensor]:
    """Turn accumulator-dtype values into deltas from the global state in place (``value - global``)."""
    if not deltas:
        scratch = Scratch()
        for key, value in floats.items():
            add_scaled(value, global_state[key], -1.0, scratch)
    return floats


def finish(
    global_state: Tensors, floats: dict[str, torch.Tensor], others: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Assemble the new global state in the global's key order, dtype and device.

    Every tensor in ``floats`` and ``others`` must be the caller's own (never an input's), since one
    already in the right dtype is returned as is. ``floats`` is emptied as it goes, so
    accumulators are freed while the result grows.
    """
    out: dict[str, torch.Tensor] = {}
    for key, ref in global_state.items():
        source = floats.pop(key) if key in floats else others[key]
        out[key] = source.to(device=ref.device, dtype=ref.dtype)
        del source
    return out


# --- helpers of the stacking rules ---------------------------------------------------------------
def materialise(global_state: Tensors, updates: Iterable[Update]) -> list[tuple[Tensors, int]]:
    """Check every update and hold them (the coordinate-wise rules need all at once)."""
    held = [check_update(global_state, update, index) for index, update in enumerate(updates)]
    if not held:
        raise ValueError("no updates to aggregate")
    return held


def column_blocks(numel: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` column ranges so that ``rows x (end - start) <= CHUNK_ELEMENTS`` (>= 1 column)."""
    width = max(1, CHUNK_ELEMENTS // max(1, rows))
    for start in range(0, numel, width):
        yield start, min(numel, start + width)


def _flats(states: Sequence[Tensors], key: str, device: torch.device) -> list[torch.Tensor]:
    return [state[key].to(device).reshape(-1) for state in states]


def _stack(flats: Sequence[torch.Tensor], start: int, end: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    block = torch.stack([flat[start:end] for flat in flats])
    return block if dtype is None else block.to(dtype)


def rowsum(x: torch.Tensor) -> torch.Tensor:
    """Row sums of a 2-D tensor whose rounding does not depend on the number of threads.

    ``torch.sum`` to a single value splits the input across threads and combines partial sums, so
    its last bits depend on the thread count. A reduction with several outputs is parallelised
    over the outputs instead (each summed whole by one thread), and one with a single output under
    torch's 32768-element grain size is serial. So this sums blocks of 1024 columns (several
    outputs), then the block sums, until a row has at most 1024 entries.
    """
    assert x.dim() == 2
    while x.shape[1] > _ROWSUM_BLOCK:
        pad = (-x.shape[1]) % _ROWSUM_BLOCK
        if pad:
            x = F.pad(x, (0, pad))
        x = x.reshape(x.shape[0], -1, _ROWSUM_BLOCK).sum(dim=2)
    return x.sum(dim=1)


def lower_median_others(global_state: Tensors, states: Sequence[Tensors], *, deltas: bool) -> dict[str, torch.Tensor]:
    """Non-floating entries under the robust rules: the element-wise lower median (a real value)."""
    out: dict[str, torch.Tensor] = {}
    for key, ref in global_state.items():
        if is_aggregated(ref):
            continue
        stacked = torch.stack([state[key].to(ref.device) for state in states])
        sortable = stacked.to(torch.uint8) if stacked.dtype == torch.bool else stacked
        value = sortable.sort(dim=0).values[(len(states) - 1) // 2].to(ref.dtype).clone()
        out[key] = global_state[key] + value if deltas else value
    return out


Combine = Callable[[torch.Tensor, torch.dtype], torch.Tensor]
"""``(block of shape (n, columns) in the entries' dtype, accumulator dtype) -> (columns,)``."""


def coordinatewise(
    global_state: Tensors, states: Sequence[Tensors], combine: Combine, *, deltas: bool
) -> dict[str, torch.Tensor]:
    """Apply ``combine`` to every column block of every floating entry; return full values.

    The result is written straight into a tensor of the global's dtype; for deltas the global
    is added to each block in the accumulator dtype first, so the value is rounded once.
    """
    out: dict[str, torch.Tensor] = {}
    for key, ref in global_state.items():
        if not is_aggregated(ref):
            continue
        acc = accumulator_dtype(ref.dtype)
        flats = _flats(states, key, ref.device)
        base = ref.reshape(-1)
        result = torch.empty(ref.numel(), dtype=ref.dtype, device=ref.device)
        for start, end in column_blocks(ref.numel(), len(states)):
            values = combine(_stack(flats, start, end), acc)
            if deltas:
                values = values + base[start:end]
            result[start:end] = values
        out[key] = result.reshape(ref.shape)
    return out


def _middle(ordered: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2].to(acc)
    return (ordered[n // 2 - 1].to(acc) + ordered[n // 2].to(acc)) / 2


# --- coordinate-wise rules -----------------------------------------------------------------------
def coordinate_median(global_state: Tensors, states: Sequence[Tensors], *, deltas: bool) -> dict[str, torch.Tensor]:
    """Element-wise median of each floating entry (``numpy.median``: the mean of the two middle
    values when ``n`` is even)."""
    return coordinatewise(
        global_state, states, lambda block, acc: _middle(block.sort(dim=0).values, acc), deltas=deltas
    )


def coordinate_trimmed_mean(
    global_state: Tensors, states: Sequence[Tensors], num_trim: int, *, deltas: bool
) -> dict[str, torch.Tensor]:
    """Element-wise mean after dropping the ``num_trim`` smallest and largest values."""
    n = len(states)
    assert num_trim >= 0
    assert 2 * num_trim < n

    def combine(block: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
        kept = block.sort(dim=0).values[num_trim : n - num_trim].to(acc)
        return kept.sum(dim=0) / (n - 2 * num_trim)

    return coordinatewise(global_state, states, combine, deltas=deltas)


def copy_of(global_state: Tensors, state: Tensors, *, deltas: bool) -> dict[str, torch.Tensor]:
    """One participant's floating entries as the result (Krum's choice), as full values."""
    return coordinatewise(global_state, [state], lambda block, acc: block[0].to(acc), deltas=deltas)


# --- Krum ----------------------------------------------------------------------------------------
def squared_distances(global_state: Tensors, states: Sequence[Tensors]) -> torch.Tensor:
    """``n x n`` float64 matrix of squared L2 distances over all floating entries.

    Direct differences (not ``|a|^2 + |b|^2 - 2ab``, which cancels catastrophically when updates
    are close), summed with :func:`rowsum` in a fixed order.
    """
    n = len(states)
    distances = torch.zeros((n, n), dtype=torch.float64)
    for key, ref in global_state.items():
        if not is_aggregated(ref):
            continue
        flats = _flats(states, key, ref.device)
        for start, end in column_blocks(ref.numel(), n):
            block = _stack(flats, start, end, torch.float64)
            for i in range(n - 1):
                diff = block[i + 1 :] - block[i]
                distances[i, i + 1 :] += rowsum(diff.square_()).cpu()
    return distances + distances.T


def krum_scores(distances: torch.Tensor, num_byzantine: int) -> list[float]:
    """Krum score of each participant: the sum of its ``n - f - 2`` smallest squared distances to
    the *other* participants (Blanchard et al. 2017; Flower's ``max(1, n - f - 2)``)."""
    n = distances.shape[0]
    num_closest = max(1, n - num_byzantine - 2)
    rows = distances.tolist()
    return [sum(sorted(d for j, d in enumerate(row) if j != i)[:num_closest]) for i, row in enumerate(rows)]


def lowest(scores: Sequence[float], count: int) -> list[int]:
    """Indices of the ``count`` lowest scores, best first; ties go to the lower index."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count]


# --- Bulyan --------------------------------------------------------------------------------------
def closest_to_median_mean(
    global_state: Tensors, states: Sequence[Tensors], num_closest: int, *, deltas: bool
) -> dict[str, torch.Tensor]:
    """Bulyan's second stage: element-wise, the mean of the ``num_closest`` values nearest the
    coordinate's median (El Mhamdi et al. 2018). Ties in distance go to the earlier state."""
    assert 1 <= num_closest <= len(states)

    def combine(block: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
        values = block.to(acc)
        median = _middle(values.sort(dim=0).values, acc)
        nearest = (values - median).abs_().sort(dim=0, stable=True).indices[:num_closest]
        return values.gather(0, nearest).sum(dim=0) / num_closest

    return coordinatewise(global_state, states, combine, deltas=deltas)
