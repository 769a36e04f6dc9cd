"""System metrics of a training run: CPU, memory and (where there is one) GPU use, sampled by MLflow's own monitor.

MLflow's monitor also logs host disk usage and network counters (5 of its 8 CPU-machine rows), which say nothing
about a training run and fill the top of the run's overview, where MLflow lists system metrics before the model's.
Runs here get the same monitor without those two, so the overview shows 3 system rows above the model metrics.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

LEFT_OUT = ("DiskMonitor", "NetworkMonitor")  # MLflow's monitor classes whose metrics a training run does not need


def start_monitor(run_id: str, resumed: bool = False) -> None:
    """MLflow's system-metrics monitor for ``run_id`` without disk and network, stopped by ``mlflow.end_run``."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking import fluent

    try:
        monitor = SystemMetricsMonitor(run_id, resume_logging=resumed)
        monitor.monitors = [m for m in monitor.monitors if type(m).__name__ not in LEFT_OUT]
        fluent.run_id_to_system_metrics_monitor[run_id] = monitor  # where end_run finds and finishes it
        monitor.start()
    except Exception as err:  # noqa: BLE001 - as MLflow's own start_run: a monitor must not stop the training
        log.warning("system metrics are not logged for run %s: %s", run_id, err)
