"""The index step and `suggest`: every ticket once, the model's own vectors, in the manifest; a rerun reuses
it; suggestions from local and S3 runs, never a later ticket with --before, never from another model's
index."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from job.config import load_config
from job.errors import InputError, RunStateError
from job.jsonio import from_jsonl
from tests.conftest import TINY, merged, run_cli, synthetic_inputs, write_config
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("index")
    config = write_config(
        folder / "config.json",
        merged(
            TINY,
            {
                "data": synthetic_inputs(synthetic_dir),
                "output": {"uri": str(folder / "runs")},
                "classify": {"enabled": False},
            },
        ),
    )
    done = run_cli("run", "--config", str(config), "--run-id", "r1")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "runs" / "r1"


def _open(run: Path, **storage: str) -> object:
    from job.suggest import open_index

    return open_index(
        load_config(environ={}, cli_overrides={"output.uri": str(run.parent), **storage}).config, "r1"
    )


def test_the_index_holds_every_ticket_once_with_the_model_s_own_vectors(indexed: Path) -> None:
    from job.embedding.model import encode, load_model
    from job.log import get_logger
    from job.retrieval.index import read_parts

    tickets = {r["id"]: r for r in from_jsonl((indexed / "prepared" / "tickets.jsonl").read_bytes())}
    found = read_parts(sorted((indexed / "index").glob("part-*.parquet")))
    assert sorted(found.ids) == sorted(tickets) and len(set(found.ids)) == len(found.ids)
    assert found.metadata["finetune.run_id"] == "r1" and found.vectors.shape == (len(tickets), 384)
    assert [found.created[i] == tickets[t]["created"] for i, t in enumerate(found.ids)] == [True] * len(
        found.ids
    )
    sample = found.ids[:: max(1, len(found.ids) // 20)]
    model = load_model(str(indexed / "model"), TINY["model"]["max_seq_length"], device="cpu")
    own = encode(model, [tickets[t]["text"] for t in sample], 8, get_logger(step="test"), "encode")
    rows = {t: i for i, t in enumerate(found.ids)}
    stored = found.vectors[[rows[t] for t in sample]]
    assert np.max(np.abs(stored - own)) < 1e-4, (
        "the index holds what the model encodes (float32, other batches)"
    )
    listed = {f["path"]: f for f in json.loads((indexed / "manifest.json").read_text())["files"]}
    for path in [p for p in listed if p.startswith("index/")]:
        assert hashlib.sha256((indexed / path).read_bytes()).hexdigest() == listed[path]["sha256"], path
    assert {"index/index.json", "index/part-00000.parquet", "index/lexical/ids.json"} <= set(listed)


def test_a_rerun_reuses_the_finished_index_step(indexed: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    shutil.copytree(indexed, run)
    (run / "manifest.json").unlink()  # unfinished again: the steps after index are to do, index is done
    before = (run / "index" / "part-00000.parquet").read_bytes()
    config = write_config(
        tmp_path / "config.json",
        json.loads((indexed.parent.parent / "config.json").read_text())
        | {"output": {"uri": str(tmp_path / "runs")}},
    )
    done = run_cli("index", "--config", str(config), "--run-id", "r1")
    assert done.returncode == 0 and "step already done" in done.stdout, done.stderr[-2000:]
    assert (run / "index" / "part-00000.parquet").read_bytes() == before


def test_suggest_finds_the_ticket_itself_first_and_respects_before_and_project(indexed: Path) -> None:
    found = _open(indexed)
    tickets = {r["id"]: r for r in from_jsonl((indexed / "prepared" / "tickets.jsonl").read_bytes())}
    some = sorted(t for t, r in tickets.items() if r.get("created"))[len(tickets) // 2]
    top = found.suggest(tickets[some]["text"], k=5)  # type: ignore[attr-defined]
    assert top[0].id == some and len(top) == 5
    assert all(s.hybrid >= t.hybrid for s, t in zip(top, top[1:], strict=False))
    cut = tickets[some]["created"]
    earlier = found.suggest(tickets[some]["text"], k=50, before=cut)  # type: ignore[attr-defined]
    assert (
        earlier
        and all(s.created and s.created < cut for s in earlier)
        and some not in [s.id for s in earlier]
    )
    project = tickets[some]["project"]
    mine = found.suggest(tickets[some]["text"], k=50, project=project)  # type: ignore[attr-defined]
    assert mine and {s.project for s in mine} == {project}


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        (("",), {}, "the query has no text"),
        (("disk full \udcff",), {}, "not UTF-8"),
        (("disk full",), {"k": 0}, "-k must be"),
        (("disk full",), {"k": 100_000}, "-k must be"),
        (("disk full",), {"before": "last tuesday"}, "--before: expected an ISO 8601"),
    ],
)
def test_bad_queries_are_input_errors(indexed: Path, args: tuple, kwargs: dict, says: str) -> None:
    with pytest.raises(InputError, match=says):
        _open(indexed).suggest(*args, **kwargs)  # type: ignore[attr-defined]


def test_suggest_from_the_cli_and_its_bad_input(indexed: Path, tmp_path: Path) -> None:
    common = (
        "suggest",
        "--output",
        str(indexed.parent),
        "--run-id",
        "r1",
        "--set",
        "runtime.log_format=json",
    )
    done = run_cli(*common, "--title", "disk full", "--description", "the node runs out of space", "-k", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["run_id"] == "r1" and len(answer["suggestions"]) == 3
    assert {"id", "project", "created", "dense", "lexical", "hybrid"} == set(answer["suggestions"][0])
    both = run_cli(*common, "--text", "x", "--title", "y")
    assert both.returncode == 2 and "not both" in both.stderr
    secret_date = run_cli(*common, "--text", "x", "--before", "s3cr3t-date")
    assert secret_date.returncode == 2 and "s3cr3t" not in secret_date.stderr + secret_date.stdout
    unfinished = tmp_path / "runs" / "r1"
    shutil.copytree(indexed, unfinished)
    (unfinished / "manifest.json").unlink()
    refused = run_cli("suggest", "--output", str(tmp_path / "runs"), "--run-id", "r1", "--text", "x")
    assert refused.returncode == 2 and "it is not finished" in refused.stderr
    assert "Traceback" not in done.stderr + both.stderr + secret_date.stderr + refused.stderr


def test_an_index_made_by_another_model_is_refused(indexed: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    shutil.copytree(indexed, run)
    described = json.loads((run / "index" / "index.json").read_text())
    described["model_sha256"] = "0" * 64  # another run's index copied in, its manifest rewritten to match
    (run / "index" / "index.json").write_text(json.dumps(described))
    manifest = json.loads((run / "manifest.json").read_text())
    data = (run / "index" / "index.json").read_bytes()
    for entry in manifest["files"]:
        if entry["path"] == "index/index.json":
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunStateError, match="made by another model"):
        _open(run)


def test_suggest_from_a_run_in_s3(indexed: Path, s3: S3Server, bucket: str) -> None:
    client = s3.client()
    for path in indexed.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"runs/r1/{path.relative_to(indexed).as_posix()}")
    from job.suggest import open_index

    storage = {
        "storage.endpoint_url": s3.endpoint,
        "storage.access_key_id": ACCESS_KEY,
        "storage.secret_access_key": SECRET_KEY,
    }
    cfg = load_config(environ={}, cli_overrides={"output.uri": f"s3://{bucket}/runs", **storage}).config
    found = open_index(cfg, "r1")
    local = _open(indexed)
    query = "disk full on the data node"
    assert [s.id for s in found.suggest(query, k=5)] == [s.id for s in local.suggest(query, k=5)]  # type: ignore[attr-defined]
