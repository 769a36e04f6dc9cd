"""Learning to rank (``rerank_method: ltr``): LightGBM ``lambdarank`` over every signal the platform computes.

**Features** per (history, candidate), by family (``ltr.ltr_features``; ``rerank/ltr_features.py`` for the counted
and content ones):

- ``retriever``: the champion retriever's score of the candidate for this history, computed by the retriever itself
  (carried inside the saved ranker: its own ``save()`` folder), its rank among every item the history has not seen
  (the rank it had in the retrieved list, whatever order the candidates arrive in) and its gap to the list's best.
  Histories are scored without a user id (fold-in for the collaborative retrievers), in training, evaluation and
  serving alike, so a served request gets exactly the features that were evaluated.
- ``models``: the scores (and ranks within the list) of the other registered models named in ``ltr.ltr_models``:
  for each name, the newest version of ``{prefix}-retriever`` / ``{prefix}-reranker`` whose ``method`` tag is that
  name and whose ``data.version`` is the prepared data's; each scores the list once. They are carried too.
- ``popularity``, ``transitions``, ``content``, ``history``: see ``ltr_features``.

**Training lists look like test lists** (no feature of a training list is computed from its own target):

1. The ranker is trained on the *validation* users' lists (the champion retriever's top ``rerank_top_k`` for history
   = train, target = the validation item). The retriever and every carried model were trained on the train split
   only, so their scores never saw a validation item; popularity and transitions are counted over the train
   sequences only (``training_visible``), which never hold a validation item. ``check_no_target_leak`` verifies it
   on every training list before anything is fitted (and, for the shipped tables, on every test list).
2. Validation numbers come from cross-fitting: the validation users are split into ``ltr.ltr_folds`` folds; each
   fold's lists are scored by a model trained on the other folds (early stopping on NDCG@10 of a held-out fifth of
   those users). These out-of-fold scores are the validation numbers (``cross_fitted_scores``) and the per-round
   curve in the returned ``History``. The final model is trained on every validation user with the folds' average
   best round count.
3. More training lists (``ltr.ltr_shifts`` = N > 0): the validation lists alone are few (one per user, and only
   those holding their true item teach anything), and earlier positions of the train sequences cannot be used with
   the champion retriever, which trained on their targets. So the split is moved 1..N steps earlier
   (``Sequences.shifted``); for each shift a *shadow* retriever (the champion's method and settings) is trained on
   that earlier train split, and its validation lists (history = train minus its last s items, target = the s-th
   last train item) are retrieved and described by that shadow and counted over that earlier train split
   (``check_no_target_leak`` again), exactly as the real validation lists are by the champion. The ranker trains on
   all of them; folds are of users (a user's shifted lists sit in the fold of its validation list) and the
   cross-fitted numbers are those of the validation lists only. The shadows serve training only: the saved ranker
   carries the champion, not them.
4. The shipped model counts over train + validation (``serving_visible``): a test list (history = train + validation
   item, target = the test item) or a served request is described by everything before its target, the same rule
   as in training. ``score`` always uses these tables, so the served two-stage model scores exactly what was
   evaluated on the test users. Scoring the validation lists with ``score`` would be in-sample and would count their
   targets; their numbers are ``cross_fitted_scores``.

Boosting starts from the retriever (``ltr.ltr_start_from_retriever``, default on): each list's retriever scores,
z-scored within the list, are LightGBM's ``init_score``, so round 0 ranks exactly as the retriever does and the trees
learn corrections to it (with a few hundred training lists, trees grown from zero rank worse than the retriever they
are given as a feature). Score fusion (``rerank.rerank_score_fusion``) is tuned on the cross-fitted validation scores,
never on in-sample ones; its grid ends at the retriever's own order, so the tuned pipeline is never below retrieval
on validation.

Saved folder: ``ranker.txt`` (LightGBM's text format), ``config.json`` (method, settings, feature names, modalities,
the carried models' registry versions), ``counts.safetensors`` (the train + validation count tables),
``content.safetensors`` (unit item vectors per modality), ``validation.safetensors`` (the cross-fitted validation
scores), ``retriever/`` and ``models/{name}/`` (the carried models' own folders). Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys_core.config import Config
from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError, LineageError, MissingArtifactError
from recsys_core.features.store import FeatureSet
from recsys_core.io import atomic_path
from recsys_core.model_base import CONFIG, SavedModel
from recsys_core.rerank import ltr_features as lf
from recsys_core.rerank.base import Reranker
from recsys_core.rerank.data import CandidateSet, ExampleSource
from recsys_core.training import EpochCallback, History, LoopSettings

log = logging.getLogger(__name__)

RANKER_FILE = "ranker.txt"
COUNTS_FILE = "counts.safetensors"
CONTENT_FILE = "content.safetensors"
VALIDATION_FILE = "validation.safetensors"
RETRIEVER_DIR = "retriever"
MODELS_DIR = "models"
EARLY_STOPPING_SHARE = 0.2  # of each fold's training users: the slice its early stopping reads
CURVE_POINTS = 50  # rounds at which the cross-fitted validation curve is evaluated
FEATURE_BATCH = 256


def lightgbm_threads() -> int:
    """LightGBM's OpenMP threads: all usable cores but one, at most 8 (its default, every core of the host, made a
    boosting round 40x slower on a shared 2-core machine)."""
    import os

    return max(1, min(8, len(os.sched_getaffinity(0)) - 1)) if hasattr(os, "sched_getaffinity") else 1


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def model_kind(name: str) -> str:
    """``retriever`` or ``reranker`` for a method name of ``ltr.ltr_models``."""
    from recsys_core.rerank import RERANKERS
    from recsys_core.retrieval import RETRIEVERS

    if name == LTRReranker.method or getattr(RERANKERS.get(name), "fits_on_validation", False):
        raise ConfigError(f"ltr.ltr_models: {name!r} is trained on the validation lists, so its scores of them are "
                          "in-sample; use retrievers or rerankers trained on the train split")  # fmt: skip
    if name in RETRIEVERS:
        return "retriever"
    if name in RERANKERS:
        return "reranker"
    raise ConfigError(f"ltr.ltr_models: unknown method {name!r}; use retriever methods ({', '.join(RETRIEVERS)}) "
                      f"or reranker methods ({', '.join(n for n in RERANKERS if n != LTRReranker.method)})")  # fmt: skip


HOW_TO_TRAIN = {"retriever": "`recsys train-ltr-models`, or `dvc repro train_ltr_models`",
                "reranker": "`recsys train-rerank` with its method"}  # fmt: skip


def newest_version(prefix: str, kind: str, method: str, data_version: str):
    """The newest registered version of ``{prefix}-{kind}`` with tag ``method`` and this data version."""
    from mlflow import MlflowClient

    from recsys_core import lineage, registry

    name = registry.model_name(prefix, kind)
    found = [v for v in MlflowClient().search_model_versions(f"name = '{name}'")
             if v.tags.get("method") == method and lineage.version_data(v.tags) == data_version]  # fmt: skip
    if not found:
        raise MissingArtifactError(f"ltr.ltr_models names {method!r}, but {name} has no {method} version of this "
                                   f"data (data version {data_version}): train one first ({HOW_TO_TRAIN[kind]})")  # fmt: skip
    return max(found, key=lambda v: int(v.version))


def _describe(record) -> dict[str, Any]:
    return {"name": record.name, "version": int(record.version), "method": record.tags.get("method", ""),
            "run_id": record.run_id or ""}  # fmt: skip


class LTRReranker(Reranker):
    """LightGBM lambdarank over retriever, model, popularity, transition, content and history features."""

    method = "ltr"
    reads_item_features = True  # content similarity from the item embeddings
    fits_on_validation = True  # trained on the validation lists: validation numbers are cross-fitted

    def __init__(self, n_items: int, hparams: dict[str, Any], device: torch.device | str = "cpu"):
        super().__init__(n_items, hparams, device)
        self.retriever = None  # the carried stage-1 model (families: retriever)
        self.shadows: dict[int, Any] = {}  # shift -> the retriever's method trained on seqs.shifted(shift)
        self.models: dict[str, SavedModel] = {}  # name -> carried model (families: models)
        self.model_kinds: dict[str, str] = {}
        self.sources: dict[str, Any] = {}  # registry versions of the carried models
        self.tables: lf.CountTables | None = None  # train + validation counts (test lists, serving)
        self.content: dict[str, lf.ContentTable] = {}
        self.booster = None
        self.feature_names: list[str] = []
        self.validation: dict[str, np.ndarray] | None = None  # cross-fitted scores of the training lists
        self.feature_set: FeatureSet | None = None

    # --- construction ----------------------------------------------------------------------------------------------

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict:
        from recsys_core import registry

        t = cfg.ltr
        return {
            "features": list(t.ltr_features),
            "models": list(t.ltr_models),
            "num_leaves": t.ltr_num_leaves,
            "learning_rate": t.ltr_learning_rate,
            "num_rounds": t.ltr_num_rounds,
            "early_stopping": t.ltr_early_stopping,
            "min_data_in_leaf": t.ltr_min_data_in_leaf,
            "folds": t.ltr_folds,
            "recent_share": t.ltr_recent_share,
            "transition_window": t.ltr_transition_window,
            "content_window": 10,
            "start_from_retriever": t.ltr_start_from_retriever,
            "shifted_splits": t.ltr_shifts,
            "prefix": registry.data_prefix(cfg.data),  # where the carried models are looked up
        }

    @classmethod
    def from_data(cls, n_items: int, hparams: dict[str, Any], device: torch.device | str, items: pd.DataFrame,
                  features: FeatureSet | None = None) -> LTRReranker:  # fmt: skip
        instance = cls(n_items, hparams, device)
        instance.feature_set = features
        return instance

    def build_model(self) -> nn.Module:
        return nn.Module()  # no torch weights of its own; the carried models hold theirs

    @property
    def families(self) -> list[str]:
        return list(self.hparams["features"])

    def attach(self, retriever=None, models: dict[str, SavedModel] | None = None, sources: dict[str, Any] | None = None,
               shadows: dict[int, SavedModel] | None = None) -> LTRReranker:  # fmt: skip
        """Give the ranker its stage-1 retriever, the other models (name -> model) and the shadow retrievers
        (shift -> the retriever's method trained on ``seqs.shifted(shift)``: more training lists, see the module
        docstring) directly (tests, notebooks, the benchmark); ``attach_registered`` resolves the first two from the
        registry."""
        if retriever is not None:
            self.retriever = retriever
        for shift, model in (shadows or {}).items():
            if int(shift) < 1 or model.n_items != self.n_items:
                raise ConfigError(f"ltr: shadow retriever {shift!r} must have a shift of 1 or more and "
                                  f"{self.n_items} items (it has {model.n_items})")  # fmt: skip
            self.shadows[int(shift)] = model
        for name, model in (models or {}).items():
            if model.n_items != self.n_items:
                raise ConfigError(f"ltr: model {name!r} has {model.n_items} items, the data {self.n_items}")
            self.models[name] = model
            self.model_kinds[name] = model_kind(name)
        self.sources.update(sources or {})
        return self

    def attach_registered(self, prefix: str, prepared: Path, retriever_version: int | None = None) -> LTRReranker:
        """The champion retriever (or ``retriever_version``: pin the version whose lists are reranked) and the
        newest version of each ``ltr_models`` method, all of the prepared data in ``prepared``."""
        from recsys_core import lineage, registry

        if "retriever" in self.families and self.retriever is None:
            model, record = registry.load_version(prefix, "retriever", retriever_version, prepared)
            self.attach(retriever=model, sources={"retriever": _describe(record)})
        if "models" in self.families:
            data_version = lineage.data_version(prepared)
            for name in self.hparams["models"]:
                if name in self.models:
                    continue
                kind = model_kind(name)
                record = newest_version(prefix, kind, name, data_version)
                model, record = registry.load_version(prefix, kind, int(record.version), prepared)
                self.attach(models={name: model})
                self.sources.setdefault("models", {})[name] = _describe(record)
        return self

    def _resolve(self) -> None:
        missing_retriever = "retriever" in self.families and self.retriever is None
        missing_models = "models" in self.families and any(n not in self.models for n in self.hparams["models"])
        if not (missing_retriever or missing_models):
            return
        if self.feature_set is None:
            raise MissingArtifactError("ltr: the retriever / models feature families need their models: attach them "
                                       "(`attach`, `attach_registered`) or build the ranker with `from_data` and a "
                                       "FeatureSet of the prepared data")  # fmt: skip
        self.attach_registered(self.hparams["prefix"], self.feature_set.prepared)

    def _load_content(self) -> None:
        self.content = {}
        if "content" not in self.families or self.feature_set is None:
            if "content" in self.families:
                log.warning("ltr: no item embeddings at hand; the content family adds no feature")
            return
        for modality in self.feature_set.available():
            table = self.feature_set.get(modality)
            self.content[modality] = lf.ContentTable.from_vectors(table.vectors.numpy(), table.present.numpy())
        if not self.content:
            log.warning("ltr: no embedding file for this data; the content family adds no feature (run the "
                        "embeddings stage to add it)")  # fmt: skip

    # --- features --------------------------------------------------------------------------------------------------

    def _retriever_features(self, histories: list[np.ndarray], candidates: np.ndarray,
                            retriever) -> dict[str, np.ndarray]:  # fmt: skip
        from recsys_core.evaluation import mask_history

        filled = candidates != 0
        full = retriever.score(histories).float().cpu()
        cand = torch.as_tensor(candidates, dtype=torch.long)
        raw = full.gather(1, cand)
        masked = mask_history(full.clone(), histories)
        ascending = torch.sort(masked, dim=1).values
        # items the history has not seen scoring strictly higher: the candidate's place in the retrieved list
        above = masked.shape[1] - torch.searchsorted(ascending, raw.contiguous(), right=True)
        score = np.where(filled, raw.double().numpy(), np.nan)
        best = np.nanmax(np.where(filled, score, -np.inf), axis=1, keepdims=True)
        return {"retriever_score": score, "retriever_rank": np.where(filled, above.double().numpy(), np.nan),
                "retriever_gap": np.where(filled, score - best, np.nan)}  # fmt: skip

    def _model_features(self, histories: list[np.ndarray], candidates: np.ndarray) -> dict[str, np.ndarray]:
        filled = candidates != 0
        out = {}
        for name in self.hparams["models"]:
            model = self.models[name]
            if self.model_kinds[name] == "retriever":
                scores = model.score(histories).float().cpu().gather(1, torch.as_tensor(candidates, dtype=torch.long))
            else:
                scores = model.score(histories, candidates).float().cpu()
            values = np.where(filled, scores.double().numpy(), np.nan)
            values[np.isinf(values)] = np.nan
            out[f"model_{name}"] = values
            out[f"model_{name}_rank"] = lf.list_rank(values, filled)
        return out

    def features(self, histories: list[np.ndarray], candidates: np.ndarray, tables: lf.CountTables | None = None,
                 retriever=None) -> np.ndarray:  # fmt: skip
        """(B, K, F) float64 features in ``feature_names`` order (NaN = missing; empty slots all NaN), the counts
        read from ``tables`` (default: the shipped train + validation tables), the retriever family from
        ``retriever`` (default: the carried stage-1 retriever; a shadow one for shifted training lists)."""
        tables = tables if tables is not None else self.tables
        retriever = retriever if retriever is not None else self.retriever
        candidates = np.ascontiguousarray(candidates, dtype=np.int64)
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        parts = []
        for start in range(0, len(histories), FEATURE_BATCH):
            hist, cands = histories[start : start + FEATURE_BATCH], candidates[start : start + FEATURE_BATCH]
            cols: dict[str, np.ndarray] = {}
            fams = self.families
            if "retriever" in fams:
                cols |= self._retriever_features(hist, cands, retriever)
            if "models" in fams:
                cols |= self._model_features(hist, cands)
            if "popularity" in fams:
                cols |= lf.popularity_features(tables, cands)
            if "transitions" in fams:
                cols |= lf.transition_features(tables, hist, cands, int(self.hparams["transition_window"]))
            if "content" in fams:
                cols |= lf.content_features(self.content, hist, cands, int(self.hparams["content_window"]))
            if "history" in fams:
                cols |= lf.history_features(hist, cands)
            block = np.stack([cols[n] for n in self.feature_names], axis=-1) if self.feature_names else \
                np.zeros((*cands.shape, 0))  # fmt: skip
            block[cands == 0] = np.nan
            parts.append(block)
        return np.concatenate(parts) if parts else np.zeros((0, candidates.shape[1], len(self.feature_names)))

    # --- training --------------------------------------------------------------------------------------------------

    def _params(self, seed: int) -> dict[str, Any]:
        h = self.hparams
        return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "num_leaves": int(h["num_leaves"]),
                "learning_rate": float(h["learning_rate"]), "min_data_in_leaf": int(h["min_data_in_leaf"]),
                "seed": int(seed), "deterministic": True, "force_col_wise": True, "verbosity": -1,
                "num_threads": lightgbm_threads()}  # fmt: skip

    def _margin(self, X: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(B, K) the score boosting starts from: with ``ltr_start_from_retriever``, the retriever's score z-scored
        within each list (LightGBM's ``init_score``), so that round 0 ranks as the retriever does and the trees learn
        corrections to it; zeros otherwise (or without the ``retriever`` family)."""
        filled = candidates != 0
        if not self.hparams.get("start_from_retriever", False) or "retriever_score" not in self.feature_names:
            return np.zeros(candidates.shape)
        score = np.where(filled, X[..., self.feature_names.index("retriever_score")], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a list with no filled slot: all-NaN mean
            mean, std = np.nanmean(score, axis=1, keepdims=True), np.nanstd(score, axis=1, keepdims=True)
            z = (score - mean) / np.where(std > 0, std, 1.0)
        return np.where(filled & np.isfinite(z), z, 0.0)

    def _dataset(self, X: np.ndarray, labels: np.ndarray, candidates: np.ndarray, rows: np.ndarray, margin: np.ndarray,
                 reference=None):  # fmt: skip
        """A lambdarank Dataset of the lists ``rows`` (their filled slots; one query per list), starting from
        ``margin``."""
        import lightgbm as lgb

        filled = candidates[rows] != 0
        data = X[rows][filled]
        return lgb.Dataset(data, label=labels[rows][filled].astype(np.float64), group=filled.sum(axis=1),
                           init_score=margin[rows][filled], feature_name=self.feature_names, reference=reference,
                           free_raw_data=False)  # fmt: skip

    def _training_features(self, seqs: Sequences, cset: CandidateSet, times: lf.InteractionTimes | None,
                           retriever) -> np.ndarray:  # fmt: skip
        """Features of lists whose targets follow ``seqs.train`` (the validation lists of ``seqs``), counted over that
        train split only, after checking that no list's target is counted."""
        visible = lf.training_visible(seqs, times)
        tables = lf.CountTables.build(visible, self.n_items, float(self.hparams["recent_share"]))
        lf.check_no_target_leak(tables, visible, cset.users, cset.histories, cset.targets)
        return self.features(cset.histories, np.asarray(cset.candidates, dtype=np.int64), tables, retriever)

    def _shifted_lists(self, seqs: Sequences, shift: int, shadow, width: int) -> tuple[Sequences, CandidateSet]:
        """The split ``shift`` steps earlier and the shadow retriever's top ``width`` lists for its validation
        targets (users with a history and a target)."""
        from recsys_core.evaluation import split_inputs
        from recsys_core.pipeline import TwoStage

        shifted = seqs.shifted(shift)
        histories, targets, users = split_inputs(shifted, "val")
        keep = np.flatnonzero((targets > 0) & np.array([len(x) > 0 for x in histories], dtype=bool))
        stage = TwoStage(shadow, None, width, width)
        return shifted, stage.candidate_set([histories[i] for i in keep], targets[keep], users[keep])

    def fit(self, seqs: Sequences, val: CandidateSet, settings: LoopSettings,
            callbacks: Sequence[EpochCallback] = (), ks: Sequence[int] = (5, 10, 20),
            examples: ExampleSource | None = None) -> History:  # fmt: skip
        """Train on the validation lists ``val`` (see the module docstring); ``examples`` (train-prefix lists) are
        not used: a retriever trained on the train split has seen those targets."""
        import lightgbm as lgb

        from recsys_core.metrics import monitored_value
        from recsys_core.rerank.evaluate import result_from_scores

        h = self.hparams
        self._resolve()
        self._load_content()
        self.feature_names = lf.feature_names(self.families, list(h["models"]), sorted(self.content))
        if not self.feature_names:
            raise ConfigError("ltr: the feature families switched on give no feature (ltr.ltr_features)")
        wanted = list(range(1, int(h.get("shifted_splits", 0)) + 1))
        if sorted(self.shadows) != wanted:
            raise ConfigError(f"ltr: ltr.ltr_shifts = {len(wanted)} trains on the lists of shifts {wanted}, but the "
                              f"shadow retrievers attached are of shifts {sorted(self.shadows)} (`recsys train-rerank` "
                              "trains them; elsewhere attach one per shift)")  # fmt: skip
        if self.shadows and "models" in self.families and h["models"]:
            raise ConfigError("ltr: shifted training lists take no `models` family: those models trained on the whole "
                              "train split, which holds the shifted lists' targets (drop ltr_models or the shadow "
                              "retrievers)")  # fmt: skip
        prepared = self.feature_set.prepared if self.feature_set is not None else None
        times = lf.interaction_times(prepared, seqs)
        candidates = np.asarray(val.candidates, dtype=np.int64)
        X = self._training_features(seqs, val, times, self.retriever)
        lists = [(val, X)]  # the validation lists first: rows 0..len(val)-1 of every stacked array
        for shift, shadow in sorted(self.shadows.items()):
            shifted, cset = self._shifted_lists(seqs, shift, shadow, candidates.shape[1])
            lists.append((cset, self._training_features(shifted, cset, times.shifted(shift) if times else None,
                                                        shadow)))  # fmt: skip
        all_candidates = np.concatenate([np.asarray(c.candidates, dtype=np.int64) for c, _ in lists])
        all_X = np.concatenate([x for _, x in lists])
        all_users = np.concatenate([np.asarray(c.users, dtype=np.int64) for c, _ in lists])
        all_targets = np.concatenate([np.asarray(c.targets, dtype=np.int64) for c, _ in lists])
        labels = (all_candidates == all_targets[:, None]) & (all_candidates != 0)
        margin = self._margin(all_X, all_candidates)
        hit = labels.any(axis=1)
        folds = int(h["folds"])
        if hit[: len(val)].sum() < 2 * folds:
            raise ValueError(f"ltr: {int(hit[: len(val)].sum())} validation lists hold their true item; cross-fitting "
                             f"needs at least {2 * folds} (ltr.ltr_folds = {folds})")  # fmt: skip
        rng = np.random.default_rng(settings.seed)
        # Folds of users: a user's shifted lists sit in the fold of its validation list, so no fold's model has seen
        # any list of the users it scores out of fold.
        ids, user_row = np.unique(all_users, return_inverse=True)
        fold_of_user = np.empty(len(ids), dtype=np.int64)
        fold_of_user[rng.permutation(len(ids))] = np.arange(len(ids)) % folds
        fold_of = fold_of_user[user_row]
        params = self._params(settings.seed)
        boosters, best_rounds, evals = [], [], []
        for fold in range(folds):
            pool = np.unique(user_row[hit & (fold_of != fold)])
            stop_users = rng.choice(pool, max(1, int(round(EARLY_STOPPING_SHARE * len(pool)))), replace=False)
            stop_rows = np.isin(user_row, stop_users)
            train_rows = np.flatnonzero(hit & (fold_of != fold) & ~stop_rows)
            dtrain = self._dataset(all_X, labels, all_candidates, train_rows, margin)
            dstop = self._dataset(all_X, labels, all_candidates, np.flatnonzero(stop_rows & hit), margin,
                                  reference=dtrain)  # fmt: skip
            record: dict = {}
            booster = lgb.train(params, dtrain, num_boost_round=int(h["num_rounds"]), valid_sets=[dtrain, dstop],
                                valid_names=["training", "early_stopping"], keep_training_booster=True,
                                callbacks=[lgb.early_stopping(int(h["early_stopping"]), first_metric_only=True,
                                                              verbose=False), lgb.record_evaluation(record)])  # fmt: skip
            boosters.append(booster)
            best_rounds.append(int(booster.best_iteration or booster.current_iteration()))
            evals.append(record)

        def out_of_fold(rounds: list[int]) -> np.ndarray:
            scores = np.full(candidates.shape, -np.inf)
            for fold, booster in enumerate(boosters):
                rows = np.flatnonzero(fold_of[: len(val)] == fold)  # the validation lists only
                filled = candidates[rows] != 0
                if filled.any():
                    block = np.full(filled.shape, -np.inf)
                    block[filled] = margin[rows][filled] + booster.predict(
                        X[rows][filled], num_iteration=rounds[fold], num_threads=lightgbm_threads()
                    )
                    scores[rows] = block
            return scores

        oof = out_of_fold(best_rounds)
        final_rounds = max(1, int(round(float(np.mean(best_rounds)))))
        history = History()
        trained = max(b.current_iteration() for b in boosters)
        step = max(1, math.ceil(trained / CURVE_POINTS))
        grid = sorted({*range(step, trained + 1, step), min(final_rounds, trained), trained})
        for rounds in grid:
            scores = out_of_fold([min(rounds, b.current_iteration()) for b in boosters])
            metrics = result_from_scores(torch.as_tensor(scores, dtype=torch.float32), val, ks).all_users
            train_ndcg = [e["training"]["ndcg@10"][min(rounds, len(e["training"]["ndcg@10"])) - 1] for e in evals]
            entry = {"epoch": float(rounds), "train_ndcg_at_10": float(np.mean(train_ndcg)),
                     "lr": float(h["learning_rate"]), **{f"val_{k}": v for k, v in metrics.items()}}  # fmt: skip
            history.epochs.append(entry)
            for cb in callbacks:
                cb(rounds, entry)
        cross_fitted = result_from_scores(torch.as_tensor(oof, dtype=torch.float32), val, ks).all_users
        history.best_epoch = final_rounds
        history.best_score = float(monitored_value(cross_fitted, settings.monitor))
        history.stopped_early = trained < int(h["num_rounds"])

        final = lgb.train(params, self._dataset(all_X, labels, all_candidates, np.flatnonzero(hit), margin),
                          num_boost_round=final_rounds)  # fmt: skip
        # the very model that save() writes: its text form, read back
        self.booster = lgb.Booster(model_str=final.model_to_string())
        self.hparams.update({"rounds": final_rounds, "fold_rounds": best_rounds, "modalities": sorted(self.content),
                             "shifts": sorted(self.shadows),
                             "training_lists": [len(c) for c, _ in lists]})  # fmt: skip
        self.validation = {"users": np.asarray(val.users, dtype=np.int64), "candidates": candidates,
                           "scores": oof.astype(np.float32),
                           "history_length": np.array([len(x) for x in val.histories], dtype=np.int64)}  # fmt: skip
        # What test lists and served requests are described by: train + validation, never a test item.
        shipped = lf.serving_visible(seqs, times)
        self.tables = lf.CountTables.build(shipped, self.n_items, float(h["recent_share"]))
        users = np.arange(1, len(seqs.train))
        lf.check_no_target_leak(self.tables, shipped, users, [shipped.sequences[u] for u in users], seqs.test[users])
        log.info("ltr: %d validation lists + %s shifted (%d of all with the true item), %d features, fold rounds %s, "
                 "final %d; cross-fitted validation %s %.4f", len(val), [len(c) for c, _ in lists[1:]], int(hit.sum()),
                 len(self.feature_names), best_rounds, final_rounds, settings.monitor, history.best_score)  # fmt: skip
        return history

    # --- scoring ---------------------------------------------------------------------------------------------------

    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> torch.Tensor:
        if self.booster is None:
            raise MissingArtifactError("ltr: the ranker is not trained; fit or load it first")
        candidates = np.ascontiguousarray(candidates, dtype=np.int64)
        X = self.features(histories, candidates)
        filled = candidates != 0
        out = np.full(candidates.shape, -np.inf)
        if filled.any():
            margin = self._margin(X, candidates)
            out[filled] = margin[filled] + self.booster.predict(X[filled], num_threads=lightgbm_threads())
        return torch.as_tensor(out, dtype=torch.float32)

    def cross_fitted_scores(self, cset: CandidateSet) -> torch.Tensor:
        """(U, K) out-of-fold scores of the validation lists the ranker was trained on (each from a model that never
        saw that user's list), in ``cset``'s row and slot order; what validation metrics must use. Refuses lists
        it was not trained on (another retriever version, another ``rerank_top_k``)."""
        if self.validation is None:
            raise MissingArtifactError("ltr: no cross-fitted validation scores; fit the ranker first")
        v = self.validation
        where = {int(u): row for row, u in enumerate(v["users"])}
        out = torch.full(np.asarray(cset.candidates).shape, -torch.inf)
        for row, (user, history, cands) in enumerate(zip(cset.users, cset.histories, cset.candidates, strict=True)):
            mine = where.get(int(user))
            ok = mine is not None and int(v["history_length"][mine]) == len(history)
            if ok:
                theirs = {int(c): float(s) for c, s in zip(v["candidates"][mine], v["scores"][mine], strict=True) if c}
                ours = [int(c) for c in cands if c]
                ok = sorted(ours) == sorted(theirs)
            if not ok:
                raise LineageError(
                    f"ltr: the validation list of user {int(user)} is not one the ranker was trained on (other "
                    "retriever version, list width or split); its cross-fitted scores cannot describe it: retrain "
                    "the ranker on these lists"
                )
            for slot, c in enumerate(cands):
                if c:
                    out[row, slot] = theirs[int(c)]
        return out

    def feature_importance(self) -> pd.DataFrame:
        """feature, gain (total gain of its splits), split (how many splits use it); by gain, largest first."""
        if self.booster is None:
            raise MissingArtifactError("ltr: the ranker is not trained; fit or load it first")
        table = pd.DataFrame({"feature": self.booster.feature_name(),
                              "gain": self.booster.feature_importance("gain").astype(np.float64),
                              "split": self.booster.feature_importance("split").astype(np.int64)})  # fmt: skip
        return table.sort_values(["gain", "split", "feature"], ascending=[False, False, True]).reset_index(drop=True)

    def importance_figure(self):
        """A horizontal bar chart of the gain per feature (matplotlib Figure, for ``mlflow.log_figure``)."""
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global touched

        table = self.feature_importance().iloc[::-1]
        fig = Figure(figsize=(7, 0.3 * len(table) + 1.2))
        ax = fig.add_subplot()
        ax.barh(table["feature"], table["gain"])
        ax.set_xlabel("total gain")
        ax.set_title("ltr feature importance")
        fig.tight_layout()
        return fig

    # --- saving ----------------------------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        if self.booster is None:
            raise MissingArtifactError("ltr: nothing to save; fit the ranker first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / RANKER_FILE) as tmp:
            self.booster.save_model(str(tmp))
        _save_arrays(folder / COUNTS_FILE, self.tables.tensors())
        content = {}
        for modality, table in self.content.items():
            content[f"{modality}.vectors"] = table.vectors
            content[f"{modality}.present"] = table.present.astype(np.uint8)
        if content:
            _save_arrays(folder / CONTENT_FILE, content)
        if self.validation is not None:
            _save_arrays(folder / VALIDATION_FILE, self.validation)
        if self.retriever is not None:
            self.retriever.save(folder / RETRIEVER_DIR)
        for name, model in self.models.items():
            model.save(folder / MODELS_DIR / name)
        meta = {"method": self.method, "n_items": self.n_items, "hparams": self.hparams,
                "feature_names": self.feature_names, "model_kinds": self.model_kinds, "sources": self.sources,
                "counts_source": self.tables.source}  # fmt: skip
        with atomic_path(folder / CONFIG) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu") -> LTRReranker:
        import lightgbm as lgb

        from recsys_core.model_base import method_of
        from recsys_core.rerank import get_reranker_class
        from recsys_core.retrieval import get_retriever_class

        folder = Path(folder)
        for name in (CONFIG, RANKER_FILE, COUNTS_FILE):
            if not (folder / name).exists():
                raise MissingArtifactError(f"{folder / name} is missing; train the {cls.method} reranker first")
        meta = json.loads((folder / CONFIG).read_text())
        if meta["method"] != cls.method:
            raise MissingArtifactError(f"{folder} holds a {meta['method']!r} model, not {cls.method!r}")
        instance = cls(meta["n_items"], meta["hparams"], device)
        instance.feature_names = list(meta["feature_names"])
        instance.sources = meta.get("sources", {})
        instance.booster = lgb.Booster(model_file=str(folder / RANKER_FILE))
        instance.tables = lf.CountTables.from_tensors(instance.n_items, _load_arrays(folder / COUNTS_FILE),
                                                      meta.get("counts_source", ""))  # fmt: skip
        if (folder / CONTENT_FILE).exists():
            arrays = _load_arrays(folder / CONTENT_FILE)
            for modality in instance.hparams.get("modalities", []):
                instance.content[modality] = lf.ContentTable(arrays[f"{modality}.vectors"],
                                                             arrays[f"{modality}.present"].astype(bool))  # fmt: skip
        if (folder / VALIDATION_FILE).exists():
            instance.validation = _load_arrays(folder / VALIDATION_FILE)
        if "retriever" in instance.families:
            sub = folder / RETRIEVER_DIR
            instance.retriever = get_retriever_class(method_of(sub)).load(sub, device)
        for name, kind in meta.get("model_kinds", {}).items():
            sub = folder / MODELS_DIR / name
            loader = get_retriever_class if kind == "retriever" else get_reranker_class
            instance.models[name] = loader(method_of(sub)).load(sub, device)
            instance.model_kinds[name] = kind
        if instance.booster.feature_name() != instance.feature_names:
            raise MissingArtifactError(f"{folder / RANKER_FILE} was trained on other features than config.json names")
        return instance
