"""One storage interface with two backends: a local directory and an S3-compatible bucket.

Every step reads and writes through a `Store`; this is the only module that imports boto3, and the only
one that knows URI schemes: BACKENDS maps each scheme to its backend's code, and the rest of the job asks
`open_store`, `read_uri`, `read_input_files`, `download_prefix`, `is_remote`, `uri_problem` and `location`.
Writes are verified (size, and sha256 kept as object metadata) and never partially visible:
local files go through a temp file and an atomic rename, S3 objects appear whole or not at all.
Keys are checked so nothing can be written outside the store's prefix.

Besides plain reads and writes, a store offers the conditional operations locks and the
promotion pointer are built on: a read that returns a version, replace-if-unchanged,
create-if-absent and a single-key delete. A new backend implements them here and nowhere else.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import random
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from job.errors import ConfigError, StorageError
from job.localfile import FileRefused, read_regular_file


class StorageSettings(Protocol):
    """The settings storage reads (job.config.StorageConfig has them): named here, not imported, because
    config validates URIs by asking this module, and imports point one way."""

    endpoint_url: str | None
    region: str
    path_style: bool
    access_key_id: Any  # pydantic SecretStr or None
    secret_access_key: Any
    max_attempts: int
    multipart_threshold_mb: int


CHUNK = 1 << 20
# Input files (tickets, links, pairs) are read whole and parsed in memory, which takes several times
# their size; the largest real export (Apache Jira dev) is 9.5 MB. Larger files are refused, not read.
MAX_INPUT_BYTES = 1 << 30
T = TypeVar("T")


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


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version they were read at (an S3 ETag, a sha256 locally)."""

    data: bytes
    version: str


class Store(Protocol):
    """A place to keep a run's files: keys are '/'-separated paths relative to `uri`."""

    uri: str

    def child(self, prefix: str) -> Store: ...
    def where(self, key: str) -> str:
        """The key's full location, for messages (s3://bucket/prefix/key or a path)."""
        ...

    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> FileRecord: ...
    def upload_file(self, local: Path, key: str) -> FileRecord: ...
    def download_file(self, key: str, local: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str = "") -> list[tuple[str, int]]:
        """Files under `prefix` with their sizes; S3 "folder" marker objects are not files."""
        ...

    def list_folders(self) -> list[str]:
        """The names of the folders at the top of the store (a run per folder under output.uri), sorted."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""
        ...

    def read_versioned(self, key: str) -> Versioned | None:
        """The object and its version, None when it does not exist."""
        ...

    def replace_if_unchanged(self, key: str, data: bytes, version: str) -> bool:
        """Write `data` only if the object still has `version`; False if it changed or went away.

        A write whose answer was lost and retried is recognised by reading back `data`, so callers
        put something unique in it (a token, a time)."""
        ...

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Write `data` only if nothing is stored at `key`; False if something is (same rule for retries)."""
        ...


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
        target = local_dir / check_key(key[len(prefix) + 1 :])
        if not target.resolve().is_relative_to(local_dir.resolve()):
            raise StorageError(f"refusing to download {key} outside {local_dir}", transient=False)
        store.download_file(key, target)
    return local_dir


# ---------------------------------------------------------------- local directory


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # A symlink inside the run folder must not carry writes (or reads) outside it.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ConfigError(f"invalid key {key!r}: {path} leads outside {self.root} (through a symlink)")
        return path

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def where(self, key: str) -> str:
        return str(self.root / check_key(key))

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return _read_local(path)
        except FileNotFoundError:
            raise StorageError(f"not found: {path}", transient=False) from None

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
        if prefix.endswith("/") and not base.is_dir():  # a folder that is not there holds nothing
            return []
        folder = base if base.is_dir() else base.parent
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _is_bookkeeping(p)):
            rel = path.relative_to(self.root).as_posix()
            if rel.startswith(prefix):
                found.append((rel, path.stat().st_size))
        return found

    def list_folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # A symlinked folder is not a run: writes never go through one (pipeline refuses it).
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not path.exists():  # nothing to do, and a refused process creates not even a lock file
            return
        with _key_locked(path):
            _unlink(path)

    def read_versioned(self, key: str) -> Versioned | None:
        # No lock: every write is an atomic rename, so a reader always sees one whole version.
        return self._read_versioned(self._path(key))

    def replace_if_unchanged(self, key: str, data: bytes, version: str) -> bool:
        path = self._path(key)
        with _key_locked(path):
            current = self._read_versioned(path)
            if current is None or current.version != version:
                return False
            self.write_bytes(key, data)
        return True

    def create_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.exists():  # the common refusal, without creating even a lock file
            return False
        with _key_locked(path):
            if path.exists():
                return False
            self.write_bytes(key, data)
        return True

    @staticmethod
    def _read_versioned(path: Path) -> Versioned | None:
        try:
            data = _read_local(path)
        except FileNotFoundError:
            return None
        return Versioned(data, hashlib.sha256(data).hexdigest())


