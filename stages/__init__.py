"""DVC stages and MLflow entry points: argument parsing and file I/O only; the work is in recsys_core."""
