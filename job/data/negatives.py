"""The negative strategies, one table entry each: where prepare looks for a ticket that is *not* the anchor's
problem (`pairs.negative_mix` weighs them).

A strategy only proposes candidates; job/data/pairs.py `NegativeSampler` keeps the rules every negative obeys
(never the anchor, never linked to it, never in its link component, each pair once) and walks `fallback` when
a strategy proposes nothing the rules allow. Two kinds:

- ranked (`rank`): before any draw, each train anchor's candidates are ranked against the mining pool, best
  first. These are the hard negatives: triplets draw theirs from the ranked strategies, and val and test never
  use them (their shares go to `category`), so every recipe is scored on the same kind of pairs.
- drawn (`pool`): a partner is drawn at random, with the seeded generator, from a pool per anchor.

Adding a strategy is its function here and one entry in NEGATIVE_STRATEGIES; config validates
`pairs.negative_mix` against the table. This module imports nothing that imports config (config imports it).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from job.retrieval.lexical import LexicalIndex, LexicalSettings
from job.retrieval.neighbors import top_k

Embed = Callable[[list[str]], np.ndarray]  # texts -> unit vectors (the base model)
STAND_IN = "category"  # takes the share of a strategy that cannot run (no base model; val and test)


@dataclass
class MiningPool:
    """The tickets ranked strategies search, their base-model vectors (None when the model does not mine) and,
    per anchor, the ceiling a negative's similarity must stay under (its least similar positive less
    `pairs.mining_margin`), so a near-duplicate nobody linked is not taught as different."""

    ids: list[str]
    vectors: np.ndarray | None
    ceiling: dict[str, float]

    def __post_init__(self) -> None:
        self.index = {tid: i for i, tid in enumerate(self.ids)}

    @classmethod
    def build(
        cls,
        pool: list[str],
        anchors: list[str],
        linked: Sequence[tuple[str, str]],
        text: Mapping[str, str],
        margin: float,
        embed: Embed | None,
    ) -> MiningPool:
        if embed is None:
            return cls(pool, None, {})
        vectors = embed([text[t] for t in pool])
        index = {tid: i for i, tid in enumerate(pool)}
        floor: dict[str, float] = {}
        for a, b in linked:
            for one, other in ((a, b), (b, a)):
                if one in index and other in index:
                    floor[one] = min(floor.get(one, 1.0), float(vectors[index[one]] @ vectors[index[other]]))
        return cls(pool, vectors, {a: floor.get(a, 1.0) - margin for a in anchors})

    def under_ceiling(self, anchor: str, other: str) -> bool:
        """Less similar to the anchor (base model) than its positives by the margin; True without a model."""
        if self.vectors is None:
            return True
        similarity = float(self.vectors[self.index[anchor]] @ self.vectors[self.index[other]])
        return similarity < self.ceiling.get(anchor, 1.0)


@dataclass(frozen=True)
class RankInputs:
    """What a ranked strategy sees: the anchors, the pool, each ticket's link component and text."""

    anchors: list[str]
    pool: MiningPool
    component: Mapping[str, int]
    text: Mapping[str, str]
    top_k: int
    lexical: LexicalSettings


@dataclass(frozen=True)
class DrawInputs:
    """What a drawn strategy sees: the split's tickets and their categories."""

    ids: list[str]
    category: Mapping[str, str | None]


Ranked = dict[str, list[str]]  # anchor -> candidates, best first
Pool = Callable[[str], Sequence[str]]  # anchor -> the tickets to draw its partner from


@dataclass(frozen=True)
class NegativeStrategy:
    """A table entry: a line for the configuration reference, the strategy tried when this one finds nothing,
    whether it needs the base model, and either `rank` (ranked) or `pool` (drawn)."""

    summary: str
    fallback: str | None
    needs_model: bool = False
    rank: Callable[[RankInputs], Ranked] | None = None
    pool: Callable[[DrawInputs], Pool] | None = None

    @property
    def ranked(self) -> bool:
        return self.rank is not None


