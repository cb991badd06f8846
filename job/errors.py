"""The job's exception hierarchy and the one place that maps it to exit codes.

Exit codes are part of the operator interface (Argo's retryStrategy keys on 75):
0 success, 2 bad config or input (retrying will not help), 75 transient storage or
network failure (retry), 1 anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_PROMOTED = 3  # promote: the new run is worse; not an error worth retrying
EXIT_TRANSIENT = 75  # EX_TEMPFAIL from sysexits.h


class JobError(Exception):
    """Base of every error the job expects and reports without a traceback."""

    exit_code = EXIT_FAILURE


class ConfigError(JobError):
    """The configuration is invalid: unknown key, wrong type, impossible value."""

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class Problem:
    """One bad row or value in an input file."""

    file: str
    location: str | None  # "line 3", "row 3" (CSV) or "item 3" (JSON array)
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file} {self.location}" if self.location else self.file
        field = f" field '{self.field}':" if self.field else ""
        return f"{where}:{field} {self.message}"


class InputError(JobError):
    """Input data is unusable; carries every problem found, not just the first."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        self.problems = problems or []
        shown = "\n".join(f"  {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{message}\n{shown}{more}" if shown else message)


class RunStateError(JobError):
    """The run directory is not in a state this step can work from (finished, missing step, locked)."""

    exit_code = EXIT_BAD_INPUT


class RunInUse(RunStateError):
    """Another process holds the run's lock and may be alive: retrying later can succeed (exit 75)."""

    exit_code = EXIT_TRANSIENT


class StorageError(JobError):
    """Object storage failed. Transient failures exit 75 so the orchestrator retries them."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient
        self.exit_code = EXIT_TRANSIENT if transient else EXIT_BAD_INPUT


class PromotionRefused(JobError):
    """The run is worse than the promoted one (beyond the margin); the pointer did not move."""

    exit_code = EXIT_NOT_PROMOTED


class Interrupted(JobError):
    """The pod was asked to stop (SIGTERM); state was checkpointed and a rerun resumes."""

    exit_code = EXIT_TRANSIENT


def exit_code_for(error: BaseException) -> int:
    """Exit code for any exception: the job's own carry theirs, the rest are failures."""
    if isinstance(error, JobError):
        return error.exit_code
    return EXIT_FAILURE
