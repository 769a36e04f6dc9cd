"""MLflow pyfunc models. Logged as "models from code" (a script that calls ``set_model``), so loading a model
never unpickles anything; weights come from safetensors, settings from JSON.

The retriever and two-stage models take an optional ``user_id`` column (the dense user id 1..U of ``users.parquet``,
as the histories use dense item ids). A collaborative retriever (VBPR, MMGCN, BM3) scores a row with that user's
learned vector, exactly as evaluation scores the validation and test users; a row without it (column absent, null)
is scored from its history (fold-in). An id the model has no vector for is an error that names the valid range.
Sequential retrievers (LRURec) ignore it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

RETRIEVER_ARTIFACT = "retriever"
MODEL_CODE = Path(__file__).parent / "model_code"


def _request_columns() -> list:
    """history (item ids), optional k, optional user_id. ``user_id`` is typed Any: an integer column holding a null
    (one row without a user) reaches pandas as floats with NaN, which MLflow's ``long`` check rejects; the ids are
    checked in ``_user_ids`` instead."""
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType

    return [ColSpec(Array(DataType.long), "history"), ColSpec(DataType.long, "k", required=False),
            ColSpec(AnyType(), "user_id", required=False)]  # fmt: skip


def retriever_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema(_request_columns())
    outputs = Schema([ColSpec(Array(DataType.long), "items"), ColSpec(Array(DataType.double), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def retriever_input_example(history: list[int], k: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"history": [list(map(int, history))], "k": [k]})


def _id_lists(frame: pd.DataFrame, column: str, n_items: int, allow_empty: bool) -> list[np.ndarray]:
    """A column of item-id lists from a request, checked: ids in 1..n_items, and non-empty unless allowed."""
    if column not in frame:
        raise ValueError(f"input needs a {column!r} column of item-id lists; got columns {list(frame.columns)}")
    out = []
    for row, value in enumerate(frame[column]):
        items = np.asarray([] if value is None else list(value), dtype=np.int64)
        if (items.size == 0 and not allow_empty) or (items.size and (items.min() < 1 or items.max() > n_items)):
            need = "a list of item ids" if allow_empty else "a non-empty list of item ids"
            raise ValueError(f"row {row}: {column!r} must be {need} in 1..{n_items}; got {items.tolist()[:10]}")
        out.append(items)
    return out


def _histories(frame: pd.DataFrame, n_items: int) -> list[np.ndarray]:
    return _id_lists(frame, "history", n_items, allow_empty=True)


def _user_ids(frame: pd.DataFrame) -> np.ndarray | None:
    """The optional ``user_id`` column: (B,) int64 ids, 0 where a row has none (null); None without the column.
    An id must be an integer >= 1; whether the model knows it (1..U) is the retriever's check."""
    if "user_id" not in frame:
        return None
    out = np.zeros(len(frame), dtype=np.int64)
    for row, value in enumerate(frame["user_id"]):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        number = value.item() if isinstance(value, np.generic) else value
        whole = isinstance(number, int) or (isinstance(number, float) and number.is_integer())  # 3 or 3.0 (NaN-padded)
        if isinstance(number, bool) or not whole or number < 1:
            raise ValueError(f"row {row}: 'user_id' must be a user id (an integer >= 1) or null; got {value!r}")
        out[row] = int(number)
    return out


def _requested_k(frame: pd.DataFrame, default: int = 10) -> list[int]:
    if "k" not in frame:
        return [default] * len(frame)
    return [default if pd.isna(k) else int(k) for k in frame["k"]]


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

    def load_context(self, context) -> None:
        import torch

        from recsys_core.model_base import method_of
        from recsys_core.retrieval import get_retriever_class

        folder = Path(context.artifacts[RETRIEVER_ARTIFACT])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.retriever = get_retriever_class(method_of(folder)).load(folder, device)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        histories = _histories(model_input, self.retriever.n_items)
        ks = _requested_k(model_input)
        return top_k(self.retriever.score(histories, _user_ids(model_input)), histories, ks)


def log_pyfunc(code_file: str, artifacts: dict[str, str], signature, input_example, pip_requirements: list[str]):
    """Log a models-from-code pyfunc (``model_code/<code_file>``) with the recsys_core package as its code."""
    import mlflow

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE / code_file),
        artifacts=artifacts,
        code_paths=[str(Path(__file__).parent)],
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
    )


def log_retriever(folder: Path, example_history: list[int], pip_requirements: list[str]):
    """Log the retriever in ``folder`` (model.safetensors + config.json) as a pyfunc of the active run."""
    return log_pyfunc("retriever.py", {RETRIEVER_ARTIFACT: str(folder)}, retriever_signature(),
                      retriever_input_example(example_history), pip_requirements)  # fmt: skip


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

    def load_context(self, context) -> None:
        import torch

        from recsys_core.model_base import method_of
        from recsys_core.rerank import get_reranker_class

        folder = Path(context.artifacts[RERANKER_ARTIFACT])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.reranker = get_reranker_class(method_of(folder)).load(folder, device)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        histories = _histories(model_input, self.reranker.n_items)
        return rerank_lists(
            self.reranker, histories, _id_lists(model_input, "candidates", self.reranker.n_items, allow_empty=False)
        )


def log_reranker(folder: Path, example_history: list[int], example_candidates: list[int], reqs: list[str]):
    example = pd.DataFrame({"history": [list(map(int, example_history))],
                            "candidates": [list(map(int, example_candidates))]})  # fmt: skip
    return log_pyfunc("reranker.py", {RERANKER_ARTIFACT: str(folder)}, reranker_signature(), example, reqs)


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

    def load_context(self, context) -> None:
        import json

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

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        histories = _histories(model_input, self.pipeline.retriever.n_items)
        ks = _requested_k(model_input)
        top = max(1, min(max(ks), self.pipeline.rerank_top_k))
        items, scores = self.pipeline.recommend(histories, top, _user_ids(model_input))
        rows = {"items": [], "scores": [], "titles": []}
        for row, k in enumerate(ks):
            keep = [c for c in range(min(k, top)) if items[row, c] > 0]
            rows["items"].append([int(items[row, c]) for c in keep])
            rows["scores"].append([float(scores[row, c]) for c in keep])
            rows["titles"].append([self.titles.get(int(items[row, c]), "") for c in keep])
        return pd.DataFrame(rows)


def log_two_stage(retriever_dir: Path, reranker_dir: Path, items_file: Path, settings_file: Path,
                  example_history: list[int], reqs: list[str]):  # fmt: skip
    artifacts = {RETRIEVER_ARTIFACT: str(retriever_dir), RERANKER_ARTIFACT: str(reranker_dir),
                 ITEMS_ARTIFACT: str(items_file), SETTINGS_ARTIFACT: str(settings_file)}  # fmt: skip
    return log_pyfunc("two_stage.py", artifacts, two_stage_signature(), retriever_input_example(example_history), reqs)
