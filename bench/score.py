"""Score every contender on the job's leak-free test split with the job's own metric code.

Reads the job run's `prepared/` files (split by connected components), its `metrics.json`
(base and fine-tuned, computed by `finetune-job evaluate`), and the notebook's outputs; writes
one JSON with quality for base, BM25, notebook and job, the notebook's leaky figures, the
overlap between the notebook's training pairs and the job's test split, and the relation
classifiers. Runs as its own process with the measured job source first on PYTHONPATH.

Run: `python -P -m bench.score --run-dir R --notebook-dir N --max-seq-length L --out quality.json`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.bm25_baseline import BM25Scorer
from bench.notebook_baseline import fit_relation_classifier
from bench.notebook_baseline import pair_features as notebook_pair_features
from job.data.pairs import Pair
from job.data.records import Link, Ticket
from job.embedding.model import encode, load_model
from job.evaluation.evaluate import (
    Embeddings,
    PairScores,
    best_threshold,
    evaluate_model,
    pair_metrics,
    pair_scores,
    retrieval_metrics,
    retrieval_queries,
    scored_retrieval_metrics,
)
from job.log import get_logger
from job.relations.classify import _per_class

QUALITY_KEYS = ("average_precision", "roc_auc", "spearman", "pearson", "best_f1", "threshold", "recall_at_1",
                "recall_at_5", "recall_at_10", "mrr", "n_pairs", "n_positive", "n_queries")


class JobSplit:
    """The job run's prepared data, read back from its run directory."""

    def __init__(self, run_dir: Path) -> None:
        prepared = run_dir / "prepared"
        rows = _jsonl(prepared / "tickets.jsonl")
        self.tickets = {r["id"]: Ticket(r["id"], r["text"], r.get("category"), r.get("project"), r.get("created"))
                        for r in rows}
        self.links = [Link(r["source"], r["target"], r["relation"]) for r in _jsonl(prepared / "links.jsonl")]
        self.members: dict[str, list[str]] = json.loads((prepared / "split.json").read_text())
        self.pairs = {name: [Pair(**r) for r in _jsonl(prepared / f"pairs_{name}.jsonl")] for name in ("val", "test")}
        self.test_ids = self.members["test"]
        val_ids = {t for p in self.pairs["val"] for t in (p.a, p.b)}
        self.eval_ids = sorted(set(self.test_ids) | val_ids)  # what `finetune-job evaluate` encodes

    def links_in(self, split: str) -> list[Link]:
        ids = set(self.members[split])
        return [link for link in self.links if link.source in ids]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _pick(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in QUALITY_KEYS if k in metrics}


# ---------------------------------------------------------------- embedding models

def model_quality(split: JobSplit, emb: Embeddings, relations: list[str], threshold: float, chunk: int) -> dict[str, Any]:
    result = evaluate_model(emb, split.pairs["val"], split.pairs["test"], split.test_ids, split.links, relations,
                            threshold, chunk)
    return _pick(result.metrics)


def unseen_quality(split: JobSplit, emb: Embeddings, seen: set[str], relations: list[str], threshold: float,
                   chunk: int) -> dict[str, Any]:
    """Test pairs and retrieval queries whose tickets the notebook never trained on."""
    test = [p for p in split.pairs["test"] if p.a not in seen and p.b not in seen]
    val_scores = pair_scores(emb, split.pairs["val"], threshold)
    out: dict[str, Any] = dict(pair_metrics(pair_scores(emb, test, threshold), best_threshold(val_scores)))
    relevant, _ = retrieval_queries(split.test_ids, split.links, relations)
    relevant = [rel if split.test_ids[i] not in seen else set() for i, rel in enumerate(relevant)]
    out.update(retrieval_metrics(emb, split.test_ids, relevant, chunk))
    return _pick(out)


# ---------------------------------------------------------------- BM25

def bm25_quality(split: JobSplit, relations: list[str], threshold: float, chunk: int) -> dict[str, Any]:
    scorer = BM25Scorer(split.eval_ids, [split.tickets[t].text for t in split.eval_ids])

    def scores(pairs: list[Pair]) -> PairScores:
        target = np.array([p.score for p in pairs], dtype=np.float64)
        return PairScores(scorer.pair_scores([(p.a, p.b) for p in pairs]), target,
                          (target >= threshold).astype(int))

    out: dict[str, Any] = dict(pair_metrics(scores(split.pairs["test"]), best_threshold(scores(split.pairs["val"]))))
    relevant, _ = retrieval_queries(split.test_ids, split.links, relations)
    matrix = scorer.matrix([scorer.index[t] for t in split.test_ids])
    out.update(scored_retrieval_metrics(lambda rows, _mask, _time_aware: matrix[rows], relevant, chunk))
    return _pick(out)


# ---------------------------------------------------------------- notebook's own (leaky) figures

