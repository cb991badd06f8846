"""Build what training and evaluation learn from, per split: scored pairs and retrieval triplets.

Scored pairs are (ticket, ticket, target similarity): link positives scored per relation,
augmented copies, and negatives. Triplets are (anchor, positive, hard negative) for a ranking
loss: both directions of each link of `pairs.triplet_relations` (duplicates and clones), and
optionally of `pairs.related_relations` (a second, weaker ranking objective). With
`pairs.title_body`, every train ticket's title and description are a third objective's pair.

Negatives come from a mix of strategies (`pairs.negative_mix`: mined by the base model, bm25
by keywords, category, random, each one function below). Every negative obeys the component
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
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np

from job.config import PairsConfig, TrainConfig
from job.data import Corpus, Link, Ticket
from job.losses import LOSSES
from job.neighbors import top_k
from job.retrieval.lexical import LexicalIndex, LexicalSettings
from job.split import Split

T = TypeVar("T")
MAX_DRAWS = 50  # attempts to find a valid negative partner before falling back
# When a strategy finds no partner, the next one is tried (and the fallback counted).
FALLBACK = {"mined": "category", "bm25": "category", "category": "random", "random": None}
# The strategies that find hard negatives; triplets draw theirs from these, in the mix's proportions.
HARD_STRATEGIES = ("mined", "bm25")


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
    """Draws negative partners for anchors of one split, by strategy, obeying the component rule."""

    def __init__(self, ids: list[str], tickets: dict[str, Ticket], split: Split, linked: set[tuple[str, str]],
                 rng: random.Random, mined: dict[str, dict[str, list[str]]] | None = None) -> None:
        self.ids, self.tickets, self.split, self.linked, self.rng = ids, tickets, split, linked, rng
        self.mined = mined or {}  # per hard strategy: each anchor's candidates, best first
        self.by_category: dict[str, list[str]] = defaultdict(list)
        for tid in ids:
            if tickets[tid].category:
                self.by_category[tickets[tid].category or ""].append(tid)
        self.taken: set[tuple[str, str]] = set()
        # A split that is one component has no unlinked partner in another component.
        self.multi_component = len({split.component[t] for t in ids}) > 1
        self.strategies: dict[str, Callable[[str], str | None]] = {
            "mined": lambda anchor: self._hard("mined", anchor), "bm25": lambda anchor: self._hard("bm25", anchor),
            "category": self._category, "random": self._random}

    def allowed(self, anchor: str, other: str) -> bool:
        """The component rule, plus: each (anchor, other) pair is used once."""
        if other == anchor:
            return False
        key = (min(anchor, other), max(anchor, other))
        if key in self.taken or key in self.linked:
            return False
        return not self.multi_component or self.split.component[anchor] != self.split.component[other]

    def draw(self, anchor: str, strategy: str, stats: PairStats) -> tuple[str, str] | None:
        """(partner, strategy that found it), falling back along FALLBACK when one finds nothing."""
        current: str | None = strategy
        while current is not None:
            other = self.strategies[current](anchor)
            if other is not None:
                self.taken.add((min(anchor, other), max(anchor, other)))
                return other, current
            following = FALLBACK[current]
            stats.fallbacks[f"{current}->{following or 'none'}"] += 1
            current = following
        return None

    def _hard(self, strategy: str, anchor: str) -> str | None:
        candidates = self.mined.get(strategy, {}).get(anchor, [])
        while candidates:
            other = candidates.pop(0)
            if self.allowed(anchor, other):
                return other
        return None

    def _category(self, anchor: str) -> str | None:
        group = self.by_category.get(self.tickets[anchor].category or "", [])
        if len(group) < 2:  # no category, or a category of one: nothing hard to draw from
            return None
        return self._draw_from(anchor, group)

    def _random(self, anchor: str) -> str | None:
        return self._draw_from(anchor, self.ids)

    def _draw_from(self, anchor: str, pool: list[str]) -> str | None:
        for _ in range(MAX_DRAWS):
            other = pool[self.rng.randrange(len(pool))]
            if self.allowed(anchor, other):
                return other
        return None


def positives_for(links: list[Link], scores: dict[str, float]) -> list[Pair]:
    return [Pair(link.source, link.target, scores.get(link.relation, 0.5), "positive", link.relation) for link in links]


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
    return _train_rows(ids, positives, linked, corpus, split, cfg, rng, embed, budget or Budget.unlimited(), stats,
                       lexical or LexicalSettings())


def _train_rows(ids: list[str], positives: list[Pair], linked: set[tuple[str, str]], corpus: Corpus, split: Split,
                cfg: PairsConfig, rng: random.Random, embed: Embedder | None, budget: Budget,
                stats: PairStats, lexical: LexicalSettings) -> SplitPairs:
    """Choose the rows the budget keeps first, then mine negatives for those anchors only."""
    kept_triplets = _sample(_both_ways(positives, cfg.triplet_relations), budget.triplets, rng)
    kept_related = _sample(_both_ways(positives, cfg.related_relations), budget.related, rng) if cfg.related_relations else []
    rows_per_positive = 1 + cfg.negatives_per_positive + cfg.augment_per_positive
    pair_cap = None if budget.pairs is None else math.ceil(budget.pairs / rows_per_positive)
    kept_positives = _sample(positives, pair_cap, rng)
    mix = cfg.negative_mix if cfg.mine_hard_negatives and embed is not None else _without_mining(cfg.negative_mix)
    mined: dict[str, dict[str, list[str]]] = {}
    anchors = sorted({a for a, _, _ in kept_triplets + kept_related}
                     | ({p.a for p in kept_positives} if mix.get("mined") or mix.get("bm25") else set()))
    dense = cfg.mine_hard_negatives and embed is not None
    if anchors and (dense or mix.get("bm25")):
        pool = mining_pool(anchors, positives, ids, cfg.mining_pool_size, rng)
        searched = MiningPool.build(pool, anchors, positives, corpus.tickets, cfg, embed if dense else None, stats)
        stats.mining["split_tickets"] = len(ids)
        if dense:
            mined["mined"] = mine_hard_negatives(anchors, searched, split, cfg)
        if mix.get("bm25"):
            mined["bm25"] = mine_lexical_negatives(anchors, searched, corpus.tickets, split, cfg, lexical)
    sampler = NegativeSampler(ids, corpus.tickets, split, linked, rng, mined)
    triplets = _triplets(kept_triplets, "duplicate", sampler, mix, rng, stats)
    triplets += _triplets(kept_related, "related", sampler, mix, rng, stats)
    pairs = kept_positives + _augmented(kept_positives, corpus.tickets, cfg, rng)
    pairs += _negatives(kept_positives, sampler, mix, cfg, stats)
    pairs = _sample(pairs, budget.pairs, rng)
    title_body = _sample(title_body_rows(ids, corpus.tickets), budget.title_body, rng) if cfg.title_body else []
    stats.counts.update(p.kind for p in pairs)
    stats.counts.update(f"triplet:{t.negative_kind}" for t in triplets if t.objective == "duplicate")
    stats.counts.update(f"related:{t.negative_kind}" for t in triplets if t.objective == "related")
    if title_body:
        stats.counts["title_body"] = len(title_body)
    return SplitPairs(pairs, triplets, stats, title_body)


def _both_ways(positives: list[Pair], relations: list[str]) -> list[tuple[str, str, str]]:
    """(anchor, positive, relation) for both directions of each link of `relations`: a ticket should find the
    other whichever of the two was filed as the link's source."""
    directed = [(p.a, p.b, p.relation or "") for p in positives if p.relation in relations]
    return directed + [(b, a, relation) for a, b, relation in directed]


