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


APT_LOCK_WAIT_S = 600  # apt-get waits this long for another apt-get (or dpkg) to finish instead of failing at once
APT_LOCK = "/tmp/seqrerank-apt.lock"  # our own installs, one at a time (test workers may need two packages at once)


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip().endswith("installed")


def apt_install(package: str, hint: str) -> None:
    """``apt-get install -y package`` (after ``apt-get update``); ``hint`` says how to install it by hand.

    Installs run one at a time (a file lock), skip a package another process installed meanwhile, and wait for an
    apt-get of anyone else to let go of dpkg's lock, which otherwise fails at once ("Could not get lock").
    """
    if not (runs_as_root() and shutil.which("apt-get")):
        raise SystemPackageError(f"the Debian package {package!r} is missing and cannot be installed here: {hint}")
    from filelock import FileLock

    with FileLock(APT_LOCK):
        if installed(package):
            return
        log.info("installing Debian's %s package", package)
        wait = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"]
        for cmd in (["apt-get", *wait, "update", "-q"], ["apt-get", *wait, "install", "-y", "-q", package]):
            done = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
            if done.returncode:
                raise SystemPackageError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}\n{hint}")
