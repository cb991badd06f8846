"""Secrets stay secret, nothing is unpickled, paths cannot escape, and the job needs no writable home.

- Sentinel secrets in the environment (AWS_SECRET_ACCESS_KEY, FINETUNE_STORAGE__SECRET_ACCESS_KEY),
  in the config file (storage.secret_access_key), in the endpoint URL (http://user:pass@host)
  and the real S3 credentials never appear in anything a run writes: stdout, stderr,
  `finetune-job config`, training_metadata.json, metrics, every object under the run, every
  file in its work and cache dirs, and the messages of runs that fail (bad credentials, a typo
  in a secret's key in a file or a --set flag, broken YAML, S3 unreachable).
- No pickle: the package neither imports pickle-like modules nor loads with them, and a
  finished run holds no pickled file.
- Run ids and keys are checked: `--run-id ../x`, absolute paths and '..' exit 2 and write
  nothing outside the output prefix.
- Read-only root: `finetune-job run` finishes with its working directory, HOME and the whole
  root filesystem read-only, writing only to the paths it is given (runtime.work_dir,
  runtime.cache_dir, TMPDIR) and to S3. Tests run as root, and root ignores file modes, so
  read-only is enforced by the kernel instead: the run starts in a private mount namespace
  (`unshare --mount`) where `/` is remounted read-only and only the scratch directory is a
  writable bind mount, as with a pod's readOnlyRootFilesystem plus an emptyDir. Where mount
  namespaces are not allowed the test skips and says so.
"""

from __future__ import annotations

import ast
import json
import shutil
import socket
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.bad_inputs.batch_cli import Outcome, cli_env, run_many
from tests.conftest import CLI, OFFLINE_MODEL, REPO, TINY, merged, synthetic_inputs
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

ENV_SECRET = "env-sentinel-5c1d9e7a0b"  # AWS_SECRET_ACCESS_KEY in the environment
SETTINGS_SECRET = "settings-sentinel-4f2a8c"  # FINETUNE_STORAGE__SECRET_ACCESS_KEY
WRONG_SECRET = "wrong-sentinel-93bd61f0"  # a secret S3 rejects
URL_SECRET = "url-sentinel-e61b0a"  # the password in storage.endpoint_url (http://user:pass@host, a proxy)
SLASH_SECRET = (
    "wJalrX/K7MD+bP-sentinel"  # an AWS-style secret: '/' and '+' unencoded in the endpoint's userinfo
)
SPACE_SECRET = "spaced sentinel 7d1e"  # a password with spaces
SENTINELS = (SECRET_KEY, ENV_SECRET, SETTINGS_SECRET, WRONG_SECRET, URL_SECRET, SLASH_SECRET, SPACE_SECRET)


def with_userinfo(endpoint: str, secret: str = URL_SECRET) -> str:
    """`endpoint` with credentials in it, as a proxy in front of S3 is often configured."""
    scheme, _, rest = endpoint.partition("://")
    return f"{scheme}://proxy-user:{secret}@{rest}"


def leaks(data: bytes | str) -> list[str]:
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return [s for s in SENTINELS if s.encode() in raw]


# ---------------------------------------------------------------- the full run, read-only root


@dataclass
class ReadOnlyRun:
    result: subprocess.CompletedProcess[bytes]
    scratch: Path
    home: Path
    objects: dict[str, bytes]  # every object under the run's prefix
    probe: subprocess.CompletedProcess[bytes]  # a write attempt inside the same sandbox


SANDBOX = 'mount --bind "$SCRATCH" "$SCRATCH" && mount -o remount,ro,bind / && exec "$@"'


