"""Ask a run for duplicates: the k existing tickets most similar to a new one, from the run's index.

    from job.suggest import open_index
    found = open_index(cfg)                 # the promoted run (or run_id=...), loaded once
    found.suggest("NameNode fails to start\\nNPE in FSImage ...", k=5, before="2018-01-01")

Each suggestion carries its dense (cosine), lexical (BM25) and hybrid score, fused as retrieval.json says
(job/retrieval/fusion.py, normalised over the candidates). `before` keeps only tickets filed before that
time (undated ones drop out); `project` only that project's. The BM25 statistics are the whole index's (the
tracker as it is now), unlike evaluation's time-aware scores, which rebuild them per query.

Only what the finished run's manifest vouches for is read (the model, the index, retrieval.json), and an
index whose vectors were made by another model than the run's is refused. Exact search: every query is
scored against every candidate, which stays fast to about a million tickets (bench/results/index-suggest.md);
beyond that, load the Parquet table into a vector engine (docs/outputs.md: "The ticket index").
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from job.config import JobConfig
from job.errors import InputError, RunStateError
from job.evaluation.evaluate import created_timestamps
from job.retrieval.fusion import Fusion
from job.retrieval.index import INDEX, INDEX_JSON, read_parts
from job.retrieval.lexical import SavedLexicalIndex
from job.retrieval.spec import RETRIEVAL_FILE, read_fusion
from job.runs.artifacts import RunDir, check_run_id
from job.storage import open_store

MAX_K = 1000


@dataclass(frozen=True)
class Suggestion:
    id: str
    project: str | None
    created: str | None
    hybrid: float
    dense: float
    lexical: float


class TicketIndex:
    """A run's index in memory: its vectors, its keyword index, its model and fusion (see module
    docstring)."""

    def __init__(
        self, run_id: str, folder: Path, model: Any, fusion: Fusion, lexical: SavedLexicalIndex, template: str
    ) -> None:
        parts = sorted((folder / INDEX).glob("part-*.parquet"))
        rows = read_parts(parts)
        order = json.loads((folder / INDEX / "lexical" / "ids.json").read_text())
        if sorted(order) != sorted(rows.ids) or len(order) != lexical.rows:
            raise RunStateError(f"run {run_id}: the index's vectors and its keyword index hold other tickets")
        self.run_id, self.model, self.fusion, self.lexical, self.template = (
            run_id,
            model,
            fusion,
            lexical,
            template,
        )
        self.ids, self.projects, self.created = rows.ids, rows.projects, rows.created
        self.vectors = rows.vectors
        position = {tid: n for n, tid in enumerate(order)}
        self._lexical_row = np.array(
            [position[t] for t in self.ids], dtype=np.int64
        )  # vector row -> BM25 row
        stamps = created_timestamps(self.ids, dict(zip(self.ids, self.created, strict=True)))
        self.timestamps = stamps if stamps is not None else np.full(len(self.ids), np.nan)

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, title: str, description: str) -> str:
        """A new ticket's text as the run's tickets were made (data.text_template)."""
        return self.template.format(
            id="", title=title, description=description, category="", project=""
        ).strip()

    def suggest(
        self, text: str, k: int = 10, before: str | None = None, project: str | None = None
    ) -> list[Suggestion]:
        from job.embedding.model import encode
        from job.log import get_logger

        check_query(text, k)
        mask = self._candidates(before, project)
        if not mask.any():
            return []
        query = encode(self.model, [text], 1, get_logger(step="suggest"), "encode the query")[0]
        dense = self.vectors @ query
        lexical = self.lexical.scores(self.lexical.query_ids(text))[self._lexical_row]
        hybrid = self.fusion(dense[None, :], lexical[None, :], mask[None, :])[0]
        hybrid = np.where(mask, hybrid, -np.inf)
        top = top_k(hybrid, min(k, int(mask.sum())))
        return [
            Suggestion(
                self.ids[i],
                self.projects[i],
                self.created[i],
                round(float(hybrid[i]), 6),
                round(float(dense[i]), 6),
                round(float(lexical[i]), 6),
            )
            for i in top
        ]

    def _candidates(self, before: str | None, project: str | None) -> np.ndarray:
        mask = np.ones(len(self.ids), dtype=bool)
        if before is not None:
            mask &= np.nan_to_num(self.timestamps, nan=np.inf) < parse_time(before)
        if project is not None:
            mask &= np.array([p == project for p in self.projects], dtype=bool)
        return mask


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The rows of the k highest scores, best first, ties by row: a partial sort (O(n)), since a full sort
    of a million candidates costs more than scoring them."""
    if k < len(scores):
        chosen = np.argpartition(-scores, k - 1)[:k]
        cut = scores[chosen].min()
        chosen = np.flatnonzero(scores >= cut)  # every candidate tied at the cut, so ties resolve by row
    else:
        chosen = np.arange(len(scores))
    return chosen[np.lexsort((chosen, -scores[chosen]))][:k]


