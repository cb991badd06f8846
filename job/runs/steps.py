"""The job's steps, named once: their order, what each needs, and which may share a run.

Everything that lists, orders or checks steps (the CLI's commands, the run directory's records,
the run lock, the metadata) reads it from here, so adding or reordering a step is one edit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One step of the job.

    needs: steps that must have recorded themselves first (their outputs are this step's inputs).
    shares_run: may run beside the other sharing steps (separate pods) instead of owning the run.
    """

    name: str
    summary: str
    needs: tuple[Step, ...] = ()
    shares_run: bool = False


PREPARE = Step("prepare", "Read inputs, split by link components, build pairs.")
TRAIN = Step("train", "Fine-tune on the prepared pairs; checkpoints to storage.", needs=(PREPARE,))
INDEX = Step(
    "index",
    "Encode every ticket with the fine-tuned model: the vectors and the keyword index.",
    needs=(TRAIN,),
)
EVALUATE = Step(
    "evaluate", "Score base and fine-tuned models on the test split.", needs=(INDEX,), shares_run=True
)
CLASSIFY = Step("classify", "Train and score the relation classifier.", needs=(INDEX,), shares_run=True)

STEPS: tuple[Step, ...] = (PREPARE, TRAIN, INDEX, EVALUATE, CLASSIFY)  # the order `run` goes through them
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
SHARED_STEPS: tuple[Step, ...] = tuple(step for step in STEPS if step.shares_run)


def required_steps(classify_enabled: bool) -> tuple[Step, ...]:
    """The steps a run needs before it is finished: classify only when it is enabled."""
    return tuple(step for step in STEPS if step is not CLASSIFY or classify_enabled)


def prerequisites(step: Step) -> tuple[Step, ...]:
    """Every step whose outputs `step` uses, directly or not, in run order."""
    found: set[Step] = set()
    pending = list(step.needs)
    while pending:
        need = pending.pop()
        if need not in found:
            found.add(need)
            pending.extend(need.needs)
    return tuple(s for s in STEPS if s in found)


def dependents(step: Step) -> tuple[Step, ...]:
    """Steps built, directly or not, on `step`'s outputs: redoing `step` makes their records stale."""
    found: list[Step] = []
    for later in STEPS:
        if any(need is step or need in found for need in later.needs):
            found.append(later)
    return tuple(found)
