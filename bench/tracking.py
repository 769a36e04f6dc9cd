"""Tracking throughput: the embedded SQLite store against the team's MLflow server on PostgreSQL.

From 1, 4 and 8 client processes started together (each its own MlflowClient, as separate stages or machines are),
measures
- metrics logged per second: each client opens a run and logs ``--metrics`` values one call at a time, as a training
  loop's per-epoch ``log_metric`` does, and
- registry operations per second: each client registers ``--versions`` versions of one shared registered model and
  moves an alias to each (two operations per version), as train and promote stages do,
over the wall time from the common start to the last client's end. Failed calls (SQLite's "database is locked") are
counted, not retried: the column says how many of the calls were lost.

    .venv/bin/python bench/tracking.py [--clients 1 4 8] [--metrics 200] [--versions 10] [--out FILE]

The server is started with `recsys tracking start` settings on free 127.0.0.1 ports in a temporary folder and
stopped at the end (PostgreSQL 15 as in the team setup, `--workers` MLflow workers).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from recsys_core.net import free_port  # noqa: E402


def _client(uri: str, kind: str, index: int, count: int, ready, start, done) -> None:
    """One client: waits for the common start, then logs metrics or registers versions; puts its failures."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("bench").experiment_id
    run = client.create_run(experiment, run_name=f"{kind}-{index}")
    failed = 0
    ready.put(index)
    start.wait()
    for step in range(count):
        try:
            if kind == "metrics":
                client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
            else:
                version = client.create_model_version("bench-model", f"runs:/{run.info.run_id}/model",
                                                      run.info.run_id, await_creation_for=0)  # fmt: skip
                client.set_registered_model_alias("bench-model", f"client{index}", version.version)
        except Exception:  # noqa: BLE001 - counted: the lost call is what the table reports
            failed += 1
    client.set_terminated(run.info.run_id)
    done.put(failed)


def measure(uri: str, kind: str, clients: int, count: int) -> tuple[float, int]:
    """(operations per second over the wall time of all clients, failed calls)."""
    ctx = mp.get_context("spawn")
    ready, start, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(uri, kind, i, count, ready, start, done)) for i in range(clients)]
    for proc in procs:
        proc.start()
    for _ in procs:  # every client imported MLflow and opened its run
        ready.get(timeout=600)
    began = time.perf_counter()
    start.set()
    failed = sum(done.get(timeout=1800) for _ in procs)
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join()
    per_op = 2 if kind == "registry" else 1
    return clients * count * per_op / seconds, failed * per_op


def prepare(uri: str) -> None:
    from mlflow import MlflowClient

    from recsys_core.tracking import prepare_store

    prepare_store(uri)
    client = MlflowClient(uri, uri)
    if client.get_experiment_by_name("bench") is None:
        client.create_experiment("bench")
    if not client.search_registered_models("name = 'bench-model'"):
        client.create_registered_model("bench-model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--metrics", type=int, default=200, help="log_metric calls per client")
    parser.add_argument("--versions", type=int, default=10, help="versions registered (and aliased) per client")
    parser.add_argument("--workers", type=int, default=2, help="the MLflow server's worker processes")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from recsys_core import tracking_server as server

    folder = Path(tempfile.mkdtemp(prefix="recsys-bench-tracking-"))
    folder.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root: it must enter the folder
    settings = server.ServerSettings(folder / "server", port=free_port(), pg_port=free_port(), workers=args.workers)
    rows = []
    try:
        began = time.perf_counter()
        url = server.start(settings)
        print(f"tracking server up in {time.perf_counter() - began:.0f} s: {url} ({args.workers} workers)")
        stores = {"embedded SQLite": lambda n: f"sqlite:///{folder / f'mlflow-{n}.db'}",  # fresh file per size
                  "server on PostgreSQL": lambda n: url}  # fmt: skip
        for label, uri_for in stores.items():
            for clients in args.clients:
                uri = uri_for(clients)
                prepare(uri)
                metrics_s, metrics_failed = measure(uri, "metrics", clients, args.metrics)
                registry_s, registry_failed = measure(uri, "registry", clients, args.versions)
                rows.append((label, clients, metrics_s, metrics_failed, clients * args.metrics, registry_s,
                             registry_failed, clients * args.versions * 2))  # fmt: skip
                print(f"  {label}, {clients} client(s): {metrics_s:.0f} metrics/s ({metrics_failed} failed), "
                      f"{registry_s:.1f} registry ops/s ({registry_failed} failed)", flush=True)  # fmt: skip
    finally:
        server.stop(settings)
        shutil.rmtree(folder, ignore_errors=True)
    lines = ["| store | clients | metrics/s | failed metric calls | registry ops/s | failed registry ops |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for label, clients, m_s, m_f, m_n, r_s, r_f, r_n in rows:
        lines.append(f"| {label} | {clients} | {m_s:.0f} | {m_f} of {m_n} | {r_s:.1f} | {r_f} of {r_n} |")
    table = "\n".join(lines)
    print(
        f"\n{os.cpu_count()} CPUs; {args.metrics} log_metric calls and {args.versions} versions (+ alias) per client\n"
    )
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
