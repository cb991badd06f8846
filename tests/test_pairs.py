"""Pairs and triplets: deterministic for a seed, negatives never linked or in the anchor's component,
the negative mix and the budget as configured, mining only for what the budget keeps."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from job.config import PairsConfig, SplitConfig, TrainConfig
from job.data.negatives import NEGATIVE_STRATEGIES, DrawInputs, NegativeStrategy, RankInputs
from job.data.pairs import (
    Budget,
    NegativeSampler,
    Pair,
    allocate,
    augment_text,
    build_split_pairs,
    training_budget,
)
from job.data.records import Corpus, Link, Ticket
from job.data.split import split_by_components
from job.embedding.losses import LOSSES


def _corpus(n: int = 60) -> Corpus:
    rng = random.Random(0)
    tickets = {
        f"T-{i}": Ticket(
            f"T-{i}",
            f"ticket {i} about {'disk' if i % 3 else 'network'} failure number {i} words",
            category=("disk" if i % 3 else None),
            created=f"2020-01-{1 + i % 28:02d}T00:00:00+00:00",
        )
        for i in range(n)
    }
    # Every other link points the other way, so some anchors have a category and some do not.
    links = [
        Link(
            *((f"T-{i}", f"T-{i + 1}") if i % 2 else (f"T-{i + 1}", f"T-{i}")),
            rng.choice(["duplicate", "causes", "relates"]),
        )
        for i in range(0, n - 1, 3)
    ]
    return Corpus(tickets, links, None, [])


def _hash_embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in embedder (bag of hashed words), enough to exercise mining rules."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, zlib.crc32(word.encode()) % 64] += 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _build(seed: int, cfg: PairsConfig | None = None, budget: Budget | None = None, embed=_hash_embed):  # type: ignore[no-untyped-def]
    corpus = _corpus()
    split = split_by_components(
        sorted(corpus.tickets), [(k.source, k.target) for k in corpus.links], SplitConfig(), 3
    )
    built = build_split_pairs(
        "train", corpus, split, cfg or PairsConfig(), random.Random(seed), embed, budget
    )
    return corpus, split, built.pairs, built.stats, built.triplets


def test_same_seed_same_pairs_and_other_seed_differs() -> None:
    assert _build(1)[2] == _build(1)[2]
    assert _build(1)[2] != _build(2)[2]


def test_negatives_are_unlinked_and_from_other_components() -> None:
    corpus, split, pairs, stats, _ = _build(4)
    linked = {frozenset((k.source, k.target)) for k in corpus.links}
    negatives = [p for p in pairs if p.score == 0.0]
    assert negatives and stats.counts["positive"] > 0
    for pair in negatives:
        assert frozenset((pair.a, pair.b)) not in linked
        assert split.component[pair.a] != split.component[pair.b]
        assert split.lookup()[pair.b] == "train"


def _sampler(components: list[list[str]], links: list[tuple[str, str]]) -> NegativeSampler:
    from job.data.split import Split

    ids = [t for component in components for t in component]
    tickets = {t: Ticket(t, f"text {t}") for t in ids}
    split = Split({"train": ids}, {t: n for n, component in enumerate(components) for t in component})
    linked = {(min(a, b), max(a, b)) for a, b in links}
    return NegativeSampler(ids, tickets, split, linked, random.Random(0))


def test_a_ticket_linked_to_the_anchor_through_others_is_never_its_negative() -> None:
    """The component rule alone: A-B and B-C are links, so C is in A's component though not linked to A."""
    sampler = _sampler([["A", "B", "C"], ["D", "E"]], [("A", "B"), ("B", "C"), ("D", "E")])
    assert not sampler.allowed("A", "C") and not sampler.allowed("C", "A")
    assert sampler.allowed("A", "D") and not sampler.allowed("A", "A")


def test_a_ticket_linked_to_the_anchor_is_never_its_negative_even_in_a_one_component_split() -> None:
    """The linked check alone: where the split is one component the component rule cannot choose, and an
    unlinked ticket of the same component is the only kind of negative left; a linked one never is."""
    sampler = _sampler([["A", "B", "C"]], [("A", "B"), ("B", "C")])
    assert not sampler.allowed("A", "B") and not sampler.allowed("B", "A") and not sampler.allowed("C", "B")
    assert sampler.allowed("A", "C")


