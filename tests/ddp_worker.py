"""Trains the Qwen reranker (tiny offline Qwen3) on a small generated task; run alone or under
``accelerate launch --multi_gpu --num_processes 2`` (CPU processes on gloo when there is no GPU).

``python tests/ddp_worker.py MODEL_DIR OUT_DIR [ACCUMULATE]`` writes ``rank{r}.safetensors`` (the trained LoRA
weights of each process) into OUT_DIR. tests/test_distributed.py compares the processes with each other and with a
single process that accumulates gradients over as many batches as there are processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_core import distributed  # noqa: E402
from recsys_core.config import Config  # noqa: E402
from recsys_core.data.store import Sequences  # noqa: E402
from recsys_core.rerank.data import CandidateSet, target_index_of  # noqa: E402
from recsys_core.rerank.qwen import QwenReranker  # noqa: E402
from recsys_core.training import LoopSettings, seed_everything  # noqa: E402

ITEMS, USERS, K = 40, 24, 4


def task() -> tuple[dict[int, str], Sequences, CandidateSet]:
    rng = np.random.default_rng(0)
    titles = {i: f"item {i} {'red' if i % 2 else 'blue'}" for i in range(1, ITEMS + 1)}
    train, val, test = [np.zeros(0, np.int64)], [0], [0]
    for _ in range(USERS):
        picks = rng.permutation(np.arange(1, ITEMS + 1))[:6]
        train.append(picks[:4])
        val.append(picks[4])
        test.append(picks[5])
    seqs = Sequences(train, np.array(val), np.array(test))
    users = np.arange(1, USERS + 1)
    targets = seqs.val[users]
    cands = np.stack([rng.permutation(np.append(rng.choice(np.setdiff1d(np.arange(1, ITEMS + 1), [t]), K - 1,
                                                           replace=False), t)) for t in targets])  # fmt: skip
    return titles, seqs, CandidateSet(users, [seqs.train[u] for u in users], cands, targets,
                                      target_index_of(cands, targets))  # fmt: skip


def train(model_dir: str, accumulate: int, epochs: int = 2) -> dict:
    """The trained LoRA weights (name -> tensor) after ``epochs`` epochs of batch 8 (9 batches an epoch: odd, so one
    process runs out first and still takes part in the last step)."""
    cfg = Config.model_validate({"llm": {"qwen_model": model_dir, "qwen_max_candidates": K, "qwen_max_history": 3,
                                         "qwen_max_seq_length": 256, "lora_dropout": 0.0}})  # fmt: skip
    hparams = QwenReranker.hyperparameters(cfg, "test")
    hparams["examples_per_user"] = 3
    titles, seqs, val = task()
    seed_everything(0)
    reranker = QwenReranker(ITEMS, hparams, "cpu", items=titles)
    settings = LoopSettings(epochs=epochs, lr=5e-3, patience=epochs, batch_size=8, grad_clip=1.0,
                            gradient_accumulation_steps=accumulate)  # fmt: skip
    reranker.fit(seqs, val, settings, ks=(1, 10))
    return {k: v.detach().clone() for k, v in reranker.trainable.state_dict().items()}


def main() -> None:
    from safetensors.torch import save_file

    model_dir, out = sys.argv[1], Path(sys.argv[2])
    accumulate = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    world = distributed.init_world("cpu")
    weights = train(model_dir, accumulate)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"rank{world.rank}.safetensors"),
              metadata={"world_size": str(world.size)})  # fmt: skip


if __name__ == "__main__":
    main()
