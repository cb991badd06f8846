"""A small SYNTHETIC ticket set for the demo: generated here, no real ticket text.

Problem families (a component, a symptom, a trigger) produce tickets worded in different
ways; tickets of one family are linked as duplicates or clones, and families are chained by
causes/blocks/depends/relates links with creation dates that fit the relation. Deterministic
for a seed. Usage: python -m job.synthetic OUT_DIR [--tickets N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

COMPONENTS = {
    "storage": ["disk volume", "block store", "replica set", "write-ahead log", "snapshot service"],
    "scheduler": ["job queue", "resource manager", "task scheduler", "container allocator", "node heartbeat"],
    "auth": ["login service", "token refresh", "SSO gateway", "password reset", "session store"],
    "network": ["load balancer", "DNS resolver", "RPC client", "TLS handshake", "proxy"],
    "ui": ["dashboard", "settings page", "search box", "export dialog", "notification panel"],
    "billing": ["invoice generator", "payment webhook", "tax calculation", "usage meter", "refund flow"],
}
SYMPTOMS = [
    ("crashes with {err}", ["fails with {err}", "dies throwing {err}", "aborts on {err}"]),
    ("hangs forever", ["stops responding", "freezes and never returns", "is stuck indefinitely"]),
    ("is very slow", ["takes minutes instead of seconds", "has terrible latency", "responds extremely slowly"]),
    ("returns wrong results", ["gives incorrect output", "shows stale data", "reports bad values"]),
    ("leaks memory", ["memory usage keeps growing", "runs out of heap over time", "grows until OOM killed"]),
    ("loses data", ["drops records silently", "deletes entries unexpectedly", "writes are lost"]),
]
ERRORS = ["NullPointerException", "OutOfMemoryError", "TimeoutException", "ConcurrentModificationException",
          "IllegalStateException", "SocketException", "ClassCastException"]
TRIGGERS = ["after upgrading to {v}", "under heavy load", "when the cluster restarts", "with more than {n} users",
            "on the first request of the day", "when a node is decommissioned", "if the config file is empty",
            "during failover", "after a daylight saving change", "with unicode file names"]
FILLER = ["Steps to reproduce are attached.", "Seen in production twice this week.", "Logs show nothing unusual.",
          "Workaround: restart the service.", "Customer impact is high.", "Started after the last deploy.",
          "Cannot reproduce on a laptop.", "Happens roughly once per hour."]


def _family(rng: random.Random) -> dict[str, str]:
    category = rng.choice(sorted(COMPONENTS))
    symptom = rng.randrange(len(SYMPTOMS))
    return {"category": category, "part": rng.choice(COMPONENTS[category]), "symptom": str(symptom),
            "err": rng.choice(ERRORS), "trigger": rng.choice(TRIGGERS).format(v=f"{rng.randint(2, 9)}.{rng.randint(0, 9)}",
                                                                             n=rng.choice([100, 500, 1000]))}


def _ticket_text(family: dict[str, str], rng: random.Random, variant: int) -> tuple[str, str]:
    base, alternatives = SYMPTOMS[int(family["symptom"])]
    phrase = (base if variant == 0 else rng.choice(alternatives)).format(err=family["err"])
    part = family["part"]
    title = rng.choice([f"{part.capitalize()} {phrase} {family['trigger']}",
                        f"{part} {phrase}", f"[{family['category']}] {part} {phrase}"])
    description = (f"The {part} {phrase} {family['trigger']}. " + " ".join(rng.sample(FILLER, 2))
                   + (f" Stack trace mentions {family['err']}." if rng.random() < 0.5 else ""))
    return title, description


def generate(n_tickets: int = 240, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """Tickets and links; roughly a third of tickets are unlinked distractors."""
    rng = random.Random(seed)
    tickets: list[dict] = []
    links: list[dict] = []
    start = datetime(2024, 1, 1, tzinfo=UTC)
    families: list[list[str]] = []
    while len(tickets) < n_tickets:
        family = _family(rng)
        size = rng.choice([1, 1, 2, 2, 3])
        created = start + timedelta(days=rng.randint(0, 600), hours=rng.randint(0, 23))
        members: list[str] = []
        for variant in range(size):
            tid = f"SYN-{len(tickets) + 1}"
            title, description = _ticket_text(family, rng, variant)
            when = created + timedelta(days=variant * rng.randint(0, 20), minutes=variant)
            tickets.append({"id": tid, "title": title, "description": description, "category": family["category"],
                            "project": "SYNTH", "created": when.isoformat(timespec="seconds"), "synthetic": True})
            if variant:
                relation = "clones" if rng.random() < 0.2 else "duplicate"
                links.append({"source": tid, "target": members[0], "relation": relation})
            members.append(tid)
        families.append(members)
    for i in range(1, len(families)):
        if rng.random() < 0.35:
            earlier = rng.choice(families[max(0, i - 8) : i])
            relation = rng.choice(["causes", "blocks", "depends", "relates"])
            a, b = earlier[0], families[i][0]
            links.append({"source": a, "target": b, "relation": relation})
    return tickets[:n_tickets], [k for k in links if int(k["source"][4:]) <= n_tickets and int(k["target"][4:]) <= n_tickets]


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
