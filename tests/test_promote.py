"""The promotion gate against a local directory and the loopback S3 server.

Runs are faked as finished run directories (metrics.json, a small model/, and a manifest listing
them with sizes and sha256) written through the store, so nothing is trained here. The races use
real threads and real processes against the real backends: the pointer must end up naming the
best run, with that run's own metric value. A run damaged after it finished is refused (exit 2)
with the check that failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from job.config import LoadedConfig, load_config
from job.errors import EXIT_NOT_PROMOTED, EXIT_OK, ConfigError, PromotionRefused, RunStateError
from job.fleet.promote import promote
from job.jsonio import to_json
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
        # The history each promotion refreshes is tested in test_history.py; here it would only cost time.
        # Promotion's mechanics do not depend on the metric: these tests judge on average_precision.
        settings = {"refresh_history": False, "metric": "average_precision", **settings}
        overrides = {
            "output.uri": self.uri,
            **{f"storage.{k}": v for k, v in self.storage.items()},
            **{f"promote.{k}": v for k, v in settings.items()},
        }
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
        return run_cli(
            "promote",
            "--run-id",
            run_id,
            "--output",
            self.uri,
            *args,
            env={"FINETUNE_PROMOTE__REFRESH_HISTORY": "false", **self.env},
            timeout=120,
        )


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "runs"))
    s3: S3Server = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("bucket")
    return Backend(
        "s3",
        f"s3://{bucket}/runs",
        storage={"endpoint_url": s3.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        env=s3.env(),
    )


# A model as train publishes it, small: promotion checks each file against the manifest, not its content.
MODEL_FILES = {
    "model/modules.json": b"[]",
    "model/1_Pooling/config.json": b"{}",
    "model/model.safetensors": b"weights" * 64,
}


def fake_run(
    backend: Backend,
    run_id: str,
    average_precision: float | None,
    *,
    finished: bool = True,
    roc_auc: float = 0.9,
) -> None:
    """A run directory as the pipeline leaves it, as far as promotion looks: metrics, a model, the
    manifest."""
    run = backend.store().child(run_id)
    metrics = {
        "base": {"average_precision": 0.5, "roc_auc": 0.7},
        # one quality value under the default promote.metric and under average_precision
        "finetuned": {
            "average_precision": average_precision,
            "hybrid_recall_at_10": average_precision,
            "roc_auc": roc_auc,
            "n_pairs": 120,
        },
        "classifier": {"macro_f1": 0.4},
    }
    records = [run.write_bytes("metrics.json", to_json(metrics))]
    records += [run.write_bytes(key, data) for key, data in MODEL_FILES.items()]
    if finished:
        write_manifest(run, run_id, [asdict(r) for r in records])


def write_manifest(run: Store, run_id: str, files: list[dict[str, Any]]) -> None:
    run.write_bytes("manifest.json", to_json({"run_id": run_id, "files": files}))


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
        "run-a",
        "average_precision",
        0.71,
        None,
    )
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
    with pytest.raises(ConfigError, match="average_precision, hybrid_recall_at_10, n_pairs, roc_auc"):
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
    assert pointer is not None and (pointer["run_id"], pointer["metric"], pointer["value"]) == (
        "run-b",
        "roc_auc",
        0.90,
    )


def test_a_corrupt_pointer_stops_promotion_with_a_clear_error(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.7)
    backend.store().write_bytes(POINTER, b"{not json")
    with pytest.raises(RunStateError, match="not valid JSON"):
        promote(backend.loaded(), "run-a")


def test_invalid_run_id_is_refused_before_touching_storage(backend: Backend) -> None:
    with pytest.raises(RunStateError, match="invalid run id"):
        promote(backend.loaded(), "../escape")


# ---------------------------------------------------------------- races


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
    procs = {
        run_id: subprocess.Popen(
            [CLI, "promote", "--run-id", run_id, "--output", backend.uri],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in runs
    }
    codes = {run_id: proc.wait(timeout=120) for run_id, proc in procs.items()}
    assert set(codes.values()) <= {EXIT_OK, EXIT_NOT_PROMOTED}, {
        k: p.stderr.read() for k, p in procs.items() if p.stderr
    }
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


# ---------------------------------------------------------------- what promote verifies


def _edit_metrics(run: Store, value: float) -> None:
    metrics = json.loads(run.read_bytes("metrics.json"))
    metrics["finetuned"]["average_precision"] = value
    run.write_bytes("metrics.json", json.dumps(metrics).encode())  # Infinity as an editor may leave it


def test_edited_metrics_and_a_deleted_model_are_refused_with_exit_2(backend: Backend) -> None:
    # issue 11: metrics.json edited to 1e308 and model/ deleted was promoted, and every later run refused.
    fake_run(backend, "W1", 0.7)
    run = backend.store().child("W1")
    _edit_metrics(run, 1e308)
    run.delete_prefix("model/")
    result = backend.cli("W1")
    assert result.returncode == 2, result.stderr
    assert "metrics.json" in result.stderr and "Traceback" not in result.stderr
    assert backend.pointer() is None


def _same_size_other_bytes(run: Store, key: str) -> None:
    data = run.read_bytes(key)
    run.write_bytes(key, bytes([data[0] ^ 1]) + data[1:])


def _copied_from_another_run(backend: Backend, run_id: str) -> None:
    """W2's files copied under run_id, manifest and all: the manifest names W2."""
    fake_run(backend, "W2", 0.7)
    source, target = backend.store().child("W2"), backend.store().child(run_id)
    for key, _ in source.list_keys(""):
        target.write_bytes(key, source.read_bytes(key))


