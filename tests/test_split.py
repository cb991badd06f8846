"""Connected-component split: no ticket or linked pair crosses splits; fractions; clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from job.config import SplitConfig
from job.data.split import check_usable, connected_components, split_by_components
from job.errors import InputError


def test_components_join_linked_tickets() -> None:
    comp = connected_components(["a", "b", "c", "d", "e"], [("a", "b"), ("b", "c"), ("d", "e")])
    assert comp["a"] == comp["b"] == comp["c"] != comp["d"] == comp["e"]


def _sample(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    ids = [json.loads(line)["id"] for line in (path / "tickets.jsonl").read_text().splitlines()]
    edges = [
        (r["source"], r["target"]) for r in map(json.loads, (path / "links.jsonl").read_text().splitlines())
    ]
    return ids, edges


def test_real_sample_split_has_no_leakage_and_follows_fractions(shared_sample: Path) -> None:
    ids, edges = _sample(shared_sample)
    split = split_by_components(ids, edges, SplitConfig(), seed=1)
    where = split.lookup()
    assert sorted(where) == sorted(ids)  # every ticket exactly once
    assert all(where[a] == where[b] for a, b in edges)  # no linked pair crosses splits
    per_split = check_usable(split, edges)
    assert all(per_split[name] > 0 for name in ("train", "val", "test"))
    assert abs(len(split.members["train"]) / len(ids) - 0.8) < 0.05
    assert abs(len(split.members["test"]) / len(ids) - 0.1) < 0.05


def test_same_seed_same_split_other_seed_other_split(shared_sample: Path) -> None:
    ids, edges = _sample(shared_sample)
    first = split_by_components(ids, edges, SplitConfig(), seed=5).members
    assert first == split_by_components(list(reversed(ids)), edges, SplitConfig(), seed=5).members
    assert first != split_by_components(ids, edges, SplitConfig(), seed=6).members


def test_giant_component_is_refused_with_the_reason() -> None:
    ids = [f"t{i}" for i in range(50)]
    edges = [(f"t{i}", f"t{i + 1}") for i in range(47)]  # 48 tickets in one chain, 2 singletons
    split = split_by_components(ids, edges, SplitConfig(), seed=0)
    with pytest.raises(InputError, match=r"largest linked component holds 48 of 50 tickets"):
        check_usable(split, edges)


def test_linked_components_spread_over_all_splits_among_many_unlinked_tickets() -> None:
    # Like the real data: half the tickets have no link. Linked pairs must still reach val and test.
    linked = [(f"a{i}", f"b{i}") for i in range(100)]
    ids = [t for pair in linked for t in pair] + [f"solo{i}" for i in range(800)]
    split = split_by_components(ids, linked, SplitConfig(), seed=2)
    per_split = check_usable(split, linked)
    assert per_split["val"] >= 7 and per_split["test"] >= 7 and per_split["train"] >= 70


def test_prepare_with_given_pairs_keeps_each_pair_and_each_chain_on_one_side(tmp_path: Path) -> None:
    """data.pairs (the notebooks' training_pairs.json): the pairs are the split's edges, so texts chained by
    pairs (a-b, b-c) stay in one split and no pair of val or test shares a text with train."""
    from job.jsonio import from_jsonl
    from tests.conftest import TINY, merged, run_cli, write_config

    rows = [
        {
            "text_a": f"chain {c} text {i} about disk {c % 7}",
            "text_b": f"chain {c} text {i + 1} about disk {c % 7}",
            "score": 0.9 if i == 0 else 0.6,
        }
        for c in range(40)
        for i in range(2)
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = write_config(
        tmp_path / "config.json",
        merged(
            TINY,
            {
                "data": {"pairs": str(tmp_path / "in" / "pairs.jsonl")},
                "output": {"uri": str(tmp_path / "runs")},
            },
        ),
    )
    done = run_cli("prepare", "--config", str(config), "--run-id", "given")
    assert done.returncode == 0, done.stderr[-2000:]
    prepared = tmp_path / "runs" / "given" / "prepared"
    side = {r["id"]: r["split"] for r in from_jsonl((prepared / "tickets.jsonl").read_bytes())}
    text = {r["id"]: r["text"] for r in from_jsonl((prepared / "tickets.jsonl").read_bytes())}
    chain_sides: dict[str, set[str]] = {}
    for tid, split in side.items():
        chain_sides.setdefault(text[tid].split(" text ")[0], set()).add(split)
    assert all(len(sides) == 1 for sides in chain_sides.values()), "a chain of pairs was cut by the split"
    assert {s for sides in chain_sides.values() for s in sides} == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        for pair in from_jsonl((prepared / f"pairs_{split}.jsonl").read_bytes()):
            assert side[pair["a"]] == side[pair["b"]] == split