def _read_local(path: Path) -> bytes:
    """A file of the output tree, whole: only a regular file within MAX_INPUT_BYTES (a FIFO planted in a run
    folder would hang every command that reads it). FileNotFoundError passes through."""
    try:
        return read_regular_file(path, MAX_INPUT_BYTES)
    except FileRefused as exc:
        raise StorageError(f"cannot read {exc}", transient=False) from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}", transient=False) from exc


_KEY_LOCK_SUFFIX = ".key-lock"


def _is_bookkeeping(path: Path) -> bool:
    """A temp file being written, or a key's lock file: neither is a key."""
    return ".tmp-" in path.name or (path.name.startswith(".") and path.name.endswith(_KEY_LOCK_SUFFIX))


@contextlib.contextmanager
def _key_locked(path: Path) -> Iterator[None]:
    """Hold the kernel's lock on `path`'s lock file, so "compare, then write" is one step for every
    process on this host. The kernel drops it when the holder dies, so it can never be left stale;
    the holder removes the file on release, so a run folder keeps no trace of it."""
    lock = path.with_name(f".{path.name}{_KEY_LOCK_SUFFIX}")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock_file(lock)
    except OSError as exc:
        raise StorageError(f"cannot lock {path}: {exc.strerror}", transient=False) from exc
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still locked: a waiter finds its file gone and opens the new one
        os.close(fd)


def _lock_file(lock: Path) -> int:
    """Open and lock `lock`, retrying when its holder removed it while we waited (we would hold a dead
    file)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # opened for writing: NFS locks need it
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a folder, or no permission
        raise StorageError(f"cannot delete {path}: {exc.strerror}", transient=False) from exc


def _new_temp_file(target: Path) -> Path:
    """An empty new file beside `target`, created with mode 0666 so the process umask decides who may read
    it, as for any file the user writes (mkstemp's 0600 would leave a mounted output folder readable by
    root only)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror}", transient=False) from exc
        return tmp
    raise StorageError(f"cannot write {target}: no free temporary name beside it", transient=False)


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    """Yield a temp path next to `target`; rename it into place only if the block succeeds."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {target.parent}: {exc.strerror}", transient=False) from exc
    tmp = _new_temp_file(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror}", transient=False) from exc
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- S3

_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "403",
    "Forbidden",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
# The server received other bytes than were sent: the transfer, not the request, was bad.
_INTEGRITY_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class _Retryable(StorageError):
    """A failure botocore's retries do not cover (a cut body, a checksum mismatch): S3Store retries it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


