"""A `recsys` command that stops at a chosen point, so that tests/test_run_lifecycle.py can signal or kill a real
training process exactly there: ``python tests/lifecycle_worker.py PAUSE MARKER recsys-args...``.

PAUSE is ``epoch:N`` (epoch N trained, checkpointed and logged) or ``log_model`` (the MLflow logged model exists,
PENDING, and its files are being uploaded). On reaching it the worker writes MARKER and sleeps until signalled, or
until a file MARKER.go appears.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_core import tracking  # noqa: E402


def pause(marker: Path) -> None:
    """Wait for a signal (its handler raises here) or for MARKER.go, which lets the stage go on."""
    marker.write_text("paused\n")
    go = marker.with_name(marker.name + ".go")
    deadline = time.monotonic() + 600
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    where, marker, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if where.startswith("epoch:"):
        stop_at = int(where.split(":", 1)[1])
        real = tracking.epoch_logger

        def epoch_logger(prefix: str = ""):
            log_epoch = real(prefix)

            def callback(epoch: int, record: dict[str, float]) -> None:
                log_epoch(epoch, record)
                if epoch == stop_at:
                    pause(marker)

            return callback

        tracking.epoch_logger = epoch_logger
    elif where == "log_model":
        import mlflow

        def log_model_artifacts(self, model_id: str, local_dir: str) -> None:
            pause(marker)

        mlflow.MlflowClient.log_model_artifacts = log_model_artifacts
    else:
        raise SystemExit(f"unknown pause point {where!r}: epoch:N or log_model")
    from stages import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
