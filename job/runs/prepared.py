"""What prepare hands the later steps (PreparedData), its files under prepared/ in the run, and reading
them back for a step that runs in another process."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from job.config import JobConfig
from job.data.pairs import Budget, Pair, TitleBody, Triplet
from job.data.records import Corpus, Link, Ticket
from job.data.split import SPLITS, Split
from job.errors import RunStateError
from job.evaluation.evaluate import HeldOut, RetrievalPool
from job.jsonio import from_jsonl, to_json, to_jsonl
from job.retrieval.spec import lexical_settings
from job.runs.context import RunContext
from job.runs.steps import PREPARE, Step
from job.storage import FileRecord

TICKETS_FILE = "prepared/tickets.jsonl"
LINKS_FILE = "prepared/links.jsonl"
SPLIT_FILE = "prepared/split.json"
TRIPLETS_FILE = "prepared/triplets_train.jsonl"
TITLE_BODY_FILE = "prepared/title_body_train.jsonl"


def pairs_file(split: str) -> str:
    return f"prepared/pairs_{split}.jsonl"


@dataclass
class PreparedData:
    tickets: dict[str, Ticket]
    links: list[Link]
    members: dict[str, list[str]]
    pairs: dict[str, list[Pair]]
    triplets: list[Triplet]  # train split only
    title_body: list[TitleBody] = field(default_factory=list)  # train split only

    def links_in(self, split: str) -> list[Link]:
        ids = set(self.members[split])
        return [link for link in self.links if link.source in ids]

    def held_out(self, cfg: JobConfig) -> HeldOut:
        """The val and test splits as pairs and as retrieval pools (each with its own BM25 index)."""
        pools = {
            name: RetrievalPool.build(
                ids,
                [self.tickets[t].text for t in ids],
                self.links,
                cfg.evaluate.retrieval_relations,
                {t: self.tickets[t].created for t in ids},
                lexical_settings(cfg),
            )
            for name in ("val", "test")
            for ids in [self.members[name]]
        }
        return HeldOut(
            self.pairs["val"],
            self.pairs["test"],
            pools["val"],
            pools["test"],
            cfg.evaluate.positive_threshold,
            cfg.evaluate.chunk_size,
        )


@dataclass
class PreparedRows:
    """The prepared tickets and links as written (each with its split): what drift profiles."""

    tickets: list[dict[str, Any]]
    links: list[dict[str, Any]]


def prepared_rows(corpus: Corpus, split: Split) -> PreparedRows:
    where = split.lookup()
    tickets = [
        {
            "id": t.id,
            "text": t.text,
            "category": t.category,
            "project": t.project,
            "created": t.created,
            "split": where[t.id],
        }
        for t in corpus.tickets.values()
    ]
    links = [
        {"source": k.source, "target": k.target, "relation": k.relation, "split": where[k.source]}
        for k in corpus.links
    ]
    return PreparedRows(tickets, links)


def write_prepared(ctx: RunContext, rows: PreparedRows, prepared: PreparedData) -> list[FileRecord]:
    store = ctx.run.store
    return [
        store.write_bytes(TICKETS_FILE, to_jsonl(rows.tickets)),
        store.write_bytes(LINKS_FILE, to_jsonl(rows.links)),
        store.write_bytes(SPLIT_FILE, to_json(prepared.members)),
        *[
            store.write_bytes(pairs_file(name), to_jsonl([p.to_json() for p in prepared.pairs[name]]))
            for name in SPLITS
        ],
        store.write_bytes(TRIPLETS_FILE, to_jsonl([t.to_json() for t in prepared.triplets])),
        store.write_bytes(TITLE_BODY_FILE, to_jsonl([r.to_json() for r in prepared.title_body])),
    ]


def load_prepared(ctx: RunContext, step: Step) -> PreparedData:
    """What prepare wrote, read back from the run's storage for `step`, each file checked against prepare's
    record (a file edited or truncated since stops `step` with exit 2, naming it)."""
    ctx.run.require(step)

    def rows(key: str) -> list[dict[str, Any]]:
        return _parsed(key, lambda: from_jsonl(ctx.run.taken_over(PREPARE, key)))

    tickets = {
        r["id"]: Ticket(r["id"], r["text"], r.get("category"), r.get("project"), r.get("created"))
        for r in rows(TICKETS_FILE)
    }
    links = [Link(r["source"], r["target"], r["relation"]) for r in rows(LINKS_FILE)]
    members = _parsed(SPLIT_FILE, lambda: json.loads(ctx.run.taken_over(PREPARE, SPLIT_FILE)))
    pairs = {name: [Pair(**r) for r in rows(pairs_file(name))] for name in SPLITS}
    triplets = [Triplet(**r) for r in rows(TRIPLETS_FILE)]
    title_body = [TitleBody(**r) for r in rows(TITLE_BODY_FILE)]
    return PreparedData(tickets, links, members, pairs, triplets, title_body)


def _parsed(key: str, read: Callable[[], Any]) -> Any:
    """`read()` of a prepared file; one that matches its record but does not parse was written by another
    version of the job (exit 2 naming it, never a traceback)."""
    try:
        return read()
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise RunStateError(
            f"{key} cannot be read back ({type(exc).__name__}); redo prepare with --force"
        ) from None


def budget_spent(
    cfg: JobConfig, budget: Budget, pairs: list[Pair], triplets: list[Triplet], title_body: list[TitleBody]
) -> dict[str, Any]:
    """What train.max_pairs allowed each objective, and what each got (steps/prepare.json: pairs.budget)."""
    related = sum(t.objective == "related" for t in triplets)
    return {
        "max_pairs": cfg.train.max_pairs,
        "loss": cfg.train.loss,
        "triplets_cap": budget.triplets,
        "triplets_spent": len(triplets) - related,
        "pairs_cap": budget.pairs,
        "pairs_spent": len(pairs),
        "related_cap": budget.related,
        "related_spent": related,
        "title_body_cap": budget.title_body,
        "title_body_spent": len(title_body),
    }
