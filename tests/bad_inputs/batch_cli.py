"""Run many `finetune-job` invocations without paying the import cost each time.

One interpreter imports the job (and its heavy libraries) once, then forks one child per
invocation. Each child is its own process with its own working directory, environment,
stdout/stderr files and exit code, and runs the real click entry point (`job.cli.main`), so
it behaves as `finetune-job ARGS` would, minus three seconds of imports.

    python -m tests.bad_inputs.batch_cli JOBS.json RESULTS.json [--workers N] [--timeout S]

JOBS.json: [{"id", "args", "cwd", "env", "stdout", "stderr"}]. RESULTS.json: {id: exit code};
a child killed by its timeout is reported as 124. Tests call `run_many`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `run_cli` (tests/conftest.py) gives a CLI process: no FINETUNE_/AWS_ settings
    leak in from outside, models stay offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


@dataclass
class Outcome:
    exit: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def run_many(
    invocations: dict[str, tuple[list[str], Path, dict[str, str]]],
    workdir: Path,
    workers: int | None = None,
    timeout_s: int = 120,
) -> dict[str, Outcome]:
    """Run `finetune-job ARGS` for each id -> (args, cwd, extra env); returns each one's outcome."""
    workdir.mkdir(parents=True, exist_ok=True)
    jobs: list[dict[str, Any]] = [
        {
            "id": job_id,
            "args": args,
            "cwd": str(cwd),
            "env": cli_env(env),
            "stdout": str(workdir / f"{n}.out"),
            "stderr": str(workdir / f"{n}.err"),
        }
        for n, (job_id, (args, cwd, env)) in enumerate(invocations.items())
    ]
    (workdir / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bad_inputs.batch_cli",
            str(workdir / "jobs.json"),
            str(workdir / "results.json"),
            "--workers",
            str(workers or len(os.sched_getaffinity(0))),
            "--timeout",
            str(timeout_s),
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"batch runner failed: {done.stderr[-3000:]}")
    codes = json.loads((workdir / "results.json").read_text())
    return {
        job["id"]: Outcome(
            codes[job["id"]],
            Path(job["stdout"]).read_text(errors="replace"),
            Path(job["stderr"]).read_text(errors="replace"),
        )
        for job in jobs
    }


def _child(job: dict[str, Any], timeout_s: int) -> None:
    """In the forked child: become the CLI process the job describes, run it, never return."""
    code = 1
    try:
        signal.alarm(timeout_s)  # bounded: SIGALRM ends a child that hangs
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        from job.cli import main

        main(job["args"], prog_name="finetune-job")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_jobs(jobs: list[dict[str, Any]], workers: int, timeout_s: int) -> dict[str, int]:
    results: dict[str, int] = {}
    running: dict[int, str] = {}
    pending = list(reversed(jobs))
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop()
            pid = os.fork()
            if pid == 0:
                _child(job, timeout_s)
            running[pid] = job["id"]
        pid, status = os.wait()
        job_id = running.pop(pid)
        if os.WIFSIGNALED(status):
            results[job_id] = 124 if os.WTERMSIG(status) == signal.SIGALRM else 128 + os.WTERMSIG(status)
        else:
            results[job_id] = os.WEXITSTATUS(status)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs")
    parser.add_argument("results")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=120)
    options = parser.parse_args()
    import job.cli  # noqa: F401  (imported once, before forking)
    import job.pipeline  # noqa: F401

    with open(options.jobs) as handle:
        jobs = json.load(handle)
    results = run_jobs(jobs, max(1, options.workers), options.timeout)
    with open(options.results, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
