"""The served two-stage model under load, and under requests that would sink an unguarded server.

Saves a two-stage model with this checkout's code (the registry champion's retriever and reranker of --dataset, or a
tiny untrained LRURec + BERT4Rec when there is none), then starts on free 127.0.0.1 ports, one after the other:
- `make serve`: MLflow's scoring app behind recsys_core.serving_guard.RequestGuard (uvicorn --factory), and
- the README's plain `mlflow models serve` (the pyfunc's own checks, no guard),
and reports, for each, requests/s and p50 / p99 latency at 1, 4 and 16 concurrent clients (bounded: --seconds each;
one-row requests, a history of 20-200 random items, k 10), with the server's peak memory; then the issue's
120,000-row (5 MB) request, and for `make serve` a body announced at 1 GB and a 32 MB chunked one: status, seconds,
peak memory. Peak memory is the summed VmHWM of the server's processes, reset before each phase (Linux /proc).

    .venv/bin/python bench/serving.py [--dataset ml-100k] [--seconds 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from recsys_core.net import free_port, wait_until_answers  # noqa: E402

VENV_BIN = Path(sys.executable).parent
FRESH_SHELL = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


# ---- the model --------------------------------------------------------------------------------------------------
def champion_model(dataset: str, out: Path) -> tuple[Path, str] | None:
    """The registry champion of ``dataset``'s two-stage model, saved again with this checkout's code; None if absent."""
    import mlflow

    if "MLFLOW_TRACKING_URI" not in os.environ:
        if not (REPO / "mlflow.db").exists():
            return None
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{REPO}/mlflow.db"
    try:
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{dataset}-two-stage@champion",
                                                          dst_path=str(out / "champion")))  # fmt: skip
    except Exception as err:  # no such model / alias
        print(f"no {dataset}-two-stage@champion ({type(err).__name__}); using a tiny untrained model")
        return None
    art = folder / "artifacts"
    methods = [json.loads((art / part / "config.json").read_text())["method"] for part in ("retriever", "reranker")]
    return save(art / "retriever", art / "reranker", art / "items.parquet", art / "settings.json", out), (
        f"{dataset} champion ({' + '.join(methods)})"
    )


def tiny_model(out: Path, n_items: int = 1682) -> tuple[Path, str]:
    import pandas as pd

    from recsys_core.config import build_config
    from recsys_core.rerank.bert4rec import BERT4Rec
    from recsys_core.retrieval.lrurec import LRURec

    cfg = build_config({"lrurec": {"lru_hidden_size": 64}, "bert4rec": {"bert_hidden_size": 64}})
    LRURec(n_items, LRURec.hyperparameters(cfg, "ml-100k")).save(out / "retriever")
    BERT4Rec(n_items, BERT4Rec.hyperparameters(cfg, "ml-100k")).save(out / "reranker")
    titles = [f"Item {i}" for i in range(1, n_items + 1)]
    pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": titles}).to_parquet(out / "items.parquet")
    (out / "settings.json").write_text(json.dumps({"retrieval_top_k": 200, "rerank_top_k": 50}))
    folder = save(out / "retriever", out / "reranker", out / "items.parquet", out / "settings.json", out)
    return folder, f"untrained lrurec + bert4rec over {n_items} items"


def save(retriever: Path, reranker: Path, items: Path, settings: Path, out: Path) -> Path:
    from recsys_core.serving import log_two_stage

    log_two_stage(retriever, reranker, items, settings, [1, 2, 3], [], path=out / "model")
    return out / "model"


# ---- servers and their memory -----------------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, command: str, port: int):
        self.name, self.port = name, port
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=FRESH_SHELL, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        start = time.time()
        if not wait_until_answers(f"http://127.0.0.1:{port}/ping", self.process, 300):
            self.log.seek(0)
            self.stop()
            raise SystemExit(f"{name} did not start:\n{self.log.read().decode()[-3000:]}")
        self.start_seconds = time.time() - start
        self.loaded_mb = self.rss_mb()

    def pids(self) -> list[int]:
        out, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            try:
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                continue
            out.append(pid)
        return out

    def _status_kb(self, field: str) -> int:
        total = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total += int(next((line.split()[1] for line in lines if line.startswith(field)), 0))
        return total

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS:") / 1024

    def reset_peak(self) -> None:
        for pid in self.pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            except OSError:
                pass

    def peak_mb(self) -> float:
        return self._status_kb("VmHWM:") / 1024

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


# ---- load --------------------------------------------------------------------------------------------------------
def one_row_bodies(n_items: int, count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        history = rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(20, 201)), replace=False)
        bodies.append(json.dumps({"dataframe_records": [{"history": history.tolist(), "k": 10}]}).encode())
    return bodies


def load(server: Server, clients: int, seconds: float, bodies: list[bytes]) -> dict:
    """``clients`` threads, each on its own keep-alive connection, posting until the time is up."""
    latencies, failures, lock = [], [0], threading.Lock()
    deadline = time.time() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        n = index
        while time.time() < deadline:
            start = time.perf_counter()
            connection.request("POST", "/invocations", bodies[n % len(bodies)], {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
                failures[0] += answer.status != 200
            n += clients
        connection.close()

    server.reset_peak()
    start = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.time() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(ms), "rps": len(ms) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": failures[0], "peak": server.peak_mb()}  # fmt: skip


def post(port: int, body: bytes, timeout: float = 300) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()).get("message", "")


def oversized(port: int, size: int, chunked: bool) -> tuple[int, str]:
    """A POST of ``size`` bytes sent 1 MB at a time, stopping as soon as the server answers or hangs up."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())  # fmt: skip
    piece, sent = b" " * 2**20, 0
    try:
        while sent < size and not select.select([sock], [], [], 0)[0]:
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            sent += len(piece)
        if chunked and sent >= size:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = b""
    try:
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    try:
        return status, json.loads(body).get("message", "")
    except ValueError:
        return status, body[:200].decode(errors="replace")


