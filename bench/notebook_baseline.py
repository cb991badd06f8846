"""The v4 notebook (finetune_model_v4.ipynb), re-created cell by cell as its author ran it.

This is the yardstick the job is measured against, so it does what the notebook did, no
slower and no faster (see shared/NOTEBOOKS-CHANGELOG.md):

- one CONFIG dict; global seeding (Python, NumPy, torch);
- pairs generated up front and written to `training_pairs.json`: every link is a positive
  (label 1.0), one word drop/swap augmented copy per positive, and negatives (label 0.0):
  random ones and same-category "hard" ones, with category-count guards and a random fallback;
- a **random pair-level** train/eval split (`eval_split` 0.2) of those pairs; the training
  side is capped at `max_pairs` (sampled with the seed);
- `model.fit` (sentence-transformers' legacy fit API, still in v6) over a DataLoader of
  `InputExample`s with CosineSimilarityLoss, an EmbeddingSimilarityEvaluator on the eval
  split, warmup = 10% of the steps, `optimizer_params={'lr': ...}`;
- evaluation that encodes both texts of every eval pair, Pearson/Spearman, ROC-AUC, AP, and
  the best F1 over a 0.01 threshold grid (chosen on the eval split itself), with plots;
- a relationship classifier: both texts of every link encoded, features |u-v|, u*v, cosine,
  ultra-rare classes filtered, stratified random split, SMOTE when imbalanced-learn is there,
  logistic regression, classification report with explicit labels;
- `training_metadata.json` with versions and seeds.

The one knob added for a like-for-like benchmark is `max_seq_length` (the notebook ran at the
model's default), set to the same value as the job's.

Besides what the notebook printed, it writes what the benchmark needs to score its model on
the job's split (`notebook_result.json`, `eval_scores.npz`, `eval_embeddings.npz`); that
bookkeeping is outside the stage timers.

Run: `python -m bench.notebook_baseline --tickets T --links L --out DIR [--max-pairs N ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


class StageClock:
    """Wall time per notebook section, and time spent inside `model.encode`."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.encode_s: dict[str, float] = defaultdict(float)
        self.encoded: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - start, 3)

    def encode(self, stage: str, model: Any, texts: list[str], batch_size: int) -> np.ndarray:
        start = time.perf_counter()
        vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        self.encode_s[stage] += time.perf_counter() - start
        self.encoded[stage] += len(texts)
        return np.asarray(vectors)


# ---------------------------------------------------------------- cell 1: CONFIG and seeding

def make_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "base_model": args.base_model,
        "tickets_path": args.tickets,
        "links_path": args.links,
        "output_dir": args.out,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "warmup_ratio": 0.1,
        "eval_split": 0.2,
        "num_negatives": 3,
        "hard_negative_ratio": 0.5,
        "augment_per_positive": 1,
        "word_drop_prob": 0.15,
        "max_pairs": args.max_pairs,
        "max_seq_length": args.max_seq_length,
        "encode_batch_size": 32,
        "min_class_count": 10,
        "seed": args.seed,
    }


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------- cell 2: data

def load_tickets(path: str) -> dict[str, dict[str, Any]]:
    tickets = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["text"] = f"{row.get('title') or ''}\n{row.get('description') or ''}"
                tickets[row["id"]] = row
    return tickets


def load_links(path: str, tickets: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["source"] in tickets and r["target"] in tickets]


# ---------------------------------------------------------------- cell 3: pairs

