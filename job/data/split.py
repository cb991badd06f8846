"""Split tickets into train/val/test by connected components of the link graph.

A random pair-level split (what the notebooks did) puts the same ticket, or two duplicates
of one problem, on both sides and overstates quality. Here every component of the graph
(tickets joined by any link or given pair) lands in exactly one split.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from job.config import SplitConfig
from job.errors import InputError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Ticket ids per split, and the component every ticket belongs to."""

    members: dict[str, list[str]]
    component: dict[str, int]

    def lookup(self) -> dict[str, str]:
        return {tid: name for name, ids in self.members.items() for tid in ids}


def connected_components(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Component number per node (union-find with path halving); numbers follow sorted node order."""
    parent: dict[str, str] = {n: n for n in nodes}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots: dict[str, int] = {}
    return {n: roots.setdefault(find(n), len(roots)) for n in sorted(parent)}


def split_by_components(
    ticket_ids: Sequence[str], edges: Sequence[tuple[str, str]], fractions: SplitConfig, seed: int
) -> Split:
    """Assign whole components to splits so each split's ticket count is near its fraction.

    Components go largest first (ties in a seeded random order) to the split furthest below its
    target *relative to that target*, so every split fills at the same pace: linked components
    (which come first, being larger) spread over train, val and test in proportion instead of
    all landing in train, and one big component cannot push val or test far past their share.
    """
    component = connected_components(ticket_ids, edges)
    groups: dict[int, list[str]] = defaultdict(list)
    for tid, comp in component.items():
        groups[comp].append(tid)
    order = list(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda c: len(groups[c]), reverse=True)  # stable: equal sizes keep the seeded order
    target = {"train": fractions.train, "val": fractions.val, "test": fractions.test}
    total = len(component)
    members: dict[str, list[str]] = {name: [] for name in SPLITS}
    for comp in order:
        room = {name: 1.0 - len(members[name]) / (target[name] * total) for name in SPLITS}
        chosen = max(SPLITS, key=lambda name: room[name])
        members[chosen].extend(groups[comp])
    for ids in members.values():
        ids.sort()
    return Split(members, component)


def check_usable(split: Split, edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Edges per split; raise with the reason when val or test got no linked pair at all."""
    where = split.lookup()
    per_split = dict.fromkeys(SPLITS, 0)
    for a, _ in edges:
        per_split[where[a]] += 1
    sizes: dict[int, int] = defaultdict(int)
    for comp in split.component.values():
        sizes[comp] += 1
    largest = max(sizes.values()) if sizes else 0
    for name in SPLITS:
        if not split.members[name]:
            reason = (
                f"the largest linked component holds {largest} of {len(split.component)} tickets, and a "
                "component cannot be split without leaking tickets between train and evaluation"
                if largest > 1
                else f"{len(split.component)} tickets are too few to split"
            )
            raise InputError(f"the {name} split is empty: {reason}")
        if edges and per_split[name] == 0:
            raise InputError(
                f"the {name} split has no linked pair: the largest linked component holds {largest} of "
                f"{len(split.component)} tickets and the other components hold too few links. A component "
                "cannot be split without leaking tickets between train and evaluation; add links between "
                "other tickets or lower pairs.split.train."
            )
    return per_split