def check_query(text: str, k: int) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the query text is not UTF-8") from None
    if not text.strip():
        raise InputError("the query has no text: expected --text, or --title and/or --description")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"-k must be a whole number in [1, {MAX_K}]")


def parse_time(value: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (the value itself is never echoed: a user typed it)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            "--before: expected an ISO 8601 date or time such as 2018-01-01 or 2013-10-21T18:39:02+00:00"
        ) from None
    return parsed.timestamp()


def promoted_run_id(cfg: JobConfig) -> str:
    from job.fleet.history import promoted_runs

    root = open_store(cfg.output.uri.rstrip("/"), cfg.storage)
    run_id, _ = promoted_runs(root, cfg.promote.pointer)
    if run_id is None:
        raise RunStateError(f"no run is promoted under {root.uri}: give --run-id")
    return run_id


def open_index(cfg: JobConfig, run_id: str | None = None, work_dir: Path | None = None) -> TicketIndex:
    """Load a finished run's index (the promoted run's without `run_id`) into `work_dir` (a temporary folder
    by default), checked against the run's manifest and its model."""
    from job.embedding.model import load_model

    run_id = check_run_id(run_id or promoted_run_id(cfg))
    run = RunDir(open_store(cfg.output.uri.rstrip("/") + "/" + run_id, cfg.storage), run_id)
    purpose = f"cannot suggest from run {run_id}"
    listed = run.manifest_records(purpose)
    if INDEX_JSON not in listed:
        raise RunStateError(f"{purpose}: it has no index (made before the index step existed?)")
    folder = Path(work_dir or tempfile.mkdtemp(prefix="finetune-suggest-"))
    for prefix in ("model", INDEX):
        run.download_listed(prefix, folder / prefix, purpose)
    spec = json.loads(run.store.read_bytes(RETRIEVAL_FILE)) if RETRIEVAL_FILE in listed else None
    if spec is None:
        raise RunStateError(f"{purpose}: it has no {RETRIEVAL_FILE}")
    settings, fusion = read_fusion(spec, f"{run.uri}/{RETRIEVAL_FILE}")
    described = json.loads((folder / INDEX_JSON).read_text())
    weights = sorted(
        r.sha256 for p, r in listed.items() if p.startswith("model/") and p.endswith(".safetensors")
    )
    if described.get("model_sha256") != ",".join(weights):
        raise RunStateError(
            f"{purpose}: its index was made by another model than the run's model/ "
            "(index/index.json model_sha256); rebuild it with `finetune-job index --force`"
        )
    dense = spec.get("dense") or {}
    model = load_model(str(folder / "model"), int(dense.get("max_seq_length", 256)))
    return TicketIndex(
        run_id,
        folder,
        model,
        fusion,
        SavedLexicalIndex(folder / INDEX / "lexical", settings),
        str(dense.get("text_template", "{title}\n{description}")),
    )


def suggestions_json(found: TicketIndex, suggestions: list[Suggestion], k: int) -> dict[str, Any]:
    return {
        "run_id": found.run_id,
        "k": k,
        "fusion": {"method": found.fusion.method, "weight": found.fusion.weight},
        "suggestions": [asdict(s) for s in suggestions],
    }