def augment_text(text: str, drop_prob: float) -> str:
    """Word drop or a swap of two neighbouring words (v4's 'drop/swap variety')."""
    words = text.split()
    if len(words) < 3:
        return text
    if random.random() < 0.5:
        kept = [w for w in words if random.random() >= drop_prob]
        return " ".join(kept if len(kept) >= 2 else words[:2])
    i = random.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def generate_pairs(tickets: dict[str, dict[str, Any]], links: list[dict[str, str]], config: dict[str, Any]) -> list[dict[str, Any]]:
    linked = {(link["source"], link["target"]) for link in links} | {(link["target"], link["source"]) for link in links}
    ids = sorted(tickets)
    by_category: dict[str, list[str]] = defaultdict(list)
    for tid in ids:
        if tickets[tid].get("category"):
            by_category[tickets[tid]["category"]].append(tid)
    pairs: list[dict[str, Any]] = []
    for link in links:
        a, b = link["source"], link["target"]
        pairs.append({"id_a": a, "id_b": b, "text_a": tickets[a]["text"], "text_b": tickets[b]["text"],
                      "label": 1.0, "kind": "positive"})
        for _ in range(config["augment_per_positive"]):
            text = augment_text(tickets[b]["text"], config["word_drop_prob"])
            if text != tickets[b]["text"]:
                pairs.append({"id_a": a, "id_b": b, "text_a": tickets[a]["text"], "text_b": text,
                              "label": 1.0, "kind": "augmented"})
        n_hard = int(round(config["num_negatives"] * config["hard_negative_ratio"]))
        for k in range(config["num_negatives"]):
            pool = ids
            kind = "random"
            category = tickets[a].get("category")
            # v4 guard: a category needs at least two tickets to draw a hard negative from
            if k < n_hard and category and len(by_category.get(category, [])) >= 2:
                pool, kind = by_category[category], "category"
            other = None
            for _ in range(20):
                candidate = random.choice(pool)
                if candidate != a and (a, candidate) not in linked:
                    other = candidate
                    break
            if other is None:  # safe fallback
                other = random.choice(ids)
                if other == a or (a, other) in linked:
                    continue
                kind = "random"
            pairs.append({"id_a": a, "id_b": other, "text_a": tickets[a]["text"], "text_b": tickets[other]["text"],
                          "label": 0.0, "kind": kind})
    return pairs


# ---------------------------------------------------------------- cell 5: training

def train(train_pairs: list[dict[str, Any]], eval_pairs: list[dict[str, Any]], config: dict[str, Any]) -> Any:
    from sentence_transformers import InputExample, SentenceTransformer, losses
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
    from torch.utils.data import DataLoader

    model = SentenceTransformer(config["base_model"], device="cpu")
    model.max_seq_length = config["max_seq_length"]
    train_examples = [InputExample(texts=[p["text_a"], p["text_b"]], label=float(p["label"])) for p in train_pairs]
    eval_examples = [InputExample(texts=[p["text_a"], p["text_b"]], label=float(p["label"])) for p in eval_pairs]
    train_dataloader = DataLoader(train_examples, shuffle=True, batch_size=config["batch_size"])
    train_loss = losses.CosineSimilarityLoss(model)
    evaluator = EmbeddingSimilarityEvaluator.from_input_examples(eval_examples, name="eval",
                                                                 batch_size=config["encode_batch_size"])
    warmup_steps = int(len(train_dataloader) * config["epochs"] * config["warmup_ratio"])
    model.fit(
        train_objectives=[(train_dataloader, train_loss)],
        evaluator=evaluator,
        epochs=config["epochs"],
        warmup_steps=warmup_steps,
        optimizer_params={"lr": config["learning_rate"]},
        output_path=str(Path(config["output_dir"]) / "model"),
        show_progress_bar=False,
    )
    return model


# ---------------------------------------------------------------- cell 6: evaluation

