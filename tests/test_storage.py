"""job/storage.py against a local directory and the loopback S3 server: the same contract for both.

Round trips with size and sha256, atomic and verified writes, keys that cannot escape the
store, errors that say transient (exit 75) or not (exit 2), and no secret in any message.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError
from pydantic import SecretStr

from job.config import StorageConfig
from job.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, ConfigError, StorageError
from job.storage import (
    LocalStore,
    S3Store,
    Store,
    _s3_error,
    check_key,
    download_dir,
    make_s3_client,
    open_store,
    read_uri,
    split_s3_uri,
    upload_dir,
)
from tests.conftest import s3_config
from tests.s3server import SECRET_KEY, S3Server

# ---------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "key", ["a.json", "prepared/pairs_train.jsonl", "model/1_Pooling/config.json", "a..b/c", "prepared/"]
)
def test_check_key_accepts_relative_paths(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "..",
        "../x",
        "a/../../b",
        "a/..",
        "./a",
        "a/./b",
        "a//b",
        "a\\b",
        "a\nb",
        "a\x00b",
        "model//etc/passwd",
    ],
)
def test_check_key_refuses_what_could_escape(key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_key(key)
    assert raised.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize("key", ["../outside.txt", "/tmp/abs.txt", "a/../../outside.txt"])
def test_no_store_writes_outside_its_root(store: Store, tmp_path: Path, key: str) -> None:
    for write in (
        lambda: store.write_bytes(key, b"x"),
        lambda: store.create_if_absent(key, b"x"),
        lambda: store.replace_if_unchanged(key, b"x", "v"),
        lambda: store.delete(key),
        lambda: store.child(key),
    ):
        with pytest.raises(ConfigError):
            write()
    assert not (tmp_path / "outside.txt").exists() and not Path("/tmp/abs.txt").exists()


def test_local_store_does_not_follow_symlinks_out_of_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "model").symlink_to(outside)
    store = LocalStore(tmp_path / "root")
    with pytest.raises(ConfigError, match="outside"):
        store.write_bytes("model/weights.bin", b"x")
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------- the contract, both backends


def test_round_trip_records_size_and_sha256(store: Store, tmp_path: Path) -> None:
    data = os.urandom(5000)
    record = store.write_bytes("prepared/a.bin", data)
    assert (record.path, record.size, record.sha256) == (
        "prepared/a.bin",
        5000,
        hashlib.sha256(data).hexdigest(),
    )
    assert store.read_bytes("prepared/a.bin") == data
    local = tmp_path / "up.bin"
    local.write_bytes(data[::-1])
    uploaded = store.upload_file(local, "model/up.bin")
    assert uploaded.sha256 == hashlib.sha256(data[::-1]).hexdigest()
    store.download_file("model/up.bin", tmp_path / "down" / "up.bin")
    assert (tmp_path / "down" / "up.bin").read_bytes() == data[::-1]
    assert store.exists("model/up.bin") and not store.exists("model/nope.bin")
    assert store.list_keys("model/") == [("model/up.bin", 5000)]
    assert store.list_keys("") == [("model/up.bin", 5000), ("prepared/a.bin", 5000)]
    assert store.child("model").read_bytes("up.bin") == data[::-1]


def test_overwrite_replaces_the_whole_object(store: Store) -> None:
    store.write_bytes("a.json", b"x" * 1000)
    store.write_bytes("a.json", b"short")
    assert store.read_bytes("a.json") == b"short"
    assert store.list_keys("") == [("a.json", 5)]


def test_delete_prefix_removes_exactly_the_prefix(store: Store) -> None:
    for key in ("checkpoints/c1/a", "checkpoints/c2/b", "checkpoints-old/x", "model/m"):
        store.write_bytes(key, b"1")
    store.delete_prefix("checkpoints/")
    assert [k for k, _ in store.list_keys("")] == ["checkpoints-old/x", "model/m"]
    store.delete_prefix("model/m")
    assert [k for k, _ in store.list_keys("")] == ["checkpoints-old/x"]


def test_list_folders_names_the_top_level_folders_only(store: Store) -> None:
    assert store.list_folders() == []
    for key in (
        "run-b/manifest.json",
        "run-a/model/config.json",
        "run-a/steps/prepare.json",
        "promoted.json",
    ):
        store.write_bytes(key, b"{}")
    assert store.list_folders() == ["run-a", "run-b"]
    assert store.child("run-a").list_folders() == ["model", "steps"]


def test_create_if_absent_creates_once(store: Store) -> None:
    assert store.create_if_absent("locks/run.lock", b"mine")
    assert not store.create_if_absent("locks/run.lock", b"theirs")
    assert store.read_bytes("locks/run.lock") == b"mine"
    assert store.list_keys("locks/") == [("locks/run.lock", 4)], (
        "no lock or temp file of the store's own shows"
    )
    if isinstance(store, LocalStore):  # and none is left behind, for a refused run must leave no file
        assert sorted(p.name for p in (store.root / "locks").iterdir()) == ["run.lock"]


def test_replace_if_unchanged_replaces_only_the_version_it_read(store: Store) -> None:
    assert store.read_versioned("slot.json") is None
    assert store.create_if_absent("slot.json", b'{"n": 1}')
    first = store.read_versioned("slot.json")
    assert first is not None and first.data == b'{"n": 1}'
    assert store.replace_if_unchanged("slot.json", b'{"n": 3}', first.version)
    assert not store.replace_if_unchanged("slot.json", b'{"n": 4}', first.version), (
        "a stale version must not overwrite a newer write"
    )
    latest = store.read_versioned("slot.json")
    assert latest is not None and latest.data == b'{"n": 3}' and latest.version != first.version
    store.delete("slot.json")
    assert not store.replace_if_unchanged("slot.json", b'{"n": 5}', latest.version), "gone is changed too"
    assert store.read_versioned("slot.json") is None


def test_delete_removes_one_key_and_tolerates_a_missing_one(store: Store) -> None:
    for key in ("manifest.json", "manifest.json.bak", "model/m"):
        store.write_bytes(key, b"1")
    store.delete("manifest.json")
    store.delete("manifest.json")
    assert [k for k, _ in store.list_keys("")] == ["manifest.json.bak", "model/m"]


# Each process adds 1 to a counter N times by read, then replace-if-unchanged; it counts its wins.
_INCREMENTS = """
import sys, time
from pathlib import Path
from job.storage import LocalStore
store, wins = LocalStore(Path(sys.argv[1])), 0
while not (store.root / "go").exists():
    time.sleep(0.001)