def test_relation_scores_and_augmentation_apply() -> None:
    corpus, _, pairs, stats, _ = _build(4, PairsConfig(mining_top_k=50))
    by_relation = {p.relation: p.score for p in pairs if p.kind == "positive"}
    assert {"duplicate", "causes", "relates"} <= set(by_relation)  # the corpus has all three
    assert by_relation["duplicate"] == 1.0 and by_relation["causes"] == 0.7 and by_relation["relates"] == 0.6
    augmented = [p for p in pairs if p.kind == "augmented"]
    assert augmented and all(p.text_b and p.text_b != corpus.tickets[p.b].text for p in augmented)
    assert stats.counts["mined"] > 0  # mining ran with the embedder


def test_mined_negatives_respect_the_margin() -> None:
    corpus, split, pairs, _, triplets = _build(4, PairsConfig(mining_top_k=50, mining_margin=0.05))
    vectors = dict(
        zip(
            sorted(split.members["train"]),
            _hash_embed([corpus.tickets[t].text for t in sorted(split.members["train"])]),
            strict=True,
        )
    )
    floor: dict[str, float] = {}
    for p in pairs:
        if p.kind == "positive":
            floor[p.a] = min(floor.get(p.a, 1.0), float(vectors[p.a] @ vectors[p.b]))
    mined = [(p.a, p.b) for p in pairs if p.kind == "mined"]
    mined += [(t.anchor, t.negative) for t in triplets if t.negative_kind == "mined"]
    assert mined
    assert all(float(vectors[a] @ vectors[b]) < floor.get(a, 1.0) - 0.05 + 1e-6 for a, b in mined)


def test_tiny_or_missing_categories_fall_back_to_random_and_are_counted() -> None:
    cfg = PairsConfig(negative_mix={"category": 1.0}, mine_hard_negatives=False)
    corpus, _, pairs, stats, _ = _build(4, cfg)
    # Every third ticket has no category: its hard negatives must fall back, and say so.
    assert stats.fallbacks["category->random"] > 0
    negatives = [p for p in pairs if p.score == 0.0]
    assert stats.counts["category"] + stats.counts["random"] == len(negatives)
    category = [p for p in negatives if p.kind == "category"]
    assert category and all(corpus.tickets[p.b].category == corpus.tickets[p.a].category for p in category)


def test_negative_mix_sets_each_strategys_share() -> None:
    _, _, pairs, _, _ = _build(
        4, PairsConfig(negatives_per_positive=4, negative_mix={"random": 3.0, "mined": 1.0}, mining_top_k=50)
    )
    kinds = [p.kind for p in pairs if p.score == 0.0]
    assert "category" not in kinds or kinds.count("category") < kinds.count(
        "mined"
    )  # only as mined's fallback
    assert kinds.count("random") >= 3 * (kinds.count("mined") + kinds.count("category")) - 3


def test_allocate_follows_the_weights_with_largest_remainders() -> None:
    assert allocate(3, {"mined": 1, "category": 1, "random": 1}) == ["mined", "category", "random"]
    assert allocate(4, {"mined": 1, "random": 3}) == ["mined", "random", "random", "random"]
    assert sorted(allocate(2, {"mined": 1, "category": 1, "random": 1})) == ["category", "mined"]
    assert allocate(0, {"random": 1}) == []


def test_every_strategy_in_the_table_ranks_or_draws_and_falls_back_to_the_table() -> None:
    for name, strategy in NEGATIVE_STRATEGIES.items():
        assert (strategy.rank is None) != (strategy.pool is None), name
        seen, current = {name}, strategy.fallback
        while current is not None:  # a chain that ends, through entries of the table
            assert current in NEGATIVE_STRATEGIES and current not in seen, name
            seen.add(current)
            current = NEGATIVE_STRATEGIES[current].fallback


