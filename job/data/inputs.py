"""The configured inputs read and parsed: tickets and links (JSONL, JSON, CSV, a Jira export) or given pairs.

What prepare reads and `validate-data` checks without running anything: one reading, so the two never
disagree on what a file holds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from job.config import JobConfig
from job.data.jira import jira_corpus
from job.data.records import Corpus, build_corpus, require_enough
from job.storage import read_input_files, read_uri


def load_corpus(cfg: JobConfig) -> Corpus:
    """Read and parse the configured inputs, applying data.on_error (InputError when it refuses)."""
    if cfg.data.format == "jira" and cfg.data.tickets:
        return jira_corpus(
            read_input_files(cfg.data.tickets, cfg.storage, ".json"), cfg.data, cfg.data.tickets
        )
    names = ("tickets", "links") if cfg.data.tickets else ("pairs", "relationship_pairs")
    raw = {
        name: (getattr(cfg.data, name), read_uri(getattr(cfg.data, name), cfg.storage))
        for name in names
        if getattr(cfg.data, name)
    }
    return build_corpus(raw, cfg.data)


def read_inputs(cfg: JobConfig) -> tuple[Corpus, dict[str, Any]]:
    """Load and validate the configured inputs; returns the corpus and a report of every file."""
    corpus = load_corpus(cfg)
    require_enough(corpus)
    report = {
        "files": [
            {
                "uri": r.name,
                "sha256": r.sha256,
                "rows": r.rows,
                "kept": r.kept,
                "skipped": r.skipped,
                "duplicates_dropped": r.duplicates_dropped,
            }
            for r in corpus.reports
        ],
        "tickets": len(corpus.tickets),
        "links": len(corpus.links),
        "links_per_relation": dict(Counter(link.relation for link in corpus.links)),
        "tickets_per_project": dict(Counter(t.project or "(none)" for t in corpus.tickets.values())),
        "created_range": _created_range(corpus),
        "given_pairs": None if corpus.scored_pairs is None else len(corpus.scored_pairs),
        "skipped_rows": [str(p) for p in corpus.problems],
    }
    if corpus.dropped:
        report["dropped"] = corpus.dropped
    return corpus, report


def _created_range(corpus: Corpus) -> dict[str, str] | None:
    """The first and last creation dates of the tickets (ISO strings sort by time within one format)."""
    dates = sorted(t.created for t in corpus.tickets.values() if t.created)
    return {"first": dates[0], "last": dates[-1]} if dates else None
