"""The images' contract, checked without a Docker engine: lint, entrypoint, lock, user, build context.

Dockerfiles are parsed into instructions (line continuations joined, comments dropped, stages
split at FROM), so each check reads what `docker build` would execute, not a grep of the text.
The build context is computed from .dockerignore with Docker's matching rules (last match wins,
`!` re-includes, a matched directory excludes everything below it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from job.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.cuda"]
HADOLINT = Path(sys.executable).with_name("hadolint")


# ---------------------------------------------------------------- parsing


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(path: Path) -> list[Instruction]:
    result: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by the builder
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: file ends inside a continued line"
    return result


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the stages in order."""
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for item in instructions(path):
        if item.keyword == "FROM":
            parts = item.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            found.append(Stage(parts[0], name))
        elif not found:
            assert item.keyword == "ARG", f"{path}:{item.line}: only ARG may precede FROM"
            key, _, value = item.args.partition("=")
            global_args[key] = value
        else:
            found[-1].instructions.append(item)
    return global_args, found


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def exec_form(item: Instruction) -> list[str]:
    value = json.loads(item.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"line {item.line}: not exec form"
    )
    return value


# ---------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match plus `**`, as Docker's patternmatcher implements them."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out)


@dataclass(frozen=True)
class Rule:
    negate: bool
    pattern: str
    regex: re.Pattern[str]


def ignore_rules(path: Path) -> list[Rule]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
        rules.append(Rule(line.startswith("!"), pattern, _pattern_regex(pattern)))
    return rules


