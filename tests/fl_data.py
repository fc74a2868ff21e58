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


# Share of each department's notes per hospital (label skew: each hospital sees one department
# mostly and another rarely). The notes come from the demo's generator (``clinical_notes`` in
# ``seed_demo_datasets``), passed in as CSV bytes so this module stays free of Django.
NOTES_SKEW = {
    "cardiology": (0.6, 0.3, 0.1),
    "oncology": (0.1, 0.6, 0.3),
    "respiratory": (0.3, 0.1, 0.6),
    "orthopaedics": (0.34, 0.33, 0.33),
}


def notes_splits(data: bytes, seed: int = 0, label: str = "department") -> list[bytes]:
    """The CSV's rows dealt to three hospitals, each department by its NOTES_SKEW shares (seeded)."""
    import csv

    rows = list(csv.DictReader(io.StringIO(data.decode())))
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for dept in sorted({r[label] for r in rows}):
        mine = rng.permutation([i for i, r in enumerate(rows) if r[label] == dept])
        shares = NOTES_SKEW.get(dept, (1 / 3, 1 / 3, 1 / 3))
        cuts = (np.cumsum(shares)[:-1] * len(mine)).astype(int)
        for part, idx in zip(parts, np.split(mine, cuts), strict=True):
            part.extend(int(i) for i in idx)
    out = []
    for part in parts:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[i] for i in sorted(part))  # the generator's order within a hospital
        out.append(buf.getvalue().encode())
    return out
