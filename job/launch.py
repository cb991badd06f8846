"""torchrun for the job's commands, keeping the job's exit codes.

    python -m job.launch --standalone --nproc-per-node=4 --no-python finetune-job train --run-id R ...

The arguments are torchrun's, unchanged (torch.distributed.run parses them). What differs is the
exit code: torchrun ends with 1 whenever a worker fails and when it is itself stopped by SIGTERM,
which would turn an eviction or a storage hiccup (exit 75, retried by the workflows and resumed
from the last checkpoint) into a failure that is never retried, and bad input (exit 2) into a bug.
Here a SIGTERM to the launcher still reaches every worker (torchrun forwards it, and the workers
checkpoint and stop), and the launcher then exits 75; a failed worker's own code is passed on.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable

from job.errors import EXIT_FAILURE, EXIT_TRANSIENT


def launcher_exit_code(worker_codes: Iterable[int]) -> int:
    """One exit code for the pod from the failed workers' codes: a bug (any code other than 75)
    outranks a transient failure, so a broken run is not retried as if it were an eviction.

    Once one worker fails, torchrun's agent stops the others with SIGTERM (code -15): those are
    the consequence, not the cause, so the failed worker's own code is the one passed on."""
    reported = set(worker_codes)
    codes = reported - {0, -signal.SIGTERM}
    if not codes:
        # Only SIGTERMs: the workers were stopped before they could checkpoint; a retry resumes.
        return EXIT_TRANSIENT if -signal.SIGTERM in reported else EXIT_FAILURE
    if codes == {EXIT_TRANSIENT}:
        return EXIT_TRANSIENT
    # A worker killed by another signal (OOM's SIGKILL, a segfault) is a failure, not a retry.
    real = sorted(code for code in codes if code != EXIT_TRANSIENT)
    return real[0] if real[0] > 0 else EXIT_FAILURE


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        print(f"job.launch: workers failed with exit codes {sorted(set(codes))}", file=sys.stderr)
        sys.exit(launcher_exit_code(codes))
    except SignalException as exc:
        print(f"job.launch: stopped by {exc.sigval.name}; workers were asked to checkpoint", file=sys.stderr)
        sys.exit(EXIT_TRANSIENT)


if __name__ == "__main__":
    main()
