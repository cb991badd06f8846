"""The classifier benchmark's unseen-project protocol: nothing of the held-out project reaches training."""

from __future__ import annotations

from typing import Any

from bench.classifier_methods import UNSEEN, paired_gain, projects, unseen_splits
from tests.conftest import SampleSplit


def test_unseen_folds_keep_the_held_out_project_out_of_train_and_val(sample_split: SampleSplit) -> None:
    tickets = sample_split.tickets
    links = [k for split in sample_split.links.values() for k in split]
    held_out_projects = projects(tickets)
    assert len(held_out_projects) >= 2
    for project in held_out_projects:
        splits = unseen_splits(tickets, links, project, seed=42)
        ends = {
            name: {tickets[t].project for k in rows for t in (k.source, k.target)}
            for name, rows in splits.items()
        }
        assert project not in ends["train"] | ends["val"], project
        assert ends["test"] == {project}
        assert not set(splits["train"]) & set(splits["val"])
        crossing = [
            k
            for k in links
            if (tickets[k.source].project == project) != (tickets[k.target].project == project)
        ]
        inside = [k for k in links if tickets[k.source].project == tickets[k.target].project == project]
        assert sorted(map(str, splits["test"])) == sorted(map(str, inside))
        assert not set(crossing) & {k for rows in splits.values() for k in rows}
        # The other projects' own links all go to training or val except prepare's test share.
        assert len(splits["train"]) + len(splits["val"]) <= len(links) - len(inside) - len(crossing)
        assert len(splits["train"]) > len(splits["val"]) > 0


def _row(fold: str, method: str, macro_f1: float) -> dict[str, Any]:
    return {
        "protocol": UNSEEN,
        "fold": fold,
        "method": method,
        "settings": "s",
        "metrics": {"macro_f1": macro_f1, "best_val_macro_f1": macro_f1 / 2},
    }


def test_paired_gain_is_cross_encoder_minus_logistic_on_the_folds_both_ran() -> None:
    rows = [
        _row("A", "logistic", 0.30),
        _row("B", "logistic", 0.20),
        _row("A", "cross_encoder", 0.35),
        _row("B", "cross_encoder", 0.10),
        _row("C", "cross_encoder", 0.90),
    ]
    test, val = paired_gain(rows)
    assert "on test, fold by fold: A +0.050, B -0.100; mean -0.025." in test
    assert "on val, fold by fold: A +0.025, B -0.050; mean -0.013." in val
