"""Flower 1.42's simulation engine (Ray backend) running the FedAvg federation bench/fl_rounds.py runs.

Run with this folder's venv (bench/flower/.venv: ``flwr[simulation]``, CPU torch), never the
platform's. ``--data DIR`` is what bench/fl_rounds.py wrote: ``config.json`` (the model, optimizer,
epochs, batch size, rounds, sites), ``initial.npz`` (the round-0 global model, state-dict order),
``site_<i>.npz`` (site i's already-encoded train and validation tensors) and ``seeds.npy``
(``[site, round]``: the per-round training seed each site's sample order comes from, the same
HMAC seeds the platform derives). Each ClientApp trains exactly as the platform's engine does for
an MLP on CPU: a fresh optimizer per round, ``epochs`` passes over
``randperm(n, generator seeded seed * 1_000_003 + epoch)`` in batches of ``batch_size``, mean
cross-entropy per batch; then it evaluates the new global model on its validation rows. The server
is Flower's own ``flwr.serverapp.strategy.FedAvg`` (every node trains and evaluates each round).

Timed: ``run_simulation`` as a whole (what a user waits for, Ray start-up included), the ServerApp's
``main`` from entry to the strategy's return, and each round from ``configure_train`` to the end of
``aggregate_evaluate``. Writes ``--out`` (JSON) and ``final.npz`` (the final global model) in DIR.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

EPOCH_SEED_STRIDE = 1_000_003  # workers.training.engine.epoch_permutation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data_dir = Path(args.data)
    cfg = json.loads((data_dir / "config.json").read_text())
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import flwr
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    imported = time.perf_counter()
    n_sites, rounds = int(cfg["sites"]), int(cfg["rounds"])
    initial = np.load(data_dir / "initial.npz")
    keys = list(cfg["state_keys"])
    init_state = {k: torch.from_numpy(np.ascontiguousarray(initial[k])) for k in keys}

    def make_model() -> Any:
        from torch import nn

        layers: list[Any] = []
        width = int(cfg["n_features"])
        for h in cfg["hidden"]:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, int(cfg["n_outputs"])))
        return nn.Sequential(*layers)

    cache: dict[int, Any] = {}

    def site(i: int) -> Any:
        if i not in cache:
            d = np.load(Path(cfg["data_dir"]) / f"site_{i}.npz")
            seeds = np.load(Path(cfg["data_dir"]) / "seeds.npy")
            cache[i] = {
                "x_train": torch.from_numpy(d["x_train"]),
                "y_train": torch.from_numpy(d["y_train"]),
                "x_val": torch.from_numpy(d["x_val"]),
                "y_val": torch.from_numpy(d["y_val"]),
                "seeds": seeds[i],
            }
        return cache[i]

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        import torch.nn.functional as F

        torch.set_num_threads(1)
        i = int(context.node_config["partition-id"])
        d = site(i)
        rnd = int(msg.content["config"]["server-round"])
        seed = int(d["seeds"][rnd - 1])
        model = make_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.train()
        torch.manual_seed(seed)
        opt: Any
        if cfg["optimizer"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                  weight_decay=cfg["weight_decay"])  # fmt: skip
        elif cfg["optimizer"] == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                   weight_decay=cfg["weight_decay"])  # fmt: skip
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                    weight_decay=cfg["weight_decay"])  # fmt: skip
        x, y = d["x_train"], d["y_train"]
        n, bs = len(x), int(cfg["batch_size"])
        total = 0.0
        for epoch in range(int(cfg["epochs"])):
            g = torch.Generator()
            g.manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
            perm = torch.randperm(n, generator=g)
            xs, ys = x.index_select(0, perm), y.index_select(0, perm)
            for lo in range(0, n, bs):
                xb, yb = xs[lo : lo + bs], ys[lo : lo + bs]
                opt.zero_grad(set_to_none=True)
                loss_sum = F.cross_entropy(model(xb), yb, reduction="sum")
                (loss_sum / len(xb)).backward()
                opt.step()
                total += float(loss_sum.detach())
        content = RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": total / max(1, n * int(cfg["epochs"])), "num-examples": n}),
        })  # fmt: skip
        return Message(content=content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        import torch.nn.functional as F

        torch.set_num_threads(1)
        d = site(int(context.node_config["partition-id"]))
        model = make_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            out = model(d["x_val"])
            loss = float(F.cross_entropy(out, d["y_val"]))
            acc = float((out.argmax(1) == d["y_val"]).float().mean())
        content = RecordDict(
            {"metrics": MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(d["y_val"])})}
        )
        return Message(content=content, reply_to=msg)

    timing: dict[str, Any] = {"round_start": {}, "round_end": {}}
    out_state: dict[str, Any] = {}

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        def configure_train(self, server_round: int, *a: Any, **kw: Any) -> Any:
            timing["round_start"][server_round] = time.perf_counter()
            return super().configure_train(server_round, *a, **kw)

        def aggregate_evaluate(self, server_round: int, *a: Any, **kw: Any) -> Any:
            res = super().aggregate_evaluate(server_round, *a, **kw)
            timing["round_end"][server_round] = time.perf_counter()
            return res

    server = ServerApp()

    @server.main()
    def server_main(grid: Grid, context: Context) -> None:
        timing["main_start"] = time.perf_counter()
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n_sites,
                               min_evaluate_nodes=n_sites, min_available_nodes=n_sites)  # fmt: skip
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(init_state), num_rounds=rounds)
        timing["main_end"] = time.perf_counter()
        out_state.update(result.arrays.to_torch_state_dict())

    cpus = int(cfg.get("ray_cpus") or os.cpu_count() or 1)
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": logging.ERROR, "log_to_driver": False},
    }
    sim_start = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=n_sites, backend_config=backend_config)
    sim_end = time.perf_counter()
    if not out_state or len(timing["round_end"]) != rounds:
        print(f"rounds_bench: the simulation did not finish {rounds} rounds: {timing}", file=sys.stderr)
        return 1
    np.savez(data_dir / "final.npz", **{k: out_state[k].detach().cpu().numpy() for k in keys})
    round_s = [timing["round_end"][r] - timing["round_start"][r] for r in range(1, rounds + 1)]
    report = {
        "flwr_version": flwr.__version__,
        "torch_version": torch.__version__,
        "ray_cpus": cpus,
        "import_seconds": imported - started,
        "simulation_seconds": sim_end - sim_start,
        "startup_seconds": timing["main_start"] - sim_start,
        "strategy_seconds": timing["main_end"] - timing["main_start"],
        "rounds_seconds": timing["round_end"][rounds] - timing["round_start"][1],
        "round_seconds": round_s,
        "teardown_seconds": sim_end - timing["main_end"],
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