def _sandboxed(
    command: list[str], scratch: Path, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """`command` with / read-only except `scratch`, in a private mount namespace."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sh", *command],
        cwd=cwd,
        env={**env, "SCRATCH": str(scratch)},
        capture_output=True,
        timeout=timeout,
    )


def _sandbox_available(scratch: Path) -> str | None:
    if not shutil.which("unshare"):
        return "the unshare command is missing"
    probe = _sandboxed(["true"], scratch, scratch, cli_env(), 30)
    if probe.returncode != 0:
        return f"mount namespaces are not allowed here: {probe.stderr.decode(errors='replace').strip()}"
    return None


@pytest.fixture(scope="module")
def read_only_run(s3: S3Server, synthetic_dir: Path) -> Iterator[ReadOnlyRun]:
    root = Path(tempfile.mkdtemp(prefix="finetune-ro-"))
    try:
        scratch, home = root / "scratch", root / "home"
        for folder in (scratch / "work", scratch / "cache", scratch / "tmp", home):
            folder.mkdir(parents=True)
        home.chmod(0o555)
        reason = _sandbox_available(scratch)
        if reason:
            pytest.skip(reason)
        bucket = s3.create_bucket("secrets-run")
        config = merged(
            TINY,
            {
                "data": synthetic_inputs(synthetic_dir),
                "output": {"uri": f"s3://{bucket}/runs"},
                "train": {"max_pairs": 16},
                "storage": {
                    "access_key_id": ACCESS_KEY,
                    "secret_access_key": SECRET_KEY,
                },  # the secret S3 checks
            },
        )
        config_file = root / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        env = cli_env(
            {
                "HOME": str(home),
                "TMPDIR": str(scratch / "tmp"),
                "FINETUNE_RUNTIME__WORK_DIR": str(scratch / "work"),
                "FINETUNE_RUNTIME__CACHE_DIR": str(scratch / "cache"),
                # botocore ignores the userinfo: the URL still reaches the server, and the run's
                # files and logs must show it only redacted.
                "FINETUNE_STORAGE__ENDPOINT_URL": with_userinfo(s3.endpoint),
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
            }
        )
        result = _sandboxed(
            [CLI, "run", "--config", str(config_file), "--run-id", "secrets"], scratch, home, env, 900
        )
        probe = _sandboxed(
            ["sh", "-c", f"touch {home}/x; touch {REPO}/x; touch /tmp/x-finetune"], scratch, home, env, 30
        )
        client = s3.client()
        keys = [
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        ]
        objects = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
        yield ReadOnlyRun(result, scratch, home, objects, probe)
    finally:
        if (root / "home").exists():
            (root / "home").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_run_finishes_with_a_read_only_root_cwd_and_home(read_only_run: ReadOnlyRun) -> None:
    result = read_only_run.result
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    assert b"Traceback" not in result.stderr
    assert "runs/secrets/manifest.json" in read_only_run.objects
    # The sandbox really was read-only: the same writes from a shell in it fail.
    assert read_only_run.probe.stderr.count(b"Read-only file system") == 3, read_only_run.probe.stderr
    assert not list(read_only_run.home.iterdir())
    # What the run needed to write went to the paths it was given.
    assert any((read_only_run.scratch / "work").rglob("*"))


def _written(run: ReadOnlyRun) -> dict[str, bytes]:
    files = {f"s3:{k}": v for k, v in run.objects.items()}
    files.update({str(p): p.read_bytes() for p in run.scratch.rglob("*") if p.is_file()})
    files["stdout"], files["stderr"] = run.result.stdout, run.result.stderr
    return files


def test_no_secret_in_any_byte_the_run_wrote(read_only_run: ReadOnlyRun) -> None:
    files = _written(read_only_run)
    assert len(files) > 30  # the model, plots, metrics, logs: a real run's worth
    found = {name: leaks(data) for name, data in files.items() if leaks(data)}
    assert not found
    metadata = json.loads(read_only_run.objects["runs/secrets/training_metadata.json"])
    assert metadata["config"]["storage"]["secret_access_key"] == "***"
    assert metadata["config"]["storage"]["access_key_id"] == "***"
    assert metadata["config"]["storage"]["endpoint_url"].startswith("http://***@127.0.0.1:")


def _pickled(name: str, data: bytes) -> bool:
    """Pickle protocol 2+ starts with 0x80 and the protocol; torch.save writes a zip holding data.pkl."""
    if len(data) > 1 and data[0] == 0x80 and data[1] in range(2, 6):
        return True
    if data[:4] == b"PK\x03\x04":
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(n.endswith(".pkl") for n in archive.namelist())
    return name.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin")) and not name.endswith(".safetensors")


def test_a_finished_run_holds_nothing_pickled(read_only_run: ReadOnlyRun, tmp_path: Path) -> None:
    objects = {k: v for k, v in read_only_run.objects.items() if k.startswith("runs/secrets/")}
    assert not [k for k, v in objects.items() if _pickled(k, v)]
    assert "runs/secrets/model/model.safetensors" in objects
    arrays = [k for k in objects if k.startswith("runs/secrets/index/lexical/") and k.endswith(".npy")]
    assert arrays, "the keyword index is saved as NumPy arrays"
    for key in arrays:
        local = tmp_path / key.rsplit("/", 1)[1]
        local.write_bytes(objects[key])
        assert np.load(local, allow_pickle=False).size  # raises if an array needs unpickling


# ---------------------------------------------------------------- config output and failing runs


@pytest.fixture(scope="module")
def secret_runs(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Cheap invocations (the config command, runs that fail early) with sentinels everywhere."""
    tmp = tmp_path_factory.mktemp("secret-runs")
    bucket = s3.create_bucket("secret-inputs")
    s3.client().put_object(Bucket=bucket, Key="in/tickets.jsonl", Body=b'{"id": "T-1", "title": "x"}\n')
    data = {"tickets": f"s3://{bucket}/in/tickets.jsonl", "links": f"s3://{bucket}/in/links.jsonl"}
    base = {"data": data, "output": {"uri": f"s3://{bucket}/runs"}, "model": {"base": OFFLINE_MODEL}}

    def config(name: str, extra: dict[str, Any] | None = None, text: str | None = None) -> str:
        path = tmp / f"{name}.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(merged(base, extra or {})))
        return str(path)

    s3_env = {"FINETUNE_STORAGE__ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY}
    everywhere = {
        **s3_env,
        "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
        "FINETUNE_STORAGE__SECRET_ACCESS_KEY": SETTINGS_SECRET,
    }
    in_file = config("in-file", {"storage": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}})
    wrong_in_file = config(
        "wrong", {"storage": {"access_key_id": ACCESS_KEY, "secret_access_key": WRONG_SECRET}}
    )
    plain = config("plain")
    with socket.socket() as sock:  # a port nobody listens on: S3 unreachable
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    unreachable = {
        "FINETUNE_STORAGE__ENDPOINT_URL": with_userinfo(f"http://127.0.0.1:{closed_port}"),
        "FINETUNE_STORAGE__MAX_ATTEMPTS": "1",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    runs: dict[str, tuple[list[str], Path, dict[str, str]]] = {
        "config-table": (["config", "--config", in_file], tmp, everywhere),
        "config-json": (["config", "--json", "--config", in_file], tmp, everywhere),
        "config-cli-flag": (
            ["config", "--config", plain, "--set", f"storage.secret_access_key={WRONG_SECRET}"],
            tmp,
            s3_env,
        ),
        "wrong-env-secret": (
            ["run", "--config", plain],
            tmp,
            {**s3_env, "AWS_SECRET_ACCESS_KEY": WRONG_SECRET},
        ),
        "wrong-settings-secret": (
            ["run", "--config", plain],
            tmp,
            {
                **s3_env,
                "FINETUNE_STORAGE__ACCESS_KEY_ID": ACCESS_KEY,
                "FINETUNE_STORAGE__SECRET_ACCESS_KEY": WRONG_SECRET,
            },
        ),
        "wrong-file-secret": (["validate-data", "--config", wrong_in_file], tmp, s3_env),
        "wrong-cli-secret": (
            [
                "prepare",
                "--config",
                plain,
                "--run-id",
                "r",
                "--set",
                f"storage.access_key_id={ACCESS_KEY}",
                "--set",
                f"storage.secret_access_key={WRONG_SECRET}",
            ],
            tmp,
            s3_env,
        ),
        "secret-without-key-id": (
            ["prepare", "--config", plain, "--run-id", "r"],
            tmp,
            {**s3_env, "FINETUNE_STORAGE__SECRET_ACCESS_KEY": WRONG_SECRET},
        ),
        "typo-in-secret-key": (
            ["run", "--config", config("typo", {"storage": {"secret_acces_key": WRONG_SECRET}})],
            tmp,
            s3_env,
        ),
        "secret-wrong-type": (
            ["run", "--config", config("type", {"storage": {"secret_access_key": [WRONG_SECRET]}})],
            tmp,
            s3_env,
        ),
        "secret-on-broken-yaml-line": (
            [
                "run",
                "--config",
                config("yaml", text=(f'storage:\n  secret_access_key: "{WRONG_SECRET}\n  region: [\n')),
            ],
            tmp,
            s3_env,
        ),
        # a secret that starts with '{' is a secret (here a wrong one), not JSON
        "secret-in-bad-env-json": (
            ["run", "--config", plain],
            tmp,
            {
                **s3_env,
                "FINETUNE_STORAGE__ACCESS_KEY_ID": ACCESS_KEY,
                "FINETUNE_STORAGE__SECRET_ACCESS_KEY": "{" + WRONG_SECRET,
            },
        ),
        "config-url-credentials": (
            ["config", "--config", plain],
            tmp,
            {**s3_env, "FINETUNE_STORAGE__ENDPOINT_URL": with_userinfo(s3.endpoint)},
        ),
        "config-json-url-credentials": (
            ["config", "--json", "--config", plain],
            tmp,
            {**s3_env, "FINETUNE_STORAGE__ENDPOINT_URL": with_userinfo(s3.endpoint)},
        ),
        "unreachable-url-credentials": (
            ["run", "--config", plain, "--set", "runtime.log_format=json"],
            tmp,
            unreachable,
        ),
        "config-url-slash-secret": (
            [
                "config",
                "--config",
                plain,
                "--set",
                f"storage.endpoint_url={with_userinfo(s3.endpoint, SLASH_SECRET)}",
            ],
            tmp,
            s3_env,
        ),
        "config-url-space-secret": (
            [
                "config",
                "--json",
                "--config",
                plain,
                "--set",
                f"storage.endpoint_url={with_userinfo(s3.endpoint, SPACE_SECRET)}",
            ],
            tmp,
            s3_env,
        ),
        "unreachable-url-slash-secret": (
            ["run", "--config", plain, "--set", "runtime.log_format=json"],
            tmp,
            {
                **unreachable,
                "FINETUNE_STORAGE__ENDPOINT_URL": with_userinfo(
                    f"http://127.0.0.1:{closed_port}", SLASH_SECRET
                ),
            },
        ),
        "invalid-url-slash-secret": (
            ["run", "--config", plain, "--set", "runtime.log_format=json"],
            tmp,
            {
                **unreachable,
                "FINETUNE_STORAGE__ENDPOINT_URL": f"http://AKIA:{SLASH_SECRET} x@127.0.0.1:{closed_port}",
            },
        ),
        "typo-in-secret-key-flag": (
            ["config", "--config", plain, "--set", f"storage.secert_access_key={WRONG_SECRET}"],
            tmp,
            s3_env,
        ),
        "secret-under-a-wrong-name-flag": (
            ["config", "--config", plain, "--set", f"storage.access_key={WRONG_SECRET}"],
            tmp,
            s3_env,
        ),
    }
    return run_many(runs, tmp / "logs")


def test_config_output_shows_where_secrets_come_from_but_never_their_value(
    secret_runs: dict[str, Outcome],
) -> None:
    for name in (
        "config-table",
        "config-json",
        "config-cli-flag",
        "config-url-credentials",
        "config-json-url-credentials",
        "config-url-slash-secret",
        "config-url-space-secret",
    ):
        outcome = secret_runs[name]
        assert outcome.exit == 0, outcome.text[-2000:]
        assert not leaks(outcome.text), name
        assert "***" in outcome.stdout
    shown = json.loads(secret_runs["config-json"].stdout)
    assert shown["storage.secret_access_key"] == {
        "value": "***",
        "source": "env FINETUNE_STORAGE__SECRET_ACCESS_KEY",
    }
    endpoint = json.loads(secret_runs["config-json-url-credentials"].stdout)["storage.endpoint_url"]["value"]
    assert endpoint.startswith("http://***@127.0.0.1:"), endpoint


def test_credentials_in_the_endpoint_url_stay_out_of_connection_errors(
    secret_runs: dict[str, Outcome],
) -> None:
    """S3 unreachable: botocore's error text quotes the endpoint URL, userinfo and all."""
    outcome = secret_runs["unreachable-url-credentials"]
    assert outcome.exit == 75, outcome.text[-2000:]
    assert "Could not connect to the endpoint URL" in outcome.text and "http://***@127.0.0.1" in outcome.text
    assert "Traceback" not in outcome.text
    assert not leaks(outcome.text)
    logged = [json.loads(line) for line in outcome.stdout.splitlines() if line.startswith("{")]
    assert any(line.get("exit_code") == 75 for line in logged), outcome.stdout


@pytest.mark.parametrize("name", ["unreachable-url-slash-secret", "invalid-url-slash-secret"])
def test_an_endpoint_url_that_does_not_parse_keeps_its_userinfo_out_of_the_error(
    secret_runs: dict[str, Outcome], name: str
) -> None:
    """botocore refuses an unencoded '/' or space in the userinfo ("not a valid URI", exit 2) and quotes
    the URL."""
    outcome = secret_runs[name]
    assert outcome.exit == 2 and "not a valid URI" in outcome.text, outcome.text[-2000:]
    assert "Traceback" not in outcome.text and "http://***@127.0.0.1" in outcome.text
    assert not leaks(outcome.text) and "AKIA" not in outcome.text


@pytest.mark.parametrize(
    "name",
    [
        "wrong-env-secret",
        "wrong-settings-secret",
        "wrong-file-secret",
        "wrong-cli-secret",
        "secret-in-bad-env-json",
    ],
)
def test_runs_failing_on_bad_credentials_exit_2_without_the_secret(
    secret_runs: dict[str, Outcome], name: str
) -> None:
    outcome = secret_runs[name]
    assert outcome.exit == 2, outcome.text[-2000:]
    assert "check the S3 credentials" in outcome.stderr
    assert "Traceback" not in outcome.text
    assert not leaks(outcome.text)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("secret-without-key-id", "storage.secret_access_key is set but storage.access_key_id is not"),
        ("typo-in-secret-key", "unknown config key 'storage.secret_acces_key'"),
        ("secret-wrong-type", "storage.secret_access_key"),
        ("secret-on-broken-yaml-line", "invalid YAML"),
        ("typo-in-secret-key-flag", "unknown config key 'storage.secert_access_key'"),
        ("secret-under-a-wrong-name-flag", "unknown config key 'storage.access_key'"),
    ],
)
def test_config_errors_near_a_secret_do_not_quote_it(
    secret_runs: dict[str, Outcome], name: str, says: str
) -> None:
    outcome = secret_runs[name]
    assert outcome.exit == 2, outcome.text[-2000:]
    assert says in outcome.stderr and "Traceback" not in outcome.text
    assert not leaks(outcome.text)


