"""Build scored text pairs per split: positives, augmented positives, and negatives.

Positives come from links (score per relation) or from given pairs. Negatives are random,
same-category ("hard"), or mined with the base model (nearest tickets in another component,
with a margin below the positive's similarity so near-duplicates nobody linked are not
taught as negatives). Everything is drawn from one seeded generator: same seed, same pairs.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from job.config import PairsConfig
from job.data import Corpus, Link, Ticket
from job.neighbors import top_k
from job.split import Split

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


@dataclass
class PairStats:
    counts: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)


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


class _NegativeSampler:
    """Draws unlinked partners for an anchor from its split, by kind, with guards for tiny groups."""

    def __init__(self, ids: list[str], tickets: dict[str, Ticket], split: Split, rng: random.Random) -> None:
        self.ids, self.split, self.rng = ids, split, rng
        self.by_category: dict[str, list[str]] = defaultdict(list)
        for tid in ids:
            category = tickets[tid].category
            if category:
                self.by_category[category].append(tid)
        self.tickets = tickets
        self.taken: set[tuple[str, str]] = set()
        # A split that is one component has no unlinked partner in another component.
        self.multi_component = len({split.component[t] for t in ids}) > 1

    def _ok(self, anchor: str, other: str, linked: set[tuple[str, str]]) -> bool:
        if other == anchor:
            return False
        key = (min(anchor, other), max(anchor, other))
        if key in self.taken or key in linked:
            return False
        return not self.multi_component or self.split.component[anchor] != self.split.component[other]

    def draw(self, anchor: str, kind: str, linked: set[tuple[str, str]], stats: PairStats) -> str | None:
        pool = self.ids
        if kind == "category":
            category = self.tickets[anchor].category
            group = self.by_category.get(category or "", [])
            if len(group) < 2:  # no category, or a category of one: nothing hard to draw from
                stats.fallbacks["category->random"] += 1
                kind, pool = "random", self.ids
            else:
                pool = group
        for _ in range(MAX_DRAWS):
            other = pool[self.rng.randrange(len(pool))]
            if self._ok(anchor, other, linked):
                self.taken.add((min(anchor, other), max(anchor, other)))
                return other
        if kind == "category":
            stats.fallbacks["category->random"] += 1
            return self.draw_random(anchor, linked)
        stats.fallbacks["no-partner"] += 1
        return None

    def draw_random(self, anchor: str, linked: set[tuple[str, str]]) -> str | None:
        for _ in range(MAX_DRAWS):
            other = self.ids[self.rng.randrange(len(self.ids))]
            if self._ok(anchor, other, linked):
                self.taken.add((min(anchor, other), max(anchor, other)))
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
) -> tuple[list[Pair], PairStats]:
    """All pairs of one split. Augmentation and mining apply to `train` only, so the
    evaluation splits measure the real task and do not depend on the base model."""
    ids = split.members[name]
    members = set(ids)
    stats = PairStats()
    if corpus.scored_pairs is not None:
        given = [Pair(p.a, p.b, p.score, "given") for p in corpus.scored_pairs if p.a in members]
        positives = [p for p in given if p.score >= 0.5]
        pairs = list(given)
    else:
        links = [link for link in corpus.links if link.source in members]
        positives = positives_for(links, cfg.relation_scores)
        pairs = list(positives)
    linked = {(min(p.a, p.b), max(p.a, p.b)) for p in pairs}
    if name == "train":
        pairs += _augmented(positives, corpus.tickets, cfg, rng)
    if corpus.scored_pairs is None:
        pairs += _negatives(name, positives, corpus, split, cfg, rng, linked, stats, embed)
    stats.counts.update(p.kind for p in pairs)
    return pairs, stats


def _augmented(positives: list[Pair], tickets: dict[str, Ticket], cfg: PairsConfig, rng: random.Random) -> list[Pair]:
    out = []
    for pair in positives:
        original = tickets[pair.b].text
        for _ in range(cfg.augment_per_positive):
            text = augment_text(original, rng, cfg.word_drop_prob)
            if text != original:
                out.append(Pair(pair.a, pair.b, pair.score, "augmented", pair.relation, text))
    return out


def _negatives(name: str, positives: list[Pair], corpus: Corpus, split: Split, cfg: PairsConfig,
               rng: random.Random, linked: set[tuple[str, str]], stats: PairStats,
               embed: Embedder | None) -> list[Pair]:
    ids = split.members[name]
    if len(ids) < 2 or cfg.negatives_per_positive == 0:
        return []
    sampler = _NegativeSampler(ids, corpus.tickets, split, rng)
    mined: dict[str, list[str]] = {}
    if name == "train" and cfg.mine_hard_negatives and embed is not None and cfg.hard_negative_share > 0:
        mined = mine_hard_negatives(positives, ids, corpus.tickets, split, cfg, embed)
    out: list[Pair] = []
    for pair in positives:
        n_hard = round(cfg.negatives_per_positive * cfg.hard_negative_share)
        kinds = ["random"] * (cfg.negatives_per_positive - n_hard)
        for i in range(n_hard):
            kinds.append("mined" if mined and i % 2 == 0 else "category")
        for kind in kinds:
            other = _mined_partner(pair.a, mined, sampler, linked) if kind == "mined" else None
            if kind == "mined" and other is None:
                stats.fallbacks["mined->category"] += 1
                kind = "category"
            if other is None:
                other = sampler.draw(pair.a, kind, linked, stats)
                if other is not None and kind == "category" and corpus.tickets[other].category != corpus.tickets[pair.a].category:
                    kind = "random"
            if other is not None:
                out.append(Pair(pair.a, other, 0.0, kind))
    return out


def _mined_partner(anchor: str, mined: dict[str, list[str]], sampler: _NegativeSampler,
                   linked: set[tuple[str, str]]) -> str | None:
    candidates = mined.get(anchor, [])
    while candidates:
        other = candidates.pop(0)
        if sampler._ok(anchor, other, linked):
            sampler.taken.add((min(anchor, other), max(anchor, other)))
            return other
    return None


def mine_hard_negatives(positives: list[Pair], ids: list[str], tickets: dict[str, Ticket], split: Split,
                        cfg: PairsConfig, embed: Embedder) -> dict[str, list[str]]:
    """For each anchor: its nearest tickets in other components, less similar than its least
    similar positive by at least `mining_margin` (guards against unlabelled duplicates)."""
    index = {tid: i for i, tid in enumerate(ids)}
    vectors = embed([tickets[t].text for t in ids])
    anchors = sorted({p.a for p in positives})
    floor: dict[str, float] = {}
    for p in positives:
        sim = float(vectors[index[p.a]] @ vectors[index[p.b]])
        floor[p.a] = min(floor.get(p.a, 1.0), sim)
    neighbours, sims = top_k(vectors[[index[a] for a in anchors]], vectors, cfg.mining_top_k + 1)
    mined: dict[str, list[str]] = {}
    for row, anchor in enumerate(anchors):
        comp = split.component[anchor]
        mined[anchor] = [
            ids[j] for j, s in zip(neighbours[row], sims[row], strict=True)
            if ids[j] != anchor and split.component[ids[j]] != comp and s < floor[anchor] - cfg.mining_margin
        ]
    return mined
