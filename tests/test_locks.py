"""The run lock against a local directory and the loopback S3 server, and what the CLI does with it.

A lock left by a killed process on this host is taken over at once; one that may be live makes
the second process exit 75 (Argo retries, and the retried pod waits out the TTL); and a process
that did not get the lock touches nothing of the run or its scratch directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job.errors import EXIT_TRANSIENT, RunInUse
from job.jsonio import to_json
from job.log import get_logger
from job.runs.locks import process_start, refuse_if_locked, run_lock, this_machine
from job.storage import LocalStore, Store
from tests.conftest import TINY, merged, run_cli, synthetic_inputs, write_config


def _config(tmp_path: Path, synthetic_dir: Path, output: str | None = None, **extra: dict) -> Path:
    return write_config(
        tmp_path / "config.json",
        merged(
            TINY,
            {
                "data": synthetic_inputs(synthetic_dir),
                "output": {"uri": output or str(tmp_path / "runs")},
                "pairs": {"mine_hard_negatives": False},  # no model needed: these tests are about the lock
            },
            extra,
        ),
    )


def _hold_and_die(run_dir: str) -> None:
    """Take the run lock in a child process, then SIGKILL it: no handler runs, the lock stays behind."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from job.runs.locks import run_lock\n"
        "from job.log import get_logger\n"
        "from job.storage import LocalStore\n"
        "lock = run_lock(LocalStore(Path(sys.argv[1])), 'run', get_logger(), 120.0)\n"
        "lock.__enter__()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", code, run_dir], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def test_a_lock_left_by_a_killed_process_on_this_host_is_taken_over_at_once(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    config = _config(tmp_path, synthetic_dir)  # lock_ttl_s stays at its default, 120 s
    _hold_and_die(str(tmp_path / "runs" / "K"))
    assert (tmp_path / "runs" / "K" / "locks" / "run.lock").exists()
    started = time.monotonic()
    rerun = run_cli("prepare", "--config", str(config), "--run-id", "K", timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "taking over a stale lock" in rerun.stdout
    assert time.monotonic() - started < 60, "the rerun must not wait out the TTL"
    assert not (tmp_path / "runs" / "K" / "locks" / "run.lock").exists()


def _fresh_lock_from_another_host(run_dir: Path) -> None:
    lock = run_dir / "locks" / "run.lock"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(to_json({"host": "another-host", "pid": 7, "token": "t", "heartbeat": time.time()}))


def test_a_lock_that_may_be_live_is_refused_with_the_retryable_exit_code(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    config = _config(tmp_path, synthetic_dir)
    run_dir = tmp_path / "runs" / "L"
    _fresh_lock_from_another_host(run_dir)
    refused = run_cli("prepare", "--config", str(config), "--run-id", "L", timeout=120)
    assert refused.returncode == EXIT_TRANSIENT, refused.stderr[-2000:]
    assert "in use by another process" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == [
        "locks",
        "locks/run.lock",
    ]


def test_a_refused_process_leaves_the_holders_scratch_directory_alone(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    config = _config(tmp_path, synthetic_dir)  # no runtime.work_dir: scratch is a temp dir, removed after
    scratch_root = tmp_path / "tmp"
    holders_scratch = scratch_root / "finetune-W1"
    (holders_scratch / "model").mkdir(parents=True)
    (holders_scratch / "model" / "weights.bin").write_bytes(b"the holder's half-trained model")
    with run_lock(LocalStore(tmp_path / "runs" / "W1"), "run", get_logger(), 120.0):
        refused = run_cli(
            "prepare",
            "--config",
            str(config),
            "--run-id",
            "W1",
            env={"TMPDIR": str(scratch_root)},
            timeout=120,
        )
        assert refused.returncode == EXIT_TRANSIENT, refused.stderr[-2000:]
        assert (holders_scratch / "model" / "weights.bin").exists(), (
            "the refused process deleted W1's scratch"
        )


# ---------------------------------------------------------------- the lock on both backends


def _holder(store: Store) -> dict:
    return json.loads(store.read_bytes("locks/run.lock"))


def _write_holder(store: Store, **fields: object) -> None:
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": "theirs",
        "heartbeat": time.time(),
        "machine": this_machine(),
        "started": process_start(os.getpid()),
        **fields,
    }
    store.write_bytes("locks/run.lock", to_json(holder))


def test_a_held_lock_refuses_a_second_holder_with_exit_75_and_is_released(store: Store) -> None:
    with run_lock(store, "run", get_logger(), 120.0):
        assert _holder(store)["pid"] == os.getpid()
        with (
            pytest.raises(RunInUse, match="in use by another process") as refused,
            run_lock(store, "run", get_logger(), 120.0),
        ):
            pass
        assert refused.value.exit_code == EXIT_TRANSIENT
        with pytest.raises(RunInUse):
            refuse_if_locked(store, "run", 120.0)
    assert not store.exists("locks/run.lock")
    refuse_if_locked(store, "run", 120.0)


def test_a_live_holder_on_this_host_is_respected_however_old_its_heartbeat(store: Store) -> None:
    _write_holder(store, heartbeat=time.time() - 3600)  # this very process: alive
    with pytest.raises(RunInUse), run_lock(store, "run", get_logger(), 120.0):
        pass


def test_a_holder_on_this_host_whose_process_is_gone_is_stale_at_once(store: Store) -> None:
    _write_holder(store, started="0")  # the pid is ours, the start time is not: the id was reused
    with run_lock(store, "run", get_logger(), 120.0):
        assert _holder(store)["token"] != "theirs"


def test_a_holder_elsewhere_is_stale_only_after_the_ttl(store: Store) -> None:
    _write_holder(store, host="another-host", machine="another-machine", heartbeat=time.time() - 5)
    with pytest.raises(RunInUse), run_lock(store, "run", get_logger(), 10.0):
        pass
    with run_lock(store, "run", get_logger(), 4.0):
        assert _holder(store)["host"] == socket.gethostname()


def test_the_heartbeat_keeps_the_lock_fresh_and_release_spares_a_new_holder(store: Store) -> None:
    with run_lock(store, "run", get_logger(), 0.4):
        first = _holder(store)["heartbeat"]
        time.sleep(0.5)
        assert _holder(store)["heartbeat"] > first, "the holder refreshed its heartbeat"
        _write_holder(store, host="another-host", machine="another-machine")  # taken over meanwhile
    assert _holder(store)["token"] == "theirs", "the old holder did not delete the new holder's lock"


def test_a_holder_that_died_unreaped_on_this_host_is_stale_at_once(store: Store) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    try:
        started = process_start(child.pid)
        time.sleep(1.5)  # it has exited; not waited for, it stays a zombie with its pid
        _write_holder(store, pid=child.pid, started=started)
        with run_lock(store, "run", get_logger(), 120.0):
            assert _holder(store)["pid"] == os.getpid()
    finally:
        child.wait()


def test_an_unreadable_lock_is_taken_over(store: Store) -> None:
    store.write_bytes("locks/run.lock", b"\x00 not a holder")
    refuse_if_locked(store, "run", 120.0)
    with run_lock(store, "run", get_logger(), 120.0):
        assert _holder(store)["pid"] == os.getpid()


def test_processes_sharing_a_run_id_on_one_host_never_share_a_default_scratch_directory(
    tmp_path: Path,
) -> None:
    """evaluate and classify of one run, or one run id under two output folders, may run on one host at once:
    without runtime.work_dir each process gets its own scratch, so the first to finish removes only its own
    (a shared one lost the other's plots: 'cannot write plots/...png')."""
    from job.config import load_config
    from job.runs.context import open_run

    loaded = load_config(None, environ={}, cli_overrides={"output.uri": str(tmp_path / "runs")})
    first, second = open_run(loaded, "R1"), open_run(loaded, "R1")
    assert first.work_dir != second.work_dir and first.work_dir.name.startswith("finetune-R1")
    pinned = load_config(
        None,
        environ={},
        cli_overrides={"output.uri": str(tmp_path / "runs"), "runtime.work_dir": str(tmp_path / "w")},
    )
    assert open_run(pinned, "R1").work_dir == tmp_path / "w" / "finetune-R1"  # a configured one is kept
