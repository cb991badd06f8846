"""job.launch: torchrun, but the pod's exit code is the job's (75 retried, 2 not, 1 a bug)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_TRANSIENT
from job.launch import launcher_exit_code

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LAUNCH = [sys.executable, "-m", "job.launch"]
TWO_WORKERS = ["--standalone", "--nproc-per-node=2", "--no-python"]


def test_exit_code_of_the_failed_workers() -> None:
    assert launcher_exit_code([EXIT_TRANSIENT, EXIT_TRANSIENT]) == EXIT_TRANSIENT
    assert launcher_exit_code([EXIT_TRANSIENT, 0]) == EXIT_TRANSIENT
    assert launcher_exit_code([EXIT_BAD_INPUT]) == EXIT_BAD_INPUT
    # A bug on one rank outranks an eviction on another: retrying would hit the bug again.
    assert launcher_exit_code([EXIT_TRANSIENT, EXIT_FAILURE]) == EXIT_FAILURE
    assert launcher_exit_code([-signal.SIGKILL]) == EXIT_FAILURE
    assert launcher_exit_code([]) == EXIT_FAILURE
    # torchrun's agent SIGTERMs the surviving workers once one fails: the failed one's code counts.
    assert launcher_exit_code([-signal.SIGTERM, EXIT_BAD_INPUT]) == EXIT_BAD_INPUT
    assert launcher_exit_code([-signal.SIGTERM, EXIT_TRANSIENT]) == EXIT_TRANSIENT
    assert launcher_exit_code([-signal.SIGTERM, -signal.SIGKILL]) == EXIT_FAILURE
    assert launcher_exit_code([-signal.SIGTERM, -signal.SIGTERM]) == EXIT_TRANSIENT


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("code", [EXIT_TRANSIENT, EXIT_BAD_INPUT])
def test_a_workers_exit_code_reaches_the_pod_where_torchrun_says_1(code: int) -> None:
    worker = ["sh", "-c", f"exit {code}"]
    plain = subprocess.run(
        [TORCHRUN, *TWO_WORKERS, *worker], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert plain.returncode == EXIT_FAILURE, (
        "torchrun itself reports any failure as 1 (why job.launch exists)"
    )
    launched = subprocess.run(
        [*LAUNCH, *TWO_WORKERS, *worker], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert launched.returncode == code, launched.stderr[-2000:]


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_the_workers_and_exits_75(tmp_path: Path) -> None:
    started = tmp_path / "started"
    worker = ["sh", "-c", f"touch {started}-$LOCAL_RANK; exec sleep 120"]
    process = subprocess.Popen(
        [*LAUNCH, *TWO_WORKERS, *worker],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not all(Path(f"{started}-{rank}").exists() for rank in (0, 1)):
        assert time.monotonic() < deadline and process.poll() is None, "workers did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_TRANSIENT, output[-2000:]
