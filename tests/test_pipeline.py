"""The job end to end with real parts: the loopback S3 server, the offline MiniLM, real training."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from job.artifacts import from_jsonl
from tests.conftest import CLI, OFFLINE_MODEL, TINY, merged, run_cli, write_config
from tests.s3server import SECRET_KEY, S3Server

PLOTS = {"similarity_distributions.png", "roc.png", "pr.png", "f1_vs_threshold.png", "loss_curve.png",
         "confusion_matrix.png"}
METRIC_KEYS = {"pearson", "spearman", "roc_auc", "average_precision", "best_f1", "threshold", "recall_at_1",
               "recall_at_5", "recall_at_10", "mrr"}


def _download_prefix(s3: S3Server, bucket: str, prefix: str, dest: Path) -> list[str]:
    client = s3.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    for key in keys:
        target = dest / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    return [k[len(prefix):] for k in keys]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_run_end_to_end_on_s3_checks_every_artifact_and_beats_base(
        s3: S3Server, bucket: str, shared_sample: Path, tmp_path: Path) -> None:
    client = s3.client()
    for name in ("tickets.jsonl", "links.jsonl"):
        client.upload_file(str(shared_sample / name), bucket, f"input/{name}")
    config = write_config(tmp_path / "config.json", {
        "data": {"tickets": f"s3://{bucket}/input/tickets.jsonl", "links": f"s3://{bucket}/input/links.jsonl"},
        "output": {"uri": f"s3://{bucket}/runs"},
        "model": {"base": OFFLINE_MODEL, "max_seq_length": 64},
        "train": {"epochs": 1, "batch_size": 16, "max_pairs": 128, "seed": 42},
        "pairs": {"negatives_per_positive": 2},
    })
    result = run_cli("run", "--config", str(config), "--run-id", "e2e", env=s3.env())
    assert result.returncode == 0, result.stderr[-3000:]
    log_lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert all(line.get("run_id") == "e2e" for line in log_lines if line.get("event") != "start")
    assert any(line["event"] == "progress" for line in log_lines)
    assert SECRET_KEY not in result.stdout + result.stderr

    run = tmp_path / "run"
    stored = set(_download_prefix(s3, bucket, "runs/e2e/", run))
    manifest = json.loads((run / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert stored - listed == {"manifest.json"}, "every file of the run is in the manifest"
    for entry in manifest["files"]:
        assert (run / entry["path"]).stat().st_size == entry["size"]
        assert _sha256(run / entry["path"]) == entry["sha256"], entry["path"]
    assert not any(p.startswith(("checkpoints/", "locks/")) for p in stored)

    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["base"]) >= METRIC_KEYS and set(metrics["finetuned"]) >= METRIC_KEYS
    assert metrics["finetuned"]["average_precision"] > metrics["base"]["average_precision"]
    assert metrics["finetuned"]["mrr"] >= metrics["base"]["mrr"]
    assert {"macro_f1", "per_class"} <= set(metrics["classifier"])

    for plot in PLOTS:
        data = (run / "plots" / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, plot

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(run / "model"), device="cpu")
    assert model.encode(["disk full"]).shape == (1, 384)
    assert not list((run / "model").rglob("*.bin")) and list((run / "model").rglob("*.safetensors"))

    meta = json.loads((run / "training_metadata.json").read_text())
    assert meta["seed"] == 42 and meta["environment"]["libraries"]["torch"].startswith("2.13")
    assert {f["sha256"] for f in meta["inputs"]["files"]} == {_sha256(shared_sample / n) for n in ("tickets.jsonl", "links.jsonl")}
    assert set(meta["timings_s"]) == {"prepare", "train", "evaluate", "classify"}
    assert meta["training"]["loss_curve"] and meta["pairs"]["train"]["total"] > 0

    tickets = {r["id"]: r["split"] for r in from_jsonl((run / "prepared/tickets.jsonl").read_bytes())}
    for link in from_jsonl((run / "prepared/links.jsonl").read_bytes()):
        assert tickets[link["source"]] == tickets[link["target"]], "no link crosses splits"


def _local_config(tmp_path: Path, synthetic_dir: Path, **extra: dict) -> Path:
    return write_config(tmp_path / "config.json", merged(TINY, {
        "data": {"tickets": str(synthetic_dir / "tickets.jsonl"), "links": str(synthetic_dir / "links.jsonl")},
        "output": {"uri": str(tmp_path / "runs")},
        "runtime": {"work_dir": str(tmp_path / "work")},
    }, extra))


@pytest.mark.slow
def test_same_seed_gives_identical_splits_and_pairs(tmp_path: Path, synthetic_dir: Path) -> None:
    config = _local_config(tmp_path, synthetic_dir)
    for run_id, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        result = run_cli("prepare", "--config", str(config), "--run-id", run_id, "--seed", seed)
        assert result.returncode == 0, result.stderr
    files = ["split.json", "pairs_train.jsonl", "pairs_val.jsonl", "pairs_test.jsonl", "tickets.jsonl"]
    runs = tmp_path / "runs"
    assert all(_sha256(runs / "a/prepared" / f) == _sha256(runs / "b/prepared" / f) for f in files)
    assert _sha256(runs / "a/prepared/pairs_train.jsonl") != _sha256(runs / "c/prepared/pairs_train.jsonl")


@pytest.mark.slow
def test_steps_in_separate_processes_then_refuse_to_overwrite(tmp_path: Path, synthetic_dir: Path) -> None:
    config = _local_config(tmp_path, synthetic_dir)
    for step in ("prepare", "train", "evaluate", "classify"):
        result = run_cli(step, "--config", str(config), "--run-id", "steps")
        assert result.returncode == 0, (step, result.stderr[-2000:])
    run = tmp_path / "runs" / "steps"
    assert (run / "manifest.json").exists() and (run / "model" / "modules.json").exists()

    again = run_cli("train", "--config", str(config), "--run-id", "steps")
    assert again.returncode == 2 and "is finished" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr

    early = run_cli("evaluate", "--config", str(config), "--run-id", "fresh")
    assert early.returncode == 2 and "needs step 'prepare' first" in early.stderr

    forced = run_cli("prepare", "--config", str(config), "--run-id", "steps", "--force")
    assert forced.returncode == 0
    assert not (run / "manifest.json").exists(), "a forced rerun makes the run unfinished until it completes"

    bad_id = run_cli("prepare", "--config", str(config), "--run-id", "../escape")
    assert bad_id.returncode == 2 and "invalid run id" in bad_id.stderr
    assert not (tmp_path / "escape").exists()


def _start_run(config: Path, run_id: str) -> subprocess.Popen[str]:
    """`finetune-job run` in the background, its JSON log readable line by line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([CLI, "run", "--config", str(config), "--run-id", run_id], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_event(process: subprocess.Popen[str], event: str, timeout: float) -> list[dict]:
    seen = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        seen.append(record)
        if record.get("event") == event:
            return seen
    raise AssertionError(f"no '{event}' event within {timeout}s; saw {[r.get('event') for r in seen]}")


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_rerun_resumes_to_the_same_step_count(
        tmp_path: Path, synthetic_dir: Path) -> None:
    config = _local_config(tmp_path, synthetic_dir, train={"max_pairs": 64, "batch_size": 4, "epochs": 1},
                           classify={"enabled": False})
    process = _start_run(config, "sig")
    try:
        _wait_for_event(process, "train loss", timeout=300)
        # A second process with the same run id must refuse without touching anything.
        twin = run_cli("prepare", "--config", str(config), "--run-id", "sig")
        assert twin.returncode == 75 and "in use by another process" in twin.stderr  # may be live: retry later
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        exit_seconds = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 75, stderr[-2000:]
    after_stop = stdout[stdout.find("stop requested"):]
    assert "stop requested" in stdout and "val metrics" not in after_stop, "no val evaluation after SIGTERM"
    assert after_stop.count('"checkpoint saved"') == 1, "saved once, at the step where the stop came"
    assert exit_seconds < 30, f"SIGTERM to exit took {exit_seconds:.1f}s (pod grace period is 30 s)"
    run = tmp_path / "runs" / "sig"
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert checkpoints, "a checkpoint was published before exiting"
    assert not (run / "manifest.json").exists() and not (run / "locks" / "run.lock").exists()

    rerun = run_cli("run", "--config", str(config), "--run-id", "sig")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    history = json.loads((run / "train" / "history.json").read_text())
    assert history["resumed_from"] == checkpoints[-1].parent.name
    assert history["global_step"] == 16, "64 pairs / batch 4 x 1 epoch, same as an uninterrupted run"
    assert (run / "manifest.json").exists()
    print(f"SIGTERM-to-exit: {exit_seconds:.1f}s")


@pytest.mark.slow
def test_resume_flag_without_checkpoint_is_a_clear_error(tmp_path: Path, synthetic_dir: Path) -> None:
    config = _local_config(tmp_path, synthetic_dir)
    assert run_cli("prepare", "--config", str(config), "--run-id", "r").returncode == 0
    result = run_cli("train", "--config", str(config), "--run-id", "r", "--resume")
    assert result.returncode == 2 and "no complete checkpoint" in result.stderr


@pytest.mark.slow
def test_sigkill_leaves_an_unfinished_run_that_a_rerun_completes(tmp_path: Path, synthetic_dir: Path) -> None:
    config = _local_config(tmp_path, synthetic_dir, train={"max_pairs": 32, "batch_size": 4, "epochs": 1},
                           classify={"enabled": False}, runtime={"lock_ttl_s": 4})
    process = _start_run(config, "kill")
    try:
        _wait_for_event(process, "train loss", timeout=300)
        process.kill()  # SIGKILL: no handler runs, the lock stays behind
        process.wait(timeout=30)
    finally:
        process.kill()
    run = tmp_path / "runs" / "kill"
    assert not (run / "manifest.json").exists(), "a killed run never looks finished"
    assert (run / "locks" / "run.lock").exists(), "the killed process could not release its lock"
    time.sleep(5)  # past lock_ttl_s: the dead process's lock is stale
    rerun = run_cli("run", "--config", str(config), "--run-id", "kill")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "taking over a stale lock" in rerun.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"model/model.safetensors", "metrics.json"} <= {f["path"] for f in manifest["files"]}
    assert json.loads((run / "train" / "history.json").read_text())["global_step"] == 8
