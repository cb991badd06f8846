"""The job end to end with real parts: the loopback S3 server, the offline MiniLM, real training."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from job.data.records import Link
from job.jsonio import from_jsonl
from job.pipeline import STEP_BODIES
from job.runs.steps import STEPS
from tests.conftest import CLI, OFFLINE_MODEL, TINY, merged, run_cli, synthetic_inputs, write_config
from tests.s3server import SECRET_KEY, S3Server
from tests.test_card import files_quoting, ticket_text_needles

PLOTS = {
    "similarity_distributions.png",
    "roc.png",
    "pr.png",
    "f1_vs_threshold.png",
    "loss_curve.png",
    "confusion_matrix.png",
}
METRIC_KEYS = {
    "pearson",
    "spearman",
    "roc_auc",
    "average_precision",
    "best_f1",
    "threshold",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "mrr",
}


def _download_prefix(s3: S3Server, bucket: str, prefix: str, dest: Path) -> list[str]:
    client = s3.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    for key in keys:
        target = dest / key[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    return [k[len(prefix) :] for k in keys]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_step_has_one_body_that_run_and_its_own_command_call() -> None:
    assert list(STEP_BODIES) == list(STEPS), (
        "run goes through STEP_BODIES in STEPS order; a step without one fails"
    )


@pytest.mark.slow
def test_run_end_to_end_on_s3_checks_every_artifact_and_beats_base(
    s3: S3Server, bucket: str, shared_sample: Path, tmp_path: Path
) -> None:
    client = s3.client()
    for name in ("tickets.jsonl", "links.jsonl"):
        client.upload_file(str(shared_sample / name), bucket, f"input/{name}")
    config = write_config(
        tmp_path / "config.json",
        {
            "data": {
                "tickets": f"s3://{bucket}/input/tickets.jsonl",
                "links": f"s3://{bucket}/input/links.jsonl",
            },
            "output": {"uri": f"s3://{bucket}/runs"},
            "model": {"base": OFFLINE_MODEL, "max_seq_length": 64},
            "train": {"epochs": 1, "batch_size": 16, "max_pairs": 128, "seed": 42},
            "pairs": {"negatives_per_positive": 2},
        },
    )
    result = run_cli("run", "--config", str(config), "--run-id", "e2e", "--profile", env=s3.env())
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

    assert reproduced_hybrid_metrics(run) == {
        k: v
        for k, v in metrics["finetuned"].items()
        if k.startswith("hybrid_") and ("recall" in k or k.endswith(("mrr", "map")))
    }
    assert metrics["fusion"]["finetuned"]["chosen_on"] == "val" and metrics["lexical"]["n_queries"] > 0

    for plot in PLOTS:
        data = (run / "plots" / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, plot

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(run / "model"), device="cpu")
    assert model.encode(["disk full"]).shape == (1, 384)
    assert not list((run / "model").rglob("*.bin")) and list((run / "model").rglob("*.safetensors"))

    # The job's card, not sentence-transformers' (which quotes training rows), and no ticket text anywhere.
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "sentence-transformers" and card.data.base_model == OFFLINE_MODEL
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["average_precision"] == round(
        metrics["finetuned"]["average_precision"], 4
    )
    assert "## Relation classifier" in card.text and "**Threshold" in card.text
    # Ticket text is in prepared/ (the inputs as the steps read them) and nowhere else the run wrote.
    assert files_quoting(run, ticket_text_needles(shared_sample / "tickets.jsonl"), skip=("prepared/",)) == {}
    # The CPU variants: scored beside PyTorch on the gate sample (the whole test split when it is this small),
    # written only within export.max_metric_drop of it.
    gate = metrics["exports"]["gate"]
    assert gate["tickets"] == gate["of_test_tickets"] and gate["pairs"] == metrics["finetuned"]["n_pairs"]
    exports = metrics["exports"]["variants"]
    assert set(exports) == {"onnx-fp32", "onnx-int8"}
    for name, variant in exports.items():
        assert variant["texts_per_s"] > 0 and variant["metrics"]["n_pairs"] == gate["pairs"]
        assert (run / "model" / variant["file"]).exists() == variant["written"], name
        assert variant["written"] == (variant["rejected"] is None)
    assert exports["onnx-fp32"]["written"], "fp32 reproduces the PyTorch model"

    meta = json.loads((run / "training_metadata.json").read_text())
    assert meta["seed"] == 42 and meta["environment"]["libraries"]["torch"].startswith("2.13")
    assert {f["sha256"] for f in meta["inputs"]["files"]} == {
        _sha256(shared_sample / n) for n in ("tickets.jsonl", "links.jsonl")
    }
    assert set(meta["timings_s"]) == {"prepare", "train", "index", "evaluate", "classify"}
    trained_on = meta["pairs"]["train"]
    assert meta["training"]["loss_curve"] and trained_on["total"] + trained_on["triplets"] > 0
    assert meta["exports"] == metrics["exports"], "what was exported, and why not, is in the metadata too"

    # One load of each model in the process: the base model mines and then trains (becoming the fine-tuned
    # one, which index and the export use in memory); evaluate loads a fresh base model. --profile shows
    # each step.
    loads = {
        s: json.loads((run / "steps" / f"{s}.json").read_text())["phase_counts"].get("load", 0)
        for s in meta["timings_s"]
    }
    assert loads == {"prepare": 1, "train": 0, "index": 0, "evaluate": 1, "classify": 0}
    profile_lines = result.stderr.split("where the time went")[1].splitlines()[1:]
    assert [line.split()[0] for line in profile_lines] == [
        "prepare",
        "train",
        "index",
        "evaluate",
        "classify",
    ]
    assert "fit" in profile_lines[1] and "encode" in profile_lines[2] and "export" in profile_lines[3]

    tickets = {r["id"]: r["split"] for r in from_jsonl((run / "prepared/tickets.jsonl").read_bytes())}
    for link in from_jsonl((run / "prepared/links.jsonl").read_bytes()):
        assert tickets[link["source"]] == tickets[link["target"]], "no link crosses splits"


def reproduced_hybrid_metrics(run: Path) -> dict[str, float]:
    """The fine-tuned model's hybrid retrieval metrics recomputed from the run's files alone: retrieval.json,
    the test split's tickets and links, and the model's vectors (the index, which model/ reproduces)."""
    from job.evaluation.evaluate import created_timestamps, retrieval_queries, scored_retrieval_metrics
    from job.retrieval.index import read_parts
    from job.retrieval.spec import hybrid_similarity

    spec = json.loads((run / "retrieval.json").read_text())
    test_ids = json.loads((run / "prepared/split.json").read_text())["test"]
    tickets = {r["id"]: r for r in from_jsonl((run / "prepared/tickets.jsonl").read_bytes())}
    links = [
        Link(r["source"], r["target"], r["relation"])
        for r in from_jsonl((run / "prepared/links.jsonl").read_bytes())
    ]
    saved = read_parts(sorted((run / "index").glob("part-*.parquet")), set(test_ids))
    rows = {t: i for i, t in enumerate(saved.ids)}
    vectors = saved.vectors[[rows[t] for t in test_ids]]
    similarity = hybrid_similarity(spec, vectors, [tickets[t]["text"] for t in test_ids], "retrieval.json")
    relevant, _ = retrieval_queries(test_ids, links, ["duplicate"])
    created = created_timestamps(test_ids, {t: tickets[t].get("created") for t in test_ids})
    metrics = scored_retrieval_metrics(similarity, relevant, 1024, created, "hybrid_")
    return {k: v for k, v in metrics.items() if "n_queries" not in k}


def _local_config(tmp_path: Path, synthetic_dir: Path, file_name: str = "config.json", **extra: dict) -> Path:
    return write_config(
        tmp_path / file_name,
        merged(
            TINY,
            {
                "data": synthetic_inputs(synthetic_dir),
                "output": {"uri": str(tmp_path / "runs")},
                "runtime": {"work_dir": str(tmp_path / "work")},
            },
            extra,
        ),
    )


@pytest.mark.slow
def test_same_seed_gives_identical_splits_and_pairs(tmp_path: Path, synthetic_dir: Path) -> None:
    config = _local_config(tmp_path, synthetic_dir)
    for run_id, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        result = run_cli("prepare", "--config", str(config), "--run-id", run_id, "--seed", seed)
        assert result.returncode == 0, result.stderr
    training = ["pairs_train.jsonl", "triplets_train.jsonl"]  # which one has rows depends on train.loss
    files = ["split.json", *training, "pairs_val.jsonl", "pairs_test.jsonl", "tickets.jsonl"]
    runs = tmp_path / "runs"
    assert all(_sha256(runs / "a/prepared" / f) == _sha256(runs / "b/prepared" / f) for f in files)
    assert [_sha256(runs / "a/prepared" / f) for f in training] != [
        _sha256(runs / "c/prepared" / f) for f in training
    ]


@pytest.mark.slow
def test_steps_in_separate_processes_then_refuse_to_overwrite(tmp_path: Path, synthetic_dir: Path) -> None:
    config = _local_config(tmp_path, synthetic_dir)
    for step in ("prepare", "train", "index", "evaluate", "classify"):
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
    return subprocess.Popen(
        [CLI, "run", "--config", str(config), "--run-id", run_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout}s"
        time.sleep(0.05)


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
    tmp_path: Path, synthetic_dir: Path
) -> None:
    config = _local_config(
        tmp_path,
        synthetic_dir,
        train={"max_pairs": 64, "batch_size": 4, "epochs": 1},
        classify={"enabled": False},
    )
    process = _start_run(config, "sig")
    try:
        _wait_for_event(process, "train loss", timeout=300)
        # A second process with the same run id must refuse without touching anything.
        twin = run_cli("prepare", "--config", str(config), "--run-id", "sig")
        assert (
            twin.returncode == 75 and "in use by another process" in twin.stderr
        )  # may be live: retry later
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        exit_seconds = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 75, stderr[-2000:]
    after_stop = stdout[stdout.find("stop requested") :]
    assert "stop requested" in stdout and "val metrics" not in after_stop, "no val evaluation after SIGTERM"
    assert after_stop.count('"checkpoint saved"') == 1, "saved once, at the step where the stop came"
    assert exit_seconds < 30, f"SIGTERM to exit took {exit_seconds:.1f}s (pod grace period is 30 s)"
    run = tmp_path / "runs" / "sig"
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert checkpoints, "a checkpoint was published before exiting"
    assert not (run / "manifest.json").exists() and not (run / "locks" / "run.lock").exists()
    stamp = json.loads(checkpoints[-1].read_text())
    prepared = json.loads((run / "steps" / "prepare.json").read_text())["fingerprint"]
    assert stamp["inputs_sha256"] == prepared["inputs_sha256"], "the checkpoint says what it was made from"

    # The same stopped run, then new input and prepare --force: the old checkpoint must not be resumed.
    shutil.copytree(run, tmp_path / "runs" / "stale")
    changed = tmp_path / "changed"
    shutil.copytree(synthetic_dir, changed)
    with (changed / "tickets.jsonl").open("a") as out:
        out.write(
            json.dumps({"id": "NEW-1", "title": "a ticket filed since", "description": "disk full"}) + "\n"
        )
    stale_config = _local_config(
        tmp_path,
        changed,
        "stale.json",
        train={"max_pairs": 64, "batch_size": 4, "epochs": 1},
        classify={"enabled": False},
    )
    for step in ("prepare", "train"):
        result = run_cli(step, "--config", str(stale_config), "--run-id", "stale", "--force")
        assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((tmp_path / "runs" / "stale" / "steps" / "train.json").read_text())["info"]
    assert trained["resumed_from"] is None and trained["discarded_checkpoint"] == checkpoints[-1].parent.name

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
    config = _local_config(
        tmp_path,
        synthetic_dir,
        train={"max_pairs": 32, "batch_size": 4, "epochs": 1},
        classify={"enabled": False},
        runtime={"lock_ttl_s": 4},
    )
    process = _start_run(config, "kill")
    try:
        _wait_for_event(process, "train loss", timeout=300)
        process.kill()  # SIGKILL: no handler runs, the lock stays behind
        process.wait(timeout=30)
    finally:
        process.kill()
    run = tmp_path / "runs" / "kill"
    assert not (run / "manifest.json").exists(), "a killed run never looks finished"
    lock = run / "locks" / "run.lock"
    assert lock.exists(), "the killed process could not release its lock"
    # Past lock_ttl_s (4 s) since the dead process's last heartbeat: its lock is stale.
    _wait_until(
        lambda: time.time() - json.loads(lock.read_text())["heartbeat"] > 4.5,
        timeout=60,
        what="the killed process's lock to go stale",
    )
    rerun = run_cli("run", "--config", str(config), "--run-id", "kill")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "taking over a stale lock" in rerun.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"model/model.safetensors", "metrics.json"} <= {f["path"] for f in manifest["files"]}
    assert json.loads((run / "train" / "history.json").read_text())["global_step"] == 8


# --------------------------------------------------------------- a rerun continues where the last one stopped


def _records(run: Path) -> dict[str, bytes]:
    """Each recorded step's record, byte for byte (a redone step writes a new one: new times, new timings)."""
    return (
        {p.stem: p.read_bytes() for p in sorted((run / "steps").glob("*.json"))}
        if (run / "steps").exists()
        else {}
    )


