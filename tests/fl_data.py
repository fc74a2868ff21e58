"""Data the federation tests share: scikit-learn's breast-cancer rows dealt to label-skewed
hospitals (no Django: the workers' tests use it too)."""

from __future__ import annotations

import io

import numpy as np

# Share of each hospital's rows that are malignant (label 0): label skew, as in the seed study.
MALIGNANT_SHARE = (0.15, 0.4, 0.7)


def hospital_splits(n_sites: int = 3, seed: int = 0) -> list[bytes]:
    """CSV bytes per hospital: disjoint rows, malignant share per MALIGNANT_SHARE."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    rng = np.random.default_rng(seed)
    malignant = rng.permutation(np.flatnonzero(frame["target"].to_numpy() == 0)).tolist()
    benign = rng.permutation(np.flatnonzero(frame["target"].to_numpy() == 1)).tolist()
    per_site = len(frame) // n_sites
    out = []
    for i in range(n_sites):
        share = MALIGNANT_SHARE[i % len(MALIGNANT_SHARE)]
        m = min(len(malignant), round(per_site * share))
        rows = [malignant.pop() for _ in range(m)] + [benign.pop() for _ in range(min(len(benign), per_site - m))]
        buf = io.StringIO()
        frame.iloc[sorted(rows)].to_csv(buf, index=False)
        out.append(buf.getvalue().encode())
    return out