def _code(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


def _code_of_cause(error: StorageError) -> str:
    """The S3 error code behind a translated StorageError ('' if it did not come from S3)."""
    cause = error.__context__
    return _code(cause) if isinstance(cause, Exception) else ""


def _s3_error(exc: Exception, operation: str, where: str) -> StorageError:
    """Classify a boto3 failure: retrying helps (exit 75) or it does not (exit 2)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import (
        ChecksumError,
        ClientError,
        ConnectionError,
        FlexibleChecksumError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
        ResponseStreamingError,
    )

    if isinstance(exc, ClientError):
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchBucket":
            return StorageError(f"{operation} {where}: the bucket does not exist", transient=False)
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"{operation} {where}: access denied ({code}); check the S3 credentials", transient=False
            )
        if code in _MISSING_CODES:
            return StorageError(f"{operation} {where}: not found", transient=False)
        if code in _INTEGRITY_CODES:
            return _Retryable(f"{operation} {where}: S3 received corrupted data ({code})")
        transient = code in _TRANSIENT_CODES or status >= 500
        return StorageError(f"{operation} {where}: S3 error {code or status}", transient=transient)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(f"{operation} {where}: no usable S3 credentials found ({exc})", transient=False)
    if isinstance(exc, IncompleteReadError | ChecksumError | FlexibleChecksumError):
        return _Retryable(f"{operation} {where}: incomplete or corrupted transfer ({type(exc).__name__})")
    if isinstance(exc, ResponseStreamingError):
        return _Retryable(f"{operation} {where}: the connection broke mid-transfer ({type(exc).__name__})")
    if isinstance(exc, ConnectionError | HTTPClientError | OSError | Boto3Error):
        return StorageError(f"{operation} {where}: {type(exc).__name__}: {exc}", transient=True)
    # Anything else from botocore (an invalid bucket name, a bad parameter) will fail the same way again.
    return StorageError(f"{operation} {where}: {type(exc).__name__}: {exc}", transient=False)


@contextlib.contextmanager
def _translated(operation: str, where: str) -> Iterator[None]:
    from boto3.exceptions import Boto3Error, RetriesExceededError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except RetriesExceededError as exc:  # s3transfer already retried a broken download several times
        raise StorageError(
            f"{operation} {where}: the transfer kept breaking ({exc.last_exception!r})", transient=True
        ) from None
    except (ClientError, BotoCoreError, Boto3Error, OSError) as exc:
        cause: Exception = exc
        if isinstance(exc, Boto3Error):  # s3transfer wraps the real error (S3UploadFailedError...)
            inner = exc.__cause__ or exc.__context__
            cause = inner if isinstance(inner, Exception) else exc
        raise _s3_error(cause, operation, where) from None


def _backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (1-based): exponential with jitter, at most 10 s."""
    return float(min(10.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def make_s3_client(cfg: StorageSettings) -> Any:
    """A boto3 S3 client: endpoint from config or AWS_ENDPOINT_URL, adaptive retries with backoff."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    kwargs: dict[str, Any] = {}
    if bool(cfg.access_key_id) != bool(cfg.secret_access_key):
        # One without the other would be ignored in favour of the AWS credential chain: say so instead.
        given, missing = (
            ("access_key_id", "secret_access_key")
            if cfg.access_key_id
            else ("secret_access_key", "access_key_id")
        )
        raise ConfigError(
            f"storage.{given} is set but storage.{missing} is not: set both, or neither to use "
            "the AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a role)"
        )
    if cfg.access_key_id and cfg.secret_access_key:
        kwargs["aws_access_key_id"] = cfg.access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = cfg.secret_access_key.get_secret_value()
    boto_config = Config(
        region_name=cfg.region,
        # total_max_attempts counts the first try too, so storage.max_attempts: 3 means three requests,
        # as it does for the transfers S3Store retries itself.
        retries={"total_max_attempts": cfg.max_attempts, "mode": "adaptive"},
        s3={"addressing_style": "path" if cfg.path_style else "auto"},
        connect_timeout=10,
        read_timeout=60,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=cfg.endpoint_url or None, config=boto_config, **kwargs
        )
    except (ValueError, BotoCoreError) as exc:  # "Invalid endpoint: ...", an unknown region
        raise ConfigError(
            f"cannot set up the S3 client (storage.endpoint_url {cfg.endpoint_url!r}, "
            f"storage.region {cfg.region!r}): {exc}"
        ) from None


class S3Store:
    """Objects under s3://bucket/prefix.

    Integrity: writes carry a checksum the server verifies (Content-MD5 for single requests,
    x-amz-checksum-sha256 for each part of an upload) and a sha256 in the metadata; reads and
    downloads check size and that sha256. A cut or corrupted transfer, which botocore's own
    retries do not cover, is retried here up to storage.max_attempts times, then fails with a
    transient StorageError (exit 75). Nothing half-transferred is ever returned or left in place.
    """

    def __init__(self, client: Any, bucket: str, prefix: str, cfg: StorageSettings) -> None:
        self.client, self.bucket, self.prefix, self.cfg = client, bucket, prefix.strip("/"), cfg
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, full: str) -> str:
        return f"s3://{self.bucket}/{full}"

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        size = self.cfg.multipart_threshold_mb * CHUNK
        return TransferConfig(
            multipart_threshold=size, multipart_chunksize=max(size // 4, 8 * CHUNK), use_threads=True
        )

    def _attempts(self, operation: str, where: str, attempt: Callable[[], T]) -> T:
        """Run `attempt`, retrying the failures botocore leaves to us (cut or corrupted transfers)."""
        tries = max(1, self.cfg.max_attempts)
        for number in range(1, tries + 1):
            try:
                return attempt()
            except _Retryable as exc:
                if number == tries:
                    raise _Retryable(f"{exc}; gave up after {tries} attempts") from None
                time.sleep(_backoff(number))
        raise AssertionError("unreachable")  # pragma: no cover

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.client, self.bucket, self._key(prefix), self.cfg)

    def where(self, key: str) -> str:
        return self._where(self._key(key))

    def read_bytes(self, key: str) -> bytes:
        return self._get(key).data

    def read_versioned(self, key: str) -> Versioned | None:
        try:
            return self._get(key)
        except StorageError as exc:
            if _code_of_cause(exc) in _MISSING_CODES:
                return None
            raise

    def _get(self, key: str) -> Versioned:
        """The whole object, size and sha256 checked, with its ETag."""
        full = self._key(key)
        where = self._where(full)

        def attempt() -> Versioned:
            with _translated("read", where):
                response = self.client.get_object(Bucket=self.bucket, Key=full)
                announced = int(response.get("ContentLength", 0))
                # refused before a byte of the body is read, as a local file is
                if announced > MAX_INPUT_BYTES:
                    response["Body"].close()
                    raise StorageError(
                        f"cannot read {where}: it is {announced} bytes; the limit is {MAX_INPUT_BYTES}",
                        transient=False,
                    )
                data = response["Body"].read()
            expected = int(response.get("ContentLength", len(data)))
            if len(data) != expected:
                raise _Retryable(f"read {where}: got {len(data)} of {expected} bytes")
            _verify_sha(
                "read",
                data_sha=hashlib.sha256(data).hexdigest(),
                meta=response.get("Metadata", {}),
                where=where,
            )
            return Versioned(bytes(data), str(response["ETag"]))

        return self._attempts("read", where, attempt)

    def write_bytes(self, key: str, data: bytes) -> FileRecord:
        full = self._key(key)
        digest = hashlib.sha256(data).hexdigest()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # S3 checks the body against it

        def attempt() -> None:
            with _translated("write", self._where(full)):
                self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, ContentMD5=md5, Metadata={"sha256": digest}
                )

        self._attempts("write", self._where(full), attempt)
        return FileRecord(key, len(data), digest)

    def upload_file(self, local: Path, key: str) -> FileRecord:
        full = self._key(key)
        where = self._where(full)
        try:
            digest, size = sha256_file(local), local.stat().st_size
        except OSError as exc:
            raise StorageError(
                f"upload {where}: cannot read {local}: {exc.strerror or exc}", transient=False
            ) from exc

        def attempt() -> None:
            with _translated("upload", where):
                self.client.upload_file(
                    str(local),
                    self.bucket,
                    full,
                    Config=self._transfer_config(),
                    ExtraArgs={"Metadata": {"sha256": digest}, "ChecksumAlgorithm": "SHA256"},
                )
                head = self.client.head_object(Bucket=self.bucket, Key=full)
            if int(head["ContentLength"]) != size:
                raise _Retryable(f"upload {where}: stored {head['ContentLength']} bytes, expected {size}")

        self._attempts("upload", where, attempt)
        return FileRecord(key, size, digest)

    def download_file(self, key: str, local: Path) -> None:
        full = self._key(key)
        where = self._where(full)

        def attempt() -> None:
            with _temp_beside(local) as tmp:
                head = self._head(full, "download")
                with _translated("download", where):
                    self.client.download_file(self.bucket, full, str(tmp), Config=self._transfer_config())
                size = tmp.stat().st_size
                if size != int(head["ContentLength"]):
                    raise _Retryable(f"download {where}: got {size} of {head['ContentLength']} bytes")
                _verify_sha("download", data_sha=sha256_file(tmp), meta=head.get("Metadata", {}), where=where)

        self._attempts("download", where, attempt)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._head(full, "check")
        except StorageError as exc:
            if _code_of_cause(exc) in _MISSING_CODES:
                return False
            raise
        return True

    def _head(self, full: str, operation: str) -> dict[str, Any]:
        """HEAD of one object. Its reply has no body, so a 403 hides why; then a one-byte GET of
        the same key, whose error body names the cause (bad key id, bad signature, no access)."""
        try:
            with _translated(operation, self._where(full)):
                return dict(self.client.head_object(Bucket=self.bucket, Key=full))
        except StorageError as exc:
            if _code_of_cause(exc) == "403":
                with _translated(operation, self._where(full)):
                    self.client.get_object(Bucket=self.bucket, Key=full, Range="bytes=0-0")["Body"].close()
            raise

    def list_keys(self, prefix: str = "") -> list[tuple[str, int]]:
        relative = len(self.prefix) + 1 if self.prefix else 0
        return sorted((full[relative:], size) for full, size in self._list(prefix) if not full.endswith("/"))

    def _list(self, prefix: str) -> list[tuple[str, int]]:
        """Full keys and sizes under `prefix`, folder markers ("m1/", made by some S3 consoles) included."""
        if prefix.rstrip("/"):
            check_key(prefix.rstrip("/"))
        full = (f"{self.prefix}/" if self.prefix else "") + prefix
        found: list[tuple[str, int]] = []
        with _translated("list", self._where(full)):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                found += [(obj["Key"], int(obj["Size"])) for obj in page.get("Contents", [])]
        return found

    def list_folders(self) -> list[str]:
        full = f"{self.prefix}/" if self.prefix else ""
        found: set[str] = set()
        with _translated("list", self._where(full)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            for page in pages:
                found.update(
                    entry["Prefix"][len(full) :].rstrip("/") for entry in page.get("CommonPrefixes", [])
                )
        return sorted(name for name in found if name)

    def delete_prefix(self, prefix: str) -> None:
        keys = [full for full, _ in self._list(prefix)]  # markers too: the prefix is gone afterwards
        where = self._where(self._key(prefix.rstrip("/")))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with _translated("delete", where):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            failed = response.get("Errors", [])
            if failed:  # Quiet mode reports only failures; a silent partial delete would leave stale files
                first = failed[0]
                raise StorageError(
                    f"delete {where}: {len(failed)} object(s) not deleted, "
                    f"e.g. {first.get('Key')} ({first.get('Code')})",
                    transient=True,
                )

    def delete(self, key: str) -> None:
        full = self._key(key)
        with _translated("delete", self._where(full)):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if absent (S3 conditional write, If-None-Match: *)."""
        return self._put_if(key, data, {"IfNoneMatch": "*"}, "create")

    def replace_if_unchanged(self, key: str, data: bytes, version: str) -> bool:
        """Replace `key` only if its ETag is still `version` (S3 conditional write, If-Match)."""
        return self._put_if(key, data, {"IfMatch": version}, "replace")

    def _put_if(self, key: str, data: bytes, condition: dict[str, str], operation: str) -> bool:
        """A conditional PUT. A retried request whose first try did succeed (its answer was lost)
        sees its own object and reports a conflict; so on a conflict the object is read back, and
        if it holds exactly `data` the write is ours."""
        full = self._key(key)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # S3 checks the body against it
        try:
            with _translated(operation, self._where(full)):
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=full,
                    Body=data,
                    ContentMD5=md5,
                    Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                    **condition,
                )
        except StorageError as exc:
            code = _code_of_cause(exc)
            if code in _MISSING_CODES:  # If-Match on an object deleted since it was read
                return False
            if code not in _CONFLICT_CODES:
                raise
            current = self.read_versioned(key)
            return current is not None and current.data == data
        return True


def _verify_sha(operation: str, data_sha: str, meta: dict[str, str], where: str) -> None:
    expected = meta.get("sha256")
    if expected and expected != data_sha:
        raise _Retryable(f"{operation} {where}: sha256 mismatch (corrupt or cut transfer)")


# ---------------------------------------------------------------- backends, by URI scheme


@dataclass(frozen=True)
class InputFile:
    """One file of an input that may be a folder: where it was read, its path under the folder, its bytes."""

    uri: str
    name: str
    data: bytes


class Backend(Protocol):
    """The code behind one URI scheme. A new storage backend is a class like this (and its Store) plus
    its entry in BACKENDS; every other module asks the functions below, never the URI's spelling."""

    local: bool  # its URIs are paths on this host (a run folder there may hold a symlink to refuse)

    def problem(self, uri: str) -> str | None:
        """What stops `uri` from naming a place of this scheme (an s3:// URI without a bucket), said without
        quoting `uri` (it may hold a secret); None when nothing does. Config validation asks it."""
        ...

    def location(self, uri: str) -> str:
        """The place `uri` names, spelt one way ('/'-separated), to tell whether one is inside another."""
        ...

    def open_store(self, uri: str, cfg: StorageSettings, client: Any) -> Store: ...
    def read(self, uri: str, cfg: StorageSettings, client: Any) -> bytes:
        """One whole input object or file."""
        ...

    def input_files(self, uri: str, cfg: StorageSettings, suffix: str, client: Any) -> list[InputFile]:
        """The object `uri` names, or the `suffix` files under it when it is a folder (read_input_files)."""
        ...

    def download_prefix(self, uri: str, cfg: StorageSettings, local_dir: Path) -> Path:
        """Every object under the prefix `uri` into `local_dir`, verified (a model kept in the store)."""
        ...


def split_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"invalid S3 URI {uri!r}: no bucket")
    return bucket, prefix.strip("/")


class S3Backend:
    """s3://bucket/prefix: objects in an S3-compatible bucket, through S3Store."""

    local = False

    def problem(self, uri: str) -> str | None:
        bucket = uri[len("s3://") :].partition("/")[0]
        return None if bucket else "an s3:// URI needs a bucket: s3://bucket/prefix"

    def location(self, uri: str) -> str:
        return uri.rstrip("/")

    def open_store(self, uri: str, cfg: StorageSettings, client: Any) -> S3Store:
        bucket, prefix = split_s3_uri(uri)
        return S3Store(client or make_s3_client(cfg), bucket, prefix, cfg)

    def read(self, uri: str, cfg: StorageSettings, client: Any) -> bytes:
        bucket, key = split_s3_uri(uri)
        parent, _, name = key.rpartition("/")
        return S3Store(client or make_s3_client(cfg), bucket, parent, cfg).read_bytes(name)

    def input_files(self, uri: str, cfg: StorageSettings, suffix: str, client: Any) -> list[InputFile]:
        folder = self.open_store(uri, cfg, client)
        listed = folder.list_keys()
        if not listed:  # not a prefix: one object
            return [InputFile(uri, basename(uri), self.read(uri, cfg, folder.client))]
        keys = [(key, size) for key, size in listed if _wanted(key, suffix)]
        _within_input_limit(uri, sum(size for _, size in keys))
        return [InputFile(folder.where(key), key, folder.read_bytes(key)) for key, _ in keys]

    def download_prefix(self, uri: str, cfg: StorageSettings, local_dir: Path) -> Path:
        bucket, prefix = split_s3_uri(uri)
        return download_dir(self.open_store(f"s3://{bucket}", cfg, None), prefix, local_dir)


def local_path(uri: str) -> Path:
    """The path a local URI (a plain path or file:///path) names."""
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()


class LocalBackend:
    """A path on this host, plain or file:///path, through LocalStore."""

    local = True

    def problem(self, uri: str) -> str | None:
        return None  # any path will do: a missing folder is made, a missing input is reported when read

    def location(self, uri: str) -> str:
        return str(local_path(uri).resolve())

    def open_store(self, uri: str, cfg: StorageSettings, client: Any) -> LocalStore:
        return LocalStore(local_path(uri))

    def read(self, uri: str, cfg: StorageSettings, client: Any) -> bytes:
        path = local_path(uri)
        try:
            # not /dev/zero, a FIFO, or more than memory holds
            return read_regular_file(path, MAX_INPUT_BYTES)
        except FileRefused as exc:
            raise StorageError(f"cannot read input {exc}", transient=False) from None
        except FileNotFoundError:
            raise StorageError(f"input not found: {path}", transient=False) from None
        except OSError as exc:
            raise StorageError(f"cannot read input {path}: {exc.strerror}", transient=False) from exc

    def input_files(self, uri: str, cfg: StorageSettings, suffix: str, client: Any) -> list[InputFile]:
        root = local_path(uri)
        if not root.is_dir():
            return [InputFile(uri, root.name, self.read(uri, cfg, client))]
        paths = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob(f"*{suffix}") if p.is_file())
        paths = [(name, path) for name, path in paths if _wanted(name, suffix)]
        _within_input_limit(uri, sum(path.stat().st_size for _, path in paths))
        return [InputFile(str(path), name, self.read(str(path), cfg, client)) for name, path in paths]

    def download_prefix(self, uri: str, cfg: StorageSettings, local_dir: Path) -> Path:
        path = local_path(uri)
        return download_dir(LocalStore(path.parent), path.name, local_dir)