def excluded(rel: str, rules: list[Rule]) -> bool:
    """Whether `rel` stays out of the build context: the last rule matching it or a parent directory wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for rule in rules:
        if any(rule.regex.fullmatch(c) for c in candidates):
            result = not rule.negate
    return result


def build_context() -> list[Path]:
    """The files `docker build .` would send, walking only into directories a `!` rule could reopen."""
    rules = ignore_rules(REPO / ".dockerignore")
    reopened = [r.pattern for r in rules if r.negate]
    files: list[Path] = []
    for folder, dirs, names in os.walk(REPO):
        base = Path(folder).relative_to(REPO).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = [
            d
            for d in dirs
            if not excluded(prefix + d, rules)
            or any(p.startswith(prefix + d + "/") or p.startswith("*") for p in reopened)
        ]
        files += [Path(folder) / n for n in names if not excluded(prefix + n, rules)]
    return files


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_is_clean(dockerfile: str) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", dockerfile], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entrypoint_is_the_projects_console_script(dockerfile: str) -> None:
    _, found = stages(REPO / dockerfile)
    runtime = found[-1]
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[-1])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(entrypoint) == 1 and entrypoint[0] in scripts, (entrypoint, scripts)
    assert any("/opt/venv/bin" in i.args for i in runtime.all("ENV")), "the venv's bin must be on PATH"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runtime_user_is_numeric_and_not_root(dockerfile: str) -> None:
    _, found = stages(REPO / dockerfile)
    users = found[-1].all("USER")
    assert users, "the runtime stage must set USER"
    user, _, group = users[-1].args.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd lookup.
    assert user.isdigit() and int(user) != 0 and (not group or int(group) != 0), users[-1].args
    assert int(user) == 10001, "the manifests' runAsUser is 10001"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_installs_the_locked_set_then_the_project_without_deps(dockerfile: str) -> None:
    _, found = stages(REPO / dockerfile)
    runs = " ".join(i.args for stage in found for i in stage.all("RUN"))
    assert "pip install -r requirements.lock" in runs
    assert "pip install --no-deps ." in runs
    assert "pip check" in runs
    assert re.search(r"torch==\$\{?TORCH_VERSION", runs) and "s/^torch==//p' requirements.lock" in runs, (
        "torch's version must come from requirements.lock, not be written twice"
    )
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^torch==\d", lock, re.M), "requirements.lock must pin torch"
    copies = [i.args for stage in found for i in stage.all("COPY") if "--from" not in i.args]
    assert copies[0].split()[0] == "requirements.lock", (
        "the lock is copied alone first, so code edits keep the cache"
    )


def test_torch_index_matches_the_base_image() -> None:
    cpu_args, cpu = stages(REPO / "Dockerfile.cpu")
    cuda_args, cuda = stages(REPO / "Dockerfile.cuda")
    cpu_index = next(i.args for s in cpu for i in s.all("ARG") if i.args.startswith("TORCH_INDEX_URL="))
    cuda_index = next(i.args for s in cuda for i in s.all("ARG") if i.args.startswith("TORCH_INDEX_URL="))
    assert cpu_index.endswith("download.pytorch.org/whl/cpu")
    variant = re.search(r"/whl/cu(\d+)(\d)$", cuda_index)
    image = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(runtime|cudnn-runtime)-", cuda_args["CUDA_IMAGE"])
    assert variant and image, (cuda_index, cuda_args["CUDA_IMAGE"])
    assert variant.groups() == image.groups()[:2], (
        "the PyTorch CUDA index and the CUDA runtime image must agree"
    )
    assert "torch.version.cuda" in " ".join(i.args for s in cuda for i in s.all("RUN")), (
        "the build checks it too"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_images_are_pinned(dockerfile: str) -> None:
    global_args, found = stages(REPO / dockerfile)
    names = {s.name for s in found if s.name}
    for stage in found:
        image = resolve(stage.base, global_args)
        if image in names:
            continue  # an earlier stage
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"{stage.base} -> {image} is not pinned"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_writable_paths_and_environment_suit_a_read_only_root(dockerfile: str) -> None:
    _, found = stages(REPO / dockerfile)
    env = " ".join(i.args for i in found[-1].all("ENV"))
    for variable in ("XDG_CACHE_HOME=/tmp", "MPLCONFIGDIR=/tmp", "PYTHONDONTWRITEBYTECODE=1"):
        assert variable in env, variable
    # FINETUNE_* in the image would silently beat the mounted config file (env > file).
    assert "FINETUNE_" not in env
    load_config(environ={})  # and the image's defaults alone are a valid config


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_git_revision_and_base_model_build_args(dockerfile: str) -> None:
    _, found = stages(REPO / dockerfile)
    app = next(s for s in found if s.name == "app")
    assert any(i.args.startswith("GIT_REVISION") for i in app.all("ARG"))
    stamp = " ".join(i.args for i in app.all("RUN"))
    assert "with_name('GIT_REVISION')" in stamp and "job.__file__" in stamp, (
        "job/runs/artifacts.py reads job/GIT_REVISION"
    )
    # The stage's WORKDIR holds the source tree: a plain `python -c "import job"` imports that
    # copy and stamps /src/job, which the runtime never sees (`make image-test` checks the result).
    assert "/opt/venv/bin/python -P -c" in stamp, "the stamp must import the installed package, not ./job"
    model = next(s for s in found if s.name == "model")
    assert any(i.args.startswith("BASE_MODEL=") for i in model.all("ARG"))
    assert "/opt/models/" in " ".join(i.args for i in model.all("RUN"))
    runtime = found[-1]
    assert any(i.args.startswith("--from=model /opt/models") for i in runtime.all("COPY"))
    labels = " ".join(i.args for i in runtime.all("LABEL"))
    for key in ("title", "version", "revision", "created", "source", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert "${GIT_REVISION}" in labels


def build_arg_names(dockerfile: str) -> set[str]:
    global_args, found = stages(REPO / dockerfile)
    return set(global_args) | {i.args.partition("=")[0] for stage in found for i in stage.all("ARG")}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_pip_call_takes_the_index_args_and_the_ca_secret(dockerfile: str) -> None:
    """A build where only a mirror is reachable: each pip call (torch, the lock, the build backend
    fetched for `pip install .`) must see PIP_INDEX_URL / PIP_EXTRA_INDEX_URL and the pip_ca bundle."""
    _, found = stages(REPO / dockerfile)
    pip_runs = 0
    for stage in found:
        declared = {i.args.partition("=")[0] for i in stage.all("ARG")}
        for run in stage.all("RUN"):
            if "pip install" not in run.args:
                continue
            pip_runs += 1
            assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= declared, (
                f"{dockerfile}:{run.line}: index args"
            )
            assert run.args.startswith("--mount=type=secret,id=pip_ca "), (
                f"{dockerfile}:{run.line}: no CA secret"
            )
            assert "export PIP_CERT=/run/secrets/pip_ca" in run.args, f"{dockerfile}:{run.line}: CA not used"
    assert pip_runs >= 2, "the lock install and the project install"
    runtime_args = {i.args.partition("=")[0] for i in found[-1].all("ARG")}
    assert not {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "TORCH_INDEX_URL"} & runtime_args, (
        "index URLs (which may carry a token) stay out of the runtime image's config"
    )


def test_cuda_build_args_mirror_the_cpu_ones() -> None:
    """Everything a CPU build can be told, the CUDA build understands too (the base image is CUDA_IMAGE)."""
    missing = build_arg_names("Dockerfile.cpu") - {"PYTHON_IMAGE"} - build_arg_names("Dockerfile.cuda")
    assert not missing, f"Dockerfile.cuda lacks build args {sorted(missing)}"


def test_dockerignore_keeps_secrets_data_and_heavy_files_out() -> None:
    rules = ignore_rules(REPO / ".dockerignore")
    for path in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "tests/bad_inputs/x.jsonl",
        "demo-output/runs/r/model/model.safetensors",
        "bench/work/out.json",
        ".cache/hf/x",
        "job/__pycache__/cli.cpython-311.pyc",
        "job/model.safetensors",
        "job/weights.bin",
        "job/.env",
        "job/GIT_REVISION",
        "credentials.json",
        "k8s/base/secret.example.yaml",
        "data/tickets.jsonl",
        "ticket_finetune_job.egg-info/PKG-INFO",
        "../shared/data/sample/tickets.jsonl",
    ):
        assert excluded(path, rules), f"{path} would be sent to the Docker daemon"
    for path in ("job/cli.py", "job/__init__.py", "pyproject.toml", "requirements.lock"):
        assert not excluded(path, rules), f"{path} is needed by the build but excluded"


def test_build_context_is_small_and_holds_what_the_copies_need() -> None:
    context = build_context()
    rel = {p.relative_to(REPO).as_posix() for p in context}
    assert sum(p.stat().st_size for p in context) < 2_000_000, sorted(rel)
    assert all(r.startswith("job/") or r in ("pyproject.toml", "requirements.lock") for r in rel), sorted(rel)
    for dockerfile in DOCKERFILES:
        _, found = stages(REPO / dockerfile)
        for stage in found:
            for item in stage.all("COPY"):
                if "--from" in item.args:
                    continue
                *sources, _dest = item.args.split()
                for source in sources:
                    assert any(r == source or r.startswith(source.rstrip("/") + "/") for r in rel), (
                        f"{dockerfile}:{item.line}: COPY {source} is not in the build context"
                    )