def best_f1_on_grid(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    best_f1, best_t = 0.0, 0.0
    for t in np.round(np.arange(-1.0, 1.0001, 0.01), 2):
        f1 = f1_score(labels, (scores >= t).astype(int), zero_division=0)
        if f1 > best_f1:
            best_f1, best_t = float(f1), float(t)
    return best_f1, best_t


def evaluate(model: Any, eval_pairs: list[dict[str, Any]], config: dict[str, Any], clock: StageClock) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    emb_a = clock.encode("evaluate", model, [p["text_a"] for p in eval_pairs], config["encode_batch_size"])
    emb_b = clock.encode("evaluate", model, [p["text_b"] for p in eval_pairs], config["encode_batch_size"])
    emb_a = emb_a / np.linalg.norm(emb_a, axis=1, keepdims=True)
    emb_b = emb_b / np.linalg.norm(emb_b, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", emb_a, emb_b)
    labels = np.array([int(p["label"] >= 0.5) for p in eval_pairs])
    best_f1, threshold = best_f1_on_grid(labels, cos)
    metrics = {
        "pearson": float(pearsonr(cos, labels)[0]),
        "spearman": float(spearmanr(cos, labels)[0]),
        "roc_auc": float(roc_auc_score(labels, cos)),
        "average_precision": float(average_precision_score(labels, cos)),
        "best_f1": best_f1,
        "threshold": threshold,
        "n_pairs": len(labels),
    }
    plots = Path(config["output_dir"]) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(cos[labels == 1], bins=50, alpha=0.6, label="positive")
    ax.hist(cos[labels == 0], bins=50, alpha=0.6, label="negative")
    ax.legend()
    fig.savefig(plots / "similarity_distribution.png")
    plt.close(fig)
    fpr, tpr, _ = roc_curve(labels, cos)
    precision, recall, _ = precision_recall_curve(labels, cos)
    for name, (x, y) in {"roc": (fpr, tpr), "pr": (recall, precision)}.items():
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(x, y)
        fig.savefig(plots / f"{name}.png")
        plt.close(fig)
    print("eval metrics:", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return metrics, cos, emb_a, emb_b


# ---------------------------------------------------------------- cell 7: relationship classifier

def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The notebook's features: |u-v|, u*v and the cosine."""
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", u, v)[:, None]
    return np.hstack([np.abs(u - v), u * v, cos])


def fit_relation_classifier(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """SMOTE when imbalanced-learn is installed and every class can have neighbours; then LR."""
    from sklearn.linear_model import LogisticRegression

    counts = Counter(y.tolist())
    if min(counts.values()) >= 2:
        try:
            from imblearn.over_sampling import SMOTE

            x, y = SMOTE(k_neighbors=min(5, min(counts.values()) - 1), random_state=seed).fit_resample(x, y)
        except ImportError:
            print("imbalanced-learn not installed: SMOTE skipped")
    return LogisticRegression(max_iter=1000).fit(x, y)


def relationship_classifier(model: Any, tickets: dict[str, dict[str, Any]], links: list[dict[str, str]],
                            config: dict[str, Any], clock: StageClock) -> dict[str, Any]:
    from sklearn.metrics import classification_report, f1_score
    from sklearn.model_selection import train_test_split

    counts = Counter(link["relation"] for link in links)
    keep = sorted(c for c, n in counts.items() if n >= config["min_class_count"])
    rel_pairs = [link for link in links if link["relation"] in keep]
    if len(keep) < 2:
        print("relationship classifier skipped: fewer than two classes")
        return {"skipped": True}
    u = clock.encode("classify", model, [tickets[p["source"]]["text"] for p in rel_pairs], config["encode_batch_size"])
    v = clock.encode("classify", model, [tickets[p["target"]]["text"] for p in rel_pairs], config["encode_batch_size"])
    x = pair_features(u, v)
    y = np.array([p["relation"] for p in rel_pairs])
    stratify = y if min(Counter(y.tolist()).values()) >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=config["seed"],
                                                        stratify=stratify)
    clf = fit_relation_classifier(x_train, y_train, config["seed"])
    y_pred = clf.predict(x_test)
    print(classification_report(y_test, y_pred, labels=keep, target_names=keep, zero_division=0))
    per_class = f1_score(y_test, y_pred, labels=keep, average=None, zero_division=0)
    return {
        "macro_f1": float(f1_score(y_test, y_pred, labels=keep, average="macro", zero_division=0)),
        "per_class": {c: {"f1": float(f), "support": int((y_test == c).sum())} for c, f in zip(keep, per_class, strict=True)},
        "n_train": len(y_train), "n_test": len(y_test), "classes": keep,
    }


# ---------------------------------------------------------------- the notebook, top to bottom

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", required=True)
    parser.add_argument("--links", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    clock = StageClock()
    config = make_config(args)
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)

    with clock.stage("prepare"):
        seed_everything(config["seed"])
        tickets = load_tickets(config["tickets_path"])
        links = load_links(config["links_path"], tickets)
        pairs = generate_pairs(tickets, links, config)
        (out / "training_pairs.json").write_text(json.dumps(pairs))
        random.shuffle(pairs)
        n_eval = int(len(pairs) * config["eval_split"])
        eval_pairs, train_pairs = pairs[:n_eval], pairs[n_eval:]
        if config["max_pairs"] and len(train_pairs) > config["max_pairs"]:
            train_pairs = random.sample(train_pairs, config["max_pairs"])
        print(f"pairs: {len(pairs)} ({dict(Counter(p['kind'] for p in pairs))}); "
              f"train {len(train_pairs)}, eval {len(eval_pairs)}")

    with clock.stage("train"):
        fit_start = time.perf_counter()
        model = train(train_pairs, eval_pairs, config)
        fit_s = time.perf_counter() - fit_start

    with clock.stage("evaluate"):
        metrics, cos, emb_a, emb_b = evaluate(model, eval_pairs, config, clock)

    with clock.stage("classify"):
        classifier = relationship_classifier(model, tickets, links, config, clock)

    with clock.stage("metadata"):
        import sentence_transformers
        import sklearn
        import torch

        (out / "training_metadata.json").write_text(json.dumps({
            "config": config, "seed": config["seed"], "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "sentence-transformers": sentence_transformers.__version__,
                         "scikit-learn": sklearn.__version__, "numpy": np.__version__},
            "eval_metrics": metrics, "classifier": classifier,
        }, indent=2))

    # ---- benchmark bookkeeping (not part of the notebook, outside the stage timers)
    import torch

    seen = sorted({p["id_a"] for p in train_pairs} | {p["id_b"] for p in train_pairs})
    np.savez(out / "eval_scores.npz", cosine=cos, label=np.array([p["label"] for p in eval_pairs]),
             id_a=np.array([p["id_a"] for p in eval_pairs]), id_b=np.array([p["id_b"] for p in eval_pairs]),
             kind=np.array([p["kind"] for p in eval_pairs]))
    vectors: dict[str, np.ndarray] = {}
    for p, a, b in zip(eval_pairs, emb_a, emb_b, strict=True):
        vectors.setdefault(p["id_a"], a)
        if p["kind"] != "augmented":
            vectors.setdefault(p["id_b"], b)
    ids = sorted(vectors)
    np.savez(out / "eval_embeddings.npz", ids=np.array(ids), vectors=np.array([vectors[i] for i in ids], dtype=np.float32))
    result = {
        "config": {k: v for k, v in config.items() if not k.endswith("_path")},
        "stages_s": clock.stages,
        "fit_s": round(fit_s, 3),
        "n_pairs": len(pairs), "n_train_pairs": len(train_pairs), "n_eval_pairs": len(eval_pairs),
        "train_pairs_per_s": round(len(train_pairs) * config["epochs"] / fit_s, 3),
        "encode": {stage: {"texts": clock.encoded[stage], "seconds": round(clock.encode_s[stage], 3)}
                   for stage in clock.encoded},
        "eval_metrics": metrics,
        "classifier": classifier,
        "train_ticket_ids": seen,
        "train_pair_keys": sorted({"|".join(sorted((p["id_a"], p["id_b"]))) for p in train_pairs}),
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "wall_in_process_s": round(time.perf_counter() - started, 3),
    }
    (out / "notebook_result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
