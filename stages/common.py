"""What every stage shares: the original flat flags over params.yaml, logging, and a clean exit on known errors."""

from __future__ import annotations

import argparse
import logging
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from recsys_core import tracking
from recsys_core.config import DEPRECATED_FLAGS, FLAT_KEYS, Config, allowed_values, field_info, load_config
from recsys_core.data.store import DataPaths
from recsys_core.errors import RecsysError

log = logging.getLogger("recsys")
DEFAULT_PARAMS = Path("params.yaml")


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _add_flag(parser: argparse.ArgumentParser, name: str, annotation: Any, help_text: str) -> None:
    choices = allowed_values(annotation)
    args = get_args(annotation)
    if annotation is bool:
        # `--use_text`, `--use_text false` (what MLproject passes) and `--no-use_text` all work.
        parser.add_argument(
            f"--{name}", nargs="?", const=True, type=_boolean, default=argparse.SUPPRESS, help=help_text
        )
        parser.add_argument(
            f"--no-{name}", dest=name, action="store_false", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        return
    if choices:
        parser.add_argument(f"--{name}", choices=choices, default=argparse.SUPPRESS, help=help_text)
        return
    if get_origin(annotation) is list:
        item_choices = allowed_values(args[0])  # a list of Literal values (ltr_features): choose among them
        kind = str if item_choices else args[0]
        parser.add_argument(f"--{name}", nargs="+", type=kind, choices=item_choices, default=argparse.SUPPRESS,
                            help=help_text)  # fmt: skip
        return
    union = get_origin(annotation) in (Union, types.UnionType)
    if union and set(args) >= {int, float}:
        kind: Callable[[str], Any] = _number
    elif union:
        inner = next(a for a in args if a is not type(None))
        kind = _optional(inner)
    else:
        kind = annotation
    parser.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS, help=help_text)


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--params", type=Path, default=None, help="params file (default params.yaml; a named file must exist)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    flags = parser.add_argument_group("configuration (override params.yaml; original flag names)")
    for name in FLAT_KEYS:
        info = field_info(name)
        default = info.default
        _add_flag(flags, name, info.annotation, f"{info.description or ''} (default {default!r})".strip())
    for old, new in DEPRECATED_FLAGS.items():
        _add_flag(flags, old, field_info(new).annotation, f"deprecated alias of --{new}")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    given = {k: v for k, v in vars(args).items() if k in FLAT_KEYS or k in DEPRECATED_FLAGS}
    if args.params is None:
        return load_config(DEFAULT_PARAMS, given)
    return load_config(args.params, given, must_exist=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.captureWarnings(True)


def paths() -> DataPaths:
    """Stages run from the repository root (as DVC and `mlflow run` do)."""
    return DataPaths(Path.cwd())


def run_stage(
    prog: str,
    description: str,
    body: Callable[[Config, argparse.Namespace], None],
    argv: list[str] | None = None,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse flags, load the config, run ``body``; a known failure prints its message and exits 1, a stop signal
    (SIGTERM, SIGINT) exits 128 + its number after the MLflow run was ended as KILLED."""
    parser = build_parser(prog, description)
    if extra_args:
        extra_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = config_from_args(args)
        body(cfg, args)
    except RecsysError as err:
        log.error("%s failed: %s", prog, err)
        return 1
    except tracking.Interrupted as stop:  # raised only while an MLflow run is open
        closed = f"; MLflow run {stop.closed_run} ended as KILLED" if stop.closed_run else ""
        log.error("%s stopped by %s%s; run it again to continue (training resumes from its last checkpoint)", prog,
                  stop.signal_name, closed)  # fmt: skip
        return 128 + stop.signum
    except Exception as err:  # noqa: BLE001 - only a tracking server that stopped answering is turned into a message
        message = tracking.unreachable_server(err)
        if message is None:
            raise
        log.error("%s failed: %s", prog, message)
        return 1
    return 0
