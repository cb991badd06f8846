"""Pairs: deterministic for a seed, negatives never linked or in the positive's component, guards."""

from __future__ import annotations

import random
import zlib

import numpy as np

from job.config import PairsConfig, SplitConfig
from job.data import Corpus, Link, Ticket
from job.pairs import augment_text, build_split_pairs
from job.split import split_by_components


def _corpus(n: int = 60) -> Corpus:
    rng = random.Random(0)
    tickets = {f"T-{i}": Ticket(f"T-{i}", f"ticket {i} about {'disk' if i % 3 else 'network'} failure number {i} words",
                                category=("disk" if i % 3 else None), created=f"2020-01-{1 + i % 28:02d}T00:00:00+00:00")
               for i in range(n)}
    links = [Link(f"T-{i}", f"T-{i + 1}", rng.choice(["duplicate", "causes", "relates"])) for i in range(0, n - 1, 3)]
    return Corpus(tickets, links, None, [])


def _hash_embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in embedder (bag of hashed words), enough to exercise mining rules."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, zlib.crc32(word.encode()) % 64] += 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _build(seed: int, cfg: PairsConfig | None = None):  # type: ignore[no-untyped-def]
    corpus = _corpus()
    split = split_by_components(sorted(corpus.tickets), [(k.source, k.target) for k in corpus.links], SplitConfig(), 3)
    pairs, stats = build_split_pairs("train", corpus, split, cfg or PairsConfig(), random.Random(seed), _hash_embed)
    return corpus, split, pairs, stats


def test_same_seed_same_pairs_and_other_seed_differs() -> None:
    assert _build(1)[2] == _build(1)[2]
    assert _build(1)[2] != _build(2)[2]


def test_negatives_are_unlinked_and_from_other_components() -> None:
    corpus, split, pairs, stats = _build(4)
    linked = {frozenset((k.source, k.target)) for k in corpus.links}
    negatives = [p for p in pairs if p.score == 0.0]
    assert negatives and stats.counts["positive"] > 0
    for pair in negatives:
        assert frozenset((pair.a, pair.b)) not in linked
        assert split.component[pair.a] != split.component[pair.b]
        assert split.lookup()[pair.b] == "train"


def test_relation_scores_and_augmentation_apply() -> None:
    corpus, _, pairs, stats = _build(4, PairsConfig(mining_top_k=50))
    by_relation = {p.relation: p.score for p in pairs if p.kind == "positive"}
    assert by_relation.get("duplicate", 1.0) == 1.0 and by_relation.get("causes", 0.7) == 0.7
    augmented = [p for p in pairs if p.kind == "augmented"]
    assert augmented and all(p.text_b and p.text_b != corpus.tickets[p.b].text for p in augmented)
    assert stats.counts["mined"] > 0  # mining ran with the embedder


def test_mined_negatives_respect_the_margin() -> None:
    corpus, split, pairs, _ = _build(4, PairsConfig(mining_top_k=50, mining_margin=0.05))
    vectors = dict(zip(sorted(split.members["train"]), _hash_embed([corpus.tickets[t].text for t in sorted(split.members["train"])]), strict=True))
    floor: dict[str, float] = {}
    for p in pairs:
        if p.kind == "positive":
            floor[p.a] = min(floor.get(p.a, 1.0), float(vectors[p.a] @ vectors[p.b]))
    mined = [p for p in pairs if p.kind == "mined"]
    assert mined
    assert all(float(vectors[p.a] @ vectors[p.b]) < floor[p.a] - 0.05 + 1e-6 for p in mined)


def test_tiny_or_missing_categories_fall_back_to_random_and_are_counted() -> None:
    cfg = PairsConfig(hard_negative_share=1.0, mine_hard_negatives=False)
    _, _, pairs, stats = _build(4, cfg)
    # Every third ticket has no category: its hard negatives must fall back, and say so.
    assert stats.fallbacks["category->random"] > 0
    assert stats.counts["category"] + stats.counts["random"] == sum(1 for p in pairs if p.score == 0.0)


def test_augment_text_keeps_short_texts_and_changes_long_ones() -> None:
    rng = random.Random(0)
    assert augment_text("two words", rng, 0.5) == "two words"
    text = "the disk volume crashes with an error after the upgrade"
    assert any(augment_text(text, rng, 0.3) != text for _ in range(5))
