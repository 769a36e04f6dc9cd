"""`recsys ui` (`make ui`): the MLflow UI on this clone's store, opening on the training runs with their headline
metrics (recsys_core/ui_app.py), bound to 127.0.0.1.

It serves the store $MLFLOW_TRACKING_URI names, else the embedded one (mlflow.db). A tracking server has its UI at
its own address already (`make tracking-server` starts it with the same app).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from recsys_core import tracking
from stages.common import log, paths, setup_logging


def command(store: str, host: str, port: int, workers: int) -> list[str]:
    """``mlflow server`` with this project's UI app on ``store``."""
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    return [mlflow, "server", "--app-name", "seqrerank", "--backend-store-uri", store, "--host", host,
            "--port", str(port), "--workers", str(workers)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys ui", description=__doc__)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1",
                        help="0.0.0.0 opens the UI, and every run in the store, to the network (no authentication!)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="the server's worker processes")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    store = tracking.tracking_uri(paths().root)
    if not tracking.sqlite_file(store):
        log.error("%s is a tracking server: its UI is at that address (it opens on the runs when it was started "
                  "with `make tracking-server`)", store)  # fmt: skip
        return 2
    tracking.prepare_store(store)  # under the store's lock, so that a stage starting now does not race the UI
    print(f"MLflow UI on {store}: open http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    # job execution: MLflow's huey consumers for GenAI judges, which nothing here uses
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = command(store, args.host, args.port, args.workers)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached
