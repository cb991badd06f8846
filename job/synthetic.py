"""A small SYNTHETIC ticket set for the demo: generated here, no real ticket text.

Built like a real tracker, where a general-purpose model is weakest: components go by an
internal code name, an abbreviation and a long name written three ways ("Falcon", "FLC",
"billing-pipeline", "BillingPipeline", "billing pipeline"), symptoms and triggers by jargon
or plain words ("OOMKilled" / "runs out of memory", "at peak QPS" / "under heavy load").
A problem family (a component, a symptom, a trigger) yields tickets written by different
people in different words, linked as duplicates or clones; the tickets that look most alike
word for word are the same symptom in another component, which are not duplicates. A model
that learns the tracker's vocabulary from the training split finds the duplicates; one that
matches surface words finds the look-alikes. Families are chained by causes/blocks/depends/
relates links with creation dates that fit the relation. Deterministic for a seed.

Usage: python -m job.synthetic OUT_DIR [--tickets N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path


@dataclass(frozen=True)
class Component:
    """One part of the product and every name the tracker uses for it."""

    code_name: str
    abbreviation: str
    words: tuple[str, ...]  # the long name, written with spaces, dashes or CamelCase
    category: str

    def names(self) -> list[str]:
        long = " ".join(self.words)
        return [
            self.code_name,
            long,
            self.abbreviation,
            "-".join(self.words),
            "".join(w.capitalize() for w in self.words),
        ]


COMPONENTS = [
    Component("Falcon", "FLC", ("billing", "pipeline"), "billing"),
    Component("Heron", "HRN", ("auth", "gateway"), "auth"),
    Component("Kestrel", "KST", ("search", "indexer"), "search"),
    Component("Osprey", "OSP", ("storage", "replicator"), "storage"),
    Component("Merlin", "MRL", ("job", "scheduler"), "scheduler"),
    Component("Plover", "PLV", ("notification", "service"), "notify"),
    Component("Swift", "SWF", ("export", "worker"), "export"),
    Component("Tern", "TRN", ("metrics", "collector"), "metrics"),
    Component("Wren", "WRN", ("config", "server"), "config"),
    Component("Egret", "EGR", ("web", "dashboard"), "ui"),
    Component("Gannet", "GNT", ("payment", "router"), "billing"),
    Component("Shrike", "SHK", ("session", "cache"), "auth"),
]
# Each symptom as a reporter in a hurry writes it (jargon) and as someone else would (plain words).
SYMPTOMS = [
    [
        "NPE in {c}",
        "{c} crashes with NullPointerException",
        "{c} dies with a null pointer exception",
        "null deref crash in {c}",
    ],
    [
        "{c} hangs",
        "{c} stuck, no response",
        "{c} deadlocks, thread dump shows lock wait",
        "{c} freezes and never returns",
    ],
    ["{c} p99 latency spike", "{c} is very slow", "{c} takes minutes to respond", "perf regression in {c}"],
    [
        "{c} OOMKilled",
        "{c} runs out of memory",
        "{c} heap exhaustion",
        "{c} memory grows until the pod restarts",
    ],
    ["{c} drops events", "{c} loses data", "{c} silently discards records", "writes lost in {c}"],
    [
        "{c} returns stale results",
        "{c} shows wrong totals",
        "{c} serves outdated values",
        "{c} data mismatch",
    ],
    [
        "{c} 5xx storm",
        "{c} returns HTTP 503",
        "{c} fails every request with server errors",
        "{c} error rate spike",
    ],
]
TRIGGERS = [
    ["after upg to {v}", "after upgrading to version {v}", "since the {v} rollout"],
    ["at peak QPS", "under heavy load", "when traffic is high"],
    ["on DR failover", "during failover", "when the primary goes down"],
    ["after DST change", "when the clocks change", "after the daylight saving switch"],
    ["with non-ASCII input", "with unicode names", "when names contain accents"],
    ["on cold start", "right after a restart", "on the first request after deploy"],
    ["when the cfg is empty", "if the config file is empty", "with a blank configuration"],
    ["on node drain", "when a node is decommissioned", "while nodes are being removed"],
]
FILLER = [
    "Repro steps attached.",
    "Seen in prod twice this week.",
    "Logs show nothing unusual.",
    "Workaround: restart the pod.",
    "Customer impact is high.",
    "Started after the last deploy.",
    "Cannot reproduce locally.",
    "Happens roughly once per hour.",
    "Oncall paged at 3am.",
    "See the attached dashboard screenshot.",
]


@dataclass(frozen=True)
class Family:
    """One problem; every ticket of it is a report of the same thing."""

    component: Component
    symptom: int
    trigger: int
    version: str


def _family(rng: random.Random, like: Family | None = None) -> Family:
    """A new problem; given `like`, the same symptom and trigger in another component (a look-alike)."""
    version = f"{rng.randint(2, 9)}.{rng.randint(0, 9)}"
    if like is None:
        return Family(
            rng.choice(COMPONENTS), rng.randrange(len(SYMPTOMS)), rng.randrange(len(TRIGGERS)), version
        )
    other = rng.choice([c for c in COMPONENTS if c is not like.component])
    return Family(other, like.symptom, like.trigger, like.version)


def _ticket_text(family: Family, rng: random.Random, wording: int) -> tuple[str, str]:
    """Title and description. `wording` picks how the reporter names things: a family's reports
    each get their own, so duplicates rarely share their words."""
    names = family.component.names()
    name = names[wording % len(names)]
    symptoms, triggers = SYMPTOMS[family.symptom], TRIGGERS[family.trigger]
    symptom = symptoms[(wording + rng.randrange(2)) % len(symptoms)].format(c=name)
    trigger = triggers[wording % len(triggers)].format(v=family.version)
    title = f"{symptom} {trigger}"
    description = f"{symptom[0].upper()}{symptom[1:]} {trigger}. " + " ".join(rng.sample(FILLER, 2))
    return title, description


def generate(n_tickets: int = 240, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """Tickets and links; about a fifth of the problems have one report only."""
    rng = random.Random(seed)
    tickets: list[dict] = []
    links: list[dict] = []
    start = datetime(2024, 1, 1, tzinfo=UTC)
    families: list[list[str]] = []
    previous: Family | None = None
    while len(tickets) < n_tickets:
        # Half the problems look like the one before (same symptom and trigger, another component).
        family = _family(rng, previous if previous is not None and rng.random() < 0.5 else None)
        previous = family
        size = rng.choice([1, 2, 2, 3, 3])
        created = start + timedelta(days=rng.randint(0, 600), hours=rng.randint(0, 23))
        first_wording = rng.randrange(5)
        members: list[str] = []
        for variant in range(size):
            tid = f"SYN-{len(tickets) + 1}"
            title, description = _ticket_text(family, rng, first_wording + 2 * variant)
            when = created + timedelta(days=variant * rng.randint(0, 20), minutes=variant)
            tickets.append(
                {
                    "id": tid,
                    "title": title,
                    "description": description,
                    "category": family.component.category,
                    "project": "SYNTH",
                    "created": when.isoformat(timespec="seconds"),
                    "synthetic": True,
                }
            )
            if variant:
                relation = "clones" if rng.random() < 0.25 else "duplicate"
                links.append({"source": tid, "target": members[0], "relation": relation})
            members.append(tid)
        families.append(members)
    for i in range(1, len(families)):
        if rng.random() < 0.45:
            earlier = rng.choice(families[max(0, i - 8) : i])
            relation = rng.choice(["causes", "blocks", "depends", "relates"])
            links.append({"source": earlier[0], "target": families[i][0], "relation": relation})
    return tickets[:n_tickets], [
        k for k in links if int(k["source"][4:]) <= n_tickets and int(k["target"][4:]) <= n_tickets
    ]


def write(out_dir: Path, n_tickets: int = 240, seed: int = 7) -> tuple[Path, Path]:
    tickets, links = generate(n_tickets, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "README.txt").write_text("SYNTHETIC demo data written by job.synthetic: no real tickets.\n")
    paths = out_dir / "tickets.jsonl", out_dir / "links.jsonl"
    for path, rows in zip(paths, (tickets, links), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tickets", type=int, default=240)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tickets, links = write(args.out_dir, args.tickets, args.seed)
    print(f"wrote synthetic data: {tickets} and {links}")


if __name__ == "__main__":
    main()