for _ in range(int(sys.argv[2])):
    seen = store.read_versioned("counter")
    wins += store.replace_if_unchanged("counter", str(int(seen.data) + 1).encode(), seen.version)
print(wins)
"""


def test_local_replace_if_unchanged_loses_no_update_between_processes(tmp_path: Path) -> None:
    # Processes, not threads: "compare, then rename" must be one step for every process on the host.
    store = LocalStore(tmp_path / "root")
    store.write_bytes("counter", b"0")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _INCREMENTS, str(store.root), "300"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    time.sleep(1.0)  # let every process start and wait
    (store.root / "go").touch()
    wins = sum(int(proc.communicate(timeout=120)[0]) for proc in procs)
    assert wins > 0 and int(store.read_bytes("counter")) == wins, "an increment that won was lost"


def test_missing_objects_are_not_transient(store: Store, tmp_path: Path) -> None:
    for action in (
        lambda: store.read_bytes("absent.json"),
        lambda: store.download_file("absent.json", tmp_path / "x" / "absent.json"),
    ):
        with pytest.raises(StorageError) as raised:
            action()
        assert not raised.value.transient and raised.value.exit_code == EXIT_BAD_INPUT
        assert "absent.json" in str(raised.value)
    assert not (tmp_path / "x" / "absent.json").exists()


def test_upload_and_download_dir_round_trip(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "1_Pooling").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}')
    records = upload_dir(store, source, "model")
    assert sorted(r.path for r in records) == ["model/1_Pooling/config.json", "model/config.json"]
    target = download_dir(store, "model", tmp_path / "copy")
    assert (target / "1_Pooling" / "config.json").read_text() == '{"pooling": "mean"}'
    with pytest.raises(StorageError, match="nothing found"):
        download_dir(store, "no-such-prefix", tmp_path / "empty")


# ---------------------------------------------------------------- local specifics


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.write_bytes("a.json", b"old")
    with pytest.raises(StorageError) as raised:
        store.upload_file(tmp_path / "missing-source.bin", "a.json")  # fails mid-way
    assert not raised.value.transient
    assert store.read_bytes("a.json") == b"old"
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["a.json"]


_WRITE_UNDER_UMASK = """
import os, sys
from pathlib import Path
from job.storage import LocalStore
os.umask(int(sys.argv[2], 8))
root, source = Path(sys.argv[1]), Path(sys.argv[1]).parent / "source.bin"
source.write_bytes(b"weights")
store = LocalStore(root / "run")
store.write_bytes("metrics.json", b"{}")
store.upload_file(source, "model/model.safetensors")
store.download_file("metrics.json", root / "downloaded" / "metrics.json")
"""


def _written_under_umask(umask: str) -> Path:
    """A local output written by a fresh process under `umask`, in a folder others may enter (as a mounted
    one)."""
    folder = Path(tempfile.mkdtemp(prefix="umask-", dir="/tmp"))
    folder.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_UMASK, str(folder / "out"), umask],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return folder / "out"


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [("022", 0o644, 0o755), ("027", 0o640, 0o750)])
def test_local_outputs_follow_the_process_umask(umask: str, file_mode: int, dir_mode: int) -> None:
    out = _written_under_umask(umask)
    try:
        for path in ("run/metrics.json", "run/model/model.safetensors", "downloaded/metrics.json"):
            assert stat.S_IMODE((out / path).stat().st_mode) == file_mode, path
        for path in ("", "run", "run/model", "downloaded"):
            assert stat.S_IMODE((out / path).stat().st_mode) == dir_mode, path
    finally:
        shutil.rmtree(out.parent)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to switch user"
)
def test_a_local_output_written_under_umask_022_is_readable_by_another_user() -> None:
    out = _written_under_umask("022")
    try:
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
        read = subprocess.run(
            [*as_nobody, str(out / "run" / "model" / "model.safetensors")], capture_output=True, timeout=30
        )
        assert read.returncode == 0 and read.stdout == b"weights", read.stderr
    finally:
        shutil.rmtree(out.parent)


def test_local_unwritable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot create") as raised:
        LocalStore(blocker).write_bytes("a.json", b"x")
    assert raised.value.exit_code == EXIT_BAD_INPUT


# ---------------------------------------------------------------- S3 specifics


def test_s3_objects_carry_their_sha256(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{bucket}/runs/r1", s3_config(s3))
    store.write_bytes("a.bin", b"payload")
    local = tmp_path / "b.bin"
    local.write_bytes(b"file payload")
    store.upload_file(local, "b.bin")
    client = s3.client()
    for key, data in (("a.bin", b"payload"), ("b.bin", b"file payload")):
        head = client.head_object(Bucket=bucket, Key=f"runs/r1/{key}")
        assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_s3_object_not_matching_its_sha256_is_never_returned(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    s3.client().put_object(
        Bucket=bucket, Key="runs/r1/bad.bin", Body=b"tampered", Metadata={"sha256": "0" * 64}
    )
    store = open_store(f"s3://{bucket}/runs/r1", s3_config(s3))
    with pytest.raises(StorageError, match="sha256 mismatch"):
        store.read_bytes("bad.bin")
    with pytest.raises(StorageError, match="sha256 mismatch"):
        store.download_file("bad.bin", tmp_path / "d" / "bad.bin")
    assert list((tmp_path / "d").iterdir()) == []


def test_read_uri_reads_local_and_s3_and_names_what_is_missing(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    s3.client().put_object(Bucket=bucket, Key="in/tickets.jsonl", Body=b"{}\n")
    cfg = s3_config(s3)
    assert read_uri(f"s3://{bucket}/in/tickets.jsonl", cfg) == b"{}\n"
    (tmp_path / "t.jsonl").write_bytes(b"local")
    assert read_uri(str(tmp_path / "t.jsonl"), cfg) == read_uri(f"file://{tmp_path}/t.jsonl", cfg) == b"local"
    for uri, says in (
        (str(tmp_path / "nope.jsonl"), "input not found"),
        (str(tmp_path), "cannot read input"),
        (f"s3://{bucket}/in/nope.jsonl", "not found"),
    ):
        with pytest.raises(StorageError, match=says) as raised:
            read_uri(uri, cfg)
        assert raised.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize("uri", ["ftp://host/x", "s3://", "s3:///prefix"])
def test_unusable_uris_are_config_errors(uri: str) -> None:
    with pytest.raises(ConfigError):
        open_store(uri, StorageConfig())
    with pytest.raises(ConfigError):
        split_s3_uri(uri) if uri.startswith("s3://") else open_store(uri, StorageConfig())


def test_client_set_up_problems_are_config_errors(s3: S3Server) -> None:
    with pytest.raises(ConfigError, match="endpoint_url"):
        make_s3_client(s3_config(s3, endpoint_url="not a url"))
    with pytest.raises(
        ConfigError, match="storage.access_key_id is set but storage.secret_access_key is not"
    ):
        make_s3_client(s3_config(s3, secret_access_key=None))


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("BadDigest", 400), True),
        (_client_error("SomethingNew", 502), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("SignatureDoesNotMatch", 403), False),
        (_client_error("NoSuchBucket", 404), False),
        (_client_error("NoSuchKey", 404), False),
        (_client_error("InvalidArgument", 400), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionResetError(104, "reset"), True),
        (ParamValidationError(report="Invalid bucket name"), False),
    ],
)
def test_errors_are_classified_for_the_orchestrator(error: Exception, transient: bool) -> None:
    classified = _s3_error(error, "read", "s3://b/k")
    assert classified.transient is transient
    assert classified.exit_code == (EXIT_TRANSIENT if transient else EXIT_BAD_INPUT)
    assert str(classified).startswith("read s3://b/k")


def test_credential_errors_name_the_problem_not_the_secret(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    for changes, code in (
        ({"secret_access_key": SecretStr("wrong-secret-value-1")}, "SignatureDoesNotMatch"),
        ({"access_key_id": SecretStr("unknown-key-id")}, "InvalidAccessKeyId"),
    ):
        cfg = s3_config(s3, **changes)
        store = S3Store(make_s3_client(cfg), bucket, "r", cfg)
        actions: list[Callable[[], object]] = [
            partial(store.read_bytes, "a"),
            partial(store.write_bytes, "a", b"x"),
            store.list_keys,
            partial(store.exists, "a"),
            partial(store.download_file, "a", tmp_path / "a"),
        ]
        for action in actions:
            with pytest.raises(StorageError) as raised:
                action()
            message = str(raised.value)
            assert code in message and "check the S3 credentials" in message
            assert "wrong-secret-value-1" not in message and SECRET_KEY not in message


def test_the_loopback_s3_server_takes_more_buckets_than_the_suite_makes() -> None:
    # Each bucket is a SeaweedFS collection with volumes of its own; with the volume count left to
    # the free disk, PutObject failed with InternalError after ~60 buckets and broke late tests.
    server = S3Server()
    server.start()
    try:
        client = server.client()
        for i in range(100):
            client.create_bucket(Bucket=f"many-{i:03d}")
            client.put_object(Bucket=f"many-{i:03d}", Key="k", Body=b"x")
        assert client.get_object(Bucket="many-099", Key="k")["Body"].read() == b"x"
    finally:
        server.stop()


def test_s3_folder_markers_are_not_files(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    # Some S3 consoles create "folders" as empty objects named "m1/": download_dir failed with
    # "invalid object key ''".
    client = s3.client()
    for key, body in (
        ("models/m1/", b""),
        ("models/m1/1_Pooling/", b""),
        ("models/m1/modules.json", b"[]"),
        ("models/m1/1_Pooling/config.json", b"{}"),
    ):
        client.put_object(Bucket=bucket, Key=key, Body=body)
    store = open_store(f"s3://{bucket}/models", s3_config(s3))
    assert store.list_keys("m1/") == [("m1/1_Pooling/config.json", 2), ("m1/modules.json", 2)]
    download_dir(store, "m1", tmp_path / "m1")
    assert sorted(
        p.relative_to(tmp_path / "m1").as_posix() for p in (tmp_path / "m1").rglob("*") if p.is_file()
    ) == ["1_Pooling/config.json", "modules.json"]
    store.delete_prefix("m1/")
    assert client.list_objects_v2(Bucket=bucket, Prefix="models/").get("KeyCount") == 0, (
        "markers go with the prefix"
    )


def test_an_object_over_the_input_limit_is_refused_before_its_body_is_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local files and S3 objects have the same cap (lowered here: a real 1 GiB object would be read
    whole)."""
    import job.storage

    store.write_bytes("big.jsonl", b"x" * 2000)
    store.write_bytes("small.jsonl", b"x" * 10)
    monkeypatch.setattr(job.storage, "MAX_INPUT_BYTES", 1000)
    with pytest.raises(StorageError, match="the limit is 1000") as refused:
        store.read_bytes("big.jsonl")
    assert not refused.value.transient
    assert store.read_bytes("small.jsonl") == b"x" * 10


