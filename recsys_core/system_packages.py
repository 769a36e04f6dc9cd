"""Debian packages the project needs beside its Python ones (PostgreSQL for the team tracking server, Chromium for
the browser tests): installed with apt-get when they are missing and we may (root), else a message saying what to
install."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from recsys_core.errors import RecsysError

log = logging.getLogger(__name__)


class SystemPackageError(RecsysError):
    """A Debian package is missing and could not be installed here."""


def runs_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def apt_install(package: str, hint: str) -> None:
    """``apt-get install -y package`` (after ``apt-get update``); ``hint`` says how to install it by hand."""
    if not (runs_as_root() and shutil.which("apt-get")):
        raise SystemPackageError(f"the Debian package {package!r} is missing and cannot be installed here: {hint}")
    log.info("installing Debian's %s package", package)
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if done.returncode:
            raise SystemPackageError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}\n{hint}")