def _triplets(kept: list[tuple[str, str, str]], objective: str, sampler: NegativeSampler, mix: dict[str, float],
              rng: random.Random, stats: PairStats) -> list[Triplet]:
    """A triplet per kept (anchor, positive): its negative from the hard strategies, in the mix's proportions."""
    plan = _hard_plan(len(kept), mix, sampler, rng)
    out = []
    for (anchor, positive, relation), strategy in zip(kept, plan, strict=True):
        drawn = sampler.draw(anchor, strategy, stats)
        if drawn is not None:
            out.append(Triplet(anchor, positive, drawn[0], relation, drawn[1], objective))
    return out


def _hard_plan(n: int, mix: dict[str, float], sampler: NegativeSampler, rng: random.Random) -> list[str]:
    """Which hard strategy draws each of `n` negatives (category when none mined); shuffled when there are
    several, so neither takes the first links."""
    hard = {name: mix[name] for name in HARD_STRATEGIES if mix.get(name) and name in sampler.mined}
    if not hard:
        return ["category"] * n
    plan = allocate(n, hard)
    if len(hard) > 1:
        rng.shuffle(plan)
    return plan


def title_body_rows(ids: list[str], tickets: dict[str, Ticket]) -> list[TitleBody]:
    """Every ticket of the split with both a title and a description, linked or not."""
    return [TitleBody(t, tickets[t].title, tickets[t].description) for t in ids
            if tickets[t].title and tickets[t].description]


def _sample(items: list[T], cap: int | None, rng: random.Random) -> list[T]:
    """Up to `cap` items drawn with the seeded generator (not the first N), in their original order."""
    if cap is None or len(items) <= cap:
        return list(items)
    keep = sorted(rng.sample(range(len(items)), cap))
    return [items[i] for i in keep]


def _without_mining(mix: dict[str, float], strategies: tuple[str, ...] = ("mined",)) -> dict[str, float]:
    """Without a base model to mine with, the mined share goes to same-category negatives."""
    moved = dict(mix)
    for name in strategies:
        weight = moved.pop(name, 0.0)
        if weight:
            moved["category"] = moved.get("category", 0.0) + weight
    return moved


