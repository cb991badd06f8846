"""S3 on a bad day: faults injected between the job and the real (SeaweedFS) server.

Transient faults (refused or reset connections, 500, 503 SlowDown, latency, cut, truncated or
corrupted bodies, lost answers) are absorbed by retries: botocore's adaptive retries for
errors it sees, S3Store's own for cut or corrupted transfers, which botocore does not retry.
The results are identical to a run without faults. Faults that outlast the retries end in exit
75 naming the operation and the key, and a rerun of the same run id finishes. Permanent
problems (credentials, a missing bucket or key, a bad endpoint) end in exit 2 at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from job.config import StorageConfig
from job.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, ConfigError, StorageError
from job.storage import S3Store, make_s3_client
from tests.bad_inputs.batch_cli import Outcome, run_many
from tests.bad_inputs.make_cases import OFFLINE_MODEL, jsonl, links, tickets
from tests.faultproxy import Fault, FaultKind, FaultProxy
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

DATA = os.urandom(300_000)  # big enough that "half the body" is a real cut


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint, lifetime_s=300) as running:
        yield running


def store_via(proxy: FaultProxy, bucket: str, max_attempts: int = 4, threshold_mb: int = 1) -> S3Store:
    """A store whose client talks to the proxy; a fresh client, so a fresh connection pool."""
    cfg = StorageConfig(
        endpoint_url=proxy.endpoint,
        access_key_id=SecretStr(ACCESS_KEY),
        secret_access_key=SecretStr(SECRET_KEY),
        max_attempts=max_attempts,
        multipart_threshold_mb=threshold_mb,
    )
    return S3Store(make_s3_client(cfg), bucket, "runs/r1", cfg)


def direct(s3: S3Server, bucket: str, key: str) -> bytes:
    """An object as the server holds it, read without the proxy."""
    return bytes(s3.client().get_object(Bucket=bucket, Key=f"runs/r1/{key}")["Body"].read())


# ---------------------------------------------------------------- Store operations


@dataclass(frozen=True)
class Operation:
    """A Store operation, the request the fault targets, and how to check the result is right."""

    method: str
    key: str  # substring of the request the fault matches
    run: Callable[[S3Store, Path, S3Server, str], None]


def _write(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    record = store.write_bytes("obj.bin", DATA)
    assert direct(s3, bucket, "obj.bin") == DATA and record.sha256 == hashlib.sha256(DATA).hexdigest()


def _read(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    assert store.read_bytes("seed.bin") == DATA


def _upload(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    local = tmp / "up.bin"
    local.write_bytes(DATA * 5)  # 1.5 MB: over the 1 MB threshold, so a multipart upload
    store.upload_file(local, "up.bin")
    assert direct(s3, bucket, "up.bin") == DATA * 5


def _download(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    target = tmp / "down" / "seed.bin"
    store.download_file("seed.bin", target)
    assert target.read_bytes() == DATA
    assert sorted(p.name for p in target.parent.iterdir()) == ["seed.bin"]  # no temp files left


def _list(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    assert store.list_keys("") == [("seed.bin", len(DATA))]


def _exists(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    assert store.exists("seed.bin") and not store.exists("absent.bin")


def _create(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    token = os.urandom(16).hex().encode()
    assert store.create_if_absent("locks/run.lock", token)  # ours, even when the first answer was lost
    assert not store.create_if_absent("locks/run.lock", b"someone else")
    assert direct(s3, bucket, "locks/run.lock") == token


def _replace(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    s3.client().put_object(Bucket=bucket, Key="runs/r1/pointer.json", Body=b"old")
    seen = store.read_versioned("pointer.json")
    assert seen is not None
    token = os.urandom(16).hex().encode()
    assert store.replace_if_unchanged(
        "pointer.json", token, seen.version
    )  # ours, even when the answer was lost
    assert not store.replace_if_unchanged("pointer.json", b"someone else", seen.version)
    assert direct(s3, bucket, "pointer.json") == token


def _delete_one(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    store.delete("seed.bin")
    assert store.list_keys("") == []


def _delete(store: S3Store, tmp: Path, s3: S3Server, bucket: str) -> None:
    store.delete_prefix("seed.bin")
    assert store.list_keys("") == []


OPERATIONS = {
    "write_bytes": Operation("PUT", "obj.bin", _write),
    "read_bytes": Operation("GET", "seed.bin", _read),
    "upload_file": Operation("PUT", "partNumber=1", _upload),
    "download_file": Operation("GET", "seed.bin", _download),
    "list_keys": Operation("GET", "list-type=2", _list),
    "exists": Operation("HEAD", "seed.bin", _exists),
    "create_if_absent": Operation("PUT", "run.lock", _create),
    "replace_if_unchanged": Operation("PUT", "pointer.json", _replace),
    "delete_prefix": Operation("POST", "delete", _delete),
    "delete": Operation("DELETE", "seed.bin", _delete_one),
}

# Which fault against which operation: every kind, each where it can happen.
MATRIX: list[tuple[FaultKind, str]] = [
    ("refuse", "read_bytes"),
    ("refuse", "write_bytes"),
    ("reset", "write_bytes"),
    ("reset", "read_bytes"),
    ("reset", "upload_file"),
    ("reset", "download_file"),
    ("reset", "list_keys"),
    ("drop_response", "write_bytes"),
    ("drop_response", "create_if_absent"),
    ("drop_response", "delete_prefix"),
    ("drop_response", "upload_file"),
    ("drop_response", "replace_if_unchanged"),
    ("drop_response", "delete"),
    ("error500", "exists"),
    ("error500", "list_keys"),
    ("error500", "upload_file"),
    ("error500", "delete_prefix"),
    ("slowdown", "read_bytes"),
    ("slowdown", "write_bytes"),
    ("slowdown", "download_file"),
    ("slowdown", "create_if_absent"),
    ("slowdown", "replace_if_unchanged"),
    ("error500", "delete"),
    ("latency", "read_bytes"),
    ("latency", "write_bytes"),
    ("cut", "read_bytes"),
    ("cut", "download_file"),
    ("cut", "list_keys"),
    ("truncate", "read_bytes"),
    ("truncate", "download_file"),
    ("corrupt", "read_bytes"),
    ("corrupt", "download_file"),
    ("corrupt", "write_bytes"),
    ("corrupt", "upload_file"),
]


@pytest.mark.parametrize(("kind", "operation"), MATRIX, ids=[f"{k}-{o}" for k, o in MATRIX])
def test_transient_fault_is_absorbed(
    s3: S3Server, bucket: str, proxy: FaultProxy, tmp_path: Path, kind: FaultKind, operation: str
) -> None:
    op = OPERATIONS[operation]
    s3.client().put_object(
        Bucket=bucket,
        Key="runs/r1/seed.bin",
        Body=DATA,
        Metadata={"sha256": hashlib.sha256(DATA).hexdigest()},
    )
    # Twice in a row, so the retry after the first fault meets the second and backs off further;
    # latency once (the operation makes one request, and slow is not failed).
    fault = proxy.add(
        Fault(kind, method=op.method, key=op.key, times=1 if kind == "latency" else 2, seconds=1.0)
    )
    started = time.monotonic()
    op.run(store_via(proxy, bucket), tmp_path, s3, bucket)
    assert fault.hits == fault.times, f"the {kind} fault never fired: {proxy.seen}"
    if kind == "latency":
        assert time.monotonic() - started >= fault.seconds
    elif kind != "refuse":  # the request that failed was made again, and went through
        assert proxy.count(op.method, op.key, fault=None) >= 1, proxy.seen


# ---------------------------------------------------------------- what gives up, and how


def test_faults_that_outlast_the_retries_are_transient_and_name_operation_and_key(
    s3: S3Server, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    s3.client().put_object(
        Bucket=bucket,
        Key="runs/r1/seed.bin",
        Body=DATA,
        Metadata={"sha256": hashlib.sha256(DATA).hexdigest()},
    )
    store = store_via(proxy, bucket, max_attempts=2)
    cases: list[tuple[FaultKind, str, Callable[[], Any], str]] = [
        ("slowdown", "GET", lambda: store.read_bytes("seed.bin"), "read s3://"),
        ("error500", "PUT", lambda: store.write_bytes("obj.bin", DATA), "write s3://"),
        ("reset", "PUT", lambda: store.write_bytes("obj.bin", DATA), "write s3://"),
        ("cut", "GET", lambda: store.read_bytes("seed.bin"), "read s3://"),
        (
            "corrupt",
            "GET",
            lambda: store.download_file("seed.bin", tmp_path / "d" / "seed.bin"),
            "download s3://",
        ),
    ]
    for kind, method, action, operation in cases:
        proxy.clear()
        proxy.add(Fault(kind, method=method, times=100))
        with pytest.raises(StorageError) as raised:
            action()
        assert raised.value.transient and raised.value.exit_code == EXIT_TRANSIENT, (kind, raised.value)
        assert operation in str(raised.value) and f"{bucket}/runs/r1/" in str(raised.value), str(raised.value)
        assert proxy.count(method) >= 2, f"{kind}: not retried"
    # The corrupt download was never put in place, and left nothing behind.
    assert not (tmp_path / "d" / "seed.bin").exists()
    assert list((tmp_path / "d").iterdir()) == []


def test_cut_or_corrupt_bodies_are_never_returned(
    s3: S3Server, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Every body fault, every time: reads fail rather than return wrong bytes, downloads leave no file."""
    s3.client().put_object(
        Bucket=bucket,
        Key="runs/r1/seed.bin",
        Body=DATA,
        Metadata={"sha256": hashlib.sha256(DATA).hexdigest()},
    )
    kinds: list[FaultKind] = ["cut", "truncate", "corrupt", "reset"]
    for kind in kinds:
        proxy.clear()
        proxy.add(Fault(kind, method="GET", key="seed.bin", times=1000))
        store = store_via(proxy, bucket, max_attempts=2)
        with pytest.raises(StorageError):
            store.read_bytes("seed.bin")
        target = tmp_path / kind / "seed.bin"
        with pytest.raises(StorageError):
            store.download_file("seed.bin", target)
        assert not target.parent.exists() or list(target.parent.iterdir()) == [], kind


