"""prepare's drift section: this run's inputs against the promoted run's (the measures are
job/fleet/drift.py's; this is where the promoted run's prepared files are found and read)."""

from __future__ import annotations

from typing import Any

from job.config import JobConfig
from job.errors import JobError
from job.fleet.drift import InputProfile, compare, profile_inputs
from job.fleet.history import promoted_runs
from job.jsonio import from_jsonl
from job.runs.artifacts import check_run_id
from job.runs.prepared import LINKS_FILE, TICKETS_FILE
from job.storage import open_store


def drift_against_promoted(cfg: JobConfig, current: InputProfile, log: Any) -> dict[str, Any]:
    """This run's inputs against the promoted run's (drift.* bounds); a warning per bound passed.

    Drift informs and never stops a run: without a promoted run, or when its prepared files cannot
    be read, the section says why it is empty."""
    root = open_store(cfg.output.uri.rstrip("/"), cfg.storage)
    promoted_run: str | None = None
    try:
        promoted_run, _ = promoted_runs(root, cfg.promote.pointer)
        if promoted_run is None:
            log.info("no drift check: no promoted run yet")
            return {"against_run": None, "skipped": "no promoted run"}
        run = root.child(check_run_id(promoted_run))
        promoted = profile_inputs(
            from_jsonl(run.read_bytes(TICKETS_FILE)), from_jsonl(run.read_bytes(LINKS_FILE))
        )
        section = compare(current, promoted, promoted_run, cfg.drift)
    except (JobError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "no drift check: the promoted run's prepared inputs cannot be read",
            promoted_run=promoted_run,
            error=str(exc)[:300],
        )
        return {
            "against_run": promoted_run,
            "skipped": f"cannot read its prepared inputs ({type(exc).__name__})",
        }
    for warning in section["warnings"]:
        log.warning("input drift past bound", against_run=promoted_run, **warning)
    log.info(
        "drift against the promoted run",
        against_run=promoted_run,
        tickets=section["tickets"],
        links=section["links"],
        relation_shift=section["relation_mix"]["shift"],
        length_shift=section["text_length"]["shift"],
        new_projects=section["projects"]["new"],
        new_test_tickets_share=section["new_test_tickets_share"],
        warnings=len(section["warnings"]),
    )
    return section
