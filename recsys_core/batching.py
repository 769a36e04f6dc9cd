"""Training sequences for sequential models: sliding windows over long histories, and the order of an epoch's
batches (LRURec's ``retrieval.retrieval_batch_order``): plain shuffled batches, or batches of similar length."""

from __future__ import annotations

import numpy as np

BATCH_ORDERS = ("random", "length")


def training_windows(sequences: list[np.ndarray], max_len: int, step_share: float) -> list[np.ndarray]:
    """Sequences of length <= max_len + 1 are kept whole; longer ones are cut into windows of max_len + 1 items,
    the last window ending at the last item and earlier ones stepping back by ``step_share·max_len``."""
    step = max(1, int(step_share * max_len))
    windows = []
    for seq in sequences:
        if len(seq) < 2:
            continue
        if len(seq) <= max_len + step:
            windows.append(seq[-(max_len + 1) :])
        else:
            for end in range(len(seq), max_len, -step):
                windows.append(seq[end - max_len - 1 : end])
    return windows


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar-length sequences, so little compute goes to padding.

    The data is shuffled, cut into pools of ``pool`` batches, each pool sorted by length and cut into batches, and the
    batches shuffled: every sequence is seen once per epoch, in an order fixed by ``rng``.
    """
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), pool * batch_size):
        chunk = order[start : start + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def random_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of any lengths (the published LRURec and BERT4Rec loaders'), in an order fixed by ``rng``."""
    order = rng.permutation(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, order: str) -> list[np.ndarray]:
    """One epoch's batches in ``order``: ``random`` (padded to each batch's longest sequence) or ``length``."""
    if order == "random":
        return random_batches(lengths, batch_size, rng)
    if order == "length":
        return bucketed_batches(lengths, batch_size, rng)
    raise ValueError(f"batch order {order!r} is not one of {', '.join(BATCH_ORDERS)}")