@pytest.mark.parametrize("kind", ["ranked", "drawn"])
def test_a_strategy_is_one_table_entry_and_its_function(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A new strategy added to job/data/negatives.py alone is a valid setting, and prepare draws with it (as a
    triplet negative too when it ranks), under the rules every negative obeys."""

    def highest_number(inputs: RankInputs) -> dict[str, list[str]]:
        by_number = sorted(inputs.pool.ids, key=lambda t: -int(t.split("-")[1]))
        return {
            a: [t for t in by_number if inputs.component[t] != inputs.component[a]] for a in inputs.anchors
        }

    def even_numbers(inputs: DrawInputs):  # type: ignore[no-untyped-def]
        return lambda _anchor: [t for t in inputs.ids if int(t.split("-")[1]) % 2 == 0]

    entry = (
        NegativeStrategy("highest ticket number", "random", rank=highest_number)
        if kind == "ranked"
        else NegativeStrategy("an even-numbered ticket", "random", pool=even_numbers)
    )
    monkeypatch.setitem(NEGATIVE_STRATEGIES, "toy", entry)
    corpus, split, pairs, stats, triplets = _build(4, PairsConfig(negative_mix={"toy": 1.0}))
    toy = [p for p in pairs if p.kind == "toy"] + [p for p in triplets if p.negative_kind == "toy"]
    assert toy and stats.counts["toy"] > 0
    linked = {frozenset((k.source, k.target)) for k in corpus.links}
    for a, b in [(p.a, p.b) for p in pairs if p.kind == "toy"] + [
        (t.anchor, t.negative) for t in triplets if t.negative_kind == "toy"
    ]:
        assert frozenset((a, b)) not in linked and split.component[a] != split.component[b]
        assert kind == "ranked" or int(b.split("-")[1]) % 2 == 0
    assert (kind == "ranked") == any(t.negative_kind == "toy" for t in triplets)


def test_triplets_pair_both_directions_of_duplicates_with_an_unlinked_negative() -> None:
    corpus, split, _, _, triplets = _build(4, PairsConfig(mining_top_k=50))
    train = set(split.members["train"])
    duplicates = {
        (k.source, k.target) for k in corpus.links if k.relation == "duplicate" and k.source in train
    }
    assert duplicates
    directed = {(t.anchor, t.positive) for t in triplets}
    assert directed == duplicates | {(b, a) for a, b in duplicates}
    linked = {frozenset((k.source, k.target)) for k in corpus.links}
    for t in triplets:
        assert t.relation == "duplicate" and frozenset((t.anchor, t.negative)) not in linked
        assert split.component[t.anchor] != split.component[t.negative]


@pytest.mark.parametrize(
    ("loss", "expected"), [("retrieval", Budget(40, 40)), ("mnrl", Budget(80, 0)), ("cosine", Budget(0, 80))]
)
def test_the_budget_goes_to_the_losss_objectives(loss: str, expected: Budget) -> None:
    assert training_budget(TrainConfig(loss=loss, max_pairs=80, retrieval_share=0.5)) == expected


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_in_the_table_is_a_setting_with_a_budget_rows_and_a_card(name: str) -> None:
    """A loss is one entry of job/embedding/losses.py: config accepts it, prepare spends the budget on
    exactly the rows it trains on, train makes pair rows only if it has a pair objective, and the card
    names it."""
    from job.config import JobConfig
    from job.embedding.train import examples_from_pairs
    from job.runs.card import _training
    from job.runs.records import RunResults

    loss = LOSSES[name]
    cfg = JobConfig.model_validate({"train": {"loss": name, "max_pairs": 80}})
    budget = training_budget(cfg.train)
    assert (budget.triplets > 0) == loss.ranks_triplets
    has_pairs = loss.pair_objective(cfg.train.pair_loss) is not None
    assert (budget.pairs > 0) == has_pairs and budget.triplets + budget.pairs == 80
    rows = examples_from_pairs(
        [Pair("a", "b", 0.7, "positive")], {"a": "x", "b": "y"}, name, cfg.train.pair_loss, 0.5
    )
    assert len(rows.sentence1) == int(has_pairs)
    assert loss.card(cfg.train.pair_loss) in _training(cfg, RunResults({}))


def test_an_unknown_loss_is_a_config_error_naming_the_table() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="expected one of mnrl, retrieval"):
        TrainConfig(loss="triplet_margin")


def test_budget_caps_rows_and_mining_encodes_only_what_the_kept_rows_need() -> None:
    encoded: list[int] = []

    def counting_embed(texts: list[str]) -> np.ndarray:
        encoded.append(len(texts))
        return _hash_embed(texts)

    cfg = PairsConfig(mining_pool_size=8)
    _, split, pairs, stats, triplets = _build(4, cfg, Budget(triplets=4, pairs=6), counting_embed)
    assert len(triplets) == 4 and len(pairs) <= 6
    assert encoded == [stats.mining["tickets_encoded"]] and encoded[0] < len(split.members["train"])
    assert stats.mining["anchors"] <= 4 + 2  # the triplets' anchors and the few kept pair positives'


def test_augment_text_keeps_short_texts_and_changes_long_ones() -> None:
    rng = random.Random(0)
    assert augment_text("two words", rng, 0.5) == "two words"
    text = "the disk volume crashes with an error after the upgrade"
    assert any(augment_text(text, rng, 0.3) != text for _ in range(5))
