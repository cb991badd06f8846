"""A storage backend is its own code plus one entry in job.storage.BACKENDS, and nothing else.

The backend here (`dir://NAME/...`, folders under a root the test owns, through LocalStore) is
registered for one test only; the job's stores, inputs, config validation and model loading then
take its URIs without a change to any other module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import job.storage
from job.config import StorageConfig, load_config
from job.embedding.model import resolve_model_path
from job.errors import ConfigError
from job.storage import (
    InputFile,
    LocalStore,
    basename,
    check_key,
    download_dir,
    is_remote,
    open_store,
    read_input_files,
    read_uri,
)

SCHEME = "dir://"


class FolderBackend:
    """dir://NAME/...: a folder under `root`. It counts as remote, as a new object store would: the job
    fetches a model from it instead of reading it in place, and never looks for symlinks in it."""

    local = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, uri: str) -> Path:
        return self.root / check_key(uri[len(SCHEME) :].strip("/"))

    def problem(self, uri: str) -> str | None:
        return None if uri[len(SCHEME) :].strip("/") else "a dir:// URI names a folder: dir://NAME"

    def location(self, uri: str) -> str:
        return uri.rstrip("/")

    def open_store(self, uri: str, cfg: StorageConfig, client: Any) -> LocalStore:
        return LocalStore(self._path(uri))

    def read(self, uri: str, cfg: StorageConfig, client: Any) -> bytes:
        path = self._path(uri)
        return LocalStore(path.parent).read_bytes(path.name)

    def input_files(self, uri: str, cfg: StorageConfig, suffix: str, client: Any) -> list[InputFile]:
        if not self._path(uri).is_dir():
            return [InputFile(uri, basename(uri), self.read(uri, cfg, client))]
        folder = self.open_store(uri, cfg, client)
        return [
            InputFile(folder.where(key), key, folder.read_bytes(key))
            for key, _size in folder.list_keys()
            if key.endswith(suffix)
        ]

    def download_prefix(self, uri: str, cfg: StorageConfig, local_dir: Path) -> Path:
        path = self._path(uri)
        return download_dir(LocalStore(path.parent), path.name, local_dir)


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The dir:// backend registered, rooted at a fresh folder (the entry goes again after the test)."""
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ConfigError, match="unsupported URI scheme"):
        open_store("dir://runs", StorageConfig())  # before its entry, the scheme is unknown
    monkeypatch.setitem(job.storage.BACKENDS, "dir", FolderBackend(root))
    return root


def test_a_registered_backend_is_opened_read_and_listed_by_uri(folders: Path) -> None:
    cfg = StorageConfig()
    record = open_store("dir://runs", cfg).child("r1").write_bytes("metrics.json", b"{}")
    assert record.size == 2 and (folders / "runs" / "r1" / "metrics.json").read_bytes() == b"{}"
    assert read_uri("dir://runs/r1/metrics.json", cfg) == b"{}"
    assert is_remote("dir://runs") and not is_remote(str(folders)) and is_remote("s3://bucket/runs")

    (folders / "in" / "b").mkdir(parents=True)
    (folders / "in" / "a.jsonl").write_bytes(b'{"id": "A"}\n')
    (folders / "in" / "b" / "c.jsonl").write_bytes(b'{"id": "C"}\n')
    (folders / "in" / "notes.txt").write_bytes(b"not an input")
    files = read_input_files("dir://in", cfg, ".jsonl")
    assert [(f.name, f.data) for f in files] == [
        ("a.jsonl", b'{"id": "A"}\n'),
        ("b/c.jsonl", b'{"id": "C"}\n'),
    ]
    assert [f.name for f in read_input_files("dir://in/a.jsonl", cfg, ".jsonl")] == ["a.jsonl"]

    hint = "use s3://, file://, dir:// or a path"
    with pytest.raises(ConfigError, match=f"unsupported URI scheme .*: {hint}"):
        open_store("nope://x", cfg)  # the hint lists the schemes the registry holds


def test_config_validates_a_registered_backends_uris(folders: Path) -> None:
    tickets = {"FINETUNE_DATA__TICKETS": "dir://in/t.jsonl"}
    loaded = load_config(environ={"FINETUNE_OUTPUT__URI": "dir://runs", **tickets})
    assert loaded.config.output.uri == "dir://runs"
    with pytest.raises(ConfigError, match="inside the folder of data.tickets"):
        load_config(environ={"FINETUNE_OUTPUT__URI": "dir://in/out", **tickets})
    with pytest.raises(ConfigError, match=r"output.uri .*a dir:// URI names a folder: dir://NAME"):
        load_config(environ={"FINETUNE_OUTPUT__URI": "dir://"})


def test_a_model_kept_in_a_registered_backend_is_fetched_into_the_cache(
    folders: Path, tmp_path: Path
) -> None:
    model = folders / "models" / "m1"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x"}]))
    (model / "1_Pooling" / "config.json").write_text("{}")
    resolved = Path(resolve_model_path("dir://models/m1", StorageConfig(), tmp_path / "cache"))
    assert resolved.is_relative_to(tmp_path / "cache"), "fetched, not read in place"
    assert (resolved / "modules.json").read_bytes() == (model / "modules.json").read_bytes()
    assert (resolved / "1_Pooling" / "config.json").is_file()
