"""Can another classifier beat the majority class on `relates` without losing macro-F1?

Reads a finished job run (its `prepared/` split and fine-tuned `model/`), encodes every linked
ticket once with that model, and fits variants on the train split's links: the job's own
classifier, logistic regression with and without class weights and regularisation, per-class
decision offsets tuned on **val** (for macro-F1, or for macro-F1 with relates held at its
majority-baseline F1), and gradient-boosted trees on the metadata features alone or on all.
Scored on the test split's links; nothing is tuned on test.

Run: `PYTHONPATH=.:<job src> python -P -m bench.classifier_variants --run bench/work/dev/runs/bench --out bench/results`
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from job.config import ClassifyConfig
from job.data.records import Link, Ticket
from job.embedding.model import encode, load_model
from job.evaluation.evaluate import Embeddings
from job.log import get_logger
from job.relations.classify import META_FEATURES, pair_features, train_classifier

SPLITS = ("train", "val", "test")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def f1_by_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class F1 from class indices (sklearn's f1_score is too slow for the offset search)."""
    hits = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    both = np.bincount(y_true, minlength=n_classes) + np.bincount(y_pred, minlength=n_classes)
    return np.where(both > 0, 2 * hits / np.maximum(both, 1), 0.0)


def tune_offsets(val_logits: np.ndarray, objective: Callable[[np.ndarray], float]) -> np.ndarray:
    """Per-class additive offsets on the decision values, by coordinate ascent on val."""
    offsets = np.zeros(val_logits.shape[1])
    for _ in range(4):
        for k in range(len(offsets)):
            trials = []
            for value in np.linspace(-4, 4, 81):
                candidate = offsets.copy()
                candidate[k] = value
                trials.append((objective(np.argmax(val_logits + candidate, 1)), value))
            offsets[k] = max(trials)[1]
    return offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished job run folder (local)")
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tickets = {r["id"]: Ticket(r["id"], r["text"], r.get("category"), r.get("project"), r.get("created"))
               for r in read_jsonl(args.run / "prepared" / "tickets.jsonl")}
    raw = read_jsonl(args.run / "prepared" / "links.jsonl")
    links = {s: [Link(r["source"], r["target"], r["relation"]) for r in raw if r["split"] == s] for s in SPLITS}
    ids = sorted({t for r in raw for t in (r["source"], r["target"])})
    model = load_model(str(args.run / "model"), args.max_seq_length)
    emb = Embeddings(ids, encode(model, [tickets[t].text for t in ids], 64, get_logger(step="bench"), "encode"))

    job = train_classifier(links["train"], links["test"], tickets, emb, ClassifyConfig(), seed=42)
    classes = job.classes
    x = {s: pair_features([k for k in links[s] if k.relation in classes], tickets, emb) for s in SPLITS}
    y = {s: np.array([k.relation for k in links[s] if k.relation in classes]) for s in SPLITS}
    scaler = StandardScaler().fit(x["train"])
    z = {s: scaler.transform(x[s]) for s in SPLITS}
    relates = classes.index("relates")
    val_idx = np.array([classes.index(c) for c in y["val"]])

    def majority_f1(labels: np.ndarray) -> float:
        share = float(np.mean(labels == "relates"))
        return 2 * share / (1 + share)

    def per_class(pred: np.ndarray) -> np.ndarray:
        return f1_score(y["test"], pred, labels=classes, average=None, zero_division=0)

    rows: list[dict[str, Any]] = [{"variant": "job (logreg C=0.5, balanced, SMOTE)", "macro_f1": job.metrics["macro_f1"],
                                   "per_class": {c: v["f1"] for c, v in job.metrics["per_class"].items()}}]

    def add(name: str, pred: np.ndarray) -> None:
        f = per_class(pred)
        rows.append({"variant": name, "macro_f1": float(f.mean()), "per_class": dict(zip(classes, map(float, f), strict=True))})

    for c_value in (0.05, 0.5):
        for weight in ("balanced", None):
            clf = LogisticRegression(max_iter=3000, C=c_value, class_weight=weight).fit(z["train"], y["train"])
            name = f"logreg C={c_value}, class_weight={weight}"
            add(name, clf.predict(z["test"]))
            assert list(clf.classes_) == classes
            lv, lt = clf.decision_function(z["val"]), clf.decision_function(z["test"])
            macro = tune_offsets(lv, lambda p: float(f1_by_class(val_idx, p, len(classes)).mean()))
            add(f"{name} + val-tuned offsets (macro-F1)", np.array(classes)[np.argmax(lt + macro, 1)])
            floor = majority_f1(y["val"]) + 0.01

            def held_objective(p: np.ndarray, floor: float = floor) -> float:
                f = f1_by_class(val_idx, p, len(classes))
                return float(f.mean() - 5 * max(0.0, floor - f[relates]))

            held = tune_offsets(lv, held_objective)
            add(f"{name} + val-tuned offsets (relates held at majority)", np.array(classes)[np.argmax(lt + held, 1)])
    meta = slice(x["train"].shape[1] - len(META_FEATURES), None)
    for columns, label in ((meta, "metadata features"), (slice(None), "all features")):
        for weight in ("balanced", None):
            trees = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, class_weight=weight, random_state=0)
            add(f"gradient-boosted trees, {label}, class_weight={weight}",
                trees.fit(x["train"][:, columns], y["train"]).predict(x["test"][:, columns]))
    support = {c: int(np.sum(y["test"] == c)) for c in classes}
    result = {"run": str(args.run), "classes": classes, "test_support": support,
              "majority_relates_f1": {"test": majority_f1(y["test"]), "val": majority_f1(y["val"])}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classifier-variants-dev.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| variant | macro-F1 | " + " | ".join(f"{c} ({support[c]})" for c in classes) + " |",
             "|---|---:|" + "---:|" * len(classes)]
    lines += [f"| {r['variant']} | {r['macro_f1']:.3f} | " + " | ".join(f"{r['per_class'][c]:.3f}" for c in classes) + " |"
              for r in rows]
    lines.append(f"| majority class (relates) | {majority_f1(y['test']) / len(classes):.3f} | "
                 + " | ".join(f"{majority_f1(y['test']):.3f}" if c == "relates" else "0.000" for c in classes) + " |")
    (args.out / "classifier-variants-dev.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
