"""The run's figures, one function per figure, each written as a PNG file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from job.evaluate import THRESHOLD_GRID, PairScores, f1_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
        ax.hist(s.cosine[s.label == 0], bins=bins, alpha=0.6, label="unrelated pairs", color="tab:red", density=True)
        ax.hist(s.cosine[s.label == 1], bins=bins, alpha=0.6, label="linked pairs", color="tab:green", density=True)
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
    ax.set(xlabel="cosine threshold (dotted: chosen on val)", ylabel="F1 on test", title="F1 vs threshold",
           xlim=(-0.2, 1.0))
    ax.legend()
    return _save(fig, path)


def loss_curve(curve: list[dict[str, Any]], val_history: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        ax.plot([c["step"] for c in curve], [c["loss"] for c in curve], marker="o", ms=3, label="training loss")
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    if val_history:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in val_history], [h["eval_val_spearman_cosine"] for h in val_history],
                 color="tab:orange", marker="s", label="val Spearman")
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
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Relation classifier, test split")
    return _save(fig, path)