def test_large_upload_is_multipart_checksummed_and_verified(
    s3: S3Server, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    big = tmp_path / "model.safetensors"
    with big.open("wb") as handle:
        for _ in range(20):
            handle.write(os.urandom(1 << 20))
    # Part 2 arrives corrupted, part 3 is cut off, and the size check after the upload is lied to once.
    faults = [
        proxy.add(Fault("corrupt", method="PUT", key="partNumber=2")),
        proxy.add(Fault("reset", method="PUT", key="partNumber=3")),
        proxy.add(Fault("truncate", method="HEAD", key="model.safetensors")),
    ]
    record = store_via(proxy, bucket, threshold_mb=8).upload_file(big, "model/model.safetensors")
    assert all(f.hits == 1 for f in faults), proxy.seen
    assert proxy.count("POST", "uploads") >= 1 and proxy.count("PUT", "partNumber=3") >= 2
    assert {s.target.rsplit("partNumber=", 1)[1] for s in proxy.seen if "partNumber=" in s.target} == {
        "1",
        "2",
        "3",
    }
    head = s3.client().head_object(Bucket=bucket, Key="runs/r1/model/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 8 MB
    stored = s3.client().get_object(Bucket=bucket, Key="runs/r1/model/model.safetensors")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == record.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert head["Metadata"]["sha256"] == record.sha256


def test_permanent_problems_are_not_transient(s3: S3Server, bucket: str) -> None:
    good = StorageConfig(
        endpoint_url=s3.endpoint,
        access_key_id=SecretStr(ACCESS_KEY),
        secret_access_key=SecretStr(SECRET_KEY),
        max_attempts=2,
    )
    wrong_secret = good.model_copy(update={"secret_access_key": SecretStr("not-the-secret")})
    wrong_key = good.model_copy(update={"access_key_id": SecretStr("nobody")})
    checks = [
        (S3Store(make_s3_client(wrong_secret), bucket, "r", good), "SignatureDoesNotMatch"),
        (S3Store(make_s3_client(wrong_key), bucket, "r", good), "InvalidAccessKeyId"),
        (S3Store(make_s3_client(good), "no-such-bucket-here", "r", good), "the bucket does not exist"),
        (S3Store(make_s3_client(good), bucket, "r", good), "not found"),
    ]
    for store, says in checks:
        started = time.monotonic()
        with pytest.raises(StorageError) as raised:
            store.read_bytes("tickets.jsonl")
        assert not raised.value.transient and raised.value.exit_code == EXIT_BAD_INPUT
        assert says in str(raised.value) and "tickets.jsonl" in str(raised.value)
        assert time.monotonic() - started < 5  # not retried
    with pytest.raises(ConfigError, match="endpoint_url") as bad_endpoint:
        make_s3_client(good.model_copy(update={"endpoint_url": "not a url"}))
    assert bad_endpoint.value.exit_code == EXIT_BAD_INPUT


# ---------------------------------------------------------------- a step, through the CLI
#
# Real `finetune-job prepare` processes (forked by the batch runner, two at a time) against S3,
# through their own proxies: a baseline without faults, one through transient faults, one whose
# storage stays down (then a rerun of the same run id), and the permanent failures.


@dataclass
class CliRuns:
    bucket: str
    outcomes: dict[str, Outcome]
    faults: list[Fault]
    failing_proxy_saw: int


def _config(tmp: Path, name: str, output_bucket: str, input_bucket: str) -> Path:
    config = {
        "data": {
            "tickets": f"s3://{input_bucket}/in/tickets.jsonl",
            "links": f"s3://{input_bucket}/in/links.jsonl",
        },
        "output": {"uri": f"s3://{output_bucket}/runs"},
        "model": {"base": OFFLINE_MODEL},
        "pairs": {"mine_hard_negatives": False},
        "storage": {"max_attempts": 3},
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def cli_runs(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliRuns]:
    tmp = tmp_path_factory.mktemp("s3cli")
    bucket = s3.create_bucket("cli-runs")
    client = s3.client()
    client.put_object(Bucket=bucket, Key="in/tickets.jsonl", Body=jsonl(tickets()))
    client.put_object(Bucket=bucket, Key="in/links.jsonl", Body=jsonl(links()))
    config = _config(tmp, "config", bucket, bucket)
    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with FaultProxy(s3.endpoint, lifetime_s=600) as flaky, FaultProxy(s3.endpoint, lifetime_s=600) as down:
        faults = [
            flaky.add(fault)
            for fault in (
                Fault("refuse"),
                Fault("reset", method="GET", key="in/tickets.jsonl"),
                Fault("cut", method="GET", key="in/links.jsonl"),
                Fault("error500", method="HEAD", key="faulted/"),
                Fault("slowdown", method="PUT", key="prepared/split.json", times=2),
                Fault("drop_response", method="PUT", key="prepared/pairs_val.jsonl"),
                Fault("corrupt", method="PUT", key="prepared/tickets.jsonl"),
                Fault("drop_response", method="PUT", key="locks/run.lock"),
                Fault("latency", method="PUT", key="prepared/links.jsonl", seconds=1.0),
            )
        ]
        down.add(Fault("slowdown", method="PUT", key="prepared/pairs_train.jsonl", times=10_000))

        def prepare(
            run_id: str, endpoint: str, path: Path = config, **env: str
        ) -> tuple[list[str], Path, dict[str, str]]:
            args = ["prepare", "--config", str(path), "--run-id", run_id]
            return args, tmp, {**s3.env(), "FINETUNE_STORAGE__ENDPOINT_URL": endpoint, **env}

        first = run_many(
            {
                "baseline": prepare("baseline", s3.endpoint),
                "faulted": prepare("faulted", flaky.endpoint),
                "stays_down": prepare("again", down.endpoint),
                "unreachable": prepare("unreachable", dead, FINETUNE_STORAGE__MAX_ATTEMPTS="2"),
                "denied": prepare("denied", s3.endpoint, AWS_SECRET_ACCESS_KEY="wrong-secret-123"),
                "no_bucket": prepare(
                    "no-bucket", s3.endpoint, _config(tmp, "nobucket", bucket, "no-such-bucket-here")
                ),
            },
            tmp / "first",
        )
        saw = down.count("PUT", "prepared/pairs_train.jsonl")
        down.clear()  # storage is back: the same run id again
        rerun = run_many({"rerun": prepare("again", down.endpoint)}, tmp / "rerun")
        yield CliRuns(bucket, {**first, **rerun}, faults, saw)


def _prepared(s3: S3Server, bucket: str, run_id: str) -> dict[str, bytes]:
    client = s3.client()
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"runs/{run_id}/prepared/")["Contents"]
    ]
    return {k.rsplit("/", 1)[1]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_no_cli_run_ended_in_a_traceback(cli_runs: CliRuns) -> None:
    crashed = {name: o.text[-2000:] for name, o in cli_runs.outcomes.items() if "Traceback" in o.text}
    assert not crashed


def test_prepare_through_transient_faults_writes_identical_artifacts(s3: S3Server, cli_runs: CliRuns) -> None:
    baseline, faulted = cli_runs.outcomes["baseline"], cli_runs.outcomes["faulted"]
    assert baseline.exit == 0, baseline.stderr[-2000:]
    assert faulted.exit == 0, faulted.stderr[-3000:]
    assert [f.kind for f in cli_runs.faults if f.hits != f.times] == []  # every fault fired
    prepared = _prepared(s3, cli_runs.bucket, "faulted")
    assert set(prepared) == {
        "tickets.jsonl",
        "links.jsonl",
        "split.json",
        "pairs_train.jsonl",
        "pairs_val.jsonl",
        "pairs_test.jsonl",
        "triplets_train.jsonl",
        "title_body_train.jsonl",
    }
    assert prepared == _prepared(s3, cli_runs.bucket, "baseline")


def test_storage_down_past_the_retries_exits_75_and_a_rerun_finishes(s3: S3Server, cli_runs: CliRuns) -> None:
    failed, rerun = cli_runs.outcomes["stays_down"], cli_runs.outcomes["rerun"]
    assert failed.exit == EXIT_TRANSIENT, failed.stderr[-2000:]
    assert (
        f"write s3://{cli_runs.bucket}/runs/again/prepared/pairs_train.jsonl: S3 error SlowDown"
        in failed.stderr
    )
    assert cli_runs.failing_proxy_saw == 3  # storage.max_attempts
    assert rerun.exit == 0, rerun.stderr[-2000:]
    assert _prepared(s3, cli_runs.bucket, "again") == _prepared(s3, cli_runs.bucket, "baseline")


def test_unreachable_endpoint_exits_75(cli_runs: CliRuns) -> None:
    down = cli_runs.outcomes["unreachable"]
    assert down.exit == EXIT_TRANSIENT, down.stderr[-2000:]
    assert f"s3://{cli_runs.bucket}/runs/unreachable/" in down.stderr and "Could not connect" in down.stderr


def test_wrong_credentials_and_missing_bucket_exit_2_and_say_which(cli_runs: CliRuns) -> None:
    denied, missing = cli_runs.outcomes["denied"], cli_runs.outcomes["no_bucket"]
    assert denied.exit == EXIT_BAD_INPUT, denied.stderr[-2000:]
    assert "access denied (SignatureDoesNotMatch); check the S3 credentials" in denied.stderr
    assert f"s3://{cli_runs.bucket}/runs/denied/" in denied.stderr
    assert missing.exit == EXIT_BAD_INPUT, missing.stderr[-2000:]
    assert "read s3://no-such-bucket-here/in/tickets.jsonl: the bucket does not exist" in missing.stderr
