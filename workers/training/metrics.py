"""Evaluation metrics in numpy, so workers need no scikit-learn at run time.

Classification metrics take integer labels and a probability matrix (``n x k``); regression
metrics take two float vectors. Each matches scikit-learn's definition (checked in the tests):
macro F1 counts a class with no predictions and no support as 0, like ``zero_division=0``; AUROC
is the Mann-Whitney statistic with average ranks for ties (equal to the trapezoidal ROC area),
one-vs-rest and macro-averaged for more than two classes. A metric that is undefined for the data
(AUROC with one class present, R² of a constant target) is ``nan`` rather than an exception, so
one unlucky validation split does not kill a run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def accuracy(y_true: IntArray, proba: FloatArray) -> float:
    if len(y_true) == 0:
        return float("nan")
    return float(np.mean(np.argmax(proba, axis=1) == y_true))


def f1_macro(y_true: IntArray, proba: FloatArray) -> float:
    """Macro F1 over the classes present in labels or predictions (sklearn's default label set)."""
    if len(y_true) == 0:
        return float("nan")
    pred = np.argmax(proba, axis=1)
    labels = np.union1d(y_true, pred)
    scores = []
    for c in labels:
        tp = float(np.sum((pred == c) & (y_true == c)))
        fp = float(np.sum((pred == c) & (y_true != c)))
        fn = float(np.sum((pred != c) & (y_true == c)))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores))


def _rankdata(x: FloatArray) -> FloatArray:
    """Average ranks (1-based) with ties sharing the mean rank, like ``scipy.stats.rankdata``."""
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    n = len(x)
    while i < n:
        j = i
        while j + 1 < n and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _binary_auc(pos: npt.NDArray[np.bool_], score: FloatArray) -> float:
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(y_true: IntArray, proba: FloatArray) -> float:
    """Binary: AUC of the positive-class (column 1) score. Multiclass: macro one-vs-rest."""
    if proba.shape[1] == 2:
        return _binary_auc(y_true == 1, proba[:, 1].astype(np.float64))
    aucs = [_binary_auc(y_true == c, proba[:, c].astype(np.float64)) for c in range(proba.shape[1])]
    if any(np.isnan(a) for a in aucs):
        return float("nan")  # sklearn refuses when a class is absent; we report "undefined"
    return float(np.mean(aucs))


def rmse(y_true: FloatArray, y_pred: FloatArray) -> float:
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2))) if len(y_true) else float("nan")


def mae(y_true: FloatArray, y_pred: FloatArray) -> float:
    return float(np.mean(np.abs(y_true - y_pred))) if len(y_true) else float("nan")


def r2(y_true: FloatArray, y_pred: FloatArray) -> float:
    ss_tot = float(np.sum((y_true - np.mean(y_true)) ** 2)) if len(y_true) else 0.0
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / ss_tot


CLASSIFICATION: dict[str, Callable[[IntArray, FloatArray], float]] = {
    "accuracy": accuracy,
    "f1_macro": f1_macro,
    "auroc": auroc,
}
REGRESSION: dict[str, Callable[[FloatArray, FloatArray], float]] = {"rmse": rmse, "mae": mae, "r2": r2}


def compute(
    names: tuple[str, ...] | list[str], y_true: npt.NDArray[np.generic], output: FloatArray
) -> dict[str, float]:
    """Compute each named metric; ``output`` is probabilities (classification) or predictions."""
    out: dict[str, float] = {}
    for name in names:
        if name in CLASSIFICATION:
            out[name] = CLASSIFICATION[name](y_true.astype(np.int64), output)
        elif name in REGRESSION:
            out[name] = REGRESSION[name](y_true.astype(np.float64), output.astype(np.float64).reshape(-1))
        else:
            raise KeyError(name)
    return out