def _manifest_without(run: Store, run_id: str, prefix: str) -> None:
    files = json.loads(run.read_bytes("manifest.json"))["files"]
    write_manifest(run, run_id, [f for f in files if not f["path"].startswith(prefix)])


def _consistent_but_out_of_range(run: Store, run_id: str, value: float) -> None:
    """metrics.json edited and the manifest rewritten to match it: only the value itself is wrong."""
    _edit_metrics(run, value)
    files = json.loads(run.read_bytes("manifest.json"))["files"]
    data = run.read_bytes("metrics.json")
    record = {"path": "metrics.json", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_manifest(run, run_id, [record if f["path"] == "metrics.json" else f for f in files])


DAMAGE = {
    "model file missing": (
        lambda b, r: r.delete("model/model.safetensors"),
        "model/model.safetensors is missing",
    ),
    "model file with other bytes": (
        lambda b, r: _same_size_other_bytes(r, "model/model.safetensors"),
        "model/model.safetensors.*sha256",
    ),
    "metrics edited": (
        lambda b, r: _edit_metrics(r, 0.99),
        r"metrics.json has \d+ bytes, manifest.json says",
    ),
    "a model file the manifest does not list": (
        lambda b, r: r.write_bytes("model/pytorch_model.bin", b"pickle"),
        "model/pytorch_model.bin is not in",
    ),
    "a copy of another run": (lambda b, r: _copied_from_another_run(b, "W1"), "names run W2"),
    "manifest without the model": (lambda b, r: _manifest_without(r, "W1", "model/"), "lists no model/"),
    "manifest without metrics": (
        lambda b, r: _manifest_without(r, "W1", "metrics.json"),
        "does not list metrics.json",
    ),
    "metric above 1": (lambda b, r: _consistent_but_out_of_range(r, "W1", 1e308), "outside"),
    "metric below -1": (lambda b, r: _consistent_but_out_of_range(r, "W1", -3.0), "outside"),
    "metric not finite": (
        lambda b, r: _consistent_but_out_of_range(r, "W1", float("inf")),
        "not a finite number",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_candidate_is_refused_saying_what_failed(backend: Backend, damage: str) -> None:
    fake_run(backend, "run-a", 0.6)
    promote(backend.loaded(), "run-a")
    before = backend.pointer_bytes()
    fake_run(backend, "W1", 0.9)
    harm, expected = DAMAGE[damage]
    harm(backend, backend.store().child("W1"))
    with pytest.raises(RunStateError, match=expected) as refused:
        promote(backend.loaded(), "W1")
    assert refused.value.exit_code == 2
    assert backend.pointer_bytes() == before


def test_an_edited_pointer_value_does_not_refuse_every_later_run(backend: Backend) -> None:
    fake_run(backend, "run-a", 0.6)
    promote(backend.loaded(), "run-a")
    pointer = backend.pointer() or {}
    backend.store().write_bytes(POINTER, to_json({**pointer, "value": 1e308}))
    fake_run(backend, "run-b", 0.7)
    with pytest.raises(RunStateError, match="fix or delete it"):
        promote(backend.loaded(), "run-b")


@pytest.mark.parametrize(
    "pointer", ["W1/manifest.json", "W1/model/modules.json", "W1", "nested/promoted.json"]
)
def test_the_pointer_cannot_point_into_a_run(backend: Backend, pointer: str) -> None:
    # issue 11: promote.pointer=W1/manifest.json overwrote W1's manifest.
    fake_run(backend, "W1", 0.7)
    manifest = backend.store().child("W1").read_bytes("manifest.json")
    result = backend.cli("W1", "--set", f"promote.pointer={pointer}")
    assert result.returncode == 2, result.stderr
    assert "promote.pointer" in result.stderr and "Traceback" not in result.stderr
    assert pointer == "W1" or pointer not in result.stderr, "the value typed is never echoed"
    assert backend.store().child("W1").read_bytes("manifest.json") == manifest
