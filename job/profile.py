"""Where a step's time goes: seconds per phase (load, encode, fit, export, score, read, write, ...).

Every step records its phases in its record (`steps/<step>.json`: `phases_s`), and `--profile` prints them
when the command ends, so a slower step is traced to its phase in minutes. A phase counts only its own time: a
phase inside another (an encode inside the export) pauses the outer one, so the phases of a step add up to at
most its duration, and what they leave (`other`) is the step's own bookkeeping.

The phases of the step running now are found through a context variable (set when a step begins), so the code
that loads, encodes or writes marks its phase without a profiler handed down to it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Phases:
    """Seconds per phase of one step, each counted without the phases nested in it."""

    seconds: dict[str, float] = field(default_factory=dict)
    entered: dict[str, int] = field(default_factory=dict)  # how often: a model loaded twice shows as 2
    _open: list[list[object]] = field(
        default_factory=list
    )  # [name, started] of the phases entered, innermost last

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        now = time.monotonic()
        if self._open:
            self._stop(self._open[-1], now)
        self._open.append([name, now])
        self.entered[name] = self.entered.get(name, 0) + 1
        try:
            yield
        finally:
            now = time.monotonic()
            self._stop(self._open.pop(), now)
            if self._open:
                self._open[-1][1] = now  # the outer phase resumes

    def _stop(self, entry: list[object], now: float) -> None:
        name, started = str(entry[0]), float(entry[1])  # type: ignore[arg-type]
        self.seconds[name] = self.seconds.get(name, 0.0) + now - started
        entry[1] = now

    def rounded(self) -> dict[str, float]:
        return {
            name: round(seconds, 3) for name, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1])
        }

    def counts(self) -> dict[str, int]:
        return dict(sorted(self.entered.items()))


_CURRENT: ContextVar[Phases | None] = ContextVar("finetune_phases", default=None)


def start_step() -> Phases:
    """Fresh phases for the step beginning now (what `phase` adds to until the next step begins)."""
    phases = Phases()
    _CURRENT.set(phases)
    return phases


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the enclosed time as `name` in the running step's phases (nothing when no step is running)."""
    phases = _CURRENT.get()
    if phases is None:
        yield
        return
    with phases.phase(name):
        yield


class StepPhases(Protocol):
    """What a step record keeps of its time (job/runs/records.py StepRecord)."""

    duration_s: float
    phases_s: dict[str, float]
    phase_counts: dict[str, int]


def table(records: Mapping[str, StepPhases]) -> str:
    """Each step record's phases as one line for `--profile`:
    `step  total s  phase seconds (xN) ...  other`."""
    lines = []
    for step, record in records.items():
        total = float(record.duration_s)
        parts = {str(k): float(v) for k, v in record.phases_s.items()}
        parts["other"] = max(total - sum(parts.values()), 0.0)
        counts = record.phase_counts
        shown = "  ".join(
            f"{name} {seconds:.1f}" + (f" (x{counts[name]})" if counts.get(name, 1) > 1 else "")
            for name, seconds in parts.items()
        )
        lines.append(f"{step:<9} {total:7.1f} s   {shown}")
    return "\n".join(lines)
