"""`validate-data`: what the inputs hold, every problem in them, and whether they can be split.

The same reading, parsing and split check as `prepare` (inputs.load_corpus, split_by_components,
check_usable), run with data.on_error: skip so every problem is collected, whatever the policy;
the policy decides the verdict at the end. Nothing is trained or written to the output.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from job.config import JobConfig
from job.data.inputs import load_corpus
from job.data.records import Corpus, require_enough
from job.data.split import check_usable, split_by_components
from job.errors import ConfigError, InputError, Problem

SHOWN_PER_FILE = 50  # a file with a bad export can hold a problem per row: the rest goes to a file


def validate_data(cfg: JobConfig, echo: Callable[[str], None], problems_file: Path | None = None) -> None:
    """Report on the inputs line by line through `echo`; raise InputError when they cannot be used.

    Each file's first SHOWN_PER_FILE problems are shown with the counts; when some are left out,
    all of them go to `problems_file` (default: a new file under runtime.work_dir or the temp
    directory), and the report says where.
    """
    lenient = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_error": "skip"})})
    target = problems_file or _default_problems_file(cfg)
    try:
        corpus = load_corpus(lenient)  # collect everything, whatever the policy
    except InputError as exc:  # whole-file problems: nothing after them can be trusted
        where = _write_all(exc.problems, target) if len(exc.problems) > SHOWN_PER_FILE else None
        raise InputError(f"input unusable: {exc}" + (f"\nevery problem: {where}" if where else "")) from None
    _report_files(corpus, echo, target)
    require_enough(corpus)
    edges = corpus.edges()
    split = split_by_components(sorted(corpus.tickets), edges, cfg.pairs.split, cfg.train.seed)
    per_split = check_usable(split, edges)
    echo(
        "split: "
        + ", ".join(
            f"{n} {len(split.members[n])} tickets / {per_split[n]} linked pairs" for n in split.members
        )
    )
    if corpus.problems and cfg.data.on_error == "fail":
        raise InputError(f"{len(corpus.problems)} problem(s) found (data.on_error=fail)")
    echo(
        "inputs OK"
        if not corpus.problems
        else f"inputs usable: {len(corpus.problems)} bad rows will be skipped"
    )


def _report_files(corpus: Corpus, echo: Callable[[str], None], target: Path) -> None:
    """Counts per file and its first problems; every problem to `target` when some were left out."""
    cut = any(len(report.problems) > SHOWN_PER_FILE for report in corpus.reports)
    where = _write_all(corpus.problems, target) if cut else None
    for report in corpus.reports:
        echo(
            f"{report.name}: {report.rows} rows, {report.kept} kept, {report.skipped} bad, "
            f"{report.duplicates_dropped} duplicates dropped, sha256 {report.sha256[:12]}"
        )
        for problem in report.problems[:SHOWN_PER_FILE]:
            echo(f"  {problem}")
        if len(report.problems) > SHOWN_PER_FILE:
            echo(f"  ... and {len(report.problems) - SHOWN_PER_FILE} more problem(s) in this file")
    if where:
        echo(f"every problem ({len(corpus.problems)}): {where}")
    echo(
        f"tickets: {len(corpus.tickets)}  links: {len(corpus.links)}"
        + ("" if corpus.scored_pairs is None else f"  pairs: {len(corpus.scored_pairs)}")
    )
    if corpus.links:
        per_relation = Counter(link.relation for link in corpus.links).most_common()
        echo("links per relation: " + ", ".join(f"{relation} {count}" for relation, count in per_relation))
    if corpus.dropped:  # a converted input (a Jira export): what was not kept, and why
        echo("links not kept: " + "; ".join(f"{count} {reason}" for reason, count in corpus.dropped.items()))


def _default_problems_file(cfg: JobConfig) -> Path:
    folder = Path(cfg.runtime.work_dir) if cfg.runtime.work_dir else Path(tempfile.gettempdir())
    return folder / f"validate-data-problems-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.txt"


def _write_all(problems: list[Problem], target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(f"{problem}\n" for problem in problems), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the list of input problems to {target}: {exc.strerror}") from None
    return target