# ---------------------------------------------------------------- run ids and keys


ESCAPING_RUN_IDS = [
    "../escaped",
    "/tmp/absolute",
    "a/../../b",
    "..",
    "nested/run",
    ".hidden",
    "x" * 200,
    "tab\there",
]


Attempt = tuple[Path, dict[str, Outcome], list[Path]]


@pytest.fixture(scope="module")
def run_id_attempts(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Attempt]:
    """Each bad run id through `prepare` and `run`, each in its own folder: (folder, outcomes, files
    before)."""
    roots: dict[str, Path] = {}
    invocations: dict[str, tuple[list[str], Path, dict[str, str]]] = {}
    for n, run_id in enumerate(ESCAPING_RUN_IDS):
        root = roots[run_id] = tmp_path_factory.mktemp(f"run-id-{n}")
        (root / "area" / "out").mkdir(parents=True)
        config = root / "config.json"
        config.write_text(
            json.dumps(
                {
                    "data": synthetic_inputs(synthetic_dir),
                    "output": {"uri": str(root / "area" / "out")},
                    "pairs": {"mine_hard_negatives": False},
                    "runtime": {"work_dir": str(root / "area" / "work")},
                }
            )
        )
        for command in ("prepare", "run"):
            invocations[f"{n}:{command}"] = (
                [command, "--config", str(config), "--run-id", run_id],
                root / "area",
                {},
            )
    before = {run_id: sorted(root.rglob("*")) for run_id, root in roots.items()}
    outcomes = run_many(invocations, tmp_path_factory.mktemp("run-id-logs"))
    return {
        run_id: (
            roots[run_id],
            {k.split(":")[1]: v for k, v in outcomes.items() if k.split(":")[0] == str(n)},
            before[run_id],
        )
        for n, run_id in enumerate(ESCAPING_RUN_IDS)
    }


