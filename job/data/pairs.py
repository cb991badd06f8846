"""Build what training and evaluation learn from, per split: scored pairs and retrieval triplets.

Scored pairs are (ticket, ticket, target similarity): link positives scored per relation,
augmented copies, and negatives. Triplets are (anchor, positive, hard negative) for a ranking
loss: both directions of each link of `pairs.triplet_relations` (duplicates and clones), and
optionally of `pairs.related_relations` (a second, weaker ranking objective). With
`pairs.title_body`, every train ticket's title and description are a third objective's pair.

Negatives come from a mix of strategies (`pairs.negative_mix`), each one entry of job/data/negatives.py
(mined by the base model, bm25 by keywords, category, random). Every negative obeys the component
rule: never the anchor, never a ticket linked to it, and never a ticket in its link component
(linked to it through others), so a near-duplicate nobody linked is not taught as "different".
Mined negatives (and keyword ones, when the base model mines too) must also be at least
`mining_margin` less similar to the anchor than its least similar positive.

Training pairs are capped by a budget (`train.max_pairs`), applied before mining so mining
encodes only the tickets the kept rows need. Everything is drawn from one seeded generator:
same seed, same pairs.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np

from job.config import PairsConfig, TrainConfig
from job.data.negatives import (
    NEGATIVE_STRATEGIES,
    STAND_IN,
    DrawInputs,
    MiningPool,
    RankInputs,
    draw_at_random,
    without,
)
from job.data.records import Corpus, Link, Ticket
from job.data.split import Split
from job.embedding.losses import LOSSES
from job.retrieval.lexical import LexicalSettings

T = TypeVar("T")
MAX_DRAWS = 50  # attempts to find a valid negative partner before falling back


@dataclass(frozen=True)
class Pair:
    """Two tickets and a similarity target. `text_b` is set only for augmented copies."""

    a: str
    b: str
    score: float
    kind: str  # positive | augmented | random | category | mined | given
    relation: str | None = None
    text_b: str | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Triplet:
    """An anchor, a ticket that is the same problem (or, for objective `related`, a related one), and one
    that is not (for a ranking loss)."""

    anchor: str
    positive: str
    negative: str
    relation: str
    negative_kind: str  # mined | bm25 | category | random
    objective: str = "duplicate"  # duplicate: pairs.triplet_relations; related: pairs.related_relations

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TitleBody:
    """One ticket's title and description: an in-domain pair that needs no link (pairs.title_body)."""

    ticket: str
    title: str
    body: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    """How many training rows each objective may use; None means all there are."""

    triplets: int | None
    pairs: int | None
    related: int | None = 0
    title_body: int | None = 0

    @classmethod
    def unlimited(cls) -> Budget:
        return cls(None, None, None, None)


def training_budget(train: TrainConfig, pairs: PairsConfig | None = None) -> Budget:
    """Split `train.max_pairs` between the objectives.

    The optional ranking objectives take their shares first (`pairs.related_share` when
    `pairs.related_relations` is set, `pairs.title_body_share` when `pairs.title_body` is on). Of the
    rest, `retrieval` spends `retrieval_share` on triplets (duplicates and their hard negatives teach
    ranking most) and the remainder on scored pairs; `mnrl` is triplets only; the pair losses are
    pairs only. Without a cap every objective takes all its rows.
    """
    cfg = pairs or PairsConfig()
    cap = train.max_pairs
    loss = LOSSES[train.loss]
    ranks, scores = loss.ranks_triplets, loss.pair_objective(train.pair_loss) is not None
    related_on, title_body_on = bool(cfg.related_relations), cfg.title_body
    if cap is None:
        extras = {"related": None if related_on else 0, "title_body": None if title_body_on else 0}
        return Budget(None if ranks else 0, None if scores else 0, **extras)
    related = round(cap * cfg.related_share) if related_on else 0
    title_body = round(cap * cfg.title_body_share) if title_body_on else 0
    rest = max(0, cap - related - title_body)
    if not scores:
        return Budget(rest if ranks else 0, 0, related, title_body)
    if not ranks:
        return Budget(0, rest, related, title_body)
    triplets = round(rest * train.retrieval_share)
    return Budget(triplets, rest - triplets, related, title_body)


@dataclass
class PairStats:
    counts: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    mining: dict[str, int] = field(default_factory=dict)  # tickets encoded, anchors mined


