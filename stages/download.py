"""DVC stage `download`: fetch the raw files of `data.dataset_code` into data/raw/{code}/."""

from __future__ import annotations

import argparse
import logging
import sys

from recsys_core.config import Config
from recsys_core.data.sources import get_source
from stages.common import paths, run_stage

log = logging.getLogger("recsys.download")


def body(cfg: Config, args: argparse.Namespace) -> None:
    code = cfg.data.dataset_code
    raw_dir = paths().raw(code)
    manifest = get_source(code).download(raw_dir, cfg.data)
    log.info("raw '%s' files in %s (source: %s)", code, raw_dir, manifest["source"])
    for f in manifest["files"] + manifest.get("archives", []):
        log.info("  %-28s %12s bytes  sha256 %s", f["name"], f"{f['size']:,}", f["sha256"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys download", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
