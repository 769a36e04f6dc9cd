"""The report's plots as PNG data URIs (matplotlib, no display, no network): the page holds them inline, so it opens
offline and in any browser."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

from recsys_core.report.content import BucketGain


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: a server, CI, a headless test
    import matplotlib.pyplot as plt

    return plt


def data_uri(fig) -> str:
    """The figure as ``data:image/png;base64,...``; no creation date or software in it, so equal inputs give the
    same bytes."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def training_curves(runs: Mapping[str, Mapping[str, Sequence[float]]], monitor: str) -> str:
    """The loss and the monitored validation metric per epoch, one line per run; a panel only for what was logged
    (a LightGBM ranker has no loss, only its validation metric per boosting round)."""
    plt = _pyplot()
    panels = [(name, title) for name, title in (("train_loss", "training loss"), (f"val_{monitor}", f"validation {monitor}"))
              if any(columns.get(name) for columns in runs.values())]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    for ax, (name, title) in zip(axes[0], panels, strict=True):
        for label, columns in runs.items():
            values = columns.get(name)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=2, label=label)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return data_uri(fig)


def candidate_recall(recall: Mapping[int, float], retrieval_top_k: int, rerank_top_k: int) -> str:
    """Share of test users whose true item is in the retriever's top K, with the pipeline's two cut-offs marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ks = sorted(recall)
    ax.plot(ks, [recall[k] for k in ks], marker="o", color="tab:blue")
    for k, name, style in ((rerank_top_k, "rerank_top_k", ":"), (retrieval_top_k, "retrieval_top_k", "--")):
        ax.axvline(k, color="gray", linestyle=style, label=f"{name} = {k}")
    ax.set(
        xlabel="retrieval cut-off K", ylabel="true item within top K", ylim=(0, max(1e-9, max(recall.values())) * 1.1)
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return data_uri(fig)


def gain_by_history(gains: Sequence[BucketGain], metric: str) -> str:
    """Two-stage minus retrieval per history-length bucket: the mean difference with its 95% paired interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    x = range(len(gains))
    means = [g.delta.delta for g in gains]
    errors = [[g.delta.delta - g.delta.low for g in gains], [g.delta.high - g.delta.delta for g in gains]]
    colours = [{"gain": "tab:green", "loss": "tab:red"}.get(g.delta.verdict, "tab:gray") for g in gains]
    ax.bar(x, means, yerr=errors, color=colours, capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(list(x), [f"{g.label}\n({g.delta.users} users)" for g in gains], fontsize=8)
    ax.set(xlabel="history length (items before the test item)", ylabel=f"two-stage - retrieval {metric}")
    ax.grid(alpha=0.3, axis="y")
    return data_uri(fig)