@dataclass
class SplitPairs:
    pairs: list[Pair]
    triplets: list[Triplet]
    stats: PairStats
    title_body: list[TitleBody] = field(default_factory=list)


Embedder = Callable[[list[str]], np.ndarray]


def augment_text(text: str, rng: random.Random, drop_prob: float) -> str:
    """Word drop or a swap of two neighbouring words: the same problem, worded slightly differently."""
    words = text.split()
    if len(words) < 3:
        return text
    if rng.random() < 0.5:
        kept = [w for w in words if rng.random() >= drop_prob]
        return " ".join(kept if len(kept) >= 2 else words[:2])
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def allocate(n: int, mix: dict[str, float]) -> list[str]:
    """`n` strategy names in proportion to `mix` (largest remainder, ties in mix order)."""
    total = sum(mix.values())
    if n == 0 or total <= 0:
        return []
    exact = {name: n * weight / total for name, weight in mix.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(mix, key=lambda name: -(exact[name] - counts[name]))
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return [name for name in mix for _ in range(counts[name])]


class NegativeSampler:
    """Draws negative partners for anchors of one split, by strategy (job/data/negatives.py), obeying the
    component rule. `ranked` holds, per ranked strategy that ran, each anchor's candidates, best first."""

    def __init__(
        self,
        ids: list[str],
        tickets: dict[str, Ticket],
        split: Split,
        linked: set[tuple[str, str]],
        rng: random.Random,
        ranked: dict[str, dict[str, list[str]]] | None = None,
    ) -> None:
        self.ids, self.split, self.linked, self.rng = ids, split, linked, rng
        self.ranked = ranked or {}
        inputs = DrawInputs(ids, {tid: tickets[tid].category for tid in ids})
        self.pools = {name: s.pool(inputs) for name, s in NEGATIVE_STRATEGIES.items() if s.pool is not None}
        self.taken: set[tuple[str, str]] = set()
        # A split that is one component has no unlinked partner in another component.
        self.multi_component = len({split.component[t] for t in ids}) > 1

    def allowed(self, anchor: str, other: str) -> bool:
        """The component rule, plus: each (anchor, other) pair is used once."""
        if other == anchor:
            return False
        key = (min(anchor, other), max(anchor, other))
        if key in self.taken or key in self.linked:
            return False
        return not self.multi_component or self.split.component[anchor] != self.split.component[other]

    def draw(self, anchor: str, strategy: str, stats: PairStats) -> tuple[str, str] | None:
        """(partner, strategy that found it), falling back along each strategy's `fallback` when one finds
        nothing."""
        current: str | None = strategy
        while current is not None:
            other = self._partner(current, anchor)
            if other is not None:
                self.taken.add((min(anchor, other), max(anchor, other)))
                return other, current
            following = NEGATIVE_STRATEGIES[current].fallback
            stats.fallbacks[f"{current}->{following or 'none'}"] += 1
            current = following
        return None

    def _partner(self, strategy: str, anchor: str) -> str | None:
        if strategy in self.pools:
            return draw_at_random(
                self.pools[strategy](anchor), self.rng, lambda other: self.allowed(anchor, other), MAX_DRAWS
            )
        candidates = self.ranked.get(strategy, {}).get(anchor, [])
        while candidates:  # consumed: a candidate the rules refused once is not offered again
            other = candidates.pop(0)
            if self.allowed(anchor, other):
                return other
        return None


def positives_for(links: list[Link], scores: dict[str, float]) -> list[Pair]:
    return [
        Pair(link.source, link.target, scores.get(link.relation, 0.5), "positive", link.relation)
        for link in links
    ]


def build_split_pairs(
    name: str,
    corpus: Corpus,
    split: Split,
    cfg: PairsConfig,
    rng: random.Random,
    embed: Embedder | None = None,
    budget: Budget | None = None,
    lexical: LexicalSettings | None = None,
) -> SplitPairs:
    """All pairs (and, for `train`, triplets) of one split. Augmentation, mining, triplets and
    the budget apply to `train` only, so the evaluation splits measure the real task and do
    not depend on the base model."""
    ids = split.members[name]
    members = set(ids)
    stats = PairStats()
    if corpus.scored_pairs is not None:  # given pairs: used as they are (sampled to the budget)
        given = [Pair(p.a, p.b, p.score, "given") for p in corpus.scored_pairs if p.a in members]
        pairs = _sample(given, budget.pairs if budget and name == "train" else None, rng)
        stats.counts.update(p.kind for p in pairs)
        return SplitPairs(pairs, [], stats)
    positives = positives_for([link for link in corpus.links if link.source in members], cfg.relation_scores)
    linked = {(min(p.a, p.b), max(p.a, p.b)) for p in positives}
    if name != "train":
        sampler = NegativeSampler(ids, corpus.tickets, split, linked, rng)
        pairs = positives + _negatives(positives, sampler, _evaluation_mix(cfg.negative_mix), cfg, stats)
        stats.counts.update(p.kind for p in pairs)
        return SplitPairs(pairs, [], stats)
    return _train_rows(
        ids,
        positives,
        linked,
        corpus,
        split,
        cfg,
        rng,
        embed,
        budget or Budget.unlimited(),
        stats,
        lexical or LexicalSettings(),
    )


def _train_rows(
    ids: list[str],
    positives: list[Pair],
    linked: set[tuple[str, str]],
    corpus: Corpus,
    split: Split,
    cfg: PairsConfig,
    rng: random.Random,
    embed: Embedder | None,
    budget: Budget,
    stats: PairStats,
    lexical: LexicalSettings,
) -> SplitPairs:
    """Choose the rows the budget keeps first, then mine negatives for those anchors only."""
    kept_triplets = _sample(_both_ways(positives, cfg.triplet_relations), budget.triplets, rng)
    kept_related = (
        _sample(_both_ways(positives, cfg.related_relations), budget.related, rng)
        if cfg.related_relations
        else []
    )
    rows_per_positive = 1 + cfg.negatives_per_positive + cfg.augment_per_positive
    pair_cap = None if budget.pairs is None else math.ceil(budget.pairs / rows_per_positive)
    kept_positives = _sample(positives, pair_cap, rng)
    model = embed if cfg.mine_hard_negatives else None
    mix = cfg.negative_mix if model is not None else without(cfg.negative_mix, lambda s: s.needs_model)
    to_rank = [name for name, weight in mix.items() if weight and NEGATIVE_STRATEGIES[name].ranked]
    anchors = sorted(
        {a for a, _, _ in kept_triplets + kept_related}
        | ({p.a for p in kept_positives} if to_rank else set())
    )
    ranked = _rank(to_rank, anchors, positives, ids, corpus.tickets, split, cfg, rng, model, stats, lexical)
    sampler = NegativeSampler(ids, corpus.tickets, split, linked, rng, ranked)
    triplets = _triplets(kept_triplets, "duplicate", sampler, mix, rng, stats)
    triplets += _triplets(kept_related, "related", sampler, mix, rng, stats)
    pairs = kept_positives + _augmented(kept_positives, corpus.tickets, cfg, rng)
    pairs += _negatives(kept_positives, sampler, mix, cfg, stats)
    pairs = _sample(pairs, budget.pairs, rng)
    title_body = (
        _sample(title_body_rows(ids, corpus.tickets), budget.title_body, rng) if cfg.title_body else []
    )
    stats.counts.update(p.kind for p in pairs)
    stats.counts.update(f"triplet:{t.negative_kind}" for t in triplets if t.objective == "duplicate")
    stats.counts.update(f"related:{t.negative_kind}" for t in triplets if t.objective == "related")
    if title_body:
        stats.counts["title_body"] = len(title_body)
    return SplitPairs(pairs, triplets, stats, title_body)


def _rank(
    strategies: list[str],
    anchors: list[str],
    positives: list[Pair],
    ids: list[str],
    tickets: dict[str, Ticket],
    split: Split,
    cfg: PairsConfig,
    rng: random.Random,
    model: Embedder | None,
    stats: PairStats,
    lexical: LexicalSettings,
) -> dict[str, dict[str, list[str]]]:
    """Each ranked strategy's candidates for the anchors, searched in one mining pool (encoded once, by the
    base model when it mines)."""
    if not anchors or not strategies:
        return {}
    pool_ids = mining_pool(anchors, positives, ids, cfg.mining_pool_size, rng)
    text = {tid: tickets[tid].text for tid in ids}
    pool = MiningPool.build(
        pool_ids, anchors, [(p.a, p.b) for p in positives], text, cfg.mining_margin, model
    )
    stats.mining = {
        "anchors": len(anchors),
        "tickets_encoded": 0 if model is None else len(pool_ids),
        "pool_tickets": len(pool_ids),
        "split_tickets": len(ids),
    }
    inputs = RankInputs(anchors, pool, split.component, text, cfg.mining_top_k, lexical)
    ranked: dict[str, dict[str, list[str]]] = {}
    for name in strategies:  # needs_model ones were moved out of the mix when there is no model
        if (rank := NEGATIVE_STRATEGIES[name].rank) is not None:
            ranked[name] = rank(inputs)
    return ranked


def _both_ways(positives: list[Pair], relations: list[str]) -> list[tuple[str, str, str]]:
    """(anchor, positive, relation) for both directions of each link of `relations`: a ticket should find the
    other whichever of the two was filed as the link's source."""
    directed = [(p.a, p.b, p.relation or "") for p in positives if p.relation in relations]
    return directed + [(b, a, relation) for a, b, relation in directed]


def _triplets(
    kept: list[tuple[str, str, str]],
    objective: str,
    sampler: NegativeSampler,
    mix: dict[str, float],
    rng: random.Random,
    stats: PairStats,
) -> list[Triplet]:
    """A triplet per kept (anchor, positive): its negative from the hard strategies, in the mix's
    proportions."""
    plan = _hard_plan(len(kept), mix, sampler, rng)
    out = []
    for (anchor, positive, relation), strategy in zip(kept, plan, strict=True):
        drawn = sampler.draw(anchor, strategy, stats)
        if drawn is not None:
            out.append(Triplet(anchor, positive, drawn[0], relation, drawn[1], objective))
    return out


def _hard_plan(n: int, mix: dict[str, float], sampler: NegativeSampler, rng: random.Random) -> list[str]:
    """Which ranked strategy draws each of `n` negatives (the stand-in when none ran); shuffled when there are
    several, so neither takes the first links."""
    hard = {name: weight for name, weight in mix.items() if weight and name in sampler.ranked}
    if not hard:
        return [STAND_IN] * n
    plan = allocate(n, hard)
    if len(hard) > 1:
        rng.shuffle(plan)
    return plan


def title_body_rows(ids: list[str], tickets: dict[str, Ticket]) -> list[TitleBody]:
    """Every ticket of the split with both a title and a description, linked or not."""
    return [
        TitleBody(t, tickets[t].title, tickets[t].description)
        for t in ids
        if tickets[t].title and tickets[t].description
    ]


def _sample(items: list[T], cap: int | None, rng: random.Random) -> list[T]:
    """Up to `cap` items drawn with the seeded generator (not the first N), in their original order."""
    if cap is None or len(items) <= cap:
        return list(items)
    keep = sorted(rng.sample(range(len(items)), cap))
    return [items[i] for i in keep]


def _evaluation_mix(mix: dict[str, float]) -> dict[str, float]:
    """Val and test negatives are never ranked (by the model or by keywords), so every recipe is scored on the
    same kind of pairs; the ranked shares go to the stand-in (same-category negatives)."""
    return without(mix, lambda s: s.ranked)


def _augmented(
    positives: list[Pair], tickets: dict[str, Ticket], cfg: PairsConfig, rng: random.Random
) -> list[Pair]:
    out = []
    for pair in positives:
        original = tickets[pair.b].text
        for _ in range(cfg.augment_per_positive):
            text = augment_text(original, rng, cfg.word_drop_prob)
            if text != original:
                out.append(Pair(pair.a, pair.b, pair.score, "augmented", pair.relation, text))
    return out


def _negatives(
    positives: list[Pair], sampler: NegativeSampler, mix: dict[str, float], cfg: PairsConfig, stats: PairStats
) -> list[Pair]:
    if len(sampler.ids) < 2:
        return []
    plan = allocate(cfg.negatives_per_positive, mix)
    out: list[Pair] = []
    for pair in positives:
        for strategy in plan:
            drawn = sampler.draw(pair.a, strategy, stats)
            if drawn is not None:
                out.append(Pair(pair.a, drawn[0], 0.0, drawn[1]))
    return out


def mining_pool(
    anchors: list[str], positives: list[Pair], ids: list[str], size: int, rng: random.Random
) -> list[str]:
    """The tickets mining ranks against: the kept anchors and their positives, filled up with a
    seeded sample of the split to `size` (encoding the whole split costs more than it teaches)."""
    wanted = set(anchors)
    pool = (
        set(anchors) | {p.b for p in positives if p.a in wanted} | {p.a for p in positives if p.b in wanted}
    )
    rest = sorted(set(ids) - pool)
    pool |= set(rng.sample(rest, min(len(rest), max(0, size - len(pool)))))
    return sorted(pool)
