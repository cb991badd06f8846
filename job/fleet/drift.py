"""How a run's inputs differ from the promoted run's: counts, relation mix, projects, text lengths, new
tickets.

Pure functions over the rows prepare writes (`prepared/tickets.jsonl`: id, text, project, split;
`prepared/links.jsonl`: relation), so the promoted run's profile is rebuilt from its own prepared
files and both sides are measured the same way. A change past a bound in `drift.*` becomes a
warning; drift never stops a run (the promotion gate judges the model, not the data).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from job.config import DriftConfig

# Text length bins in characters (the last is open): coarse enough to be stable week to week.
LENGTH_EDGES = (0, 100, 200, 400, 800, 1600, 3200)


@dataclass(frozen=True)
class InputProfile:
    """What one run's inputs look like, as far as drift compares them."""

    ticket_ids: frozenset[str]
    test_ids: frozenset[str]
    links: int
    relations: dict[str, int]
    projects: dict[str, int]
    lengths: tuple[int, ...]  # characters of each ticket's text

    @property
    def tickets(self) -> int:
        return len(self.ticket_ids)


def profile_inputs(tickets: list[Any], links: list[Any]) -> InputProfile:
    """The profile of prepared ticket rows ({id, text, project, split}) and link rows ({relation}).

    The promoted run's files are read back from storage, where anyone may have edited them: a row that
    is not an object, or a field of the wrong type, counts as '(invalid)' instead of stopping prepare."""
    tickets = [t for t in tickets if isinstance(t, dict)]
    return InputProfile(
        ticket_ids=frozenset(_text(t.get("id")) for t in tickets),
        test_ids=frozenset(_text(t.get("id")) for t in tickets if t.get("split") == "test"),
        links=len(links),
        relations=dict(
            Counter(_text(link.get("relation")) if isinstance(link, dict) else INVALID for link in links)
        ),
        projects=dict(Counter(_text(t.get("project"), "(none)") for t in tickets)),
        lengths=tuple(len(t["text"]) if isinstance(t.get("text"), str) else 0 for t in tickets),
    )


INVALID = "(invalid)"


def _text(value: Any, missing: str = INVALID) -> str:
    if value is None or value == "":
        return missing
    return value if isinstance(value, str) else INVALID


def relative_change(current: int, promoted: int) -> float | None:
    """(current - promoted) / promoted; None when the promoted run had none."""
    return None if promoted == 0 else (current - promoted) / promoted


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {key: counts[key] / total for key in sorted(counts)} if total else {}


def relation_shift(current: dict[str, int], promoted: dict[str, int]) -> float:
    """Total variation distance between the two relation mixes: the share of links that would have
    to change relation to turn one mix into the other (0 same mix, 1 nothing in common)."""
    a, b = shares(current), shares(promoted)
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def length_histogram(lengths: tuple[int, ...]) -> list[int]:
    """Tickets per LENGTH_EDGES bin."""
    edges = [*LENGTH_EDGES[1:], np.inf]
    counts, _ = np.histogram(np.asarray(lengths, dtype=float), bins=[*LENGTH_EDGES[:1], *edges])
    return [int(c) for c in counts]


def length_shift(current: tuple[int, ...], promoted: tuple[int, ...]) -> float:
    """Largest gap between the two cumulative length distributions over LENGTH_EDGES bins (a
    binned Kolmogorov-Smirnov distance): 0 the same shape, 1 no overlap."""
    if not current or not promoted:
        return 0.0
    a = np.cumsum(length_histogram(current)) / len(current)
    b = np.cumsum(length_histogram(promoted)) / len(promoted)
    return float(np.max(np.abs(a - b)))


def length_quantiles(lengths: tuple[int, ...]) -> dict[str, float] | None:
    if not lengths:
        return None
    p10, p50, p90 = np.percentile(np.asarray(lengths), [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90)}


def new_test_share(current: InputProfile, promoted: InputProfile) -> float | None:
    """Share of this run's test tickets the promoted run never saw (None without a test split)."""
    if not current.test_ids:
        return None
    return len(current.test_ids - promoted.ticket_ids) / len(current.test_ids)


def compare(
    current: InputProfile, promoted: InputProfile, promoted_run: str, bounds: DriftConfig
) -> dict[str, Any]:
    """The drift section of a run's metadata: each measure, both sides, and the warnings past `bounds`."""
    section: dict[str, Any] = {
        "against_run": promoted_run,
        "tickets": {
            "current": current.tickets,
            "promoted": promoted.tickets,
            "change": _round(relative_change(current.tickets, promoted.tickets)),
        },
        "links": {
            "current": current.links,
            "promoted": promoted.links,
            "change": _round(relative_change(current.links, promoted.links)),
        },
        "relation_mix": {
            "current": _rounded(shares(current.relations)),
            "promoted": _rounded(shares(promoted.relations)),
            "shift": _round(relation_shift(current.relations, promoted.relations)),
        },
        "projects": {
            "new": sorted(set(current.projects) - set(promoted.projects)),
            "gone": sorted(set(promoted.projects) - set(current.projects)),
        },
        "text_length": {
            "current": length_quantiles(current.lengths),
            "promoted": length_quantiles(promoted.lengths),
            "bins": list(LENGTH_EDGES),
            "shift": _round(length_shift(current.lengths, promoted.lengths)),
        },
        "new_test_tickets_share": _round(new_test_share(current, promoted)),
    }
    section["warnings"] = drift_warnings(section, bounds)
    return section


def drift_warnings(section: dict[str, Any], bounds: DriftConfig) -> list[dict[str, Any]]:
    """One entry per measure past its bound: what moved, by how much, and the bound it passed."""
    checks = [
        ("tickets", abs_or_none(section["tickets"]["change"]), bounds.max_count_change),
        ("links", abs_or_none(section["links"]["change"]), bounds.max_count_change),
        ("relation_mix", section["relation_mix"]["shift"], bounds.max_relation_shift),
        ("text_length", section["text_length"]["shift"], bounds.max_length_shift),
        ("new_test_tickets_share", section["new_test_tickets_share"], bounds.max_new_test_share),
    ]
    found = [
        {"measure": name, "value": value, "bound": bound}
        for name, value, bound in checks
        if value is not None and value > bound
    ]
    if bounds.warn_on_new_projects and section["projects"]["new"]:
        found.append({"measure": "new_projects", "value": len(section["projects"]["new"]), "bound": 0})
    return found


def abs_or_none(value: float | None) -> float | None:
    return None if value is None else abs(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in values.items()}
