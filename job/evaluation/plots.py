"""The run's figures, one function per figure, each written as a PNG file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from job.evaluation.evaluate import THRESHOLD_GRID, PairScores, f1_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class PlottedRun(Protocol):
    """What the history figure reads of a run (job.fleet.history.RunSummary has it; history draws with this
    module)."""

    run_id: str
    finished: bool
    started: str | None
    promoted: str
    metrics: dict[str, Any]
    base_metrics: dict[str, Any]


def _pyplot() -> Any:
    """matplotlib, imported at the first figure: it reads MPLCONFIGDIR when imported, which the
    job sets from runtime.cache_dir only once the config is loaded (environment.use_cache_dir)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod
    import matplotlib.pyplot as plt

    return plt


MODELS = (("base", "tab:gray"), ("finetuned", "tab:blue"))


def _save(fig: Figure, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def similarity_distributions(scores: dict[str, PairScores], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, (name, _) in zip(axes, MODELS, strict=True):
        s = scores[name]
        ax.hist(
            s.cosine[s.label == 0],
            bins=bins,
            alpha=0.6,
            label="unrelated pairs",
            color="tab:red",
            density=True,
        )
        ax.hist(
            s.cosine[s.label == 1],
            bins=bins,
            alpha=0.6,
            label="linked pairs",
            color="tab:green",
            density=True,
        )
        ax.set_title(f"{name} model (test split)")
        ax.set_xlabel("cosine similarity")
        ax.legend()
    axes[0].set_ylabel("density")
    return _save(fig, path)


def roc(scores: dict[str, PairScores], metrics: dict[str, dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, color in MODELS:
        fpr, tpr, _ = roc_curve(scores[name].label, scores[name].cosine)
        ax.plot(fpr, tpr, color=color, label=f"{name} (AUC {metrics[name]['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="lightgray")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test split")
    ax.legend(loc="lower right")
    return _save(fig, path)


def precision_recall(scores: dict[str, PairScores], metrics: dict[str, dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, color in MODELS:
        precision, recall, _ = precision_recall_curve(scores[name].label, scores[name].cosine)
        ax.plot(recall, precision, color=color, label=f"{name} (AP {metrics[name]['average_precision']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test split", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _save(fig, path)


def f1_vs_threshold(scores: dict[str, PairScores], metrics: dict[str, dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in MODELS:
        ax.plot(THRESHOLD_GRID, f1_curve(scores[name]), color=color, label=f"{name}")
        ax.axvline(metrics[name]["threshold"], color=color, ls=":", lw=1)
    ax.set(
        xlabel="cosine threshold (dotted: chosen on val)",
        ylabel="F1 on test",
        title="F1 vs threshold",
        xlim=(-0.2, 1.0),
    )
    ax.legend()
    return _save(fig, path)


def evaluation_figures(scores: dict[str, PairScores], metrics: dict[str, dict], folder: Path) -> list[Path]:
    """The evaluate step's figures of the base and fine-tuned models' test pair scores (ROC and PR only when
    the test pairs hold both labels)."""
    made = [
        similarity_distributions(scores, folder / "similarity_distributions.png"),
        f1_vs_threshold(scores, metrics, folder / "f1_vs_threshold.png"),
    ]
    if all(metrics[m]["roc_auc"] is not None for m in ("base", "finetuned")):
        made += [
            roc(scores, metrics, folder / "roc.png"),
            precision_recall(scores, metrics, folder / "pr.png"),
        ]
    return made


def loss_curve(curve: list[dict[str, Any]], val_history: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        ax.plot(
            [c["step"] for c in curve], [c["loss"] for c in curve], marker="o", ms=3, label="training loss"
        )
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    if val_history:
        ax2 = ax.twinx()
        ax2.plot(
            [h["step"] for h in val_history],
            [h["eval_val_spearman_cosine"] for h in val_history],
            color="tab:orange",
            marker="s",
            label="val Spearman",
        )
        ax2.set_ylabel("val Spearman (cosine)")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    return _save(fig, path)


def confusion(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2.5, 1.0 * len(classes) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    peak = matrix.max() if matrix.size else 0
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > peak / 2 else "black",
            )
    ax.set(xlabel="predicted", ylabel="true", title="Relation classifier, test split")
    return _save(fig, path)


def history(runs: Sequence[PlottedRun], metric: str, path: Path) -> Path:
    """The promotion metric and recall@10 of every finished run, oldest first; promoted runs marked,
    unfinished runs named below the axis (they have no final metrics to plot)."""
    plt = _pyplot()
    shown = [run for run in runs if run.finished]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(shown) + 5), 4.5))
    x = np.arange(len(shown))
    series = (
        [(metric, "tab:blue", "o"), ("recall_at_10", "tab:orange", "s")]
        if metric != "recall_at_10"
        else [(metric, "tab:blue", "o")]
    )
    for key, color, marker in series:
        values = [np.nan if run.metrics.get(key) is None else run.metrics[key] for run in shown]
        ax.plot(x, values, color=color, marker=marker, label=f"{key} (fine-tuned)")
    base = [np.nan if run.base_metrics.get(metric) is None else run.base_metrics[metric] for run in shown]
    ax.plot(x, base, color="tab:gray", ls="--", lw=1, label=f"{metric} (base model)")
    for kind, style in (
        ("before", {"facecolors": "none", "edgecolors": "tab:green", "linewidths": 2}),
        ("current", {"color": "tab:green", "marker": "*"}),
    ):
        picked = [(i, run.metrics.get(metric)) for i, run in enumerate(shown) if run.promoted == kind]
        picked = [(i, v) for i, v in picked if v is not None]
        if picked:
            ax.scatter(
                [i for i, _ in picked],
                [v for _, v in picked],
                s=260,
                zorder=3,
                label="promoted now" if kind == "current" else "promoted before",
                **style,
            )
    labels = [f"{(run.started or '?')[:10]}\n{run.run_id[:22]}" for run in shown]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set(
        ylabel="test split",
        title=f"Run history: {metric} and recall@10",
        xlim=(-0.5, max(len(shown), 1) - 0.5),
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: never over a point
    unfinished = [run.run_id for run in runs if not run.finished]
    if unfinished:
        names = ", ".join(unfinished[:4]) + (
            f" and {len(unfinished) - 4} more" if len(unfinished) > 4 else ""
        )
        fig.text(0.01, 0.01, f"unfinished, not plotted: {names}", fontsize=8, color="tab:red")
    return _save(fig, path)
