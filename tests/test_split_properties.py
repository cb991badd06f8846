"""Properties of the component split (job/data/split.py) for any link graph.

Every ticket lands in exactly one split, no linked pair crosses splits (that is the leak a
pair-level split causes), the fractions are kept as well as whole components allow, the
same seed gives the same split, and `check_usable` either passes a split that has linked
pairs in val and test or refuses it with an InputError.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from job.config import SplitConfig
from job.data.split import SPLITS, Split, check_usable, connected_components, split_by_components
from job.errors import InputError


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    n = draw(st.integers(1, 80))
    ids = [f"T-{i}" for i in range(n)]
    index = st.integers(0, n - 1)
    edges = draw(st.lists(st.tuples(index, index), max_size=2 * n))
    # Shuffled ticket order: the split must not depend on the order tickets come in.
    order = draw(st.permutations(ids))
    return order, [(ids[a], ids[b]) for a, b in edges]


@st.composite
def fractions(draw: st.DrawFn) -> SplitConfig:
    train = draw(st.floats(0.3, 0.9))
    val = draw(st.floats(0.02, 1 - train - 0.02))
    return SplitConfig(train=train, val=val, test=1 - train - val)


SEEDS = st.integers(0, 2**32 - 1)


def _largest_component(split: Split) -> int:
    return max(Counter(split.component.values()).values())


@settings(max_examples=300, deadline=None)
@given(graphs(), fractions(), SEEDS)
def test_every_ticket_in_one_split_and_no_link_crosses(
    graph: tuple[list[str], list[tuple[str, str]]], split_cfg: SplitConfig, seed: int
) -> None:
    ids, edges = graph
    split = split_by_components(ids, edges, split_cfg, seed)
    placed = [tid for name in SPLITS for tid in split.members[name]]
    assert sorted(placed) == sorted(ids)  # each ticket once: none lost, none twice
    where = split.lookup()
    for a, b in edges:
        assert where[a] == where[b], f"linked pair {a}-{b} crosses {where[a]}/{where[b]}"
    for name in SPLITS:  # a component is never cut: all its tickets share one split
        assert split.members[name] == sorted(split.members[name])
    by_component: dict[int, set[str]] = {}
    for tid, comp in split.component.items():
        by_component.setdefault(comp, set()).add(where[tid])
    assert all(len(names) == 1 for names in by_component.values())


@settings(max_examples=300, deadline=None)
@given(graphs(), fractions(), SEEDS)
def test_no_split_overshoots_its_share_by_more_than_one_component(
    graph: tuple[list[str], list[tuple[str, str]]], split_cfg: SplitConfig, seed: int
) -> None:
    ids, edges = graph
    split = split_by_components(ids, edges, split_cfg, seed)
    largest, total = _largest_component(split), len(ids)
    targets = {"train": split_cfg.train, "val": split_cfg.val, "test": split_cfg.test}
    for name in SPLITS:
        # A component goes to the split furthest below its target, whose deficit is never negative.
        assert len(split.members[name]) <= targets[name] * total + largest + 1e-9, (
            name,
            len(split.members[name]),
        )


@settings(max_examples=150, deadline=None)
@given(graphs(), SEEDS)
def test_same_seed_same_split_whatever_the_order(
    graph: tuple[list[str], list[tuple[str, str]]], seed: int
) -> None:
    ids, edges = graph
    first = split_by_components(ids, edges, SplitConfig(), seed)
    again = split_by_components(sorted(ids), list(reversed(edges)), SplitConfig(), seed)
    assert first.members == again.members


@settings(max_examples=300, deadline=None)
@given(graphs(), fractions(), SEEDS)
def test_check_usable_passes_only_splits_with_linked_pairs_to_evaluate(
    graph: tuple[list[str], list[tuple[str, str]]], split_cfg: SplitConfig, seed: int
) -> None:
    ids, edges = graph
    split = split_by_components(ids, edges, split_cfg, seed)
    try:
        per_split = check_usable(split, edges)
    except InputError as exc:
        message = str(exc)
        assert any(f"the {name} split" in message for name in SPLITS)
        empty = [n for n in SPLITS if not split.members[n]]
        unlinked = [n for n in SPLITS if not any(split.lookup()[a] == n for a, _ in edges)]
        assert empty or (edges and unlinked), "refused a split with tickets and links everywhere"
        return
    assert all(split.members[name] for name in SPLITS)
    assert sum(per_split.values()) == len(edges)
    if edges:
        assert per_split["val"] > 0 and per_split["test"] > 0


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_components_are_exactly_the_linked_groups(graph: tuple[list[str], list[tuple[str, str]]]) -> None:
    ids, edges = graph
    component = connected_components(ids, edges)
    assert set(component) == set(ids)
    for a, b in edges:
        assert component[a] == component[b]
    # No two components that an edge-free check would merge: reachability by search agrees.
    neighbours: dict[str, set[str]] = {tid: set() for tid in ids}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    start = ids[0]
    seen, stack = {start}, [start]
    while stack:
        for nxt in neighbours[stack.pop()] - seen:
            seen.add(nxt)
            stack.append(nxt)
    assert seen == {tid for tid in ids if component[tid] == component[start]}
