"""One storage interface with two backends: a local directory and an S3-compatible bucket.

Every step reads and writes through a `Store`; this is the only module that imports boto3.
Writes are verified (size, and sha256 kept as object metadata) and never partially visible:
local files go through a temp file and an atomic rename, S3 objects appear whole or not at all.
Keys are checked so nothing can be written outside the store's prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from job.config import StorageConfig
from job.errors import ConfigError, StorageError

CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRecord:
    """A file as the manifest lists it: path relative to the run, size, sha256."""

    path: str
    size: int
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_key(key: str) -> str:
    """Reject keys that could escape the prefix: absolute, '..', empty segments, control characters."""
    if not key or key.startswith("/") or "\\" in key or any(ord(c) < 32 for c in key):
        raise ConfigError(f"invalid object key {key!r}: must be a relative path without control characters")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] in (".", ".."):
        raise ConfigError(f"invalid object key {key!r}: '.', '..' and empty segments are not allowed")
    return key


class Store(Protocol):
    """A place to keep a run's files: keys are '/'-separated paths relative to `uri`."""

    uri: str

    def child(self, prefix: str) -> Store: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> FileRecord: ...
    def upload_file(self, local: Path, key: str) -> FileRecord: ...
    def download_file(self, key: str, local: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str = "") -> list[tuple[str, int]]: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def create_exclusive(self, key: str, data: bytes) -> bool: ...


def upload_dir(store: Store, local_dir: Path, prefix: str) -> list[FileRecord]:
    """Upload every file under `local_dir` to `prefix/…`; returns what was written."""
    records = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        records.append(store.upload_file(path, f"{prefix}/{rel}"))
    return records


def download_dir(store: Store, prefix: str, local_dir: Path) -> Path:
    """Download every object under `prefix/` into `local_dir`, verified."""
    keys = store.list_keys(prefix + "/")
    if not keys:
        raise StorageError(f"nothing found under {store.uri}/{prefix}/", transient=False)
    for key, _size in keys:
        store.download_file(key, local_dir / key[len(prefix) + 1 :])
    return local_dir


# ---------------------------------------------------------------- local directory


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"not found: {path}", transient=False) from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}", transient=False) from exc

    def write_bytes(self, key: str, data: bytes) -> FileRecord:
        with _temp_beside(self._path(key)) as tmp:
            tmp.write_bytes(data)
        return FileRecord(key, len(data), hashlib.sha256(data).hexdigest())

    def upload_file(self, local: Path, key: str) -> FileRecord:
        target = self._path(key)
        with _temp_beside(target) as tmp:
            shutil.copyfile(local, tmp)
        return FileRecord(key, target.stat().st_size, sha256_file(target))

    def download_file(self, key: str, local: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise StorageError(f"not found: {source}", transient=False)
        with _temp_beside(local) as tmp:
            shutil.copyfile(source, tmp)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_keys(self, prefix: str = "") -> list[tuple[str, int]]:
        base = self.root / prefix if prefix else self.root
        folder = base if base.is_dir() else base.parent
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".tmp-" not in p.name):
            rel = path.relative_to(self.root).as_posix()
            if rel.startswith(prefix):
                found.append((rel, path.stat().st_size))
        return found

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    """Yield a temp path next to `target`; rename it into place only if the block succeeds."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {target.parent}: {exc.strerror}", transient=False) from exc
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror}", transient=False) from exc
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- S3

_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                    "Throttling", "ThrottlingException", "500", "502", "503", "504"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                     "ExpiredToken", "403", "Forbidden"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _s3_error(exc: Exception, operation: str, where: str) -> StorageError:
    """Classify a boto3 failure: retrying helps (exit 75) or it does not (exit 2)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchBucket":
            return StorageError(f"{operation} {where}: the bucket does not exist", transient=False)
        if code in _CREDENTIAL_CODES:
            return StorageError(f"{operation} {where}: access denied ({code}); check the S3 credentials", transient=False)
        if code in _MISSING_CODES:
            return StorageError(f"{operation} {where}: not found", transient=False)
        transient = code in _TRANSIENT_CODES or status >= 500
        return StorageError(f"{operation} {where}: S3 error {code or status}", transient=transient)
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{operation} {where}: no S3 credentials found", transient=False)
    if isinstance(exc, BotoCoreError | OSError):
        return StorageError(f"{operation} {where}: {type(exc).__name__}: {exc}", transient=True)
    return StorageError(f"{operation} {where}: {exc}", transient=True)


@contextlib.contextmanager
def _translated(operation: str, where: str) -> Iterator[None]:
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError, S3TransferFailedError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, S3UploadFailedError | S3TransferFailedError) else exc
        raise _s3_error(cause if isinstance(cause, Exception) else exc, operation, where) from None


