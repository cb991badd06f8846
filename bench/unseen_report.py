"""JSON, Markdown and a PNG for the unseen-project benchmark (bench/unseen.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HYBRID = "+bm25"
BASELINES = ("zero-shot", "zero-shot" + HYBRID, "bm25")
TABLE_KEYS = (("recall_at_10", "R@10"), ("mrr", "MRR"), ("map", "MAP"), ("recall_at_1", "R@1"),
              ("time_aware_recall_at_10", "time-aware R@10"), ("time_aware_mrr", "time-aware MRR"),
              ("average_precision", "pair AP"))
SEED_KEYS = ("recall_at_10", "mrr", "map", "time_aware_recall_at_10", "time_aware_mrr", "average_precision")


def _rows(rows: list[dict[str, Any]], contender: str, seed: int | None = None) -> list[dict[str, Any]]:
    return [r for r in rows if r["contender"] == contender and (seed is None or r["seed"] in (seed, None))]


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def _secs(values: list[float]) -> str:
    return f"{np.mean(values):.0f}" if values else "–"


def _mean_sd(values: list[float], signed: bool = False) -> str:
    if not values:
        return "–"
    number = "{:+.3f}" if signed else "{:.3f}"
    if len(values) == 1:
        return number.format(values[0])
    return f"{number.format(np.mean(values))} ± {np.std(values, ddof=1):.3f}"


def paired_gains(rows: list[dict[str, Any]], fold: str, contender: str, other: str, seeds: list[int],
                 key: str) -> list[float]:
    """`contender` minus `other` on one fold's test, seed by seed (both trained from the same seed's
    split and pairs), for the seeds where both ran: the spread says whether a gain is noise."""
    def value(name: str, seed: int) -> float | None:
        row = next((r for r in rows if (r["fold"], r["contender"], r["seed"]) == (fold, name, seed)), None)
        return row["test"].get(key) if row else None

    pairs = [(value(contender, s), value(other, s)) for s in seeds]
    return [a - b for a, b in pairs if a is not None and b is not None]


def fold_mean(rows: list[dict[str, Any]], contender: str, seed: int, part: str, key: str,
              folds: list[str]) -> float | None:
    values = []
    for fold in folds:
        row = next((r for r in rows if r["fold"] == fold and r["contender"] == contender
                    and r["seed"] in (seed, None)), None)
        if row and row.get(part) and row[part].get(key) is not None:
            values.append(row[part][key])
    return float(np.mean(values)) if len(values) == len(folds) else None


def seeded_values(rows: list[dict[str, Any]], fold: str, contender: str, seeds: list[int], key: str) -> list[float]:
    """`key` on the test project of each of `contender`'s runs on `fold` with one of `seeds` (a baseline's one
    seedless run stands for all seeds)."""
    return [r["test"][key] for r in rows if r["fold"] == fold and r["contender"] == contender
            and (r["seed"] is None or r["seed"] in seeds) and r.get("test") and r["test"].get(key) is not None]


def seeds_mean(rows: list[dict[str, Any]], contender: str, seeds: list[int], key: str,
               folds: list[str]) -> float | None:
    """Mean over `folds` of the mean over `seeds`."""
    per_fold = []
    for fold in folds:
        values = seeded_values(rows, fold, contender, seeds, key)
        if not values:
            return None
        per_fold.append(float(np.mean(values)))
    return float(np.mean(per_fold)) if per_fold else None


def contenders_of(recipes: list[str]) -> list[str]:
    """Each recipe dense, then fused with BM25."""
    return [name for recipe in recipes for name in (recipe, recipe + HYBRID)]


def fully_seeded(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Contenders (recipes, dense or fused) with a run for every seed on every seeded fold."""
    return [r for r in contenders_of(list(meta["recipes"])) if meta["final_folds"] and all(
        len(seeded_values(rows, fold, r, meta["seeds"], "recall_at_10")) == len(meta["seeds"])
        for fold in meta["final_folds"])]