def notebook_leaky(notebook_dir: Path, links: list[Link], relations: list[str], chunk: int) -> dict[str, Any]:
    """The notebook's model on its own random eval split, by the job's metric code. The threshold
    is chosen on that same split, as the notebook did."""
    with np.load(notebook_dir / "eval_scores.npz", allow_pickle=False) as data:
        label = data["label"].astype(int)
        scores = PairScores(data["cosine"].astype(np.float64), data["label"].astype(np.float64), label)
    out: dict[str, Any] = dict(pair_metrics(scores, best_threshold(scores)))
    with np.load(notebook_dir / "eval_embeddings.npz", allow_pickle=False) as data:
        ids = [str(i) for i in data["ids"]]
        vectors = data["vectors"] / np.linalg.norm(data["vectors"], axis=1, keepdims=True)
    emb = Embeddings(ids, vectors.astype(np.float32))
    relevant, _ = retrieval_queries(ids, links, relations)
    out.update(retrieval_metrics(emb, ids, relevant, chunk))
    return _pick(out)


# ---------------------------------------------------------------- classifiers

def majority_classifier(split: JobSplit, classes: list[str], majority: str) -> dict[str, Any]:
    test = [link for link in split.links_in("test") if link.relation in classes]
    y_true = [link.relation for link in test]
    per_class = _per_class(y_true, [majority] * len(y_true), classes)
    return {"macro_f1": float(np.mean([c["f1"] for c in per_class.values()])) if classes else None,
            "per_class": per_class, "majority_class": majority}


def notebook_classifier(split: JobSplit, emb: Embeddings, classes: list[str], seed: int) -> dict[str, Any]:
    """The notebook's recipe (|u-v|, u*v, cosine; SMOTE; logistic regression) on the notebook's
    embeddings, trained on the job's train links and scored on its test links."""
    train = [link for link in split.links_in("train") if link.relation in classes]
    test = [link for link in split.links_in("test") if link.relation in classes]

    def features(links: list[Link]) -> np.ndarray:
        return notebook_pair_features(emb.of([k.source for k in links]), emb.of([k.target for k in links]))

    clf = fit_relation_classifier(features(train), np.array([k.relation for k in train]), seed)
    y_true = [k.relation for k in test]
    y_pred = clf.predict(features(test)).tolist() if test else []
    per_class = _per_class(y_true, y_pred, classes)
    return {"macro_f1": float(np.mean([c["f1"] for c in per_class.values()])), "per_class": per_class,
            "n_train": len(train), "n_test": len(test)}


# ---------------------------------------------------------------- overlap

def overlap(split: JobSplit, notebook: dict[str, Any]) -> dict[str, Any]:
    seen = set(notebook["train_ticket_ids"])
    train_keys = set(notebook["train_pair_keys"])
    test_ids = set(split.test_ids)
    test_pairs = split.pairs["test"]
    positives = [p for p in test_pairs if p.kind == "positive"]
    return {
        "job_test_tickets": len(test_ids),
        "job_test_tickets_in_notebook_training": len(test_ids & seen),
        "job_test_pairs": len(test_pairs),
        "job_test_pairs_touching_notebook_training": sum(p.a in seen or p.b in seen for p in test_pairs),
        "job_test_positive_pairs": len(positives),
        "job_test_positive_pairs_trained_on_by_notebook": sum("|".join(sorted((p.a, p.b))) in train_keys
                                                              for p in positives),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score base, BM25, notebook and job on the job's test split.")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--notebook-dir", type=Path, required=True)
    parser.add_argument("--max-seq-length", type=int, required=True)
    parser.add_argument("--encode-batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    log = get_logger(step="bench-score")
    split = JobSplit(args.run_dir)
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    config = json.loads((args.run_dir / "training_metadata.json").read_text()).get("config", {})
    relations = config.get("evaluate", {}).get("retrieval_relations", ["duplicate"])
    threshold = config.get("evaluate", {}).get("positive_threshold", 0.5)
    chunk = config.get("evaluate", {}).get("chunk_size", 1024)
    notebook = json.loads((args.notebook_dir / "notebook_result.json").read_text())

    job_clf = metrics.get("classifier", {})
    classes = job_clf.get("classes") or sorted({link.relation for link in split.links_in("train")})
    majority = job_clf.get("majority_class") or Counter(k.relation for k in split.links_in("train")).most_common(1)[0][0]
    needed = sorted(set(split.eval_ids) | {t for k in split.links_in("train") + split.links_in("test")
                                           for t in (k.source, k.target)})
    model = load_model(str(args.notebook_dir / "model"), args.max_seq_length)
    vectors = encode(model, [split.tickets[t].text for t in needed], args.encode_batch_size, log, "encode notebook")
    nb_emb = Embeddings(needed, vectors)
    seen = set(notebook["train_ticket_ids"])
    result = {
        "quality": {
            "base": _pick(metrics["base"]),
            "bm25": bm25_quality(split, relations, threshold, chunk),
            "notebook": model_quality(split, nb_emb, relations, threshold, chunk),
            "job": _pick(metrics["finetuned"]),
        },
        "notebook_unseen": unseen_quality(split, nb_emb, seen, relations, threshold, chunk),
        "notebook_leaky": notebook_leaky(args.notebook_dir, split.links, relations, chunk),
        "overlap": overlap(split, notebook),
        "classifier": {
            "job": {"macro_f1": job_clf.get("macro_f1"), "per_class": job_clf.get("per_class", {}),
                    "n_train": job_clf.get("n_train"), "n_test": job_clf.get("n_test")},
            "notebook": notebook_classifier(split, nb_emb, classes, args.seed),
            "majority": majority_classifier(split, classes, majority),
            "notebook_leaky": notebook.get("classifier", {}),
        },
        "retrieval_relations": relations,
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
