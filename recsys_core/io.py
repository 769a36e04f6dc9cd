"""Atomic file output and hashing: a failed step leaves no partial output and never clobbers a good one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; outputs should get the modes a plain open() would give.
FILE_MODE = 0o666 & ~_current_umask()
DIR_MODE = 0o777 & ~_current_umask()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def staged_directory(dest: Path) -> Iterator[Path]:
    """Build a set of files in a scratch folder, then move them into ``dest`` together.

    If ``dest`` does not exist, the scratch folder is renamed onto it (one atomic step). If it exists, each file
    replaces its namesake by rename, and files in ``dest`` that the step did not write (other stages' outputs) stay.
    On any error the scratch folder is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(scratch, DIR_MODE)
    try:
        yield scratch
        if not dest.exists():
            os.replace(scratch, dest)
        else:
            for item in sorted(scratch.iterdir()):
                target = dest / item.name
                if target.is_dir() and not item.is_dir():
                    raise IsADirectoryError(f"{target} is a folder; expected a file")
                if item.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_model_folder(out: Path, parts: Sequence[Any], note: dict[str, Any]) -> Path:
    """Write a whole model folder: each of ``parts`` (a model, its tokenizer or processor: anything with
    ``save_pretrained``) and ``smoke_model.json`` (``note``) are saved in a scratch folder beside ``out``, which then
    replaces ``out`` as a whole, so that a reader never sees half a model or a mix of two."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, DIR_MODE)  # mkdtemp makes it private; the model folder gets a plain folder's mode
        for part in parts:
            part.save_pretrained(tmp)
        (tmp / "smoke_model.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
