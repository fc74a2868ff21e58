"""Golden vectors for ``workers.federated.strategies``, computed by Flower's own strategies.

Runs only in its own virtual environment (Flower's pins conflict with the platform's): use
``bench/flower/make_golden.sh``, which creates ``bench/flower/.venv`` from ``requirements.txt``
and writes ``tests/workers/federated/golden/flower_1_42.json``.

API used: Flower 1.42's Message-API strategies, ``flwr.serverapp.strategy`` (1.42 also ships the
legacy ``flwr.server.strategy``; the Message API is the one its docs build on). Each round's
replies are ``flwr.app.Message`` objects carrying one ``ArrayRecord`` and a ``MetricRecord`` with
``num-examples``, passed to ``Strategy.aggregate_train(server_round, replies)``. For the FedOpt
family the script sets ``strategy.current_arrays`` to the round's global arrays, which is exactly
what ``FedOpt.configure_train`` does (that method also needs a live ``Grid`` to sample nodes),
and ``flwr.supercore.task_identity.TaskIdentity`` to the ids a running ServerApp would have.

Inputs, all stored in the JSON so the test needs no random generator of its own:

* a global model of five small tensors (one 0-d), drawn from ``numpy.random.default_rng(SEED)``;
* 3 rounds x 7 participants of noise, drawn once and shared by every strategy; participant ``i``
  of round ``r`` sends ``global_r + noise[r][i]``, computed in the case's dtype, where
  ``global_r`` is that strategy's own round ``r - 1`` output (rounded to the case dtype, as a
  platform storing the model in that dtype would). Participant 3 is an attacker: ten times the
  noise plus a constant shift, and the largest example count, so it drags FedAvg;
* two cases, float64 and float32 (Flower computes in the arrays' dtype).
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower_strategy
from flwr.supercore.task_identity import TaskIdentity

SEED = 20251205
NUM_ROUNDS = 3
SHAPES: dict[str, tuple[int, ...]] = {
    "layer.weight": (4, 5),
    "layer.bias": (4,),
    "head.weight": (2, 4),
    "head.bias": (2,),
    "temperature": (),
}
NUM_EXAMPLES = [10, 25, 7, 40, 13, 18, 31]
ATTACKER = 3
ATTACK_SHIFT = 2.0

# (our registry name, our params, Flower class name, Flower kwargs). Adaptive optimizers run with
# both sides' defaults, which pins our defaults to Flower's as well.
CONFIGS: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("fedavg", {}, "FedAvg", {}),
    ("fedprox", {"mu": 0.1}, "FedProx", {"proximal_mu": 0.1}),
    ("fedadagrad", {}, "FedAdagrad", {}),
    ("fedadam", {}, "FedAdam", {}),
    ("fedyogi", {}, "FedYogi", {}),
    ("fedmedian", {}, "FedMedian", {}),
    ("trimmed_mean", {"beta": 0.3}, "FedTrimmedAvg", {"beta": 0.3}),
    ("krum", {"f": 2}, "Krum", {"num_malicious_nodes": 2}),
    ("multikrum", {"f": 2, "m": 3}, "MultiKrum", {"num_malicious_nodes": 2, "num_nodes_to_select": 3}),
    ("bulyan", {"f": 1}, "Bulyan", {"num_malicious_nodes": 1}),
]
FEDOPT = {"FedAdagrad", "FedAdam", "FedYogi"}
OUT = Path(__file__).resolve().parents[2] / "tests" / "workers" / "federated" / "golden" / "flower_1_42.json"


def draw_inputs() -> tuple[dict[str, np.ndarray], list[list[dict[str, np.ndarray]]]]:
    rng = np.random.default_rng(SEED)
    global0 = {key: rng.normal(0.0, 1.0, shape) for key, shape in SHAPES.items()}
    noise = []
    for _ in range(NUM_ROUNDS):
        row = []
        for i in range(len(NUM_EXAMPLES)):
            sigma = 0.5 if i == ATTACKER else 0.05 * (1 + 0.2 * i)
            shift = ATTACK_SHIFT if i == ATTACKER else 0.0
            row.append({key: rng.normal(0.0, sigma, shape) + shift for key, shape in SHAPES.items()})
        noise.append(row)
    return global0, noise


def reply(arrays: dict[str, np.ndarray], num_examples: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({key: Array(np.array(value)) for key, value in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples}),
        }
    )
    return Message(content=content, dst_node_id=1, message_type="train")


def run_case(
    dtype: np.dtype, global0: dict[str, np.ndarray], noise: list[list[dict[str, np.ndarray]]]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, params, class_name, kwargs in CONFIGS:
        strategy = getattr(flower_strategy, class_name)(**kwargs)
        current = {key: value.astype(dtype) for key, value in global0.items()}
        rounds = []
        for server_round in range(1, NUM_ROUNDS + 1):
            updates = [
                {key: current[key] + noise[server_round - 1][i][key].astype(dtype) for key in SHAPES}
                for i in range(len(NUM_EXAMPLES))
            ]
            replies = [reply(update, n) for update, n in zip(updates, NUM_EXAMPLES, strict=True)]
            if class_name in FEDOPT:
                strategy.current_arrays = {key: value.copy() for key, value in current.items()}
            arrays, _ = strategy.aggregate_train(server_round, replies)
            assert arrays is not None, f"{class_name} skipped round {server_round}"
            raw = {key: arrays[key].numpy() for key in SHAPES}
            current = {key: np.asarray(value).astype(dtype) for key, value in raw.items()}
            rounds.append(
                {
                    "flower_dtypes": sorted({str(value.dtype) for value in raw.values()}),
                    "global": {key: current[key].astype(np.float64).ravel().tolist() for key in SHAPES},
                }
            )
        results[name] = {"params": params, "flower": f"{class_name}({kwargs})", "rounds": rounds}
    return results


def main() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # What a running ServerApp process has set; Message() reads it for the metadata.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    global0, noise = draw_inputs()
    golden = {
        "about": "Flower 1.42 golden vectors for workers.federated.strategies; written by bench/flower/make_golden.py",
        "flower_version": flwr.__version__,
        "flower_api": (
            "flwr.serverapp.strategy.<Strategy>.aggregate_train(server_round, replies: list[flwr.app.Message])"
        ),
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "seed": SEED,
        "shapes": {key: list(shape) for key, shape in SHAPES.items()},
        "num_examples": NUM_EXAMPLES,
        "attacker": ATTACKER,
        "derivation": (
            "participant i of round r sends global_r + noise[r-1][i] (elementwise, in the case dtype; "
            "noise cast to it first); global_1 = global0 cast to the case dtype; global_{r+1} = the "
            "strategy's round-r output cast to the case dtype. Tensors are flat row-major lists."
        ),
        "global0": {key: value.ravel().tolist() for key, value in global0.items()},
        "noise": [[{key: value.ravel().tolist() for key, value in p.items()} for p in row] for row in noise],
        "cases": {
            str(np.dtype(dtype)): run_case(np.dtype(dtype), global0, noise) for dtype in (np.float64, np.float32)
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) with Flower {flwr.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
