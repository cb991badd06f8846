"""Training inputs: length-grouped batches, max_pairs sampling, rows per loss."""

from __future__ import annotations

import random
import statistics

from datasets import Dataset

from job.config import TrainConfig
from job.pairs import Pair
from job.train import LengthGroupedBatchSampler, examples_from_pairs


def _dataset(n: int = 400) -> Dataset:
    rng = random.Random(0)
    return Dataset.from_dict({"sentence1": ["w " * rng.randint(1, 300) for _ in range(n)],
                              "sentence2": ["w " * rng.randint(1, 300) for _ in range(n)]})


def _spread(dataset: Dataset, batches: list[list[int]]) -> float:
    lengths = [len(a) + len(b) for a, b in zip(dataset["sentence1"], dataset["sentence2"], strict=True)]
    return statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_cover_every_pair_once_and_pad_less() -> None:
    dataset = _dataset()
    sampler = LengthGroupedBatchSampler(dataset, batch_size=16, drop_last=False, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
    assert len(batches) == len(sampler) == 25
    shuffled = list(range(len(dataset)))
    random.Random(3).shuffle(shuffled)
    random_batches = [shuffled[i : i + 16] for i in range(0, len(shuffled), 16)]
    assert _spread(dataset, batches) < 0.25 * _spread(dataset, random_batches)


def test_length_grouped_batches_are_deterministic_per_seed_and_epoch() -> None:
    dataset = _dataset()
    first = LengthGroupedBatchSampler(dataset, batch_size=16, drop_last=False, seed=3)
    again = LengthGroupedBatchSampler(dataset, batch_size=16, drop_last=False, seed=3)
    assert list(first) == list(again)
    again.set_epoch(1)
    assert list(first) != list(again), "a new epoch reshuffles"


def test_max_pairs_samples_with_the_seed_and_losses_get_their_rows() -> None:
    texts = {f"t{i}": f"text {i}" for i in range(20)}
    pairs = [Pair(f"t{i}", f"t{i + 1}", 1.0 if i % 2 else 0.0, "positive" if i % 2 else "random") for i in range(19)]
    pairs.append(Pair("t0", "t5", 0.7, "augmented", "causes", text_b="text five changed"))
    cosine = examples_from_pairs(pairs, texts, TrainConfig(max_pairs=8, seed=1), 0.5)
    assert len(cosine.sentence1) == 8
    assert cosine.sentence1 == examples_from_pairs(pairs, texts, TrainConfig(max_pairs=8, seed=1), 0.5).sentence1
    assert cosine.sentence1 != examples_from_pairs(pairs, texts, TrainConfig(max_pairs=8, seed=2), 0.5).sentence1
    mnrl = examples_from_pairs(pairs, texts, TrainConfig(loss="mnrl"), 0.5)
    assert len(mnrl.sentence1) == 10 and "text five changed" in mnrl.sentence2
    contrastive = examples_from_pairs(pairs, texts, TrainConfig(loss="online_contrastive"), 0.5)
    assert set(contrastive.score) == {0.0, 1.0}
