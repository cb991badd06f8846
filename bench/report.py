"""Write a benchmark result as `<date>-<host>.json`, a Markdown table and a PNG chart.

`python -m bench.report RESULT.json` re-renders the Markdown and PNG from a saved JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

QUALITY_ROWS = ("average_precision", "roc_auc", "spearman", "best_f1", "recall_at_1", "recall_at_5", "recall_at_10", "mrr")
CONTENDERS = ("base", "bm25", "notebook", "job")
MIN_SUPPORT = 20


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target of the benchmark issue."""
    st, q, clf = r["stages"], r["quality"], r["classifier"]
    out: list[tuple[str, str, bool | None]] = []

    def get(contender: str, key: str) -> float | None:
        value = q.get(contender, {}).get(key)
        return value if isinstance(value, int | float) else None

    job_ap, nb_ap = get("job", "average_precision"), get("notebook", "average_precision")
    e2e = st["end_to_end"]["ratio"]
    out.append(("end to end >= 2x faster than the notebook, at equal or better test AP",
                f"{_f(e2e, 2)}x; AP job {_f(job_ap)} vs notebook {_f(nb_ap)}",
                None if e2e is None or job_ap is None or nb_ap is None else e2e >= 2 and job_ap >= nb_ap))
    if "end_to_end_without_index" in st:
        bare = st["end_to_end_without_index"]["ratio"]
        out.append(("end to end without the index step (the notebook has none) >= 2x", f"{_f(bare, 2)}x",
                    None if bare is None else bare >= 2))
    ec = st["evaluate_plus_classify"]["ratio"]
    out.append(("evaluate + classify >= 3x faster", f"{_f(ec, 2)}x", None if ec is None else ec >= 3))
    tp = r["throughput"]["ratio_job_over_notebook"]["train_pairs_per_s"]
    out.append(("training pairs/s >= 1.3x", f"{_f(tp, 2)}x", None if tp is None else tp >= 1.3))
    rss = r["peak_rss_mb"]
    out.append(("peak RSS no higher than the notebook's", f"job {_f(rss['job'], 0)} MB vs notebook {_f(rss['notebook'], 0)} MB",
                rss["job"] <= rss["notebook"]))
    for other in ("base", "bm25"):
        ap_o, r10_o, r10_j = get(other, "average_precision"), get(other, "recall_at_10"), get("job", "recall_at_10")
        ok = None if None in (job_ap, ap_o, r10_o, r10_j) else (job_ap >= ap_o + 0.05 and r10_j >= r10_o + 0.05)  # type: ignore[operator]
        out.append((f"job above {other} by >= 0.05 AP and >= 5 points recall@10",
                    f"AP {_f(job_ap)} vs {_f(ap_o)}; R@10 {_f(r10_j)} vs {_f(r10_o)}", ok))
    out.append(("job above the notebook approach (test AP, leak-free split)", f"{_f(job_ap)} vs {_f(nb_ap)}",
                None if job_ap is None or nb_ap is None else job_ap > nb_ap))
    job_f1, nb_f1 = clf["job"].get("macro_f1"), clf["notebook"].get("macro_f1")
    out.append(("classifier macro-F1 above the notebook's", f"{_f(job_f1)} vs {_f(nb_f1)}",
                None if job_f1 is None or nb_f1 is None else job_f1 > nb_f1))
    big = [c for c, v in clf["job"].get("per_class", {}).items() if v.get("support", 0) >= MIN_SUPPORT]
    beaten = [c for c in big if clf["job"]["per_class"][c]["f1"] > clf["majority"]["per_class"].get(c, {}).get("f1", 0.0)]
    out.append((f"classifier F1 above majority baseline on every relation with >= {MIN_SUPPORT} test links",
                f"{len(beaten)}/{len(big)} ({', '.join(sorted(set(big) - set(beaten))) or 'none missed'})",
                None if not big else len(beaten) == len(big)))
    slopes = r.get("scaling_slopes") or {}
    worst = max((v for v in slopes.values() if v is not None), default=None)
    out.append(("cost grows about linearly (log-log slope <= 1.2)",
                ", ".join(f"{k} {_f(v, 2)}" for k, v in slopes.items()) or "not run",
                None if worst is None else worst <= 1.2))
    return out


