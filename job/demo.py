"""The end of `make demo`: what the run's model suggests for one new report.

Takes the newest finished run under output.uri, picks the first ticket of its test split that has a duplicate
filed before it, and asks the run's index for the 3 most similar tickets filed before that ticket (as the
tracker would have asked the day it was filed), then says whether the true duplicate is among them.

Run: `python -m job.demo --config demo/config.yaml`
"""

from __future__ import annotations

import sys

import click

from job.config import load_config
from job.jsonio import from_jsonl
from job.storage import open_store


def newest_finished_run(root: object) -> str:
    runs = [name for name in root.list_folders() if root.child(name).exists("manifest.json")]  # type: ignore[attr-defined]
    if not runs:
        raise SystemExit("no finished run yet: run `finetune-job run` first")
    return sorted(runs)[-1]  # run ids start with their UTC start time


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), required=True)
def main(config_file: str) -> None:
    from job.suggest import open_index

    cfg = load_config(config_file).config
    root = open_store(cfg.output.uri, cfg.storage)
    run_id = newest_finished_run(root)
    run = root.child(run_id)
    tickets = {r["id"]: r for r in from_jsonl(run.read_bytes("prepared/tickets.jsonl"))}
    test = {t for t, r in tickets.items() if r["split"] == "test"}
    earlier: dict[str, set[str]] = {}
    for link in from_jsonl(run.read_bytes("prepared/links.jsonl")):
        if link["relation"] == "duplicate" and link["source"] in test:
            for a, b in ((link["source"], link["target"]), (link["target"], link["source"])):
                if (tickets[b].get("created") or "") < (tickets[a].get("created") or ""):
                    earlier.setdefault(a, set()).add(b)
    if not earlier:
        raise SystemExit("the test split has no ticket with a duplicate filed before it")
    query = sorted(earlier)[0]
    found = open_index(cfg, run_id)
    suggestions = found.suggest(tickets[query]["text"], k=3, before=tickets[query]["created"])
    title = tickets[query]["text"].split("\n")[0]
    click.echo(f"\nA new report, {query} (filed {tickets[query]['created'][:10]}): {title}")
    click.echo(f"run {run_id} suggests, among the {len(found)} tickets of its index filed before it:")
    for rank, s in enumerate(suggestions, start=1):
        mark = "  <- its duplicate" if s.id in earlier[query] else ""
        text = tickets[s.id]["text"].split("\n")[0] if s.id in tickets else ""
        click.echo(
            f"  {rank}. {s.id}  hybrid {s.hybrid:.3f} (dense {s.dense:.3f}, BM25 {s.lexical:.2f})  "
            f"{text}{mark}"
        )
    hit = any(s.id in earlier[query] for s in suggestions)
    click.echo(
        f"the true duplicate ({', '.join(sorted(earlier[query]))}) is {'' if hit else 'not '}among the top 3"
    )


if __name__ == "__main__":
    sys.exit(main())
