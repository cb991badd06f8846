"""Training inputs: length-grouped batches, max_pairs sampling, rows per loss."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
from datasets import Dataset

from job.config import JobConfig
from job.data.pairs import Pair, TitleBody, Triplet
from job.embedding.train import (
    UniqueTextSimilarityEvaluator,
    examples_from_pairs,
    training_rows,
    triplet_examples,
)
from job.embedding.trainer import LengthGroupedBatchSampler, LengthGroupedNoDuplicatesBatchSampler
from job.errors import InputError
from tests.conftest import OFFLINE_MODEL


def _dataset(n: int = 400) -> Dataset:
    rng = random.Random(0)
    return Dataset.from_dict(
        {
            "sentence1": ["w " * rng.randint(1, 300) for _ in range(n)],
            "sentence2": ["w " * rng.randint(1, 300) for _ in range(n)],
        }
    )


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


def _triplet_dataset(n: int = 400) -> Dataset:
    """Triplets over 150 tickets of random length: each ticket's text sits in several rows, as in prepare's
    (both directions of a duplicate, negatives drawn again)."""
    rng = random.Random(1)
    texts = [f"ticket {i} " + "w " * rng.randint(1, 300) for i in range(150)]
    rows = [rng.sample(texts, 3) for _ in range(n)]
    return Dataset.from_dict(
        {"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows], "negative": [r[2] for r in rows]}
    )


def test_ranking_batches_repeat_no_text_use_every_row_once_and_pad_less() -> None:
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    dataset = _triplet_dataset()
    sampler = LengthGroupedNoDuplicatesBatchSampler(dataset, batch_size=16, drop_last=False, seed=3)
    batches = list(sampler)
    # each text is in 8 rows: greedy packing alone leaves a tail of short batches that the swaps fill
    assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
    assert len(batches) == len(sampler)  # the multi-dataset sampler and DDP take len() batches
    rows = list(zip(dataset["anchor"], dataset["positive"], dataset["negative"], strict=True))
    for batch in batches:
        texts = [t for i in batch for t in rows[i]]
        assert len(texts) == len(set(texts)), "a text twice in one batch"
    lengths = [sum(map(len, row)) for row in rows]

    def spread(bs: list[list[int]]) -> float:
        return statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs)

    plain = list(NoDuplicatesBatchSampler(dataset, batch_size=16, drop_last=False, seed=3))
    assert spread(batches) < 0.5 * spread(plain)
    again = LengthGroupedNoDuplicatesBatchSampler(dataset, batch_size=16, drop_last=False, seed=3)
    assert list(again) == batches
    again.set_epoch(1)
    assert list(again) != batches, "a new epoch reshuffles"


def test_ranking_batches_are_as_many_as_len_says_when_texts_conflict() -> None:
    """Under DDP and the multi-dataset sampler every process takes len() batches: a tail of rows that
    share a text packs into more, smaller batches, and those beyond len() must not be yielded."""
    dataset = Dataset.from_dict(
        {"anchor": ["same"] * 5 + [f"a{i}" for i in range(7)], "positive": [f"p{i}" for i in range(12)]}
    )
    sampler = LengthGroupedNoDuplicatesBatchSampler(dataset, batch_size=4, drop_last=False, seed=1)
    batches = list(sampler)
    assert len(sampler) == 3 and len(batches) == 3
    for batch in batches:
        assert [dataset["anchor"][i] for i in batch].count("same") <= 1


def test_ranking_rows_that_can_fill_every_batch_do_so() -> None:
    """32 triplets over few texts, as a small train split gives: greedy packing leaves short batches, and
    the sampler must still yield len() full ones (swaps, else a top-up pass), or a 2-process run loses a
    round (tests/test_workflow_contract.py saw 1 optimizer step instead of 2)."""
    for seed in range(40):
        rng = random.Random(seed)
        rows = []  # a packing exists: planted, 4 batches of 8 rows, each batch 24 of 40 texts once
        for _ in range(4):
            texts = rng.sample([f"t{i}" for i in range(40)], 24)
            rows += [texts[i : i + 3] for i in range(0, 24, 3)]
        rng.shuffle(rows)
        dataset = Dataset.from_dict(
            {
                "anchor": [r[0] for r in rows],
                "positive": [r[1] for r in rows],
                "negative": [r[2] for r in rows],
            }
        )
        batches = list(
            LengthGroupedNoDuplicatesBatchSampler(dataset, batch_size=8, drop_last=True, seed=seed)
        )
        assert [len(b) for b in batches] == [8, 8, 8, 8], (seed, [len(b) for b in batches])
        for batch in batches:
            texts = [t for i in batch for t in rows[i]]
            assert len(texts) == len(set(texts)), seed


def test_partial_batches_come_last_so_ddp_rounds_stay_whole() -> None:
    """accelerate deals batches to processes in rounds and skips a round whose last batch is short."""
    pairs = Dataset.from_dict(
        {
            "sentence1": [f"a{i}" * (i % 7 + 1) for i in range(30)],
            "sentence2": [f"b{i}" for i in range(30)],
            "score": [1.0] * 30,
        }
    )
    triplets = Dataset.from_dict(
        {"anchor": ["same"] * 3 + [f"a{i}" for i in range(27)], "positive": [f"p{i}" for i in range(30)]}
    )
    for sampler in (
        LengthGroupedBatchSampler(pairs, batch_size=4, drop_last=False, seed=2),
        LengthGroupedNoDuplicatesBatchSampler(triplets, batch_size=4, drop_last=False, seed=2),
    ):
        for epoch in range(5):
            sampler.set_epoch(epoch)
            sizes = [len(b) for b in sampler]
            assert sizes == sorted(sizes, reverse=True), (type(sampler).__name__, sizes)


def test_each_loss_gets_its_rows() -> None:
    texts = {f"t{i}": f"text {i}" for i in range(20)}
    pairs = [
        Pair(f"t{i}", f"t{i + 1}", 1.0 if i % 2 else 0.0, "positive" if i % 2 else "random")
        for i in range(19)
    ]
    pairs.append(Pair("t0", "t5", 0.7, "augmented", "causes", text_b="text five changed"))
    cosine = examples_from_pairs(pairs, texts, "cosine", "cosent", 0.5)
    assert len(cosine.sentence1) == 20 and "text five changed" in cosine.sentence2 and 0.7 in cosine.score
    assert examples_from_pairs(pairs, texts, "mnrl", "cosent", 0.5).sentence1 == []  # ranks triplets only
    contrastive = examples_from_pairs(pairs, texts, "online_contrastive", "cosent", 0.5)
    assert set(contrastive.score) == {0.0, 1.0}
    retrieval = examples_from_pairs(pairs, texts, "retrieval", "online_contrastive", 0.5)
    assert set(retrieval.score) == {0.0, 1.0}  # the pair objective next to the ranking one
    triplets = triplet_examples([Triplet("t1", "t2", "t9", "duplicate", "mined")], texts)
    assert (triplets.anchor, triplets.positive, triplets.negative) == (["text 1"], ["text 2"], ["text 9"])


@pytest.mark.slow
def test_val_evaluator_encodes_each_distinct_text_once_and_scores_like_the_plain_one(tmp_path: Path) -> None:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from job.config import StorageConfig
    from job.embedding.model import load_model, resolve_model_path

    model = load_model(resolve_model_path(OFFLINE_MODEL, StorageConfig(), tmp_path), 48)
    tickets = [f"ticket {i}: the datanode {word} fails after restart" for i, word in enumerate("abcdefghij")]
    rng = random.Random(1)
    # 30 distinct pairs of distinct texts: a repeated pair would tie exactly here and only nearly in the plain
    # evaluator (a text padded in two batches), and Spearman breaks such near-ties arbitrarily.
    chosen = rng.sample([(a, b) for n, a in enumerate(tickets) for b in tickets[n + 1 :]], 30)
    s1, s2 = [a for a, _ in chosen], [b for _, b in chosen]
    scores = [rng.random() for _ in range(30)]
    encoded: list[int] = []
    real_encode = model.encode

    def counting_encode(sentences: list[str], **kwargs: object) -> object:
        encoded.append(len(sentences))
        return real_encode(sentences, **kwargs)

    model.encode = counting_encode  # type: ignore[method-assign]
    plain = EmbeddingSimilarityEvaluator(s1, s2, scores, name="val", write_csv=False)(model)
    assert encoded == [30, 30]
    encoded.clear()
    unique = UniqueTextSimilarityEvaluator(s1, s2, scores, name="val", write_csv=False)(model)
    assert encoded == [len(set(s1) | set(s2))] and encoded[0] <= len(tickets)
    assert unique.keys() == plain.keys()
    for key, value in plain.items():
        assert abs(unique[key] - value) < 1e-4, key


@pytest.mark.slow
@pytest.mark.parametrize(("epochs", "validations"), [(1, 0), (2, 2)])
def test_val_runs_each_epoch_only_when_there_is_an_epoch_to_choose(
    tmp_path: Path, epochs: int, validations: int
) -> None:
    import threading

    from job.config import load_config
    from job.embedding.model import load_model, resolve_model_path
    from job.embedding.train import RankingSets, TrainExamples, TripletExamples, train_model
    from job.log import get_logger
    from job.storage import LocalStore

    cfg = load_config(
        environ={},
        cli_overrides={
            "data.tickets": "t.jsonl",
            "output.uri": str(tmp_path / "out"),
            "model.base": OFFLINE_MODEL,
            "model.max_seq_length": 16,
            "train.epochs": epochs,
            "train.batch_size": 4,
            "train.loss": "cosent",
        },
    ).config  # pair rows only
    model = load_model(resolve_model_path(OFFLINE_MODEL, cfg.storage, tmp_path), 16)
    texts = [f"namenode {word} error" for word in "abcdefgh"]
    rows = TrainExamples(texts, texts[::-1], [0.9, 0.1] * 4)
    result = train_model(
        cfg,
        model,
        rows,
        RankingSets(TripletExamples([], [], [])),
        rows,
        tmp_path / "work",
        LocalStore(tmp_path / "store"),
        get_logger(step="test"),
        threading.Event(),
        resume=False,
    )
    assert len(result.val_history) == validations
    assert (result.best_metric is None) == (validations == 0)
    assert result.global_step == 2 * epochs and (result.model_dir / "modules.json").exists()
    # Class paths both sentence-transformers 5.x (the ONNX backend's consumers) and 6.x load.
    modules = json.loads((result.model_dir / "modules.json").read_text())
    assert [m["type"] for m in modules] == [
        f"sentence_transformers.models.{name}" for name in ("Transformer", "Pooling", "Normalize")
    ]
    reloaded = load_model(str(result.model_dir), 16)
    assert [type(module).__name__ for module in reloaded] == ["Transformer", "Pooling", "Normalize"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mini_batch", "distributed", "cached"), [(None, False, False), (None, True, False), (8, True, True)]
)
def test_ranking_loss_gathers_negatives_across_devices_and_caches_on_request(
    tmp_path: Path, mini_batch: int | None, distributed: bool, cached: bool
) -> None:
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from job.config import StorageConfig
    from job.embedding.model import load_model, resolve_model_path
    from job.embedding.train import ranking_loss

    model = load_model(resolve_model_path(OFFLINE_MODEL, StorageConfig(), tmp_path), 16)
    loss = ranking_loss(model, mini_batch, distributed)
    assert loss.gather_across_devices is distributed
    assert isinstance(loss, CachedMultipleNegativesRankingLoss) is cached
    assert not cached or loss.mini_batch_size == mini_batch


@pytest.mark.parametrize(
    ("setting", "device", "batch_size", "max_seq_length", "expected"),
    [
        ("auto", "cpu", 16, 256, 8),  # 12,288 tokens a batch: cached, 2,048 tokens a mini-batch
        ("auto", "cpu", 16, 512, 4),
        ("auto", "cpu", 16, 128, None),  # 6,144 tokens: the cached pass costs +45 % there
        ("auto", "cpu", 16, 64, None),
        ("auto", "cuda", 16, 256, None),  # a GPU has the memory and wants the speed
        (None, "cpu", 16, 256, None),
        (24, "cuda", 16, 64, 24),
    ],
)
def test_the_ranking_loss_is_cached_on_a_cpu_only_where_a_batch_is_long(
    setting: int | str | None, device: str, batch_size: int, max_seq_length: int, expected: int | None
) -> None:
    from job.embedding.train import ranking_mini_batch

    assert ranking_mini_batch(setting, device, batch_size, max_seq_length) == expected


def test_only_trainer_named_complete_checkpoints_are_resumed_from(tmp_path: Path) -> None:
    """A folder copied in by hand (`checkpoint-abc`, with a COMPLETE marker) crashed the resume with a
    ValueError; it is not a checkpoint of this run, so it is skipped."""
    from job.embedding.trainer import CHECKPOINTS, COMPLETE, latest_checkpoint
    from job.storage import LocalStore

    store = LocalStore(tmp_path)
    for name in ("checkpoint-abc", "checkpoint-", "checkpoint-\u00b2", "checkpoint-7", "checkpoint-10"):
        store.write_bytes(f"{CHECKPOINTS}/{name}/{COMPLETE}", b"")
    store.write_bytes(f"{CHECKPOINTS}/checkpoint-12/model.safetensors", b"cut short: no marker")
    assert latest_checkpoint(store) == "checkpoint-10"
    store.delete_prefix(f"{CHECKPOINTS}/checkpoint-7")
    store.delete_prefix(f"{CHECKPOINTS}/checkpoint-10")
    assert latest_checkpoint(store) is None


def test_mnrl_refuses_scored_pairs_instead_of_failing_on_a_missing_pair_loss() -> None:
    from job.config import TrainConfig
    from job.embedding.train import RankingSets, TrainExamples, TripletExamples, training_sets

    pairs = TrainExamples(["namenode down"], ["namenode crashed"], [0.9])
    with pytest.raises(ValueError, match="mnrl trains on triplets only"):
        training_sets(
            None, pairs, RankingSets(TripletExamples([], [], [])), TrainConfig(loss="mnrl"), distributed=False
        )


TEXTS = {
    "a": "disk full on datanode",
    "b": "datanode disk is full",
    "c": "web ui typo",
    "d": "typo in web ui",
}


def test_train_rows_are_the_loss_s_objectives_and_nothing_to_train_on_is_an_input_error() -> None:
    mnrl = JobConfig.model_validate({"train": {"loss": "mnrl"}})
    triplets = [
        Triplet("a", "b", "c", "duplicate", "random"),
        Triplet("c", "d", "a", "relates", "random", objective="related"),
    ]
    val = [Pair("a", "b", 1.0, "positive"), Pair("a", "c", 0.0, "random")]
    rows = training_rows(
        mnrl, TEXTS, [Pair("a", "b", 1.0, "positive")], val, triplets, [TitleBody("a", "t", "b")]
    )
    assert rows.counts() == {
        "pair_rows": 0,  # mnrl ranks triplets only
        "triplet_rows": 1,
        "related_rows": 1,
        "title_body_rows": 1,
        "val_pairs": 2,
    }
    assert rows.ranking.triplets.negative == [TEXTS["c"]] and rows.ranking.related.anchor == [TEXTS["c"]]
    with pytest.raises(InputError, match="no training rows for train.loss=mnrl"):
        training_rows(mnrl, TEXTS, [Pair("a", "b", 1.0, "positive")], val, [], [])