def rank_by_model(inputs: RankInputs) -> Ranked:
    """Each anchor's nearest tickets by the base model, in other components, under its ceiling."""
    pool = inputs.pool
    assert pool.vectors is not None, "needs_model strategies are ranked only when the base model mines"
    queries = pool.vectors[[pool.index[a] for a in inputs.anchors]]
    neighbours, sims = top_k(queries, pool.vectors, inputs.top_k + 1)
    ranked: Ranked = {}
    for row, anchor in enumerate(inputs.anchors):
        comp, ceiling = inputs.component[anchor], pool.ceiling.get(anchor, 1.0)
        ranked[anchor] = [
            pool.ids[j]
            for j, s in zip(neighbours[row], sims[row], strict=True)
            if inputs.component[pool.ids[j]] != comp and s < ceiling
        ]
    return ranked


def rank_by_keywords(inputs: RankInputs) -> Ranked:
    """The pool tickets BM25 ranks highest for each anchor's text, in other components: what a keyword search
    would suggest though nobody linked it. Where the base model mines too, its ceiling applies."""
    pool = inputs.pool
    index = LexicalIndex([inputs.text[t] for t in pool.ids], inputs.lexical)
    ranked: Ranked = {}
    for anchor in inputs.anchors:
        scores = index.scores(index.query_ids(inputs.text[anchor]))
        comp = inputs.component[anchor]
        found: list[str] = []
        for j in np.argsort(-scores, kind="stable"):
            other = pool.ids[int(j)]
            if scores[j] <= 0 or len(found) >= inputs.top_k:
                break
            if inputs.component[other] != comp and pool.under_ceiling(anchor, other):
                found.append(other)
        ranked[anchor] = found
    return ranked


def same_category(inputs: DrawInputs) -> Pool:
    """The split's tickets of the anchor's category (none without a category or for a category of one)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for tid in inputs.ids:
        if inputs.category[tid]:
            groups[inputs.category[tid] or ""].append(tid)

    def pool(anchor: str) -> Sequence[str]:
        group = groups.get(inputs.category[anchor] or "", [])
        return group if len(group) >= 2 else ()

    return pool


def any_ticket(inputs: DrawInputs) -> Pool:
    return lambda _anchor: inputs.ids


NEGATIVE_STRATEGIES: dict[str, NegativeStrategy] = {
    "mined": NegativeStrategy("nearest by the base model", "category", needs_model=True, rank=rank_by_model),
    "bm25": NegativeStrategy("ranked high by keywords (BM25)", "category", rank=rank_by_keywords),
    "category": NegativeStrategy("a random ticket of the same category", "random", pool=same_category),
    "random": NegativeStrategy("a random ticket of the split", None, pool=any_ticket),
}


def describe_negatives() -> str:
    return "; ".join(
        f"{name}: {s.summary}" + (f" (else {s.fallback})" if s.fallback else "")
        for name, s in NEGATIVE_STRATEGIES.items()
    )


def without(mix: dict[str, float], cannot_run: Callable[[NegativeStrategy], bool]) -> dict[str, float]:
    """The mix with the share of every strategy that cannot run moved to STAND_IN."""
    moved = dict(mix)
    for name in list(moved):
        if name != STAND_IN and cannot_run(NEGATIVE_STRATEGIES[name]) and (weight := moved.pop(name)):
            moved[STAND_IN] = moved.get(STAND_IN, 0.0) + weight
    return moved


def draw_at_random(
    pool: Sequence[str], rng: random.Random, allowed: Callable[[str], bool], attempts: int
) -> str | None:
    """A partner drawn from `pool` that `allowed` accepts, in at most `attempts` seeded draws."""
    if not pool:
        return None
    for _ in range(attempts):
        other = pool[rng.randrange(len(pool))]
        if allowed(other):
            return other
    return None
