"""WRK-7 at 20 random points: a training process is killed with SIGKILL at a random moment, a new
process resumes from the newest valid checkpoint, again and again until the run completes. The
final weights must equal an uninterrupted run's bit for bit, no kill may lose more than one
checkpoint interval, and damaged checkpoints (a kill mid-write leaves a temp file; some newest
checkpoints are also bit-flipped on purpose) are detected and skipped, never loaded.

The child is a plain Python process running the pure engine with an encrypted checkpoint sink:
exactly what a platform worker does between database calls. Figures: ``reports/WRK-7-steps.json``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import write_report

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
INTERVAL = 10
pytestmark = pytest.mark.slow

_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, pyarrow as pa, torch
    from sklearn.datasets import load_breast_cancer
    from workers.schema import Column, DatasetSchema
    from workers.training.checkpoint import load_latest, save_checkpoint
    from workers.training.data import prepare_tabular
    from workers.training.engine import NullSink, TrainState, train
    from workers.training.spec import TrainSpec

    out = sys.argv[1]
    spec = TrainSpec.from_dict(json.loads(os.environ["SPEC"]))
    d = load_breast_cancer()
    cols = {f"f{i}": d.data[:, i] for i in range(d.data.shape[1])}
    cols["y"] = ["b" if t else "m" for t in d.target]
    schema = DatasetSchema(
        [Column(f"f{i}", "float") for i in range(d.data.shape[1])] + [Column("y", "category", "label")],
        label="y", task="binary_classification",
    )
    prepared = prepare_tabular(pa.table(cols), schema, spec)
    key, ctx = bytes(range(32)), b"cohort/test/kill-resume"
    ckpt = os.path.join(out, "ckpt")
    skipped = []

    class Steps(NullSink):
        def on_metrics(self, step, epoch, values):
            with open(os.path.join(out, "steps"), "a") as f:
                f.write(f"{step}\\n")

    class Sink(Steps):
        def on_checkpoint(self, state):
            save_checkpoint(state.to_dict(), ckpt, key=key, context=ctx, step=state.step)
            with open(os.path.join(out, "progress"), "a") as f:
                f.write(f"{state.step}\\n")

    found = load_latest(ckpt, key=key, context=ctx, on_corrupt=lambda p, r: skipped.append(p.name))
    resume = TrainState.from_dict(found[0]) if found else None
    with open(os.path.join(out, "attempts"), "a") as f:
        f.write(json.dumps({"resumed_from": found[1].step if found else 0, "skipped": skipped}) + "\\n")
    sink = Sink() if os.environ.get("CHECKPOINTS", "1") == "1" else Steps()
    result = train(spec, prepared, sink, resume=resume)
    torch.save(result.model_state, os.path.join(out, "final.pt"))
    """
)

SPEC = {
    "model": {"name": "mlp", "params": {"hidden": [32, 16], "dropout": 0.1}},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "epochs": 12,
    "batch_size": 16,
    "seed": 5,
    "checkpoint_every_steps": INTERVAL,
    "log_every_steps": 1,
    "device": "cpu",
}


def _child(out: Path, *, checkpoints: bool = True) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPEC": json.dumps(SPEC), "CHECKPOINTS": "1" if checkpoints else "0", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(out)], cwd=ROOT, env=env, stderr=subprocess.PIPE, start_new_session=True
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_twenty_kills_at_random_steps_resume_to_the_same_weights(tmp_path: Path) -> None:
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    p = _child(clean_dir, checkpoints=False)
    _out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-3000:]
    clean = torch.load(clean_dir / "final.pt", weights_only=True)
    total = int(_lines(clean_dir / "steps")[-1])

    run = tmp_path / "run"
    run.mkdir()
    rng = random.Random(20261129)
    targets = sorted(rng.sample(range(2 * INTERVAL, total - INTERVAL), KILLS))
    lost: list[int] = []
    flipped = 0
    for target in targets:
        before = len(_lines(run / "steps"))
        p = _child(run)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            # Only this child's own steps count: the previous child may already have passed the
            # target, and killing before this one logs a step could kill it before it records its
            # attempt (a flaky 19 of 20 resumes).
            steps = _lines(run / "steps")
            if len(steps) > before and int(steps[-1]) >= target:
                break
            time.sleep(0.002)
        assert p.poll() is None, f"finished before the kill at step {target}: {p.stderr.read().decode()[-2000:]}"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        reached = int(_lines(run / "steps")[-1])
        saved = [int(s) for s in _lines(run / "progress")]
        newest = max(saved) if saved else 0
        lost.append(reached - newest)
        if len(lost) % 5 == 0 and newest:
            # Damage the newest checkpoint as well: the next attempt must skip it, not load it.
            path = run / "ckpt" / f"ckpt-{newest:012d}.enc"
            if path.exists():
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0x40
                path.write_bytes(bytes(data))
                flipped += 1
    p = _child(run)
    _out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-3000:]
    final = torch.load(run / "final.pt", weights_only=True)
    attempts = [json.loads(line) for line in (run / "attempts").read_text().splitlines()]
    resumed = sum(1 for a in attempts[1:] if a["resumed_from"] > 0)
    skipped = sum(len(a["skipped"]) for a in attempts)
    identical = final.keys() == clean.keys() and all(torch.equal(final[k], clean[k]) for k in final)
    ok = identical and resumed == KILLS and max(lost) <= INTERVAL and skipped == flipped
    write_report(
        "WRK-7-steps",
        {
            "kills": KILLS,
            "kill_steps": targets,
            "total_steps": total,
            "resumed": resumed,
            "checkpoint_interval_steps": INTERVAL,
            "steps_lost_max": max(lost),
            "steps_lost_mean": round(sum(lost) / len(lost), 2),
            "final_weights_bit_identical": identical,
            "final_metric_delta_pp": 0.0 if identical else None,
            "corrupt_checkpoints_planted": flipped,
            "corrupt_checkpoints_skipped": skipped,
            "corrupt_checkpoints_loaded": 0 if skipped == flipped else flipped - skipped,
        },
        ok,
    )
    assert resumed == KILLS, attempts
    assert max(lost) <= INTERVAL, lost
    assert skipped == flipped, (skipped, flipped, attempts)
    assert identical
