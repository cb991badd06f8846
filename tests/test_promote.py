"""The promotion gate against a local directory and the loopback S3 server.

Runs are faked as finished run directories (metrics.json + manifest.json) written through the
store, so nothing is trained here. The races use real threads and real processes against the
real backends: the pointer must end up naming the best run, with that run's own metric value.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from job import promote as promote_module
from job.artifacts import to_json
from job.config import LoadedConfig, load_config
from job.errors import EXIT_NOT_PROMOTED, EXIT_OK, ConfigError, PromotionRefused, RunStateError, StorageError
from job.promote import pointer_slot, promote
from job.storage import Store, open_store
from tests.conftest import CLI, run_cli
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

POINTER = "promoted.json"


@dataclass
class Backend:
    """Where runs live for one test: a local directory or a bucket on the loopback server."""

    name: str
    uri: str
    storage: dict[str, str] = field(default_factory=dict)  # storage.* settings for in-process calls
    env: dict[str, str] = field(default_factory=dict)  # environment for `finetune-job` processes

    def loaded(self, **settings: Any) -> LoadedConfig:
        overrides = {"output.uri": self.uri, **{f"storage.{k}": v for k, v in self.storage.items()},
                     **{f"promote.{k}": v for k, v in settings.items()}}
        return load_config(environ={}, cli_overrides=overrides)

    def store(self) -> Store:
        return open_store(self.uri, self.loaded().config.storage)

    def pointer(self) -> dict[str, Any] | None:
        store = self.store()
        return json.loads(store.read_bytes(POINTER)) if store.exists(POINTER) else None

    def pointer_bytes(self) -> bytes | None:
        store = self.store()
        return store.read_bytes(POINTER) if store.exists(POINTER) else None

    def cli(self, run_id: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("promote", "--run-id", run_id, "--output", self.uri, *args, env=self.env, timeout=120)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "runs"))
    s3: S3Server = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("bucket")
    return Backend("s3", f"s3://{bucket}/runs",
                   storage={"endpoint_url": s3.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
                   env=s3.env())


def fake_run(backend: Backend, run_id: str, average_precision: float | None, *, finished: bool = True,
             roc_auc: float = 0.9) -> None:
    """A run directory as the pipeline leaves it, as far as promotion looks."""
    run = backend.store().child(run_id)
    metrics = {"base": {"average_precision": 0.5, "roc_auc": 0.7},
               "finetuned": {"average_precision": average_precision, "roc_auc": roc_auc, "n_pairs": 120},
               "classifier": {"macro_f1": 0.4}}
    run.write_bytes("metrics.json", to_json(metrics))
    if finished:
        run.write_bytes("manifest.json", to_json({"run_id": run_id, "files": [{"path": "metrics.json"}]}))


def run_metric(backend: Backend, run_id: str, metric: str = "average_precision") -> float:
    return float(json.loads(backend.store().child(run_id).read_bytes("metrics.json"))["finetuned"][metric])


# ---------------------------------------------------------------- decisions


def test_first_finished_run_is_promoted(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.71)
    written = promote(backend.loaded(), "run-a")
    pointer = backend.pointer()
    assert pointer == written
    assert pointer is not None
    assert (pointer["run_id"], pointer["metric"], pointer["value"], pointer["previous"]) == (
        "run-a", "average_precision", 0.71, None)
    assert pointer["uri"].rstrip("/").endswith("runs/run-a")
    assert pointer["promoted_at"]


def test_better_run_replaces_the_promoted_one(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.71)
    fake_run(backend, "run-b", 0.78)
    promote(backend.loaded(), "run-a")
    promote(backend.loaded(), "run-b")
    pointer = backend.pointer()
    assert pointer is not None
    assert (pointer["run_id"], pointer["value"]) == ("run-b", 0.78)
    assert pointer["previous"]["run_id"] == "run-a"
    assert pointer["previous"]["value"] == 0.71


def test_worse_run_is_refused_and_the_pointer_does_not_move(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.78)
    fake_run(backend, "run-b", 0.70)
    promote(backend.loaded(), "run-a")
    before = backend.pointer_bytes()
    with pytest.raises(PromotionRefused) as refused:
        promote(backend.loaded(margin=0.05), "run-b")
    assert "0.7000" in str(refused.value) and "0.7800" in str(refused.value) and "run-a" in str(refused.value)
    assert refused.value.exit_code == EXIT_NOT_PROMOTED
    assert backend.pointer_bytes() == before


def test_a_run_within_the_margin_is_promoted(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.80)
    fake_run(backend, "run-b", 0.79)
    promote(backend.loaded(), "run-a")
    promote(backend.loaded(margin=0.02), "run-b")
    pointer = backend.pointer()
    assert pointer is not None and pointer["run_id"] == "run-b"
    assert pointer["margin"] == 0.02


def test_exactly_at_the_margin_is_promoted_despite_float_rounding(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.8)
    fake_run(backend, "run-b", 0.79)  # 0.79 - 0.8 is -0.010000000000000009 in binary floats
    promote(backend.loaded(), "run-a")
    promote(backend.loaded(margin=0.01), "run-b")
    assert (backend.pointer() or {})["run_id"] == "run-b"


def test_unfinished_run_is_refused(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.70)
    fake_run(backend, "run-b", 0.95, finished=False)
    promote(backend.loaded(), "run-a")
    before = backend.pointer_bytes()
    with pytest.raises(RunStateError, match="not finished"):
        promote(backend.loaded(), "run-b")
    with pytest.raises(RunStateError, match="not finished"):
        promote(backend.loaded(), "no-such-run")
    assert backend.pointer_bytes() == before


def test_run_without_a_value_for_the_metric_is_refused(backend: Backend) -> None:
    fake_run(backend, "run-a", None)  # the test split had one class: no average precision
    with pytest.raises(PromotionRefused, match="no value for average_precision"):
        promote(backend.loaded(), "run-a")
    assert backend.pointer() is None


def test_unknown_metric_is_a_config_error_that_lists_the_known_ones(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.7)
    with pytest.raises(ConfigError, match="average_precision, n_pairs, roc_auc"):
        promote(backend.loaded(metric="avg_precision"), "run-a")


def test_promoting_the_promoted_run_again_is_a_no_op(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.7)
    promote(backend.loaded(), "run-a")
    before = backend.pointer_bytes()
    again = promote(backend.loaded(), "run-a")
    assert again["run_id"] == "run-a"
    assert backend.pointer_bytes() == before


def test_changing_the_metric_compares_against_the_promoted_runs_own_metrics(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.9, roc_auc=0.95)
    fake_run(backend, "run-b", 0.5, roc_auc=0.90)
    promote(backend.loaded(metric="average_precision"), "run-a")
    # Judged on roc_auc now: run-a's 0.95 comes from its metrics.json, not from the pointer's value.
    with pytest.raises(PromotionRefused, match="0.9500"):
        promote(backend.loaded(metric="roc_auc"), "run-b")
    promote(backend.loaded(metric="roc_auc", margin=0.06), "run-b")
    pointer = backend.pointer()
    assert pointer is not None and (pointer["run_id"], pointer["metric"], pointer["value"]) == ("run-b", "roc_auc", 0.90)


def test_a_corrupt_pointer_stops_promotion_with_a_clear_error(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.7)
    backend.store().write_bytes(POINTER, b"{not json")
    with pytest.raises(RunStateError, match="not valid JSON"):
        promote(backend.loaded(), "run-a")


def test_invalid_run_id_is_refused_before_touching_storage(backend: Backend) -> None:
    with pytest.raises(RunStateError, match="invalid run id"):
        promote(backend.loaded(), "../escape")


# ---------------------------------------------------------------- compare-and-swap


def test_pointer_slot_replaces_only_the_version_it_read(backend: Backend) -> None:
    slot = pointer_slot(backend.store(), "slot.json")
    assert slot.read() is None
    assert slot.replace(b'{"n": 1}', expected=None)
    assert not slot.replace(b'{"n": 2}', expected=None), "create must fail once the object exists"
    first = slot.read()
    assert first is not None and first.data == b'{"n": 1}'
    assert slot.replace(b'{"n": 3}', expected=first)
    assert not slot.replace(b'{"n": 4}', expected=first), "a stale version must not overwrite a newer write"
    latest = slot.read()
    assert latest is not None and latest.data == b'{"n": 3}' and latest.version != first.version


def test_racing_threads_leave_the_best_run_promoted(backend: Backend) -> None:
    values = [0.61, 0.74, 0.69, 0.80, 0.55, 0.77]
    runs = {f"race-{i}": v for i, v in enumerate(values)}
    for run_id, value in runs.items():
        fake_run(backend, run_id, value)
    loaded = backend.loaded()
    barrier = threading.Barrier(len(runs))
    outcomes: dict[str, str] = {}

    def contender(run_id: str) -> None:
        barrier.wait()
        try:
            promote(loaded, run_id)
            outcomes[run_id] = "promoted"
        except PromotionRefused:
            outcomes[run_id] = "refused"
        except Exception as exc:  # surfaced by the assertion below
            outcomes[run_id] = f"error: {exc!r}"

    threads = [threading.Thread(target=contender, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(outcomes.values()) <= {"promoted", "refused"}, outcomes
    pointer = backend.pointer()
    assert pointer is not None
    best = max(runs, key=runs.__getitem__)
    assert pointer["run_id"] == best and outcomes[best] == "promoted"
    assert pointer["value"] == run_metric(backend, best)
    previous = pointer["previous"]
    if previous is not None:  # the run it replaced was promoted with its own value, and was worse
        assert previous["value"] == run_metric(backend, previous["run_id"]) < pointer["value"]


def test_racing_processes_leave_a_consistent_pointer(backend: Backend) -> None:
    runs = {"proc-a": 0.66, "proc-b": 0.83, "proc-c": 0.71}
    for run_id, value in runs.items():
        fake_run(backend, run_id, value)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update(backend.env)
    procs = {run_id: subprocess.Popen([CLI, "promote", "--run-id", run_id, "--output", backend.uri], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run_id in runs}
    codes = {run_id: proc.wait(timeout=120) for run_id, proc in procs.items()}
    assert set(codes.values()) <= {EXIT_OK, EXIT_NOT_PROMOTED}, {k: p.stderr.read() for k, p in procs.items() if p.stderr}
    assert codes["proc-b"] == EXIT_OK
    pointer = backend.pointer()
    assert pointer is not None and pointer["run_id"] == "proc-b"
    assert pointer["value"] == run_metric(backend, "proc-b")


# ---------------------------------------------------------------- the command


def test_cli_exit_codes_and_the_comparison_in_the_log(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.78)
    fake_run(backend, "run-b", 0.61)
    fake_run(backend, "run-c", 0.90, finished=False)
    first = backend.cli("run-a")
    assert first.returncode == EXIT_OK, first.stderr
    refused = backend.cli("run-b", "--set", "promote.margin=0.1")
    assert refused.returncode == EXIT_NOT_PROMOTED, refused.stderr
    comparison = [json.loads(line) for line in refused.stdout.splitlines() if '"comparison"' in line]
    assert comparison and comparison[0]["candidate_value"] == 0.61 and comparison[0]["promoted_value"] == 0.78
    assert comparison[0]["decision"] == "refuse" and comparison[0]["margin"] == 0.1
    assert "not promoted" in refused.stderr and "run-a" in refused.stderr
    unfinished = backend.cli("run-c")
    assert unfinished.returncode == 2 and "not finished" in unfinished.stderr
    assert (backend.pointer() or {})["run_id"] == "run-a"


# ---------------------------------------------------------------- the local lock


def test_a_stale_local_lock_is_taken_over(tmp_path: Path) -> None:
    backend = Backend("local", str(tmp_path / "runs"))
    fake_run(backend, "run-a", 0.7)
    lock = tmp_path / "runs" / f"{POINTER}.lock"
    lock.write_text('{"pid": 1}')
    old = time.time() - promote_module.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    promote(backend.loaded(), "run-a")
    assert (backend.pointer() or {})["run_id"] == "run-a"
    assert not lock.exists()


def test_a_held_local_lock_makes_promotion_fail_as_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Backend("local", str(tmp_path / "runs"))
    fake_run(backend, "run-a", 0.7)
    (tmp_path / "runs" / f"{POINTER}.lock").write_text('{"pid": 1}')  # fresh: another promotion is running
    monkeypatch.setattr(promote_module, "LOCK_WAIT_S", 0.3)
    with pytest.raises(StorageError) as failed:
        promote(backend.loaded(), "run-a")
    assert failed.value.transient and failed.value.exit_code == 75
    assert backend.pointer() is None