def _evaluation_mix(mix: dict[str, float]) -> dict[str, float]:
    """Val and test negatives are never mined (by the model or by keywords), so every recipe is scored on the
    same kind of pairs; the hard shares go to same-category negatives."""
    return _without_mining(mix, HARD_STRATEGIES)


def _augmented(positives: list[Pair], tickets: dict[str, Ticket], cfg: PairsConfig, rng: random.Random) -> list[Pair]:
    out = []
    for pair in positives:
        original = tickets[pair.b].text
        for _ in range(cfg.augment_per_positive):
            text = augment_text(original, rng, cfg.word_drop_prob)
            if text != original:
                out.append(Pair(pair.a, pair.b, pair.score, "augmented", pair.relation, text))
    return out


def _negatives(positives: list[Pair], sampler: NegativeSampler, mix: dict[str, float], cfg: PairsConfig,
               stats: PairStats) -> list[Pair]:
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


def mining_pool(anchors: list[str], positives: list[Pair], ids: list[str], size: int, rng: random.Random) -> list[str]:
    """The tickets mining ranks against: the kept anchors and their positives, filled up with a
    seeded sample of the split to `size` (encoding the whole split costs more than it teaches)."""
    wanted = set(anchors)
    pool = set(anchors) | {p.b for p in positives if p.a in wanted} | {p.a for p in positives if p.b in wanted}
    rest = sorted(set(ids) - pool)
    pool |= set(rng.sample(rest, min(len(rest), max(0, size - len(pool)))))
    return sorted(pool)


@dataclass
class MiningPool:
    """The tickets mining searches, their base-model vectors (when it mines with the model) and, per anchor,
    the ceiling a negative's similarity must stay under (its least similar positive less `mining_margin`)."""

    ids: list[str]
    vectors: np.ndarray | None
    ceiling: dict[str, float]

    def __post_init__(self) -> None:
        self.index = {tid: i for i, tid in enumerate(self.ids)}

    @classmethod
    def build(cls, pool: list[str], anchors: list[str], positives: list[Pair], tickets: dict[str, Ticket],
              cfg: PairsConfig, embed: Embedder | None, stats: PairStats) -> MiningPool:
        stats.mining = {"anchors": len(anchors), "tickets_encoded": 0, "pool_tickets": len(pool)}
        if embed is None:
            return cls(pool, None, {})
        vectors = embed([tickets[t].text for t in pool])
        stats.mining["tickets_encoded"] = len(pool)
        index = {tid: i for i, tid in enumerate(pool)}
        floor: dict[str, float] = {}
        for p in positives:
            for a, b in ((p.a, p.b), (p.b, p.a)):
                if a in index and b in index:
                    floor[a] = min(floor.get(a, 1.0), float(vectors[index[a]] @ vectors[index[b]]))
        return cls(pool, vectors, {a: floor.get(a, 1.0) - cfg.mining_margin for a in anchors})

    def under_ceiling(self, anchor: str, other: str) -> bool:
        """Less similar to the anchor (base model) than its positives by the margin; True without a model."""
        if self.vectors is None:
            return True
        similarity = float(self.vectors[self.index[anchor]] @ self.vectors[self.index[other]])
        return similarity < self.ceiling.get(anchor, 1.0)


def mine_hard_negatives(anchors: list[str], pool: MiningPool, split: Split, cfg: PairsConfig) -> dict[str, list[str]]:
    """For each anchor: its nearest tickets (base model) in the mining pool and in other components, under its
    ceiling (guards against unlabelled duplicates), best first."""
    assert pool.vectors is not None
    neighbours, sims = top_k(pool.vectors[[pool.index[a] for a in anchors]], pool.vectors, cfg.mining_top_k + 1)
    mined: dict[str, list[str]] = {}
    for row, anchor in enumerate(anchors):
        comp, ceiling = split.component[anchor], pool.ceiling.get(anchor, 1.0)
        mined[anchor] = [pool.ids[j] for j, s in zip(neighbours[row], sims[row], strict=True)
                         if split.component[pool.ids[j]] != comp and s < ceiling]
    return mined


def mine_lexical_negatives(anchors: list[str], pool: MiningPool, tickets: dict[str, Ticket], split: Split,
                           cfg: PairsConfig, lexical: LexicalSettings) -> dict[str, list[str]]:
    """For each anchor: the pool tickets BM25 ranks highest for its text, in other components, best first:
    what a keyword search would suggest though nobody linked it. Where the base model mined too, the same
    ceiling applies, so a near-duplicate nobody linked is not taught as different."""
    index = LexicalIndex([tickets[t].text for t in pool.ids], lexical)
    mined: dict[str, list[str]] = {}
    for anchor in anchors:
        scores = index.scores(index.query_ids(tickets[anchor].text))
        comp = split.component[anchor]
        found: list[str] = []
        for j in np.argsort(-scores, kind="stable"):
            other = pool.ids[int(j)]
            if scores[j] <= 0 or len(found) >= cfg.mining_top_k:
                break
            if split.component[other] != comp and pool.under_ceiling(anchor, other):
                found.append(other)
        mined[anchor] = found
    return mined