@pytest.mark.parametrize("run_id", ESCAPING_RUN_IDS)
def test_run_ids_that_could_escape_are_refused(run_id_attempts: dict[str, Attempt], run_id: str) -> None:
    _, outcomes, _ = run_id_attempts[run_id]
    for command, outcome in outcomes.items():
        assert outcome.exit == 2, (command, outcome.text[-2000:])
        assert "invalid run id" in outcome.stderr and "Traceback" not in outcome.text


@pytest.mark.parametrize("run_id", ESCAPING_RUN_IDS)
def test_refused_run_ids_write_nothing_anywhere(run_id_attempts: dict[str, Attempt], run_id: str) -> None:
    root, _, before = run_id_attempts[run_id]
    assert sorted(root.rglob("*")) == before
    assert not Path("/tmp/absolute").exists()


# ---------------------------------------------------------------- no pickle, by reading the code


PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "_pickle"}


def _calls(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_the_package_never_unpickles() -> None:
    problems = []
    for path in sorted((REPO / "job").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module = path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            line = getattr(node, "lineno", 0)
            problems += [
                f"{path.name}:{line} imports {n}" for n in names if n.split(".")[0] in PICKLE_MODULES
            ]
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "torch"
                and "load" in {a.name for a in node.names}
            ):
                problems.append(f"{path.name}:{line} imports torch.load by name (unchecked calls)")
        for func, call in _calls(tree):
            where = f"{path.name}:{call.lineno} {func}(...)"
            allow = _keyword(call, "allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value is True:
                problems.append(f"{where} with allow_pickle=True")
            trust = _keyword(call, "trust_remote_code")
            if isinstance(trust, ast.Constant) and trust.value is True:
                problems.append(f"{where} with trust_remote_code=True")
            weights_only = _keyword(call, "weights_only")
            if func.endswith("torch.load") and not (
                isinstance(weights_only, ast.Constant) and weights_only.value is True
            ):
                problems.append(f"{where} without weights_only=True")
            if func in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                problems.append(where)
            if func == "yaml.load":
                problems += _unsafe_yaml_loader(call, module, where)
    assert not problems


def _unsafe_yaml_loader(call: ast.Call, module: str, where: str) -> list[str]:
    """yaml.load is fine only with a Loader that is, or derives from, yaml.SafeLoader."""
    import importlib

    loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
    if loader is None:
        return [f"{where} without a Loader"]
    dotted = ast.unparse(loader).split(".")
    value: Any = importlib.import_module(module)
    try:
        for part in dotted:
            value = getattr(value, part)
    except AttributeError:
        return [f"{where}: cannot resolve the Loader {ast.unparse(loader)}"]
    if not (isinstance(value, type) and issubclass(value, yaml.SafeLoader)):
        return [f"{where} with {value!r}, not a SafeLoader"]
    return []
