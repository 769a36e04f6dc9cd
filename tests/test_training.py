"""The shared training loop: resume equals an uninterrupted run, early stopping restores the best epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cyclic_rows, raw_dataset, tiny_config

from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.store import Sequences
from recsys_core.retrieval.lrurec import LRURec
from recsys_core.training import CHECKPOINT, LoopSettings, fit, seed_everything


class Crash(RuntimeError):
    pass


def crash_after(epoch_to_crash: int):
    def callback(epoch, record):
        if epoch == epoch_to_crash:
            raise Crash(f"simulated crash after epoch {epoch}")

    return callback


@pytest.fixture(scope="module")
def seqs():
    return Sequences.from_dataset(preprocess(raw_dataset(cyclic_rows(80, 30)), DataConfig(min_uc=3, min_sc=1)))


def train(seqs, tmp_path, epochs=4, callbacks=(), fingerprint="a", resume=True):
    cfg = tiny_config()
    seed_everything(cfg.seed)
    retriever = LRURec(30, LRURec.hyperparameters(cfg, "ml-100k"))
    settings = LoopSettings(epochs=epochs, lr=0.01, patience=10, batch_size=16, seed=cfg.seed, resume=resume,
                            checkpoint_dir=tmp_path, fingerprint=fingerprint)  # fmt: skip
    history = retriever.fit(seqs, settings, callbacks, ks=(10,))
    return retriever, history


def weights(retriever):
    return {k: v.clone() for k, v in retriever.model.state_dict().items()}


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(seqs, tmp_path):
    straight, h1 = train(seqs, tmp_path / "a")
    with pytest.raises(Crash):
        train(seqs, tmp_path / "b", callbacks=[crash_after(2)])
    seen = []
    resumed, h2 = train(seqs, tmp_path / "b", callbacks=[lambda e, r: seen.append(e)])
    assert h2.resumed_from == 2 and seen == [1, 2, 3, 4]  # the restored epochs are replayed to the loggers
    assert [r["train_loss"] for r in h1.epochs] == [r["train_loss"] for r in h2.epochs]
    for name, tensor in weights(straight).items():
        torch.testing.assert_close(tensor, weights(resumed)[name], rtol=0, atol=0)


def test_checkpoint_of_another_configuration_is_not_resumed(seqs, tmp_path):
    with pytest.raises(Crash):
        train(seqs, tmp_path, callbacks=[crash_after(1)], fingerprint="old")
    _, history = train(seqs, tmp_path, epochs=2, fingerprint="new")
    assert history.resumed_from == 0 and len(history.epochs) == 2


def test_checkpoint_loads_with_weights_only(seqs, tmp_path):
    train(seqs, tmp_path, epochs=1)
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "rng", "best_state", "history", "epoch"} <= set(payload)


class ScriptedTask:
    """A one-parameter model whose validation score follows a script; the loop must keep the best epoch."""

    def __init__(self, scores):
        self.model = torch.nn.Linear(1, 1)
        self.scores = list(scores)
        self.epoch = 0

    def optimizer(self, lr):
        return torch.optim.SGD(self.model.parameters(), lr=lr)

    def batches(self, epoch, rng: np.random.Generator):
        self.epoch = epoch
        yield torch.ones(4, 1)

    def loss(self, batch):
        return (self.model(batch) - 10).pow(2).mean()

    def validate(self):
        return {"ndcg_at_10": self.scores[self.epoch - 1]}


def test_early_stopping_restores_the_best_epoch():
    task = ScriptedTask([0.1, 0.5, 0.3, 0.2, 0.4, 0.9])
    snapshots = {}
    callbacks = [lambda e, r: snapshots.__setitem__(e, {k: v.clone() for k, v in task.model.state_dict().items()})]
    history = fit(task, LoopSettings(epochs=6, lr=0.1, patience=3), torch.device("cpu"), callbacks)
    assert history.stopped_early and history.best_epoch == 2 and len(history.epochs) == 5
    for name, tensor in task.model.state_dict().items():
        torch.testing.assert_close(tensor, snapshots[2][name])  # a real copy, not the last weights
    assert not torch.equal(snapshots[2]["weight"], snapshots[5]["weight"])


def test_a_run_stopped_early_goes_on_only_with_a_longer_patience(tmp_path):
    scores = [0.1, 0.5, 0.3, 0.2, 0.4, 0.6, 0.7, 0.65, 0.6, 0.5]
    settings = LoopSettings(epochs=10, lr=0.1, patience=2, checkpoint_dir=tmp_path, fingerprint="f")
    first = fit(ScriptedTask(scores), settings, torch.device("cpu"))
    assert first.stopped_early and len(first.epochs) == 4 and first.best_epoch == 2
    same = fit(ScriptedTask(scores), settings, torch.device("cpu"))  # resumed, nothing left to do
    assert same.resumed_from == 4 and len(same.epochs) == 4
    longer = fit(ScriptedTask(scores), LoopSettings(**{**settings.__dict__, "patience": 4}), torch.device("cpu"))
    assert longer.resumed_from == 4 and longer.best_epoch == 7 and len(longer.epochs) == 10


def test_a_diverging_loss_stops_with_a_clear_error():
    class Diverging(ScriptedTask):
        def loss(self, batch):
            return self.model(batch).sum() * float("inf")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(Diverging([0.1]), LoopSettings(epochs=1, lr=0.1, patience=1), torch.device("cpu"))
