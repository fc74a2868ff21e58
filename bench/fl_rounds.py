"""fl_rounds: a 10-site × 5-round FedAvg federation on breast cancer and on digits, run four ways on
the same seeded sites, the same model initialisation and the same per-(site, round) training seeds.

* **platform**: the hosted federation. Ten hospital tenants each upload their site's rows as a CSV
  (ingest, validation), de-identify them, grant ``federate`` to a lab tenant; the lab drafts the
  federation over the API, every owner approves its digest, the lab starts it, and two warm Celery
  workers (``--pool solo``, queues ``fl,default``; PostgreSQL, Redis, encrypted update storage,
  update validation and the audit trail as in production) run round 0 and the training rounds. The
  workers are started, and warmed with a one-round federation over the same sites, before the clock
  starts. Whole run: ``POST .../start/`` to the federation's terminal status; round times from
  ``Round.closed_at`` (round r: the previous round's close to its own).
* **in-process Cohort**: :func:`workers.federated.simulate.run`: the platform's round functions
  (statistics, encoders, selection, evaluation, local update, validation, strategy) in one process.
* **plain**: a minimal hand-written torch FedAvg loop (load the global weights, evaluate on the
  validation rows, train ``epochs`` epochs with a fresh optimizer, weighted average of the weights),
  with the sample order the engine uses, so it reaches the same model.
* **Flower**: Flower 1.42's simulation engine with the Ray backend (``run_simulation``, its own
  ``FedAvg``; ClientApps training the same way), from its own venv (bench/flower/.venv, built by
  bench/flower/rounds_bench.sh when missing). Whole run: ``run_simulation`` end to end (Ray
  start-up included, reported separately); rounds timed in a FedAvg subclass.

Accuracy: every system's final global model scored on the same held-out test rows (20% of the data,
seeded; never in any site). Figures: for each dataset, the platform's whole run over Flower's
(target ≤ 0.3), its steady round (median of rounds 2..R) over Flower's (≤ 1.0) and over the plain
loop's (≤ 2.0). Without Django (or a database) the platform part is skipped and the in-process run
stands in, labelled so; without Flower's venv the Flower baseline is marked unavailable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, log, write_result

NAME = "fl_rounds"
DATASETS = ("breast_cancer", "digits")
SITES, ROUNDS = 10, 5
QUICK_SITES, QUICK_ROUNDS = 3, 3  # bench.run --quick
TEST_FRACTION = 0.2
SPLIT_SEED = 0
FEDERATION_ID = 1
SECRET = hashlib.sha256(b"cohort-bench:fl_rounds").digest()
TARGET_WHOLE, TARGET_STEADY_FLOWER, TARGET_STEADY_PLAIN = 0.3, 1.0, 2.0
FLOWER_DIR = ROOT / "bench" / "flower"
FLOWER_PYTHON = FLOWER_DIR / ".venv" / "bin" / "python"
FLOWER_TIMEOUT_S = 900
PLATFORM_TIMEOUT_S = 900
TRAIN: dict[str, Any] = {
    "model": {"name": "mlp", "params": {"hidden": [32]}},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "epochs": 2,
    "batch_size": 32,
    "seed": 5,
    "num_threads": 1,
    "device": "cpu",
}
KEEP = {"columns": {}, "quasi_identifiers": [], "k": None}


def federation_spec(rounds: int) -> dict[str, Any]:
    return {"train": TRAIN, "strategy": {"name": "fedavg"}, "rounds": rounds, "min_participants": 2,
            "round_deadline_seconds": 300}  # fmt: skip


# --- data ------------------------------------------------------------------------------------------


@dataclass
class Workload:
    dataset: str
    schema: Any
    sites: list[Any]  # VirtualSite
    test_table: Any
    fspec: Any
    frame_columns: list[str]
    encoders: dict[str, Any] = field(default_factory=dict)
    prepared: dict[int, Any] = field(default_factory=dict)  # site_id -> Prepared
    x_test: Any = None
    y_test: Any = None


def load_frame(dataset: str) -> Any:
    from sklearn.datasets import load_breast_cancer, load_digits

    if dataset == "breast_cancer":
        return load_breast_cancer(as_frame=True).frame
    if dataset == "digits":
        return load_digits(as_frame=True).frame
    raise ValueError(f"unknown dataset {dataset!r}")


def workload(dataset: str, *, sites: int, rounds: int) -> Workload:
    """The held-out test rows and ``sites`` IID seeded virtual sites of the rest."""
    import pyarrow as pa

    from workers.federated.simulate import SplitSpec, split_sites
    from workers.federated.spec import FederationSpec
    from workers.schema import Column, DatasetSchema

    frame = load_frame(dataset)
    frame["target"] = frame["target"].astype("int64")
    cols = [Column(c, "float") for c in frame.columns if c != "target"] + [Column("target", "integer", "label")]
    task = "binary_classification" if frame["target"].nunique() == 2 else "multiclass_classification"
    schema = DatasetSchema(columns=cols, label="target", task=task)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(frame))
    n_test = round(len(frame) * TEST_FRACTION)
    test, rest = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    table = pa.Table.from_pandas(frame.iloc[rest], preserve_index=False)
    test_table = pa.Table.from_pandas(frame.iloc[test], preserve_index=False)
    virtual = split_sites(table, schema, SplitSpec(sites=sites, partition="iid", seed=SPLIT_SEED))
    fspec = FederationSpec.from_dict(federation_spec(rounds))
    return Workload(dataset, schema, virtual, test_table, fspec, list(frame.columns))


def encode(w: Workload) -> None:
    """Round 0 as the platform does it (training sites' statistics merged in site order), then every
    site's and the test rows' tensors under those encoders."""
    import torch

    from workers.federated.stats import merge_round_0, site_statistics
    from workers.training.data import prepare_with_encoders

    stats = [site_statistics(s.table, w.schema, w.fspec.train) for s in w.sites]
    w.encoders = merge_round_0(stats, w.fspec.train)
    w.prepared = {s.site_id: prepare_with_encoders(s.table, w.schema, w.fspec.train, w.encoders) for s in w.sites}
    w.x_test, w.y_test = test_tensors(w.test_table, w.schema, w.fspec, w.encoders)
    assert torch.is_tensor(w.x_test)


def test_tensors(table: Any, schema: Any, fspec: Any, encoders: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    from workers.training.data import prepare_with_encoders

    p = prepare_with_encoders(table, schema, fspec.train, encoders)
    return torch.cat([p.x_train, p.x_val]), torch.cat([p.y_train, p.y_val])


def test_correct(fspec: Any, state: dict[str, Any], encoders: dict[str, Any], x: Any, y: Any) -> int:
    """How many held-out test rows the model ``state`` classifies right."""
    import torch

    from workers.federated.rounds import model_input_info
    from workers.training.models import build

    model = build(fspec.train.model.name, fspec.train.model.params, model_input_info(encoders))
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum())


def steady(round_s: Sequence[float]) -> float:
    """The steady round: the median of rounds 2..R (round 1 alone when there is one)."""
    return float(statistics.median(round_s[1:] if len(round_s) > 1 else round_s))


# --- in-process Cohort and the plain loop ----------------------------------------------------------


def run_inprocess(w: Workload) -> dict[str, Any]:
    import torch

    from workers.federated.simulate import run

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = run(w.fspec, w.sites, w.schema, secret=SECRET, federation_id=FEDERATION_ID)
    whole = time.perf_counter() - t0
    correct = test_correct(w.fspec, res.state, res.encoders, w.x_test, w.y_test)
    return {"whole_s": whole, "round_s": [float(r["seconds"]) for r in res.rounds], "correct": correct,
            "state": res.state, "model_digest": res.model_digest}  # fmt: skip


def encode_with(w: Workload, encoders: dict[str, Any]) -> None:
    """Every site's and the test rows' tensors under ``encoders`` (a hosted run's, merged by the platform)."""
    from workers.training.data import prepare_with_encoders

    w.encoders = encoders
    w.prepared = {s.site_id: prepare_with_encoders(s.table, w.schema, w.fspec.train, encoders) for s in w.sites}
    w.x_test, w.y_test = test_tensors(w.test_table, w.schema, w.fspec, encoders)


def run_plain(w: Workload, *, secret: bytes = SECRET, federation_id: int = FEDERATION_ID,
              encoded: bool = False) -> dict[str, Any]:  # fmt: skip
    """A minimal torch FedAvg loop over the same encoded sites (encoding included in the whole run),
    training each (site, round) with the seed ``site_seed(secret, federation_id, site_id, round)``."""
    import torch
    import torch.nn.functional as F

    from workers.federated.rounds import initial_state, model_input_info, site_seed
    from workers.training.engine import epoch_permutation
    from workers.training.models import build

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if not encoded:
        encode(w)
    tr = w.fspec.train
    state = initial_state(w.fspec, w.encoders)
    model = build(tr.model.name, tr.model.params, model_input_info(w.encoders))
    o = tr.optimizer
    round_s: list[float] = []
    for number in range(1, w.fspec.rounds + 1):
        r0 = time.perf_counter()
        sums = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in state.items()}
        total = 0
        for s in sorted(w.sites, key=lambda s: s.site_id):
            p = w.prepared[s.site_id]
            model.load_state_dict(state)
            model.eval()
            with torch.no_grad():  # the round's evaluation of the global model at the site
                out = model(p.x_val)
                _ = float(F.cross_entropy(out, p.y_val)), float((out.argmax(1) == p.y_val).float().mean())
            model.train()
            seed = site_seed(secret, federation_id, s.site_id, number)
            opt: torch.optim.Optimizer
            if o.name == "sgd":
                opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
            elif o.name == "adam":
                opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
            else:
                opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
            n, bs = len(p.x_train), tr.batch_size
            for epoch in range(tr.epochs):
                perm = epoch_permutation(n, seed, epoch)
                xs, ys = p.x_train.index_select(0, perm), p.y_train.index_select(0, perm)
                for lo in range(0, n, bs):
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(xs[lo : lo + bs]), ys[lo : lo + bs], reduction="sum")
                    (loss / len(xs[lo : lo + bs])).backward()
                    opt.step()
            for k, v in model.state_dict().items():
                sums[k] += v.detach().double() * n
            total += n
        state = {k: (sums[k] / total).to(v.dtype) for k, v in state.items()}
        round_s.append(time.perf_counter() - r0)
    whole = time.perf_counter() - t0
    correct = test_correct(w.fspec, state, w.encoders, w.x_test, w.y_test)
    return {"whole_s": whole, "round_s": round_s, "correct": correct, "state": state}


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# --- Flower ----------------------------------------------------------------------------------------