def make_s3_client(cfg: StorageConfig) -> Any:
    """A boto3 S3 client: endpoint from config or AWS_ENDPOINT_URL, adaptive retries with backoff."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    if cfg.access_key_id and cfg.secret_access_key:
        kwargs["aws_access_key_id"] = cfg.access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = cfg.secret_access_key.get_secret_value()
    boto_config = Config(
        region_name=cfg.region,
        retries={"max_attempts": cfg.max_attempts, "mode": "adaptive"},
        s3={"addressing_style": "path" if cfg.path_style else "auto"},
        connect_timeout=10,
        read_timeout=60,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=cfg.endpoint_url or None, config=boto_config, **kwargs)


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str, cfg: StorageConfig) -> None:
        self.client, self.bucket, self.prefix, self.cfg = client, bucket, prefix.strip("/"), cfg
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        size = self.cfg.multipart_threshold_mb * CHUNK
        return TransferConfig(multipart_threshold=size, multipart_chunksize=max(size // 4, 8 * CHUNK), use_threads=True)

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.client, self.bucket, self._key(prefix), self.cfg)

    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)
        with _translated("read", f"s3://{self.bucket}/{full}"):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            data = response["Body"].read()
        expected = int(response.get("ContentLength", len(data)))
        if len(data) != expected:
            raise StorageError(f"read s3://{self.bucket}/{full}: got {len(data)} of {expected} bytes", transient=True)
        _verify_sha(data_sha=hashlib.sha256(data).hexdigest(), meta=response.get("Metadata", {}), where=full)
        return bytes(data)

    def write_bytes(self, key: str, data: bytes) -> FileRecord:
        full = self._key(key)
        digest = hashlib.sha256(data).hexdigest()
        with _translated("write", f"s3://{self.bucket}/{full}"):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, Metadata={"sha256": digest})
        return FileRecord(key, len(data), digest)

    def upload_file(self, local: Path, key: str) -> FileRecord:
        full = self._key(key)
        digest, size = sha256_file(local), local.stat().st_size
        where = f"s3://{self.bucket}/{full}"
        with _translated("upload", where):
            self.client.upload_file(str(local), self.bucket, full, ExtraArgs={"Metadata": {"sha256": digest}},
                                    Config=self._transfer_config())
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        if int(head["ContentLength"]) != size:
            raise StorageError(f"upload {where}: stored {head['ContentLength']} bytes, expected {size}", transient=True)
        return FileRecord(key, size, digest)

    def download_file(self, key: str, local: Path) -> None:
        full = self._key(key)
        where = f"s3://{self.bucket}/{full}"
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{local.name}.tmp-", dir=local.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            with _translated("download", where):
                head = self.client.head_object(Bucket=self.bucket, Key=full)
                self.client.download_file(self.bucket, full, str(tmp), Config=self._transfer_config())
            size = tmp.stat().st_size
            if size != int(head["ContentLength"]):
                raise StorageError(f"download {where}: got {size} of {head['ContentLength']} bytes", transient=True)
            _verify_sha(data_sha=sha256_file(tmp), meta=head.get("Metadata", {}), where=where)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            with _translated("check", f"s3://{self.bucket}/{full}"):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except StorageError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientError) and str(cause.response["Error"]["Code"]) in _MISSING_CODES:
                return False
            raise
        return True

    def list_keys(self, prefix: str = "") -> list[tuple[str, int]]:
        if prefix.rstrip("/"):
            check_key(prefix.rstrip("/"))
        full = (f"{self.prefix}/" if self.prefix else "") + prefix
        found: list[tuple[str, int]] = []
        with _translated("list", f"s3://{self.bucket}/{full}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"]
                    found.append((rel, int(obj["Size"])))
        return sorted(found)

    def delete_prefix(self, prefix: str) -> None:
        keys = [k for k, _ in self.list_keys(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            with _translated("delete", f"s3://{self.bucket}/{self._key(prefix.rstrip('/'))}"):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create `key` only if absent (S3 conditional write, If-None-Match: *)."""
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                return False
            raise _s3_error(exc, "create", f"s3://{self.bucket}/{full}") from None
        return True


def _verify_sha(data_sha: str, meta: dict[str, str], where: str) -> None:
    expected = meta.get("sha256")
    if expected and expected != data_sha:
        raise StorageError(f"{where}: sha256 mismatch (corrupt or cut transfer)", transient=True)


# ---------------------------------------------------------------- opening by URI


def split_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"invalid S3 URI {uri!r}: no bucket")
    return bucket, prefix.strip("/")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()


def open_store(uri: str, cfg: StorageConfig, client: Any = None) -> Store:
    """A store rooted at `uri` (s3://bucket/prefix, file:///path or a plain path)."""
    if uri.startswith("s3://"):
        bucket, prefix = split_s3_uri(uri)
        return S3Store(client or make_s3_client(cfg), bucket, prefix, cfg)
    if "://" in uri:
        raise ConfigError(f"unsupported URI scheme in {uri!r}: use s3://, file:// or a path")
    return LocalStore(local_path(uri))


def read_uri(uri: str, cfg: StorageConfig, client: Any = None) -> bytes:
    """Read one whole input object or file."""
    if uri.startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        parent, _, name = key.rpartition("/")
        return S3Store(client or make_s3_client(cfg), bucket, parent, cfg).read_bytes(name)
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageError(f"input not found: {path}", transient=False) from None
    except OSError as exc:
        raise StorageError(f"cannot read input {path}: {exc.strerror}", transient=False) from exc


def basename(uri: str) -> str:
    return PurePosixPath(uri.rstrip("/")).name