# Every storage backend, by URI scheme; a URI without a scheme is a local path ("file"). Adding a backend
# is its class above (or in its own module) and one entry here.
BACKENDS: dict[str, Backend] = {"s3": S3Backend(), "file": LocalBackend()}


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def _supported() -> str:
    return ", ".join(f"{scheme}://" for scheme in BACKENDS) + " or a path"


def backend_for(uri: str) -> Backend:
    """The backend of `uri`'s scheme; ConfigError for a scheme none handles."""
    backend = BACKENDS.get(_scheme(uri))
    if backend is None:
        raise ConfigError(f"unsupported URI scheme (not quoted: it may hold a secret): use {_supported()}")
    return backend


def is_remote(uri: str) -> bool:
    """True when `uri` names a store that is not a path on this host (s3://...): its files are fetched.

    A URI of a scheme no backend handles is not remote: the local reading of it fails where it is used."""
    backend = BACKENDS.get(_scheme(uri))
    return backend is not None and not backend.local


def uri_problem(uri: str) -> str | None:
    """What stops `uri` from naming a store (a scheme no backend handles, a shape its backend refuses),
    said without quoting `uri`; None when it can name one."""
    backend = BACKENDS.get(_scheme(uri))
    if backend is None:
        return f"unsupported URI scheme: use {_supported()}"
    return backend.problem(uri)