def _stop_when(config: Path, run_id: str, ready: Callable[[], bool], log: Path) -> tuple[int, str]:
    """Start `run`, send SIGTERM as soon as `ready()` holds; returns the exit code and the JSON log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    with log.open("w") as out:
        process = subprocess.Popen(
            [CLI, "run", "--config", str(config), "--run-id", run_id],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_until(lambda: ready() or process.poll() is not None, timeout=600, what="the step to start")
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            process.kill()
    return process.returncode, log.read_text()


def _events(log: str, event: str) -> set[str]:
    """The steps that logged `event`."""
    found = set()
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == event:
            found.add(record.get("step"))
    return found


@pytest.mark.slow
def test_a_run_stopped_in_each_step_is_finished_by_reruns_that_redo_nothing(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    """SIGTERM in prepare, then in train, index, evaluate and classify of the reruns: each rerun takes the
    finished steps over from storage (their records untouched) and does only what was left."""
    config = _local_config(tmp_path, synthetic_dir, train={"max_pairs": 16})
    run = tmp_path / "runs" / "stops"
    done = {
        "prepare": "prepare done",
        "train": "train done",
        "index": "index written",
        "evaluate": "metrics",
        "classify": "classifier",
    }
    stops = [  # (step the rerun is stopped in, when it is surely in it)
        ("prepare", lambda: '"inputs loaded"' in (tmp_path / "attempt-0.log").read_text()),
        ("train", lambda: (run / "steps" / "prepare.json").exists()),
        ("index", lambda: (run / "steps" / "train.json").exists()),
        ("evaluate", lambda: (run / "steps" / "index.json").exists()),
        ("classify", lambda: (run / "steps" / "evaluate.json").exists()),
    ]
    before: dict[str, bytes] = {}
    for attempt, (step, ready) in enumerate(stops):
        code, log = _stop_when(config, "stops", ready, tmp_path / f"attempt-{attempt}.log")
        assert code == 75, f"stopping in {step}: exit {code}\n{log[-3000:]}"
        earlier = [name for name, _ in stops[:attempt]]
        assert _events(log, "step already done; reusing what it recorded") == set(earlier[:-1])
        assert not {s for s in earlier[:-1] if s in _events(log, done[s])}, "a finished step was redone"
        after = _records(run)
        assert set(after) == set(earlier), f"stopped in {step}, but recorded {sorted(after)}"
        assert {name: after[name] for name in before} == before, "a finished step's record was rewritten"
        before = after
    assert not (run / "checkpoints").exists() and (run / "model" / "model.safetensors").exists()

    final = run_cli("run", "--config", str(config), "--run-id", "stops")
    assert final.returncode == 0, final.stderr[-3000:]
    assert _events(final.stdout, "step already done; reusing what it recorded") == {
        "prepare",
        "train",
        "index",
        "evaluate",
    }
    assert _events(final.stdout, "classifier") == {"classify"}
    assert {name: _records(run)[name] for name in before} == before
    meta = json.loads((run / "training_metadata.json").read_text())
    assert set(meta["timings_s"]) == {"prepare", "train", "index", "evaluate", "classify"}
    assert (run / "manifest.json").exists()


@pytest.mark.slow
def test_a_rerun_refuses_steps_made_from_another_config_or_input_unless_forced(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("tickets.jsonl", "links.jsonl"):
        (inputs / name).write_bytes((synthetic_dir / name).read_bytes())
    config = _local_config(tmp_path, inputs, pairs={"mine_hard_negatives": False})
    run = tmp_path / "runs" / "changed"
    assert run_cli("prepare", "--config", str(config), "--run-id", "changed").returncode == 0
    recorded = _records(run)
    fingerprint = json.loads(recorded["prepare"])["fingerprint"]
    assert (
        set(fingerprint["inputs_sha256"]) == {"data.tickets", "data.links"} and fingerprint["config_sha256"]
    )

    again = run_cli("prepare", "--config", str(config), "--run-id", "changed")
    assert again.returncode == 0 and "step already done; nothing to do" in again.stdout
    # Another thread count or log format does not change what a step makes: still the same run.
    threads = run_cli("prepare", "--config", str(config), "--run-id", "changed", "--set", "runtime.threads=1")
    assert threads.returncode == 0 and "step already done; nothing to do" in threads.stdout
    assert _records(run) == recorded

    other_config = run_cli(
        "run", "--config", str(config), "--run-id", "changed", "--set", "pairs.negatives_per_positive=1"
    )
    assert other_config.returncode == 2, other_config.stderr[-2000:]
    assert "step 'prepare' of run changed cannot be reused: the config changed." in other_config.stderr
    assert "--force" in other_config.stderr and "Traceback" not in other_config.stderr

    with (inputs / "tickets.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "NEW-1", "title": "one more ticket", "description": "x"}) + "\n")
    other_input = run_cli("run", "--config", str(config), "--run-id", "changed")
    assert other_input.returncode == 2, other_input.stderr[-2000:]
    assert (
        "cannot be reused: input data.tickets changed." in other_input.stderr
        and "data.links" not in other_input.stderr
    )
    assert str(inputs) not in other_input.stderr, "the message names the setting, not the address"
    assert _records(run) == recorded, "a refused rerun touches nothing"

    forced = run_cli("prepare", "--config", str(config), "--run-id", "changed", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    redone = json.loads(_records(run)["prepare"])["fingerprint"]
    assert redone["inputs_sha256"]["data.tickets"] != fingerprint["inputs_sha256"]["data.tickets"]


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_run_id_naming_a_symlink_or_a_file_in_a_local_output_is_refused(
    tmp_path: Path, synthetic_dir: Path, kind: str
) -> None:
    config = _local_config(tmp_path, synthetic_dir, pairs={"mine_hard_negatives": False})
    output, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    output.mkdir()
    elsewhere.mkdir()
    if kind == "symlink":
        (output / "SYM").symlink_to(elsewhere, target_is_directory=True)
        run_id = "SYM"
    else:
        (output / "notes").write_text(
            "{}"
        )  # someone's file, named like a run (promoted.json is refused by name)
        run_id = "notes"
    result = run_cli("prepare", "--config", str(config), "--run-id", run_id)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert ("symbolic link" if kind == "symlink" else "not a run directory") in result.stderr
    assert str(elsewhere) not in result.stderr
    assert not list(elsewhere.iterdir()), "nothing written through the link"
    assert (output / "notes").read_text() == "{}" if kind == "file" else True
