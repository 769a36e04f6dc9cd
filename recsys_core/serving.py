"""MLflow pyfunc models. Logged as "models from code" (a script that calls ``set_model``), so loading a model
never unpickles anything; weights come from safetensors, settings from JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

RETRIEVER_ARTIFACT = "retriever"
MODEL_CODE = Path(__file__).parent / "model_code"


def retriever_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(Array(DataType.long), "history"), ColSpec(DataType.long, "k", required=False)])
    outputs = Schema([ColSpec(Array(DataType.long), "items"), ColSpec(Array(DataType.double), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def retriever_input_example(history: list[int], k: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"history": [list(map(int, history))], "k": [k]})


def _histories(frame: pd.DataFrame, n_items: int) -> list[np.ndarray]:
    if "history" not in frame:
        raise ValueError(f"input needs a 'history' column of item-id lists; got columns {list(frame.columns)}")
    out = []
    for row, value in enumerate(frame["history"]):
        items = np.asarray([] if value is None else list(value), dtype=np.int64)
        if items.size and (items.min() < 1 or items.max() > n_items):
            raise ValueError(f"row {row}: item ids must lie in 1..{n_items}; got {items.min()}..{items.max()}")
        out.append(items)
    return out


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
    """pyfunc: item-id history (and optional k, default 10) in; top-k unseen item ids and scores out."""

    def load_context(self, context) -> None:
        import json

        import torch

        from recsys_core.retrieval import get_retriever_class

        folder = Path(context.artifacts[RETRIEVER_ARTIFACT])
        method = json.loads((folder / "config.json").read_text())["method"]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.retriever = get_retriever_class(method).load(folder, device)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        histories = _histories(model_input, self.retriever.n_items)
        ks = [10] * len(histories)
        if "k" in model_input:
            ks = [10 if pd.isna(k) else int(k) for k in model_input["k"]]
        return top_k(self.retriever.score(histories), histories, ks)


def log_retriever(folder: Path, example_history: list[int], pip_requirements: list[str]):
    """Log the retriever in ``folder`` (model.safetensors + config.json) as a pyfunc of the active run."""
    import mlflow

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE / "retriever.py"),
        artifacts={RETRIEVER_ARTIFACT: str(folder)},
        code_paths=[str(Path(__file__).parent)],
        signature=retriever_signature(),
        input_example=retriever_input_example(example_history),
        pip_requirements=pip_requirements,
    )