def heavy_body(n_items: int, limits, megabytes: float) -> bytes:
    """The largest request the limits let through: serving_max_rows rows, each with the longest history allowed
    (ids cycling over the catalogue) that keeps the body under ``megabytes``."""
    rows = limits.serving_max_rows
    length = min(limits.serving_max_history, int(megabytes * 2**20 / rows / (len(str(n_items)) + 2)))
    records = [{"history": [1 + (r + j) % n_items for j in range(length)], "k": 10} for r in range(rows)]
    return json.dumps({"dataframe_records": records}).encode()


def at_once(port: int, body: bytes, clients: int) -> tuple[str, str]:
    """``clients`` copies of ``body`` posted at the same moment: their statuses and the slowest answer's seconds."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(port, body)[0])) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = {status: results.count(status) for status in sorted(set(results))}
    return " + ".join(f"{n} x {status}" for status, n in counts.items()), f"{clients} at once"


def refusal(server: Server, label: str, send, *args) -> dict:
    server.reset_peak()
    start = time.time()
    status, message = send(server.port, *args)
    if status == 200:
        message = f"ok: {len(json.loads(message)['predictions'][0]['items'])} items"
    return {"server": server.name, "request": label, "status": status, "seconds": time.time() - start,
            "peak": server.peak_mb(), "message": message[:110]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k", help="whose registry champion to serve (else a tiny model)")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    args = parser.parse_args()

    from recsys_core.serving import serving_limits

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    found = champion_model(args.dataset, work)
    folder, what = found if found else tiny_model(work)
    settings = json.loads((folder / "artifacts" / "settings.json").read_text())
    n_items = json.loads((folder / "artifacts" / "retriever" / "config.json").read_text())["n_items"]
    limits = serving_limits(settings["serving"])
    bodies = one_row_bodies(n_items, 500)
    rows = [{"history": [1 + (r + j) % n_items for j in range(6)], "k": 5} for r in range(120_000)]
    big = json.dumps({"dataframe_records": rows}).encode()
    heavy = heavy_body(n_items, limits, 0.9 * limits.serving_max_body_mb)

    commands = {
        "make serve": lambda port: f"make -o .venv/.installed serve SERVE_MODEL={folder} SERVE_PORT={port}",
        "mlflow models serve": lambda port: (
            f'PATH="{VENV_BIN}:$PATH" {VENV_BIN}/mlflow models serve -m {folder} '
            f"--env-manager local --host 127.0.0.1 --port {port}"
        ),  # fmt: skip
    }
    loads, refusals, started = [], [], []
    for name, command in commands.items():
        port = free_port()
        server = Server(name, command(port), port)
        started.append(server)
        try:
            for body in bodies[:5]:  # warm-up
                post(port, body)
            for clients in args.clients:
                loads.append({"server": name, **load(server, clients, args.seconds, bodies)})
                print(loads[-1], flush=True)
            label = f"120,000 rows ({len(big) / 2**20:.1f} MB)"
            refusals.append(refusal(server, label, post, big))
            if name == "make serve":
                refusals.append(refusal(server, "1 GB announced (Content-Length)", oversized, 2**30, False))
                refusals.append(refusal(server, "32 MB chunked", oversized, 32 * 2**20, True))
                label = f"largest allowed ({limits.serving_max_rows} rows, {len(heavy) / 2**20:.1f} MB) x 16"
                refusals.append(refusal(server, label, at_once, heavy, 16))
            refusals.append(refusal(server, "one row, afterwards", post, bodies[0]))
            for row in refusals:
                print(row, flush=True)
        finally:
            server.stop()

    lines = [f"Model: {what}; {n_items} items, rerank_top_k {settings['rerank_top_k']}. Limits: "
             f"serving_max_rows {limits.serving_max_rows}, serving_max_history {limits.serving_max_history}, "
             f"serving_max_body_mb {limits.serving_max_body_mb:g}, serving_max_concurrent "
             f"{limits.serving_max_concurrent}. {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at the end. Requests: one row, a history of 20-200 random items, k 10.",
             "", "| server | started in | memory after start | clients | requests | req/s | p50 ms | p99 ms | not 200 "
             "| peak memory |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in loads:
        server = next(s for s in started if s.name == row["server"])
        lines.append(f"| {row['server']} | {server.start_seconds:.0f} s | {server.loaded_mb:.0f} MB | {row['clients']} "
                     f"| {row['requests']} | {row['rps']:.1f} | {row['p50']:.0f} | {row['p99']:.0f} | {row['errors']} "
                     f"| {row['peak']:.0f} MB |")  # fmt: skip
    lines += ["", "| server | request | answer | seconds | peak memory | reason given |", "|---|---|---|---|---|---|"]
    for row in refusals:
        lines.append(f"| {row['server']} | {row['request']} | {row['status']} | {row['seconds']:.2f} | "
                     f"{row['peak']:.0f} MB | {row['message']} |")  # fmt: skip
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