def flower_available() -> str:
    """'' when Flower's venv runs, else why not. bench/flower/rounds_bench.sh --setup-only builds it
    (venv, flwr[simulation], CPU torch) when it cannot import them; quick when it can."""
    try:
        proc = subprocess.run(["bash", str(FLOWER_DIR / "rounds_bench.sh"), "--setup-only"], cwd=ROOT,
                              capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"building bench/flower/.venv failed: {exc}"
    if proc.returncode != 0 or not FLOWER_PYTHON.exists():
        return f"building bench/flower/.venv failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    try:
        proc = subprocess.run([str(FLOWER_PYTHON), "-c", "import flwr, ray, torch; print(flwr.__version__)"],
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bench/flower/.venv does not run: {exc}"
    if proc.returncode != 0:
        return f"bench/flower/.venv lacks flwr[simulation]/torch: {proc.stderr.strip()[-300:]}"
    if not proc.stdout.strip().startswith("1.42."):
        return f"bench/flower/.venv has flwr {proc.stdout.strip()}, not 1.42"
    return ""


def run_flower(w: Workload, *, secret: bytes = SECRET, federation_id: int = FEDERATION_ID) -> dict[str, Any]:
    """Flower's simulation over ``w``'s encoded sites, each (site, round) trained with the seed
    ``site_seed(secret, federation_id, site_id, round)``; raises RuntimeError on failure."""
    import torch

    from workers.federated.rounds import initial_state, model_input_info, site_seed

    if not w.encoders:
        encode(w)
    info = model_input_info(w.encoders)
    state = initial_state(w.fspec, w.encoders)
    tr = w.fspec.train
    ordered = sorted(w.sites, key=lambda s: s.site_id)
    with tempfile.TemporaryDirectory(prefix="fl-rounds-flower-") as tmp:
        d = Path(tmp)
        for i, s in enumerate(ordered):
            p = w.prepared[s.site_id]
            np.savez(d / f"site_{i}.npz", x_train=p.x_train.numpy(), y_train=p.y_train.numpy(),
                     x_val=p.x_val.numpy(), y_val=p.y_val.numpy())  # fmt: skip
        seeds = np.asarray([[site_seed(secret, federation_id, s.site_id, r) for r in range(1, w.fspec.rounds + 1)]
                            for s in ordered], dtype=np.int64)  # fmt: skip
        np.save(d / "seeds.npy", seeds)
        np.savez(d / "initial.npz", **{k: v.numpy() for k, v in state.items()})
        cfg = {
            "data_dir": str(d), "sites": len(ordered), "rounds": w.fspec.rounds, "state_keys": list(state),
            "n_features": info["n_features"], "n_outputs": info["n_outputs"],
            "hidden": list(tr.model.params.get("hidden", [])), "optimizer": tr.optimizer.name,
            "lr": tr.optimizer.lr, "betas": list(tr.optimizer.betas), "momentum": tr.optimizer.momentum,
            "weight_decay": tr.optimizer.weight_decay, "epochs": tr.epochs, "batch_size": tr.batch_size,
            "ray_cpus": os.cpu_count() or 1,
        }  # fmt: skip
        (d / "config.json").write_text(json.dumps(cfg))
        out = d / "report.json"
        t0 = time.perf_counter()
        proc = subprocess.run([str(FLOWER_PYTHON), str(FLOWER_DIR / "rounds_bench.py"), "--data", str(d),
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=FLOWER_TIMEOUT_S, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                              )  # fmt: skip
        process_s = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"rounds_bench.py exited {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}")
        report = json.loads(out.read_text())
        final = np.load(d / "final.npz")
        fstate = {k: torch.from_numpy(np.array(final[k])) for k in state}
    report["process_s"] = process_s
    report["correct"] = test_correct(w.fspec, fstate, w.encoders, w.x_test, w.y_test)
    report["state"] = fstate
    return report


# --- the platform ----------------------------------------------------------------------------------


def django_ready() -> str:
    """'' when Django is set up with a reachable database, else why not."""
    try:
        from django.apps import apps
        from django.db import connection

        if not apps.ready:
            return "Django is not set up (run through bench.run)"
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
    except Exception as exc:  # no settings, no database
        return f"no Django database: {exc}"[:300]
    return ""


class Platform:
    """Ten hospital tenants and a lab, created through the services and the API, and warm workers."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = Path(tempfile.mkdtemp(prefix="fl-rounds-workers-")) / "workers.log"

    @staticmethod
    def _client(user: Any) -> Any:
        from rest_framework.test import APIClient

        client = APIClient(SERVER_NAME="localhost")
        client.force_login(user)
        token = client.get("/api/v1/auth/csrf/").json()["csrf_token"]
        client.credentials(HTTP_X_CSRFTOKEN=token)
        return client

    def seed(self, w: Workload) -> None:
        from apps.accounts.services import user_create
        from apps.common.context import Actor, context
        from apps.tenancy.services import tenant_create

        tag = self.tag
        with context(actor=Actor.system("bench"), request_id=f"bench-flr-{tag}"[:32]):
            lab_user = user_create(email=f"lab-{tag}@bench.example", password=None, full_name="Lab")
            self.lab = tenant_create(slug=f"flr-lab-{tag}", name="FL rounds lab", owner=lab_user)
            owners = []
            for i in range(len(w.sites)):
                u = user_create(email=f"h{i}-{tag}@bench.example", password=None, full_name=f"Hospital {i}")
                t = tenant_create(slug=f"flr-h{i}-{tag}", name=f"Hospital {i}", owner=u)
                owners.append((t, u))
        self.lab_client = self._client(lab_user)
        self.hospitals = []
        for (t, u), s in zip(owners, sorted(w.sites, key=lambda s: s.site_id), strict=True):
            client = self._client(u)
            r = client.post(f"/api/v1/tenants/{t.slug}/datasets/", {"name": f"{w.dataset} {s.label}"}, format="json")
            assert r.status_code == 201, r.content
            ds = int(r.json()["id"])
            buf = io.BytesIO()
            s.table.to_pandas().to_csv(buf, index=False)
            f = io.BytesIO(buf.getvalue())
            f.name = f"{s.label}.csv"
            r = client.post(f"/api/v1/tenants/{t.slug}/datasets/{ds}/versions/", {"file": f, "label": "target"},
                            format="multipart")  # fmt: skip
            assert r.status_code == 201, r.content
            raw = r.json()
            r = client.post(f"/api/v1/tenants/{t.slug}/datasets/{ds}/versions/{raw['id']}/deidentify/",
                            {"policy": KEEP}, format="json")  # fmt: skip
            assert r.status_code == 201, r.content
            r = client.post(f"/api/v1/tenants/{t.slug}/datasets/{ds}/grants/",
                            {"grantee": self.lab.slug, "permission": "federate"}, format="json")  # fmt: skip
            assert r.status_code == 201, r.content
            self.hospitals.append({"tenant": t, "client": client, "dataset": ds})

    def federation(self, spec: dict[str, Any], name: str) -> int:
        r = self.lab_client.post(
            f"/api/v1/tenants/{self.lab.slug}/federations/",
            {"name": name, "spec": spec, "sites": [{"dataset_id": h["dataset"]} for h in self.hospitals]},
            format="json",
        )
        assert r.status_code == 201, r.content
        fed_id = int(r.json()["id"])
        for h in self.hospitals:
            slug = h["tenant"].slug
            inbox = h["client"].get(f"/api/v1/tenants/{slug}/federation-sites/").json()["results"]
            site = next(s for s in inbox if s["federation"] == fed_id)
            r = h["client"].post(f"/api/v1/tenants/{slug}/federation-sites/{site['id']}/approve/",
                                 {"digest": site["digest"]}, format="json")  # fmt: skip
            assert r.status_code == 200, r.content
        return fed_id

    def start_workers(self, n: int) -> None:
        import redis
        from django.conf import settings

        r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        for key in [*r.scan_iter("fl*"), *r.scan_iter("default*")]:
            r.delete(key)
        r.delete("unacked", "unacked_index")
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "bench.settings")}
        # FL_ROUNDS_PROFILE=<dir>: each worker runs under cProfile and writes <dir>/worker<i>.prof
        # when it stops (a diagnostic: the figures of a profiled run are not comparable).
        profile = os.environ.get("FL_ROUNDS_PROFILE", "")
        for i in range(n):
            prof = ["-m", "cProfile", "-o", str(Path(profile) / f"worker{i}.prof")] if profile else []
            self.procs.append(subprocess.Popen(
                [sys.executable, *prof, "-m", "celery", "-A", "config", "worker", "-Q", "fl,default", "--pool", "solo",
                 "-n", f"flr{i}-{self.tag}@%h", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
                cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip

    def run_federation(self, fed_id: int, timeout: float) -> tuple[Any, float]:
        from apps.federation.models import Federation
        from apps.tenancy.scope import tenant_scope

        t0 = time.perf_counter()
        r = self.lab_client.post(f"/api/v1/tenants/{self.lab.slug}/federations/{fed_id}/start/")
        assert r.status_code == 200, r.content
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with tenant_scope(self.lab.pk):
                fed = Federation.objects.get(pk=fed_id)
            if fed.status in Federation.TERMINAL:
                return fed, time.perf_counter() - t0
            time.sleep(0.05)
        raise RuntimeError(f"federation {fed_id} did not finish in {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        import signal

        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=20)
                except (OSError, subprocess.TimeoutExpired):
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.log.parent, ignore_errors=True)


def run_platform(w: Workload, *, workers: int = 2) -> dict[str, Any]:
    """The hosted federation on real workers; raises on failure."""
    from apps.federation.models import Federation, FederationSite, Round
    from apps.federation.services import rounds as round_services
    from apps.tenancy.scope import tenant_scope
    from workers.federated.simulate import VirtualSite, run
    from workers.federated.spec import FederationSpec

    plat = Platform(f"{w.dataset[:6]}{os.getpid()}{int(time.time()) % 100000}")
    try:
        t_seed = time.perf_counter()
        plat.seed(w)
        seed_s = time.perf_counter() - t_seed
        plat.start_workers(workers)
        warm_id = plat.federation(federation_spec(1), f"warm-up {w.dataset}")
        warm, warm_s = plat.run_federation(warm_id, PLATFORM_TIMEOUT_S)
        if warm.status != "completed":
            raise RuntimeError(f"warm-up federation {warm.status}: {warm.status_reason} {plat.log_tail()}")
        fed_id = plat.federation(federation_spec(w.fspec.rounds), f"fl_rounds {w.dataset}")
        fed, whole = plat.run_federation(fed_id, PLATFORM_TIMEOUT_S)
        if fed.status != "completed":
            raise RuntimeError(f"federation {fed.status}: {fed.status_reason} {plat.log_tail()}")
        with tenant_scope(plat.lab.pk):
            rounds = list(Round.objects.filter(federation=fed).order_by("number"))
            train = [r for r in rounds if r.kind == "train"]
            final = round_services.load_round_model(fed, train[-1])
            sites, schema = [], None
            for s in FederationSite.all_tenants.filter(federation=fed).select_related("version").order_by("id"):
                table, schema = round_services._load_table(fed, s)
                sites.append(VirtualSite(s.pk, s.label, table, role=s.role, n_rows=int(s.version.rows or 0)))
            fed = Federation.objects.get(pk=fed.pk)
    finally:
        plat.stop()
    by_number = {r.number: r for r in rounds}
    round_s = [(r.closed_at - by_number[r.number - 1].closed_at).total_seconds() for r in train]
    open_close = [(r.closed_at - r.opened_at).total_seconds() for r in train]
    stats_s = (by_number[0].closed_at - by_number[0].opened_at).total_seconds() if 0 in by_number else None
    # The same federation in process, with the hosted run's secret, id and site ids: the same model.
    fspec = FederationSpec.from_dict(fed.spec)
    sim = run(fspec, sites, schema, secret=bytes.fromhex(fed.seed_secret), federation_id=fed.pk)
    x_test, y_test = test_tensors(w.test_table, schema, fspec, fed.encoders)
    import torch

    return {
        "whole_s": whole,
        "round_s": round_s,
        "round_open_to_close_s": open_close,
        "statistics_round_s": stats_s,
        "correct": test_correct(fspec, final, fed.encoders, x_test, y_test),
        "correct_inprocess_same_secret": test_correct(fspec, sim.state, sim.encoders, x_test, y_test),
        "torch_equal_to_inprocess": all(torch.equal(sim.state[k], final[k]) for k in final),
        "warmup_federation_s": warm_s,
        "seed_tenants_datasets_s": seed_s,
        "workers": workers,
        # For the same-seeds comparison (popped before the figures are written: not JSON).
        "_rerun": {
            "sites": [s for s in sites if s.role == "train"],
            "schema": schema,
            "encoders": fed.encoders,
            "secret": bytes.fromhex(fed.seed_secret),
            "federation_id": fed.pk,
        },
    }


# --- the benchmark ---------------------------------------------------------------------------------


def same_seeds(
    w: Workload, rerun: dict[str, Any], p: dict[str, Any], *, flower: bool, flower_reason: str = ""
) -> dict[str, Any]:
    """Test rows right for each system on the **hosted run's** seeds and splits: the platform draws a
    secret per federation, so the runs above (on the bench's fixed secret) train with other seeds.
    Here the plain loop and Flower train the hosted sites' rows under the hosted encoders with
    ``site_seed(hosted secret, federation id, hosted site id, round)``, the in-process run is the
    hosted one's replay (``correct_inprocess_same_secret``), and all four are compared. When Flower
    ran on the fixed seeds but not here, the bar is ``None`` (not judged), never passed without it."""
    hosted = Workload(w.dataset, rerun["schema"], rerun["sites"], w.test_table, w.fspec, w.frame_columns)
    encode_with(hosted, rerun["encoders"])
    seeds = {"secret": rerun["secret"], "federation_id": rerun["federation_id"]}
    correct = {"plain": run_plain(hosted, encoded=True, **seeds)["correct"],
               "inprocess": p["correct_inprocess_same_secret"], "platform": p["correct"]}  # fmt: skip
    why = "" if flower else (flower_reason or "Flower unavailable")
    if flower:
        try:
            correct["flower"] = run_flower(hosted, **seeds)["correct"]
        except Exception as exc:  # any failure of the baseline's run is reported, not raised
            why = f"Flower run on the hosted seeds failed: {type(exc).__name__}: {exc}"[:500]
    equal: bool | None = max(correct.values()) - min(correct.values()) <= 1
    if flower and "flower" not in correct:
        equal = None  # a system compared on the fixed seeds is missing here: not judged
    return {"test_correct": correct, "flower_unavailable_reason": why, "equal_within_1_sample": equal}


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(float(v), nd)


def measure(dataset: str, *, sites: int, rounds: int, flower: bool, platform: bool) -> dict[str, Any]:
    """Every system on one dataset: timings (s), test accuracy, and why a part is missing."""
    out: dict[str, Any] = {"dataset": dataset, "sites": sites, "rounds": rounds}
    w = workload(dataset, sites=sites, rounds=rounds)
    run_plain(w)  # warm-up: torch's first calls, imports (the in-process run then starts warm too)
    plain = run_plain(w)
    inproc = run_inprocess(w)
    n_test = len(w.y_test)
    out.update(test_rows=n_test, train_rows=sum(len(p.y_train) for p in w.prepared.values()),
               val_rows=sum(len(p.y_val) for p in w.prepared.values()))  # fmt: skip
    out["plain"] = {"whole_s": plain["whole_s"], "round_s": plain["round_s"], "steady_s": steady(plain["round_s"]),
                    "correct": plain["correct"], "accuracy": plain["correct"] / n_test}  # fmt: skip
    out["inprocess"] = {"whole_s": inproc["whole_s"], "round_s": inproc["round_s"],
                        "steady_s": steady(inproc["round_s"]), "correct": inproc["correct"],
                        "accuracy": inproc["correct"] / n_test,
                        "max_abs_weight_diff_vs_plain": max_abs_diff(inproc["state"], plain["state"])}  # fmt: skip
    out["flower"] = None
    if flower:
        why = flower_available()
        if not why:
            try:
                f = run_flower(w)
                out["flower"] = {
                    "whole_s": f["simulation_seconds"], "startup_s": f["startup_seconds"],
                    "strategy_s": f["strategy_seconds"], "rounds_s": f["rounds_seconds"],
                    "teardown_s": f["teardown_seconds"], "process_s": f["process_s"],
                    "import_s": f["import_seconds"], "round_s": f["round_seconds"],
                    "steady_s": steady(f["round_seconds"]), "correct": f["correct"], "accuracy": f["correct"] / n_test,
                    "max_abs_weight_diff_vs_plain": max_abs_diff(f["state"], plain["state"]),
                    "version": f["flwr_version"], "torch": f["torch_version"], "ray_cpus": f["ray_cpus"],
                }  # fmt: skip
            except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
                why = f"Flower run failed: {exc}"[:1000]
        out["flower_unavailable_reason"] = why
    else:
        out["flower_unavailable_reason"] = "not asked for"
    out["platform"] = None
    if platform:
        why = django_ready()
        if not why:
            try:
                p = run_platform(w)
                p["steady_s"] = steady(p["round_s"])
                p["accuracy"] = p["correct"] / n_test
                rerun = p.pop("_rerun")
                out["platform"] = p
                try:  # a failed comparison costs the comparison, never the hosted run's figures
                    out["same_seeds"] = same_seeds(w, rerun, p, flower=out["flower"] is not None,
                                                   flower_reason=out["flower_unavailable_reason"])  # fmt: skip
                except Exception as exc:
                    out["same_seeds"] = {"test_correct": {}, "equal_within_1_sample": None,
                                         "flower_unavailable_reason": "",
                                         "error": f"{type(exc).__name__}: {exc}"[:500]}  # fmt: skip
            except Exception as exc:  # a broken platform run is a finding, not a crash of the whole bench
                why = f"platform run failed: {type(exc).__name__}: {exc}"[:1500]
        out["platform_unavailable_reason"] = why
    else:
        out["platform_unavailable_reason"] = "not asked for"
    return out


def _figures(m: dict[str, Any], command: str, *, write: bool) -> list[dict[str, Any]]:
    ds = m["dataset"]
    ours_key = "platform" if m["platform"] else "inprocess"
    ours = m[ours_key]
    ours_label = ("the platform (2 warm Celery workers, PostgreSQL, Redis, validation, audit)" if ours_key ==
                  "platform" else "in-process Cohort (simulate.run; platform unavailable: "
                  f"{m['platform_unavailable_reason']})")  # fmt: skip
    fl = m["flower"]
    correct = {k: m[k]["correct"] for k in ("plain", "inprocess", "flower", "platform") if m.get(k)}
    # The bar is "on the same seeds and splits": with the platform, its own seeds (same_seeds);
    # without it every run above already shares the bench's seeds.
    same = m.get("same_seeds")
    acc_equal = bool(same["equal_within_1_sample"]) if same else max(correct.values()) - min(correct.values()) <= 1
    common = {
        "dataset": ds, "sites": m["sites"], "rounds": m["rounds"], "ours": ours_key, "ours_system": ours_label,
        "test_rows": m["test_rows"], "train_rows": m["train_rows"], "test_correct": correct,
        "test_correct_same_seeds_as_platform": same["test_correct"] if same else None,
        "same_seeds_flower_unavailable_reason": same["flower_unavailable_reason"] if same else None,
        "test_accuracy": {k: round(v / m["test_rows"], 4) for k, v in correct.items()},
        "accuracy_equal_within_1_sample": acc_equal,
        "whole_s": {k: _r(m[k]["whole_s"]) for k in correct},
        "steady_round_s": {k: _r(m[k]["steady_s"], 4) for k in correct},
        "round_s": {k: [round(x, 4) for x in m[k]["round_s"]] for k in correct},
        "flower_available": fl is not None, "flower_unavailable_reason": m["flower_unavailable_reason"],
        "platform_available": m["platform"] is not None,
        "platform_unavailable_reason": m["platform_unavailable_reason"],
        "flower": {k: v for k, v in fl.items() if k not in ("round_s",)} if fl else None,
        "platform": {k: v for k, v in m["platform"].items() if k != "round_s"} if m["platform"] else None,
        "inprocess_max_abs_weight_diff_vs_plain": m["inprocess"]["max_abs_weight_diff_vs_plain"],
    }  # fmt: skip
    fl_label = "Flower 1.42 simulation (Ray backend, run_simulation, FedAvg; own venv)"
    specs = [
        ("whole_vs_flower", "s", ours["whole_s"], f"{fl_label}: run_simulation end to end, Ray start-up included",
         fl["whole_s"] if fl else None, TARGET_WHOLE, "whole run"),
        ("steady_vs_flower", "s", ours["steady_s"], f"{fl_label}: median of rounds 2..R",
         fl["steady_s"] if fl else None, TARGET_STEADY_FLOWER, "steady round"),
        ("steady_vs_plain", "s", ours["steady_s"], "a plain in-process torch FedAvg loop: median of rounds 2..R",
         m["plain"]["steady_s"], TARGET_STEADY_PLAIN, "steady round"),
    ]  # fmt: skip
    results = []
    for fig, unit, value, baseline, base_value, target, what in specs:
        name = f"{NAME}_{fig}_{ds}"
        available = base_value is not None and base_value > 0
        ratio = value / base_value if available else 0.0
        met = available and ratio <= target and acc_equal
        data = {
            "name": name, "unit": unit, "value": value,
            "baseline": baseline if available else f"{baseline} (unavailable: {m['flower_unavailable_reason']})",
            "baseline_value": base_value or 0.0, "ratio": ratio,
            "target": f"{what}: {ours_key} / baseline <= {target} and test accuracy equal within 1 sample",
            "command": command, "met": met, **common,
        }  # fmt: skip
        if write:
            results.append(write_result(**data))
        else:
            data["target_met"] = data.pop("met")
            results.append(data)
    return results


def run(
    ctx: Any,
    *,
    sites: int = SITES,
    rounds: int = ROUNDS,
    datasets: Sequence[str] = DATASETS,
    flower: bool = True,
    platform: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    command = getattr(getattr(ctx, "opts", None), "command", "") or "python -m bench.run --only fl_rounds"
    if getattr(getattr(ctx, "opts", None), "quick", False) and (sites, rounds) == (SITES, ROUNDS):
        sites, rounds = QUICK_SITES, QUICK_ROUNDS
    figures: list[dict[str, Any]] = []
    measured: dict[str, Any] = {}
    for ds in datasets:
        log(f"{NAME}: {ds}, {sites} sites x {rounds} rounds")
        m = measure(ds, sites=sites, rounds=rounds, flower=flower, platform=platform)
        measured[ds] = m
        for f in _figures(m, command, write=write):
            figures.append(f)
            log(f"{NAME}: {f['name']}: {f['value']:.3f} s vs {f['baseline_value']:.3f} s -> ratio {f['ratio']:.3f} "
                f"({'met' if f['target_met'] else 'NOT met'}); test correct {f['test_correct']}")  # fmt: skip
    # The headline: the whole-run figure with the worst ratio (the hardest target).
    whole = [f for f in figures if "_whole_vs_flower_" in f["name"]]
    head = max(whole, key=lambda f: f["ratio"])
    summary = {
        "name": NAME, "unit": "s", "value": head["value"], "baseline": head["baseline"],
        "baseline_value": head["baseline_value"], "ratio": head["ratio"],
        "target": f"whole run <= {TARGET_WHOLE}x Flower's, steady round <= {TARGET_STEADY_FLOWER}x Flower's and <= "
                  f"{TARGET_STEADY_PLAIN}x the plain loop's, accuracy equal within 1 sample, on every dataset",
        "command": command, "met": all(f["target_met"] for f in figures),
        "figures": {f["name"]: {"value": f["value"], "baseline_value": f["baseline_value"], "ratio": f["ratio"],
                                "target_met": f["target_met"]} for f in figures},
        "datasets": list(datasets), "sites": sites, "rounds": rounds,
        "test_correct": {ds: next(f for f in figures if f["dataset"] == ds)["test_correct"] for ds in datasets},
        "test_correct_same_seeds": {
            ds: next(f for f in figures if f["dataset"] == ds)["test_correct_same_seeds_as_platform"]
            for ds in datasets
        },
        "test_rows": {ds: measured[ds]["test_rows"] for ds in datasets},
        "ours": {ds: next(f for f in figures if f["dataset"] == ds)["ours"] for ds in datasets},
    }  # fmt: skip
    if write:
        return write_result(**summary)
    summary["target_met"] = summary.pop("met")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.fl_rounds`` (through scripts/cohort.py exec): this benchmark alone, with the
    scratch database bench.run would make (until it is registered there)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.fl_rounds", description=__doc__)
    parser.add_argument("--sites", type=int, default=SITES)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--no-platform", action="store_true")
    parser.add_argument("--db-name", default=os.environ.get("COHORT_BENCH_DB", "cohort_bench_fl_rounds"))
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.fl_rounds",
                        *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    dbname = ""
    if not args.no_platform:
        from bench.run import prepare_database

        prepare_database(args.db_name, reuse=False)
        dbname = args.db_name
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", database="owner", interactive=False, verbosity=0)
        connections["owner"].close()
    ctx = type("Ctx", (), {"opts": type("Opts", (), {"command": command, "quick": False})()})()
    try:
        res = run(ctx, sites=args.sites, rounds=args.rounds, datasets=args.datasets, flower=not args.no_flower,
                  platform=not args.no_platform)  # fmt: skip
        (ROOT / "bench" / "results" / f"{NAME}.json").write_text(json.dumps(res, indent=2) + "\n")
    finally:
        if dbname:
            from django.db import connections

            from bench.run import drop_database

            connections.close_all()
            drop_database(dbname)
    return 0


if __name__ == "__main__":
    sys.exit(main())
