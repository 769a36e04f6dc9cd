"""`recsys doctor`: the MLflow runs left RUNNING by a process that is gone (`kill -9`, a crash, a reboot) and the
logged models left PENDING by runs that ended; with --close, ends those runs as KILLED and fails those models.

A run whose process still works, or that was started on another host, is listed and left alone; so is a run with no
process tags (started before recsys recorded them, or by another tool) unless --close-untagged is given.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from recsys_core import tracking
from recsys_core.errors import RecsysError
from stages.common import log, paths, setup_logging

STATE_TEXT = {
    "gone": "orphaned: process gone",
    "alive": "running: process alive",
    "elsewhere": "started on another host: cannot tell",
    "unknown": "no process tags: cannot tell",
}


def _started(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M") if ms else "?"


def _dangling_models(client, running_ids: set[str]) -> list:
    """PENDING logged models whose run is no longer RUNNING: nothing will finish them."""
    experiments = [e.experiment_id for e in tracking.all_experiments(client)]
    found = []
    for start in range(0, len(experiments), 100):  # MLflow searches at most 100 experiments at once
        token = None
        while True:
            page = client.search_logged_models(experiments[start : start + 100], max_results=100, page_token=token)
            found += [m for m in page if str(m.status) == "PENDING" and m.source_run_id not in running_ids]
            token = page.token
            if not token:
                break
    return found


def doctor(close: bool, close_untagged: bool) -> int:
    import mlflow

    uri = tracking.configure(tracking.project_root(paths().root))
    client = mlflow.MlflowClient()
    running = tracking.running_runs(client)
    models = _dangling_models(client, {r.run.info.run_id for r in running})
    print(f"MLflow store {uri}: {len(running)} RUNNING run(s)")
    for found in running:
        run, tags = found.run, found.run.data.tags
        print(f"  {run.info.run_id}  {found.experiment}/{run.info.run_name}  started {_started(run.info.start_time)}"
              f"  pid {tags.get(tracking.PID_TAG, '?')} on {tags.get(tracking.HOST_TAG, '?')}"
              f"  [{STATE_TEXT[found.state]}]")  # fmt: skip
    to_close = [r for r in running if r.state == "gone" or (close_untagged and r.state == "unknown")]
    if models:
        print(f"{len(models)} logged model(s) left PENDING by runs that ended:")
        for model in models:
            print(f"  {model.model_id}  {model.name}  run {model.source_run_id}")
    if not close:
        if to_close or models:
            print("`recsys doctor --close` ends the orphaned runs as KILLED and marks those models FAILED")
        else:
            print("nothing to close")
        return 0
    for found in to_close:
        tracking.close_orphan(client, found.run, "recsys doctor")
        print(f"closed run {found.run.info.run_id} as KILLED")
    for model in models:
        client.finalize_logged_model(model.model_id, "FAILED")
        print(f"marked logged model {model.model_id} FAILED")
    if not (to_close or models):
        print("nothing to close")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys doctor", description=__doc__)
    parser.add_argument("--close", action="store_true", help="end orphaned runs as KILLED, fail dangling models")
    parser.add_argument("--close-untagged", action="store_true",
                        help="with --close, also end RUNNING runs without process tags (make sure none is working)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.close_untagged and not args.close:
        parser.error("--close-untagged goes with --close")
    setup_logging(args.verbose)
    try:
        return doctor(args.close, args.close_untagged)
    except RecsysError as err:
        log.error("recsys doctor failed: %s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
