"""How the job's cost grows with the number of tickets: 1x, 2x and 4x a base set.

The base set is whole link components of the dataset taken in a seeded order until it holds
`base_tickets` tickets; 2x and 4x add copies of it under new ids (`ID~k`), so link density
and text lengths stay exactly the same and only the count grows. Each step runs as its own
process (prepare, a token train, evaluate, classify), timed by the job's own
`steps/<step>.json` and measured for peak RSS; a log-log slope near 1 means linear cost.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import run_measured

STEPS = ("prepare", "train", "evaluate", "classify")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def component_subset(tickets: list[dict[str, Any]], links: list[dict[str, Any]], size: int,
                     seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Whole link components, in a seeded order, until at least `size` tickets (all if fewer)."""
    parent = {t["id"]: t["id"] for t in tickets}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in links:
        if link["source"] in parent and link["target"] in parent:
            parent[find(link["source"])] = find(link["target"])
    groups: dict[str, list[str]] = defaultdict(list)
    for tid in sorted(parent):
        groups[find(tid)].append(tid)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    chosen: set[str] = set()
    for root in order:
        if len(chosen) >= size:
            break
        chosen.update(groups[root])
    kept = [t for t in tickets if t["id"] in chosen]
    return kept, [k for k in links if k["source"] in chosen and k["target"] in chosen]


def replicate(tickets: list[dict[str, Any]], links: list[dict[str, Any]],
              factor: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`factor` copies of the set; copy k > 0 renames every id to `ID~k`."""
    def rename(tid: str, k: int) -> str:
        return tid if k == 0 else f"{tid}~{k}"

    out_t = [{**t, "id": rename(t["id"], k)} for k in range(factor) for t in tickets]
    out_l = [{**link, "source": rename(link["source"], k), "target": rename(link["target"], k)}
             for k in range(factor) for link in links]
    return out_t, out_l


def loglog_slope(x: list[float], y: list[float]) -> float | None:
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y, strict=True) if a > 0 and b > 0]
    if len(pts) < 2:
        return None
    xs, ys = zip(*pts, strict=True)
    return float(np.polyfit(xs, ys, 1)[0])


def run_scaling(data_dir: Path, work: Path, base_tickets: int, factors: tuple[int, ...], job_env: dict[str, str],
                python: str, config: dict[str, Any], seed: int, per_step: bool = True) -> dict[str, Any]:
    """Run the job's steps at each size; returns rows for the report and the fitted slopes.

    `per_step`: each step in its own process (peak RSS per step); otherwise one `run` process
    per size (faster: fewer interpreter and model starts; peak RSS then includes training).
    """
    tickets = read_jsonl(data_dir / "tickets.jsonl")
    links = read_jsonl(data_dir / "links.jsonl")
    base_t, base_l = component_subset(tickets, links, base_tickets, seed)
    rows: list[dict[str, Any]] = []
    for factor in factors:
        folder = work / f"x{factor}"
        shutil.rmtree(folder, ignore_errors=True)
        t, k = replicate(base_t, base_l, factor)
        write_jsonl(folder / "data" / "tickets.jsonl", t)
        write_jsonl(folder / "data" / "links.jsonl", k)
        cfg = json.loads(json.dumps(config))
        cfg["data"] = {"tickets": str((folder / "data" / "tickets.jsonl").resolve()),
                       "links": str((folder / "data" / "links.jsonl").resolve())}
        cfg["output"] = {"uri": str((folder / "runs").resolve())}
        cfg_path = folder / "config.json"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        row: dict[str, Any] = {"factor": factor, "tickets": len(t), "links": len(k)}
        rss: dict[str, float] = {}
        for step in STEPS if per_step else ("run",):
            measured = run_measured([python, "-P", "-m", "job.cli", step, "--config", str(cfg_path), "--run-id", "scale"],
                                    folder / "logs" / f"{step}.log", env=job_env)
            row[f"{step}_process_s"] = measured.wall_s
            rss[step] = measured.peak_rss_mb
        for step in STEPS:
            row[f"{step}_s"] = json.loads((folder / "runs" / "scale" / "steps" / f"{step}.json").read_text())["duration_s"]
        row["peak_rss_mb_by_step"] = rss
        row["peak_rss_mb"] = max(rss[s] for s in ("prepare", "evaluate", "classify")) if per_step else rss["run"]
        rows.append(row)
        print(f"scaling x{factor}: {row['tickets']} tickets, prepare {row['prepare_s']}s, evaluate {row['evaluate_s']}s, "
              f"classify {row['classify_s']}s, peak {row['peak_rss_mb']} MB", flush=True)
    sizes = [float(r["tickets"]) for r in rows]
    slopes = {key: loglog_slope(sizes, [float(r[key]) for r in rows])
              for key in ("prepare_s", "evaluate_s", "classify_s", "peak_rss_mb")}
    memory = ("the largest peak RSS of the prepare, evaluate and classify processes" if per_step
              else "the peak RSS of one `run` process (training included)")
    return {"rows": rows, "loglog_slope": slopes, "base_tickets": len(base_t), "method": (
        "whole link components of the dataset up to the base size, replicated under new ids for 2x and 4x; "
        f"times are the job's own steps/<step>.json duration_s; memory is {memory}")}
