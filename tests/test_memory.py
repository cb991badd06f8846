"""Memory grows with the input, not faster: loaders, split, pairs and retrieval on 1x and 4x the sample.

Each measurement is a fresh child process (python -m tests.test_memory ...) that reads its
inputs the way `prepare` does (read_uri -> build_corpus -> split -> pairs, no hard-negative
mining, so no model) and then ranks every ticket against all others as the retrieval
evaluation does, in chunks, on random unit vectors of the default model's width (768).

The baseline is the child's own resident set once its imports are done: it then resets the
kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs), does the work, and reports the
new peak (VmHWM) minus that baseline. A separate "imports only" process would be noisier, and
its import-time peak could hide the work below the high-water mark. Where clear_refs cannot
be written, ru_maxrss minus the RSS after imports stands in. A full n x n similarity matrix,
or a loader that holds several copies of its input, makes 4x the input take more than 4.5x
the memory; the second test shows the measure catches exactly that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

DIM = 768  # all-mpnet-base-v2's embedding width (model.base's default)
CHUNK = 64  # queries per chunk: far below the ticket count, so chunking is what bounds memory
RETRIEVAL_RELATIONS = ["duplicate", "clones", "causes", "relates", "blocks", "depends"]


def replicate(sample: Path, times: int, out: Path) -> Path:
    """The sample `times` over, each copy with new ids (copy k of T-1 is T-1~k), links remapped."""
    out.mkdir(parents=True, exist_ok=True)
    tickets = [
        json.loads(line) for line in (sample / "tickets.jsonl").read_text().splitlines() if line.strip()
    ]
    links = [json.loads(line) for line in (sample / "links.jsonl").read_text().splitlines() if line.strip()]
    with (out / "tickets.jsonl").open("w") as handle:
        for k in range(times):
            for ticket in tickets:
                handle.write(json.dumps({**ticket, "id": f"{ticket['id']}~{k}"}) + "\n")
    with (out / "links.jsonl").open("w") as handle:
        for k in range(times):
            for link in links:
                handle.write(
                    json.dumps({**link, "source": f"{link['source']}~{k}", "target": f"{link['target']}~{k}"})
                    + "\n"
                )
    return out


def measure(data: Path, chunk: int = CHUNK) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.test_memory", str(data), str(chunk)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def peaks(shared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Growth of peak RSS for 1x and 4x the sample, chunked and (for the control) not; two children at a
    time."""
    tmp = tmp_path_factory.mktemp("memory")
    data = {n: replicate(shared_sample, n, tmp / f"x{n}") for n in (1, 4)}
    runs = {
        "1x": (data[1], CHUNK),
        "4x": (data[4], CHUNK),
        "1x-unchunked": (data[1], 10**9),
        "4x-unchunked": (data[4], 10**9),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(measure, path, chunk) for name, (path, chunk) in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def test_peak_memory_grows_no_faster_than_the_input(peaks: dict[str, dict[str, Any]]) -> None:
    one, four = peaks["1x"], peaks["4x"]
    assert four["tickets"] == 4 * one["tickets"] and four["pairs"] >= 3 * one["pairs"]
    assert four["queries"] == 4 * one["queries"] > 0
    grew_1x, grew_4x = one["grew_kb"], four["grew_kb"]
    print(
        f"\npeak RSS over the imports ({one['how']}): 1x {grew_1x} KiB ({one['tickets']} tickets), "
        f"4x {grew_4x} KiB ({four['tickets']} tickets), ratio {grew_4x / max(grew_1x, 1):.2f}"
    )
    assert grew_1x > 1024  # the work is big enough to measure
    assert grew_4x <= 4.5 * grew_1x, f"4x the input took {grew_4x / grew_1x:.1f}x the memory"


def test_the_measure_catches_quadratic_memory(peaks: dict[str, dict[str, Any]]) -> None:
    """One chunk holding every query (the full n x n matrix) breaks the bound: the test above
    would notice if retrieval stopped chunking."""
    one, four = peaks["1x-unchunked"], peaks["4x-unchunked"]
    assert four["grew_kb"] > 4.5 * one["grew_kb"]


# ---------------------------------------------------------------- the child process


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(data: str, chunk: int) -> dict[str, Any]:
    import gc
    import random
    import resource

    import numpy as np

    from job.config import JobConfig
    from job.data.pairs import build_split_pairs
    from job.data.records import build_corpus, require_enough
    from job.data.split import SPLITS, check_usable, split_by_components
    from job.evaluation.evaluate import Embeddings, retrieval_metrics, retrieval_queries
    from job.storage import read_uri

    gc.collect()
    baseline = _status_kb("VmRSS")
    exact = _reset_peak()
    cfg = JobConfig.model_validate(
        {
            "data": {"tickets": f"{data}/tickets.jsonl", "links": f"{data}/links.jsonl"},
            "output": {"uri": f"{data}-out"},
            "pairs": {"mine_hard_negatives": False},
        }
    )
    raw = {
        name: (uri, read_uri(uri, cfg.storage))
        for name in ("tickets", "links")
        if (uri := getattr(cfg.data, name))
    }
    corpus = build_corpus(raw, cfg.data)
    require_enough(corpus)
    edges = [(link.source, link.target) for link in corpus.links]
    split = split_by_components(sorted(corpus.tickets), edges, cfg.pairs.split, cfg.train.seed)
    check_usable(split, edges)
    pairs = [build_split_pairs(name, corpus, split, cfg.pairs, random.Random(name)).pairs for name in SPLITS]
    ids = sorted(corpus.tickets)
    vectors = np.random.default_rng(0).standard_normal((len(ids), DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    relevant, _ = retrieval_queries(ids, corpus.links, RETRIEVAL_RELATIONS)
    metrics = retrieval_metrics(Embeddings(ids, vectors), ids, relevant, chunk)
    peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "tickets": len(ids),
        "pairs": sum(len(p) for p in pairs),
        "queries": metrics["n_queries"],
        "grew_kb": peak - baseline,
        "how": "VmHWM after clear_refs" if exact else "ru_maxrss",
    }


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