def location(uri: str) -> str:
    """The place `uri` names, spelt one way, to compare with another (is the output inside an input?)."""
    backend = BACKENDS.get(_scheme(uri))
    return backend.location(uri) if backend else uri.rstrip("/")


def open_store(uri: str, cfg: StorageSettings, client: Any = None) -> Store:
    """A store rooted at `uri` (s3://bucket/prefix, file:///path or a plain path).

    `client`: one the backend may reuse (an S3 client); None makes a new one when one is needed."""
    return backend_for(uri).open_store(uri, cfg, client)


def read_uri(uri: str, cfg: StorageSettings, client: Any = None) -> bytes:
    """Read one whole input object or file."""
    return backend_for(uri).read(uri, cfg, client)


def download_prefix(uri: str, cfg: StorageSettings, local_dir: Path) -> Path:
    """Every object under the prefix `uri` (a model kept in a store) into `local_dir`, each file verified."""
    return backend_for(uri).download_prefix(uri, cfg, local_dir)


def read_input_files(uri: str, cfg: StorageSettings, suffix: str, client: Any = None) -> list[InputFile]:
    """The file `uri` names, or every `suffix` file under it when it is a folder or S3 prefix, sorted by path.

    In a folder, names starting with '.' are skipped (editors' and other tools' hidden files), and only
    regular files are read. The files together may hold MAX_INPUT_BYTES at most, as one input file may.
    """
    found = backend_for(uri).input_files(uri, cfg, suffix, client)
    if not found:
        raise StorageError(f"input {uri} is a folder without {suffix} files", transient=False)
    return found


def _wanted(name: str, suffix: str) -> bool:
    return name.lower().endswith(suffix) and not any(part.startswith(".") for part in name.split("/"))


def _within_input_limit(uri: str, size: int) -> None:
    if size > MAX_INPUT_BYTES:
        raise StorageError(
            f"cannot read input {uri}: its files hold {size} bytes; the limit is {MAX_INPUT_BYTES}",
            transient=False,
        )


def basename(uri: str) -> str:
    return PurePosixPath(uri.rstrip("/")).name
