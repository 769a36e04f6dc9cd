"""MLflow pyfunc models. Logged as "models from code" (a script that calls ``set_model``), so loading a model
never unpickles anything; weights come from safetensors, settings from JSON.

The retriever and two-stage models take an optional ``user_id`` column (the dense user id 1..U of ``users.parquet``,
as the histories use dense item ids). A collaborative retriever (VBPR, MMGCN, BM3) scores a row with that user's
learned vector, exactly as evaluation scores the validation and test users; a row without it (column absent, null)
is scored from its history (fold-in). An id the model has no vector for is an error that names the valid range.
Sequential retrievers (LRURec) ignore it.

Every request is checked before any work against the serving limits (``ServingConfig``: stored with the two-stage
model in its settings, the defaults for the retriever and reranker models): rows, history and candidate lengths, ``k``
(1..as many items as the model returns), item and user ids. A refusal is HTTP 400 whose message is the reason alone:
no stack trace, no echo of the input, no server path; another failure is a 500 that names the exception type only
(the traceback goes to the server log). ``make serve`` puts a guard in front (``serving_guard``)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

RETRIEVER_ARTIFACT = "retriever"
MODEL_CODE = Path(__file__).parent / "model_code"


def _request_columns() -> list:
    """history (item ids), optional k, optional user_id. ``k`` and ``user_id`` are typed Any: an integer column
    holding a null (one row without it) reaches pandas as floats with NaN, which MLflow's ``long`` check rejects (and
    it would cut k = 2.5 to 2); they are checked in ``_requested_k`` and ``_user_ids`` instead."""
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType

    return [ColSpec(Array(DataType.long), "history"), ColSpec(AnyType(), "k", required=False),
            ColSpec(AnyType(), "user_id", required=False)]  # fmt: skip


def retriever_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema(_request_columns())
    outputs = Schema([ColSpec(Array(DataType.long), "items"), ColSpec(Array(DataType.double), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def retriever_input_example(history: list[int], k: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"history": [list(map(int, history))], "k": [k]})


DEFAULT_K = 10  # items per row when a request gives no k


class RequestRefused(ValueError):
    """A request the served model will not compute; the message is the exact reason (HTTP 400)."""


def serving_limits(stored: dict | None = None):
    """The serving limits: ``stored`` (a model's settings) over the defaults of ``ServingConfig``."""
    from recsys_core.config import ServingConfig

    return ServingConfig(**(stored or {}))


@dataclass
class Request:
    """A checked request: one history (int64 item ids) per row, k per row, user ids (None without the column)."""

    histories: list[np.ndarray]
    ks: list[int]
    users: np.ndarray | None
    candidates: list[np.ndarray] | None = None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _too_many_rows(rows: int, limits) -> str:
    return (f"{rows} rows in one request; this server takes at most serving_max_rows = {limits.serving_max_rows} "
            "rows per request: split it into smaller requests")  # fmt: skip


def _check_rows(frame: pd.DataFrame, limits) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise RequestRefused(f"expected a table of rows (dataframe_records), got {type(frame).__name__}")
    if len(frame) == 0:
        raise RequestRefused("the request has no rows: send at least one record with a 'history' list")
    if len(frame) > limits.serving_max_rows:
        raise RequestRefused(_too_many_rows(len(frame), limits))


def _id_lists(frame: pd.DataFrame, column: str, n_items: int, limit: int, limit_name: str,
              allow_empty: bool) -> list[np.ndarray]:  # fmt: skip
    """A column of item-id lists, checked row by row: a list, at most ``limit`` ids, each in 1..n_items (and
    non-empty unless allowed)."""
    if column not in frame:
        raise RequestRefused(
            f"the request needs a {column!r} column of item-id lists; got columns {list(frame.columns)}"
        )
    out = []
    for row, value in enumerate(frame[column]):
        value = [] if _missing(value) else value
        if isinstance(value, str | bytes | dict) or not hasattr(value, "__len__"):
            raise RequestRefused(f"row {row}: {column!r} must be a list of item ids; got {_shown(value)}")
        if len(value) > limit:
            raise RequestRefused(f"row {row}: {column!r} holds {len(value)} item ids; this server takes at most "
                                 f"{limit_name} = {limit}: send the most recent {limit}")  # fmt: skip
        try:
            ids = np.asarray(value)
        except (TypeError, ValueError):  # ragged
            ids = np.asarray([None])
        whole = ids.dtype.kind in "iu" or (ids.dtype.kind == "f" and bool(np.all(np.mod(ids, 1) == 0)))
        if ids.size and (ids.ndim != 1 or not whole):
            raise RequestRefused(f"row {row}: {column!r} must be a flat list of integer item ids; got {_shown(value)}")
        items = ids.astype(np.int64) if ids.size else np.zeros(0, np.int64)
        if items.size == 0 and not allow_empty:
            raise RequestRefused(f"row {row}: {column!r} is empty; give at least one item id (1..{n_items})")
        bad = np.flatnonzero((items < 1) | (items > n_items))
        if bad.size:
            raise RequestRefused(f"row {row}: item id {items[bad[0]]} in {column!r} (position {bad[0]}) is not an item "
                                 f"of this model: its item ids are 1..{n_items}")  # fmt: skip
        out.append(items)
    return out


def _user_ids(frame: pd.DataFrame) -> np.ndarray | None:
    """The optional ``user_id`` column: (B,) int64 ids, 0 where a row has none (null); None without the column.
    An id must be an integer >= 1; whether the model knows it (1..U) is the retriever's check."""
    if "user_id" not in frame:
        return None
    out = np.zeros(len(frame), dtype=np.int64)
    for row, value in enumerate(frame["user_id"]):
        if _missing(value):
            continue
        number = value.item() if isinstance(value, np.generic) else value
        whole = isinstance(number, int) or (isinstance(number, float) and number.is_integer())  # 3 or 3.0 (NaN-padded)
        if isinstance(number, bool) or not whole or number < 1:
            raise RequestRefused(
                f"row {row}: 'user_id' must be a user id (an integer >= 1) or null; got {_shown(value)}"
            )
        out[row] = int(number)
    return out


def _requested_k(frame: pd.DataFrame, most: int, limit_text: str) -> list[int]:
    """k per row (DEFAULT_K, or ``most`` if fewer, where absent or null), each checked to be in 1..most."""
    default = min(DEFAULT_K, most)
    if "k" not in frame:
        return [default] * len(frame)
    ks = []
    for row, value in enumerate(frame["k"]):
        if _missing(value):
            ks.append(default)
            continue
        number = value.item() if isinstance(value, np.generic) else value
        if isinstance(number, bool) or not (
            isinstance(number, int) or (isinstance(number, float) and number.is_integer())
        ):
            raise RequestRefused(f"row {row}: 'k' must be a whole number of items; got {_shown(value)}")
        k = int(number)
        if k < 1:
            raise RequestRefused(f"row {row}: k = {k}; k is how many items come back: ask for 1..{most}")
        if k > most:
            raise RequestRefused(f"row {row}: k = {k} is more than this model returns: at most {limit_text}; "
                                 f"ask for k <= {most}")  # fmt: skip
        ks.append(k)
    return ks


def check_request(frame: pd.DataFrame, n_items: int, limits, most_k: int, k_limit: str, retriever=None) -> Request:
    """A retriever or two-stage request checked before any work (RequestRefused names what is wrong): rows, history
    lengths and ids, k in 1..most_k (``k_limit`` says what bounds it), user ids (the range ``retriever`` knows)."""
    limits = limits or serving_limits()
    _check_rows(frame, limits)
    histories = _id_lists(frame, "history", n_items, limits.serving_max_history, "serving_max_history", True)
    ks = _requested_k(frame, most_k, k_limit)
    users = _user_ids(frame)
    if users is not None and hasattr(retriever, "user_ids"):
        try:
            retriever.user_ids(users, len(users))
        except ValueError as err:
            raise RequestRefused(str(err)) from None
    return Request(histories, ks, users)


def check_rerank_request(frame: pd.DataFrame, n_items: int, limits) -> Request:
    """A reranker request checked before any work: rows, histories, non-empty candidate lists, all ids in range."""
    limits = limits or serving_limits()
    _check_rows(frame, limits)
    histories = _id_lists(frame, "history", n_items, limits.serving_max_history, "serving_max_history", True)
    candidates = _id_lists(frame, "candidates", n_items, limits.serving_max_candidates, "serving_max_candidates",
                           False)  # fmt: skip
    return Request(histories, [], None, candidates)


@functools.cache
def _http_errors() -> tuple[type, type]:
    """MlflowException types for a refusal (400; also a ValueError) and a failure (500) whose message stays exactly
    as given: MLflow's scoring server would prefix it with the whole input frame ('Failed to predict data ...').
    Built on first use: importing MLflow takes seconds."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

    class _Exact(MlflowException):
        @property
        def message(self) -> str:
            return self.args[0]

        @message.setter
        def message(self, value: str) -> None:
            pass  # the reason stays as is

    class Refused(_Exact, ValueError):
        def __init__(self, reason: str):
            super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

    class Failed(_Exact):
        def __init__(self, reason: str):
            super().__init__(reason, error_code=INTERNAL_ERROR)

    for kind in (Refused, Failed):
        kind.__qualname__ = kind.__name__  # recsys_core.serving.Refused in tracebacks
    return Refused, Failed


@contextlib.contextmanager
def _answering():
    """A refusal becomes HTTP 400 with its reason; any other failure a 500 naming the exception type only (its
    traceback goes to the server log, not to the client)."""
    try:
        yield
    except RequestRefused as err:
        raise _http_errors()[0](str(err)) from None
    except Exception as err:
        log.exception("the model failed on a request")
        message = f"the model failed on this request ({type(err).__name__}); the server log has the details"
        raise _http_errors()[1](message) from err


def top_k(scores, histories: list[np.ndarray], ks: list[int]) -> pd.DataFrame:
    """Top-k unseen items per row (history and padding masked)."""
    import torch

    from recsys_core.evaluation import mask_history

    scores = mask_history(scores.float().clone(), histories)
    items, values = [], []
    for row, k in enumerate(ks):
        finite = int(torch.isfinite(scores[row]).sum())
        vals, idx = torch.topk(scores[row], min(k, finite))
        items.append(idx.cpu().numpy().astype(np.int64).tolist())
        values.append(vals.cpu().numpy().astype(np.float64).tolist())
    return pd.DataFrame({"items": items, "scores": values})


class RetrieverModel:
    """pyfunc: item-id history (optional k, default 10; optional user_id) in; top-k unseen item ids and scores out."""

    limits = None  # load_context sets the model's serving limits; None: the defaults

    def load_context(self, context) -> None:
        import torch

        from recsys_core.model_base import method_of
        from recsys_core.retrieval import get_retriever_class

        folder = Path(context.artifacts[RETRIEVER_ARTIFACT])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.retriever = get_retriever_class(method_of(folder)).load(folder, device)
        self.limits = serving_limits()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        with _answering():
            n_items = self.retriever.n_items
            request = check_request(model_input, n_items, self.limits, n_items,
                                    f"{n_items} items (its whole catalogue)", self.retriever)  # fmt: skip
            return top_k(self.retriever.score(request.histories, request.users), request.histories, request.ks)


def log_pyfunc(code_file: str, artifacts: dict[str, str], signature, input_example, pip_requirements: list[str],
               path: Path | None = None, name: str = "model"):  # fmt: skip
    """Log a models-from-code pyfunc (``model_code/<code_file>``) with the recsys_core package as its code, as the
    logged model ``name`` (the method: what the UI lists); with ``path``, save it to that new folder instead (no
    tracking store: benchmarks, tests)."""
    import mlflow

    args = dict(python_model=str(MODEL_CODE / code_file), artifacts=artifacts, code_paths=[str(Path(__file__).parent)],
                signature=signature, input_example=input_example, pip_requirements=pip_requirements)  # fmt: skip
    if path is not None:
        return mlflow.pyfunc.save_model(str(path), **args)
    return mlflow.pyfunc.log_model(name=name, **args)


def log_retriever(folder: Path, example_history: list[int], pip_requirements: list[str]):
    """Log the retriever in ``folder`` (model.safetensors + config.json) as a pyfunc of the active run."""
    from recsys_core.model_base import method_of

    return log_pyfunc("retriever.py", {RETRIEVER_ARTIFACT: str(folder)}, retriever_signature(),
                      retriever_input_example(example_history), pip_requirements, name=method_of(folder))  # fmt: skip


# --- stage 2 -------------------------------------------------------------------------------------------------------

RERANKER_ARTIFACT = "reranker"


def reranker_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(Array(DataType.long), "history"), ColSpec(Array(DataType.long), "candidates")])
    outputs = Schema([ColSpec(Array(DataType.long), "items"), ColSpec(Array(DataType.double), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def rerank_lists(reranker, histories: list[np.ndarray], lists: list[np.ndarray]) -> pd.DataFrame:
    """Each candidate list reordered by the reranker's scores (highest first)."""
    width = max(len(c) for c in lists)
    packed = np.zeros((len(lists), width), dtype=np.int64)
    for row, items in enumerate(lists):
        packed[row, : len(items)] = items
    scores = reranker.score(histories, packed).float().cpu().numpy()
    items_out, scores_out = [], []
    for row, items in enumerate(lists):
        order = np.argsort(-scores[row, : len(items)], kind="stable")
        items_out.append(items[order].tolist())
        scores_out.append(scores[row, : len(items)][order].astype(np.float64).tolist())
    return pd.DataFrame({"items": items_out, "scores": scores_out})


class RerankerModel:
    """pyfunc: item-id history and a candidate list in; the candidates reordered, with scores, out."""

    limits = None  # load_context sets the model's serving limits; None: the defaults

    def load_context(self, context) -> None:
        import torch

        from recsys_core.model_base import method_of
        from recsys_core.rerank import get_reranker_class

        folder = Path(context.artifacts[RERANKER_ARTIFACT])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.reranker = get_reranker_class(method_of(folder)).load(folder, device)
        self.limits = serving_limits()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        with _answering():
            request = check_rerank_request(model_input, self.reranker.n_items, self.limits)
            return rerank_lists(self.reranker, request.histories, request.candidates)


def log_reranker(folder: Path, example_history: list[int], example_candidates: list[int], reqs: list[str]):
    example = pd.DataFrame({"history": [list(map(int, example_history))],
                            "candidates": [list(map(int, example_candidates))]})  # fmt: skip
    from recsys_core.model_base import method_of

    return log_pyfunc("reranker.py", {RERANKER_ARTIFACT: str(folder)}, reranker_signature(), example, reqs,
                      name=method_of(folder))  # fmt: skip


# --- the two-stage model -------------------------------------------------------------------------------------------

ITEMS_ARTIFACT, SETTINGS_ARTIFACT = "items", "settings"


def two_stage_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema(_request_columns())
    outputs = Schema([ColSpec(Array(DataType.long), "items"), ColSpec(Array(DataType.double), "scores"),
                      ColSpec(Array(DataType.string), "titles")])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


class TwoStageModel:
    """pyfunc: item-id history (optional k, default 10; optional user_id) in; the top-k items of retrieval +
    reranking, with their final scores (fused with the retriever's when the reranker stores a fusion weight) and
    titles, out. With a user's history and user_id it answers what ``evaluate_pipeline`` evaluated for that user."""

    limits = None  # load_context sets the model's serving limits; None: the defaults

    def load_context(self, context) -> None:
        import torch

        from recsys_core.model_base import method_of
        from recsys_core.pipeline import TwoStage
        from recsys_core.rerank import get_reranker_class
        from recsys_core.retrieval import get_retriever_class

        device = "cuda" if torch.cuda.is_available() else "cpu"
        ret_dir, rr_dir = Path(context.artifacts[RETRIEVER_ARTIFACT]), Path(context.artifacts[RERANKER_ARTIFACT])
        settings = json.loads(Path(context.artifacts[SETTINGS_ARTIFACT]).read_text())
        self.pipeline = TwoStage(get_retriever_class(method_of(ret_dir)).load(ret_dir, device),
                                 get_reranker_class(method_of(rr_dir)).load(rr_dir, device),
                                 settings["retrieval_top_k"], settings["rerank_top_k"])  # fmt: skip
        items = pd.read_parquet(context.artifacts[ITEMS_ARTIFACT], columns=["item_id", "title"])
        self.titles = dict(zip(items["item_id"].astype(int), items["title"], strict=True))
        self.limits = serving_limits(settings.get("serving"))  # models logged before the limits: the defaults

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        with _answering():
            return self._recommend(model_input)

    def _recommend(self, model_input: pd.DataFrame) -> pd.DataFrame:
        most = self.pipeline.rerank_top_k
        request = check_request(model_input, self.pipeline.retriever.n_items, self.limits, most,
                                f"rerank_top_k = {most} items (the reranked list; a two-stage model trained with a "
                                "larger --rerank_top_k returns more)", self.pipeline.retriever)  # fmt: skip
        items, scores = self.pipeline.recommend(request.histories, max(request.ks), request.users)
        rows = {"items": [], "scores": [], "titles": []}
        for row, k in enumerate(request.ks):
            keep = [c for c in range(min(k, items.shape[1])) if items[row, c] > 0]
            rows["items"].append([int(items[row, c]) for c in keep])
            rows["scores"].append([float(scores[row, c]) for c in keep])
            rows["titles"].append([self.titles.get(int(items[row, c]), "") for c in keep])
        return pd.DataFrame(rows)


def log_two_stage(retriever_dir: Path, reranker_dir: Path, items_file: Path, settings_file: Path,
                  example_history: list[int], reqs: list[str], limits: dict | None = None,
                  path: Path | None = None):  # fmt: skip
    """Log the two-stage pyfunc (save it to ``path`` if given). ``settings_file`` holds retrieval_top_k and
    rerank_top_k, and may hold the serving limits under ``serving``; ``limits`` (e.g. ``cfg.serving.model_dump()``)
    overrides them; the defaults fill in."""
    settings = json.loads(Path(settings_file).read_text())
    settings["serving"] = serving_limits({**settings.get("serving", {}), **(limits or {})}).model_dump()
    with tempfile.TemporaryDirectory() as tmp:
        stored = Path(tmp) / "settings.json"
        stored.write_text(json.dumps(settings, indent=2) + "\n")
        artifacts = {RETRIEVER_ARTIFACT: str(retriever_dir), RERANKER_ARTIFACT: str(reranker_dir),
                     ITEMS_ARTIFACT: str(items_file), SETTINGS_ARTIFACT: str(stored)}  # fmt: skip
        example = retriever_input_example(example_history)
        from recsys_core.model_base import method_of

        name = f"{method_of(retriever_dir)}+{method_of(reranker_dir)}"
        return log_pyfunc("two_stage.py", artifacts, two_stage_signature(), example, reqs, path, name=name)
