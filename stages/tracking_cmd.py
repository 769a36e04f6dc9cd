"""`recsys tracking start|stop|status|migrate`: the team setup's MLflow tracking server on a PostgreSQL cluster kept
in a project folder (`make tracking-server`, `make tracking-stop`, `make tracking-status`, `make tracking-migrate`).

After `start`, point every clone and machine at it: `export MLFLOW_TRACKING_URI=http://127.0.0.1:5050`.
`migrate` copies the embedded store (mlflow.db + mlartifacts/) into the server: runs, models, versions, aliases.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from recsys_core import tracking_server as server
from recsys_core.errors import RecsysError
from stages.common import log, paths, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys tracking", description=__doc__)
    parser.add_argument("action", choices=("start", "stop", "status", "migrate"))
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the cluster, artifacts and credentials live (default: <repo>/.tracking)")  # fmt: skip
    parser.add_argument("--port", type=int, default=5050, help="the MLflow server's port")
    parser.add_argument("--pg_port", type=int, default=5433, help="PostgreSQL's port (127.0.0.1 only)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the MLflow server's address; 0.0.0.0 opens it to the network (no authentication!)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="the MLflow server's worker processes")
    parser.add_argument("--source", default=None,
                        help="migrate: the store to copy (default: the embedded store, sqlite:///<repo>/mlflow.db)")  # fmt: skip
    parser.add_argument("--dest", default=None,
                        help="migrate: the server to copy into (default: $MLFLOW_TRACKING_URI when it is a server, "
                        "else this folder's server)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    folder = (args.folder or paths().root / ".tracking").resolve()
    settings = server.ServerSettings(folder, args.port, args.pg_port, args.host, args.workers)
    try:
        if args.action == "start":
            url = server.start(settings)
            print(f"MLflow tracking server on PostgreSQL: {url} (data in {folder})")
            print(f"use it: export MLFLOW_TRACKING_URI={url}")
        elif args.action == "stop":
            server.stop(settings)
            print(f"stopped (nothing deleted: {folder})")
        elif args.action == "migrate":
            return _migrate(args, settings)
        else:
            state = server.status(settings)
            print(f"PostgreSQL: {state['postgres']} (127.0.0.1:{state['pg_port']}, {folder / 'pg'})")
            print(f"MLflow server: {state['mlflow_server']} ({state['url']})")
            return 0 if state["mlflow_server"] == "running" else 3
    except RecsysError as err:
        log.error("recsys tracking %s failed: %s", args.action, err)
        return 1
    return 0


def _migrate(args: argparse.Namespace, settings: server.ServerSettings) -> int:
    from recsys_core import tracking
    from recsys_core.migrate import migrate

    root = paths().root
    source = args.source or tracking.embedded_uri(root)
    given = os.environ.get(tracking.TRACKING_ENV, "")
    dest = args.dest or (given if given.startswith(("http://", "https://")) else settings.url)
    if tracking.sqlite_file(source) is not None and not tracking.sqlite_file(source).is_file():
        raise RecsysError(f"no embedded store to migrate: {tracking.sqlite_file(source)} does not exist")
    if dest.startswith(("http://", "https://")) and not server.healthy(dest):
        raise RecsysError(f"the tracking server {dest} does not answer: start it (`make tracking-server`) or name "
                          "another with --dest")  # fmt: skip
    print(f"copying {source} into {dest}")
    summary = migrate(source, dest)
    for line in summary.lines():
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