def test_a_fifo_in_the_output_tree_is_refused_not_waited_on(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "runs")
    (tmp_path / "runs" / "r1" / "steps").mkdir(parents=True)
    os.mkfifo(tmp_path / "runs" / "r1" / "steps" / "prepare.json")
    with pytest.raises(StorageError, match="FIFO"):
        store.child("r1").read_bytes("steps/prepare.json")
    os.mkfifo(tmp_path / "runs" / "promoted.json")
    with pytest.raises(StorageError, match="FIFO"):
        store.read_versioned("promoted.json")


def test_commands_meeting_a_fifo_in_the_output_tree_exit_instead_of_hanging(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    from tests.conftest import run_cli

    runs = tmp_path / "runs"
    (runs / "old" / "prepared").mkdir(parents=True)
    os.mkfifo(runs / "old" / "prepared" / "tickets.jsonl")
    (runs / "promoted.json").write_text('{"run_id": "old", "metric": "average_precision", "value": 0.5}')
    data = [
        f"--set=data.tickets={synthetic_dir / 'tickets.jsonl'}",
        f"--set=data.links={synthetic_dir / 'links.jsonl'}",
        "--set=pairs.mine_hard_negatives=false",
        "--output",
        str(runs),
    ]
    prepared = run_cli("prepare", "--run-id", "new", *data, timeout=120)
    assert prepared.returncode == 0, prepared.stderr[
        -2000:
    ]  # drift against the promoted run is skipped, said why
    assert "cannot read its prepared inputs" in (runs / "new" / "steps" / "prepare.json").read_text()
    (runs / "promoted.json").unlink()
    os.mkfifo(runs / "promoted.json")
    history = run_cli("history", "--output", str(runs), timeout=60)
    assert history.returncode == 2 and "FIFO" in history.stderr and "Traceback" not in history.stderr
    (runs / "new" / "locks").mkdir(exist_ok=True)
    os.mkfifo(runs / "new" / "locks" / "run.lock")
    again = run_cli("train", "--run-id", "new", *data, timeout=60)
    assert again.returncode == 2 and "FIFO" in again.stderr and "Traceback" not in again.stderr, again.stderr[
        -2000:
    ]