def val_over_seeds(rows: list[dict[str, Any]], recipe: str, meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Val (R@10 + MRR)/2 and val pair AP of each of `recipe`'s seeded runs: what the default is chosen on."""
    runs = [r for r in rows if r["contender"] == recipe and r["fold"] in meta["final_folds"]
            and r["seed"] in meta["seeds"] and r.get("val")]
    return ([(r["val"]["recall_at_10"] + r["val"]["mrr"]) / 2 for r in runs],
            [r["val"]["average_precision"] for r in runs])


def targets(mean: Callable[[str, str], float | None], default: str) -> list[tuple[str, str, bool | None]]:
    """The issue's targets for the job's default hybrid (`default` fused with BM25), from `mean(contender,
    metric)` on the test projects: against the default model alone, and against the base model beside BM25."""
    hybrid, found = default + HYBRID, []
    checks = ((default, "recall_at_10", 0.04), (default, "mrr", 0.03), ("zero-shot" + HYBRID, "recall_at_10", 0.04))
    for other, key, gain in checks:
        a, b = mean(hybrid, key), mean(other, key)
        ok = None if a is None or b is None else a - b >= gain
        found.append((f"{hybrid} above {other} by >= {gain:.2f} {key}",
                      f"{_fmt(a)} vs {_fmt(b)} ({'–' if ok is None else f'{a - b:+.3f}'})", ok))
    a = mean(hybrid, "recall_at_10")
    found.append((f"{hybrid} recall_at_10 >= 0.78 (goal)", _fmt(a), None if a is None else a >= 0.78))
    a = mean(hybrid, "time_aware_recall_at_10")
    found.append((f"{hybrid} time-aware recall_at_10 (reported)", _fmt(a), None))
    a, b = mean(hybrid, "average_precision"), mean(default, "average_precision")
    ok = None if a is None or b is None else a >= b
    found.append((f"{hybrid} pair AP not lower than {default}'s", f"{_fmt(a)} vs {_fmt(b)}", ok))
    return found


def write_unseen_report(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"
    json_path.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    md_path.write_text(markdown(rows, meta, png_path.name))
    plot(rows, meta, png_path)
    return [json_path, md_path, png_path]


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], png_name: str) -> str:
    folds = list(meta["folds"])
    seed = 42
    recipes = list(meta["recipes"])
    contenders = [*BASELINES, *contenders_of(recipes)]
    default = meta["default"]
    sizes = meta["sizes"]
    lines = [f"# Unseen-project benchmark ({meta['dataset']}): leave one project out, dense and fused with BM25", "",
             f"`X{HYBRID}` is contender X's model fused with BM25 as the job ships it (job/retrieval/fusion.py: per "
             "query min-max of both scores over the candidates, then a weighted sum), the lexical weight chosen on "
             "the fold's val from the job's grid; `zero-shot+bm25` is the untouched base model beside a keyword "
             "index, the no-training competitor. BM25: bm25s, Lucene's variant, k1 1.2, b 0.75, English stop "
             "words; in time-aware mode each query's index holds only the tickets filed before it.", ""]
    if meta.get("missing"):
        lines += [f"**Partial: {len(meta['missing'])} runs of the protocol are not done yet** "
                  f"({'; '.join(meta['missing'])}). Tables below cover the folds where every listed recipe ran; "
                  "`make bench-unseen` resumes and completes it.", ""]
    lines += [
             f"{meta['finished']}; runs made at git "
             f"{', '.join(sorted({'`' + r['git_revision'][:12] + '`' for r in rows if r.get('git_revision')}))}; "
             f"report written at `{meta['git_revision'][:12]}`; {meta['host_cores']} cores; wall time of the "
             f"invocation that finished it {meta['wall_s_this_invocation'] / 60:.0f} min "
             "(runs already done by an earlier invocation are reused, see `times` in the JSON).",
             f"Every job run: {meta['base']}, max_seq_length {sizes['max_seq_length']}, {sizes['epochs']} epoch, "
             f"max_pairs {sizes['max_pairs']}, batch {sizes['batch_size']}; train/val split 0.85/0.10 (+0.05 unused) "
             "of the other projects by link components. Test = the held-out project alone: retrieval over all its "
             "tickets with its `duplicate` links as hits (pool, and time-aware: each query ranked only against "
             "tickets filed before it), pair metrics on its links vs negatives drawn by the job's rules.", "",
             "| fold (held out) | train tickets | train links | test tickets | test links | crossing links dropped |",
             "|---|---:|---:|---:|---:|---:|"]
    for fold, info in meta["folds"].items():
        lines.append(f"| {fold} | {info['train_tickets']} | {info['train_links']} | {info['test_tickets']} | "
                     f"{info['test_links']} | {info['crossing_links_dropped']} |")
    lines += ["", "## Recipes", ""]
    for recipe, settings in meta["recipes"].items():
        lines.append(f"- `{recipe}`: {json.dumps(settings)}")
    lines += ["", f"## Choice (val of the training projects only, seed {seed})", "",
              f"Rule: {meta['choice']['rule']}. **The rule picks `{meta['choice']['chosen']}`; the job's default is "
              f"`{default}`** (`job/config.py`), which the seeds and targets below are about."
              + ("" if default == meta["choice"]["chosen"] else " A pick on one seed becomes the default only "
                 "once its own seeds are in: `make bench-unseen` runs them next."), "",
              "| recipe | val (R@10 + MRR)/2 fused with BM25 | the same, dense | val pair AP (dense) |",
              "|---|---:|---:|---:|"]
    for recipe, values in meta["choice"]["table"].items():
        lines.append(f"| {recipe} | {values['val_ranking_score']:.3f} | {values['val_dense_ranking_score']:.3f} | "
                     f"{values['val_average_precision']:.3f} |")
    seeded = fully_seeded(rows, meta)
    if len(seeded) > 1:
        lines += ["", f"Over seeds {', '.join(map(str, meta['seeds']))} on {', '.join(meta['final_folds'])} "
                  "(val of the training projects, each seed its own split), for the recipes with every seed:", "",
                  "| recipe | runs | val (R@10 + MRR)/2, mean ± sd | val pair AP, mean ± sd |", "|---|---:|---:|---:|"]
        for recipe in seeded:
            ranking, ap = val_over_seeds(rows, recipe, meta)
            lines.append(f"| {recipe} | {len(ranking)} | {_mean_sd(ranking)} | {_mean_sd(ap)} |")
    lines += ["", f"## Test on the held-out project, mean over the {len(folds)} folds (seed {seed})", "",
              "| contender | " + " | ".join(label for _, label in TABLE_KEYS) + " |",
              "|---|" + "---:|" * len(TABLE_KEYS)]
    for contender in contenders:
        values = [fold_mean(rows, contender, seed, "test", key, folds) for key, _ in TABLE_KEYS]
        lines.append(f"| {contender} | " + " | ".join(_fmt(v) for v in values) + " |")
    lines += ["", "## Per fold (test, seed 42)", ""]
    for fold in folds:
        lines += [f"### {fold}", "", "| contender | " + " | ".join(label for _, label in TABLE_KEYS) + " | queries |",
                  "|---|" + "---:|" * (len(TABLE_KEYS) + 1)]
        for contender in contenders:
            row = next((r for r in rows if r["fold"] == fold and r["contender"] == contender
                        and r["seed"] in (seed, None)), None)
            if row:
                test = row["test"]
                lines.append(f"| {contender} | " + " | ".join(_fmt(test.get(k)) for k, _ in TABLE_KEYS)
                             + f" | {test.get('n_queries')} / {test.get('time_aware_n_queries')} |")
        lines.append("")
    lines += [f"## Seeds: {', '.join(map(str, meta['seeds']))} on {', '.join(meta['final_folds']) or 'no fold yet'} "
              "(test, mean ± sd over seeds)", "", "| fold | contender | R@10 | MRR | MAP | time-aware R@10 | "
              "time-aware MRR | pair AP |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for fold in meta["final_folds"]:
        for contender in [*BASELINES, *dict.fromkeys([default, default + HYBRID, *seeded, "notebook",
                                                      "notebook" + HYBRID])]:
            runs = len(seeded_values(rows, fold, contender, meta["seeds"], "recall_at_10"))
            cells = [_mean_sd(seeded_values(rows, fold, contender, meta["seeds"], k)) for k in SEED_KEYS]
            lines.append(f"| {fold} | {contender} ({runs} run{'s' if runs != 1 else ''}) | "
                         + " | ".join(cells) + " |")
        for better, worse in ((default + HYBRID, default), (default + HYBRID, "notebook" + HYBRID)):
            gains = [paired_gains(rows, fold, better, worse, meta["seeds"], k) for k in SEED_KEYS]
            lines.append(f"| {fold} | {better} − {worse}, same seed ({len(gains[0])} pairs) | "
                         + " | ".join(_mean_sd(g, signed=True) for g in gains) + " |")
    scopes = [(f"all {len(folds)} folds, seed {seed}",
               lambda contender, key: fold_mean(rows, contender, seed, "test", key, folds))]
    if meta["final_folds"]:
        scopes.append((f"{', '.join(meta['final_folds'])}, mean over seeds {', '.join(map(str, meta['seeds']))}",
                       lambda contender, key: seeds_mean(rows, contender, meta["seeds"], key, meta["final_folds"])))
    lines += ["", "## Targets (issue 23: the default hybrid vs the default model alone and vs the base model "
              "beside BM25, on the test projects, mean over folds)", "",
              "| scope | target | measured | met |", "|---|---|---|---|"]
    for scope, mean in scopes:
        for name, measured, ok in targets(mean, default):
            lines.append(f"| {scope} | {name} | {measured} | {'–' if ok is None else ('yes' if ok else '**no**')} |")
    lines += ["", "## Time per run (seconds, mean over folds, seed 42; child-process wall time)", "",
              "| recipe | prepare | train | score (val + test encode) | tickets encoded for mining |",
              "|---|---:|---:|---:|---:|"]
    for recipe in recipes:
        picked = _rows(rows, recipe, seed)
        prep = [r["times"].get("prepare_s") for r in picked if r["times"].get("prepare_s")]
        train = [r["times"].get("train_s") for r in picked if r["times"].get("train_s")]
        score = [r["times"].get("score_s") for r in picked if r["times"].get("score_s")]
        mined = [(r.get("mining") or {}).get("tickets_encoded", 0) for r in picked]
        lines.append(f"| {recipe} | {_secs(prep)} | {_secs(train)} | {_secs(score)} | {int(np.mean(mined)) if mined else 0} |")
    lines += ["", "## The lexical weight chosen on each fold's val (seed 42)", "",
              "| contender | " + " | ".join(folds) + " |", "|---|" + "---:|" * len(folds)]
    for contender in [c for c in contenders if c.endswith(HYBRID)]:
        weights = [next((r.get("weight") for r in rows if r["fold"] == f and r["contender"] == contender
                         and r["seed"] in (seed, None)), None) for f in folds]
        lines.append(f"| {contender} | " + " | ".join("–" if w is None else f"{w:.2f}" for w in weights) + " |")
    lines += ["", f"![recall@10 and MRR per fold]({png_name})", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folds = list(meta["folds"])
    contenders = [*BASELINES, *contenders_of(list(meta["recipes"]))]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.2))
    step = 0.7 / len(contenders)
    for ax, (key, label) in zip(axes, (("recall_at_10", "recall@10"), ("mrr", "MRR")), strict=True):
        for i, contender in enumerate(contenders):
            runs = [seeded_values(rows, fold, contender, meta["seeds"], key) for fold in folds]
            means = [np.mean(v) if v else np.nan for v in runs]
            spreads = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in runs]
            is_default = contender == meta["default"] + HYBRID
            ax.errorbar(np.arange(len(folds)) + (i - (len(contenders) - 1) / 2) * step, means, yerr=spreads,
                        fmt="D" if is_default else "o", markersize=9 if is_default else 7, capsize=4, label=contender,
                        markeredgecolor="black" if is_default else None, linestyle="none")
        seeded = [sum(1 for r in rows if r["fold"] == f and r["contender"] == meta["default"] + HYBRID
                      and r["seed"] in meta["seeds"]) for f in folds]
        ax.set_xticks(np.arange(len(folds)), [f"{f} (held out)\n{n} seed{'s' * (n != 1)}"
                                              for f, n in zip(folds, seeded, strict=True)])
        ax.set_ylabel(f"duplicate {label} on the held-out project")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{label}: mean over the seeds run, bars ± 1 sd (the job's default hybrid: diamond)",
                     fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(contenders), 7), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