def _phases_table(r: dict[str, Any]) -> list[str]:
    """Seconds per phase of each job step (the steps' records, job/profile.py), `other` what they leave."""
    phases = r.get("job_phases_s") or {}
    if not phases:
        return []
    names = sorted({name for p in phases.values() for name in (p or {})})
    lines = ["## Where the job's time went (seconds per phase; models loaded in brackets)", "",
             f"| step | total | {' | '.join(names)} | other |", "|---|" + "---:|" * (len(names) + 2)]
    for step, p in phases.items():
        p = p or {}
        total = r["stages"].get(step, {}).get("job_s") or 0.0
        loads = (r.get("job_phase_counts") or {}).get(step, {}) or {}
        cells = [_f(p.get(n), 1) + (f" ({loads['load']})" if n == "load" and "load" in loads else "") for n in names]
        lines.append(f"| {step} | {_f(total, 1)} | {' | '.join(cells)} | {_f(max(total - sum(p.values()), 0.0), 1)} |")
    return [*lines, ""]


def markdown(r: dict[str, Any]) -> str:
    s, m = r["sizes"], r["machine"]
    lines = [
        f"# Benchmark: finetune-job vs the v4 notebook approach ({r['dataset']})",
        "",
        f"{r['date']} on `{m['host']}` ({m['cpu']}, {m['usable_cores']} cores, {m['memory_gb']} GB); "
        f"git `{r['git_revision'][:12]}` (job measured from {r['job_source']['kind']}); seed {r['seed']}; "
        f"torch threads job {r['threads']['job_torch_threads']} / notebook {r['threads']['notebook_torch_threads']}.",
        f"Both: all-MiniLM-L6-v2, max_pairs {s['max_pairs']} (trained on {s['train_pairs']['job']} job / "
        f"{s['train_pairs']['notebook']} notebook pairs), epochs {s['epochs']}, batch {s['batch_size']}, "
        f"max_seq_length {s['max_seq_length']}, lr {s['learning_rate']}. "
        f"Load average at start: job {_f(r['processes']['job']['load_before'], 2)}, "
        f"notebook {_f(r['processes']['notebook']['load_before'], 2)} (other work on the machine slows both). "
        + _idle_line(r.get("idle")),
        f"Job settings beyond its defaults: {json.dumps(r.get('job_config_overrides') or {}) or 'none'}. "
        f"Job code: {r['job_source']['kind']}{' (' + r['job_source']['note'] + ')' if r['job_source'].get('note') else ''}.",
        "",
        "## Time (seconds) and memory",
        "",
        "| stage | job | notebook | notebook / job |",
        "|---|---:|---:|---:|",
    ]
    for stage in ("prepare", "train", "index", "evaluate", "classify", "evaluate_plus_classify", "end_to_end",
                  "end_to_end_without_index"):
        if stage not in r["stages"]:
            continue
        v = r["stages"][stage]
        lines.append(f"| {stage.replace('_', ' ')} | {_f(v['job_s'], 1)} | {_f(v['notebook_s'], 1)} | {_f(v['ratio'], 2) + 'x' if v['ratio'] is not None else '–'} |")
    t = r["throughput"]
    lines += [
        "",
        "| measure | job | notebook | job / notebook |",
        "|---|---:|---:|---:|",
        f"| training pairs/s | {_f(t['train_pairs_per_s']['job'], 2)} | {_f(t['train_pairs_per_s']['notebook'], 2)} | "
        f"{_f(t['ratio_job_over_notebook']['train_pairs_per_s'], 2)}x |",
        f"| encode sentences/s (evaluate + classify) | {_f(t['encode_sentences_per_s']['job'], 1)} | "
        f"{_f(t['encode_sentences_per_s']['notebook'], 1)} | {_f(t['ratio_job_over_notebook']['encode_sentences_per_s'], 2)}x |",
        f"| texts encoded (evaluate + classify) | {t['texts_encoded_in_evaluate_and_classify']['job']} | "
        f"{t['texts_encoded_in_evaluate_and_classify']['notebook']} | |",
        f"| peak RSS of the process tree (MB) | {_f(r['peak_rss_mb']['job'], 0)} | {_f(r['peak_rss_mb']['notebook'], 0)} | |",
        f"| job process peak RSS after {' / '.join(r['peak_rss_mb'].get('job_after_step', {}))} (MB) | "
        + " / ".join(_f(v, 0) for v in r["peak_rss_mb"].get("job_after_step", {}).values()) + " | | |",
        f"| CPU seconds, end to end (user + sys) | {_f(r.get('cpu_s', {}).get('job'), 0)} | "
        f"{_f(r.get('cpu_s', {}).get('notebook'), 0)} | notebook / job {_f(r.get('cpu_s', {}).get('ratio'), 2)}x |",
        "",
        *_phases_table(r),
        "## Quality on the job's leak-free test split (job's own metric code)",
        "",
        "| metric | base (zero-shot) | BM25 | notebook | job | notebook, unseen tickets only | notebook on its own random split (leaky) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    q = r["quality"]
    for key in QUALITY_ROWS:
        cells = [_f(q[c].get(key)) for c in CONTENDERS]
        lines.append(f"| {key} | {' | '.join(cells)} | {_f(r['notebook_unseen'].get(key))} | {_f(r['notebook_leaky'].get(key))} |")
    lines.append(f"| test pairs / positives / queries | {q['job'].get('n_pairs')} / {q['job'].get('n_positive')} / "
                 f"{q['job'].get('n_queries')} | | | | {r['notebook_unseen'].get('n_pairs')} / "
                 f"{r['notebook_unseen'].get('n_positive')} / {r['notebook_unseen'].get('n_queries')} | "
                 f"{r['notebook_leaky'].get('n_pairs')} / {r['notebook_leaky'].get('n_positive')} / "
                 f"{r['notebook_leaky'].get('n_queries')} |")
    o = r["overlap"]
    lines += [
        "",
        f"Retrieval counts a `{','.join(r['retrieval_relations'])}` link as a hit. Overlap: "
        f"{o['job_test_tickets_in_notebook_training']} of the job's {o['job_test_tickets']} test tickets were in the "
        f"notebook's training pairs; {o['job_test_pairs_touching_notebook_training']} of {o['job_test_pairs']} test pairs "
        f"touch one; {o['job_test_positive_pairs_trained_on_by_notebook']} of {o['job_test_positive_pairs']} test "
        "positives were notebook training pairs themselves.",
        "",
        "## Relation classifier (test links of the job's split)",
        "",
        "| relation | support | job F1 | notebook F1 | majority F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    clf = r["classifier"]
    for cls, v in sorted(clf["job"].get("per_class", {}).items()):
        lines.append(f"| {cls} | {v.get('support')} | {_f(v.get('f1'))} | "
                     f"{_f(clf['notebook']['per_class'].get(cls, {}).get('f1'))} | "
                     f"{_f(clf['majority']['per_class'].get(cls, {}).get('f1'))} |")
    lines.append(f"| **macro-F1** | | **{_f(clf['job'].get('macro_f1'))}** | {_f(clf['notebook'].get('macro_f1'))} | "
                 f"{_f(clf['majority'].get('macro_f1'))} |")
    lines.append(f"\nThe notebook's own figure on its random link split (leaky): macro-F1 "
                 f"{_f(clf.get('notebook_leaky', {}).get('macro_f1'))}.")
    if r.get("scaling"):
        lines += ["", f"## Scaling (job, max_seq_length {r.get('scaling_max_seq_length', '')})", "",
                  "| tickets | links | prepare s | evaluate s | classify s | peak RSS MB |", "|---:|---:|---:|---:|---:|---:|"]
        for row in r["scaling"]:
            lines.append(f"| {row['tickets']} | {row['links']} | {_f(row['prepare_s'], 1)} | {_f(row['evaluate_s'], 1)} | "
                         f"{_f(row['classify_s'], 1)} | {_f(row['peak_rss_mb'], 0)} |")
        lines.append("\nlog-log slope (1.0 = linear): " + ", ".join(
            f"{k} {_f(v, 2)}" for k, v in r["scaling_slopes"].items()) + f". {r.get('scaling_method') or ''}")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in targets(r):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'n/a' if met is None else '**no**'} |")
    lines += ["", "Bug reports and issue links from the Apache Software Foundation Jira (https://issues.apache.org/jira), "
              "projects HADOOP, HDFS, MAPREDUCE, YARN, written by their reporters and maintainers; collected by the "
              "SPEAR lab, Concordia University, in LogInBugReportsEmpirical_Data "
              "(https://github.com/SPEAR-SE/LogInBugReportsEmpirical_Data).", ""]
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    colors = {"job": "#1f77b4", "notebook": "#ff7f0e", "base": "#7f7f7f", "bm25": "#2ca02c", "majority": "#bcbd22"}
    ax = axes[0][0]
    stages = [s for s in ("prepare", "train", "index", "evaluate", "classify", "end_to_end",
                          "end_to_end_without_index") if s in r["stages"]]
    x = np.arange(len(stages))
    for i, who in enumerate(("job", "notebook")):
        values = [r["stages"][s][f"{who}_s"] or 0 for s in stages]
        bars = ax.bar(x + (i - 0.5) * 0.38, values, 0.38, label=who, color=colors[who])
        ax.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in values], fontsize=8)
    names = {"end_to_end": "end to end", "end_to_end_without_index": "without index"}
    ratios = [_f(r["stages"][s]["ratio"], 2) + "x" if r["stages"][s]["ratio"] is not None else "job only" for s in stages]
    ax.set_xticks(x, [f"{names.get(s, s)}\n{ratio}" for s, ratio in zip(stages, ratios, strict=True)], fontsize=8)
    ax.set_ylabel("seconds (lower is better)")
    ax.set_title("Wall time per stage (notebook / job under each)")
    ax.legend()

    ax = axes[0][1]
    keys = ["average_precision", "roc_auc", "recall_at_1", "recall_at_10", "mrr"]
    x = np.arange(len(keys))
    for i, who in enumerate(CONTENDERS):
        values = [r["quality"][who].get(k) or 0 for k in keys]
        bars = ax.bar(x + (i - 1.5) * 0.2, values, 0.2, label=who, color=colors[who])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x, [k.replace("_", " ") for k in keys])
    ax.set_ylim(0, 1.3)
    ax.set_title("Quality on the job's leak-free test split (higher is better)")
    ax.legend(ncol=4, fontsize=8, loc="upper center")

    ax = axes[1][0]
    clf = r["classifier"]
    classes = sorted(clf["job"].get("per_class", {}))
    x = np.arange(len(classes) + 1)
    for i, who in enumerate(("job", "notebook", "majority")):
        per = clf[who].get("per_class", {})
        values = [per.get(c, {}).get("f1") or 0 for c in classes] + [clf[who].get("macro_f1") or 0]
        ax.bar(x + (i - 1) * 0.27, values, 0.27, label=who, color=colors[who])
    support = [clf["job"]["per_class"][c].get("support", 0) for c in classes]
    ax.set_xticks(x, [f"{c}\n(n={n})" for c, n in zip(classes, support, strict=True)] + ["macro"])
    ax.set_ylim(0, 1)
    ax.set_title("Relation classifier F1 on the job's test links")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    if r.get("scaling"):
        tickets = [row["tickets"] for row in r["scaling"]]
        for key, style in (("prepare_s", "o-"), ("evaluate_s", "s-"), ("classify_s", "^-")):
            ax.loglog(tickets, [row[key] for row in r["scaling"]], style,
                      label=f"{key[:-2]} (slope {_f(r['scaling_slopes'].get(key), 2)})")
        ax2 = ax.twinx()
        ax2.plot(tickets, [row["peak_rss_mb"] for row in r["scaling"]], "k--",
                 label=f"peak RSS MB (slope {_f(r['scaling_slopes'].get('peak_rss_mb'), 2)})")
        ax2.set_ylabel("peak RSS (MB)")
        ax2.set_ylim(0, max(row["peak_rss_mb"] for row in r["scaling"]) * 1.3)
        ax2.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("tickets")
        ax.set_ylabel("seconds")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title("Job cost at 1x / 2x / 4x tickets (log-log)")
    else:
        ax.set_axis_off()
    fig.suptitle(f"finetune-job vs v4 notebook on {r['dataset']} ({r['date'][:10]}, git {r['git_revision'][:8]}, "
                 f"{r['machine']['usable_cores']} CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _idle_line(idle: dict[str, Any] | None) -> str:
    if idle is None:
        return "Idle: not recorded (a run from before the idle check)."
    cores = ", ".join(f"{k} {v}" for k, v in idle["foreign_cpu_cores"].items())
    if idle["idle"]:
        return f"Idle: yes (other processes' CPU, in cores: {cores})."
    return f"**Not idle** ({idle['why']}): the speed ratios here do not describe the job."


def write_report(result: dict[str, Any], folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date'][:10]}-{result['machine']['host']}" + (f"-{result['label']}" if result.get("label") else "")
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "png": folder / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    render(paths["json"])
    return {k: str(v) for k, v in paths.items()}


def render(json_path: Path) -> None:
    result = json.loads(json_path.read_text())
    json_path.with_suffix(".md").write_text(markdown(result))
    chart(result, json_path.with_suffix(".png"))


if __name__ == "__main__":
    render(Path(sys.argv[1]))
