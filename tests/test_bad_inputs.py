"""Every case of the bad-input corpus through `validate-data` and `run`, under both error policies.

The outcome the job owes for each case (exit code, what the message names, what skipping
counts) is in tests/bad_inputs/make_cases.py. Bad input must end in exit 2 with a message that
names file, line and field and says what was expected, never a traceback, and never leave
files behind; valid oddities (BOM, CRLF, one category, a 3 MB field...) must be accepted.

A failing `run` stops before the model loads, so it is cheap. For the valid cases `prepare`
stands in for `run` (it is the step of `run` that reads the inputs; training them is the job
of the few full runs below). The ~170 invocations go through tests/bad_inputs/batch_cli.py,
which imports the job once and forks a real CLI process per invocation; a handful of cases
are also run through `run_cli`, to show the two agree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bad_inputs.make_cases import CASES, Case, links, tickets, write_case, write_corpus
from tests.conftest import REPO, TINY, merged, run_cli

BY_NAME = {case.name: case for case in CASES}
REPORT_LINE = re.compile(r"^(?P<file>\S+): (?P<rows>\d+) rows, (?P<kept>\d+) kept, (?P<bad>\d+) bad, "
                         r"(?P<dups>\d+) duplicates dropped", re.MULTILINE)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment run_cli gives a CLI process: no FINETUNE_/AWS_ settings leak in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


@dataclass
class Result:
    exit: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def _jobs(case: Case, folder: Path, logs: Path) -> list[dict[str, Any]]:
    base = ["--config", case.config_path]
    commands = {"validate": ["validate-data", *base],
                "run": ["run", *base] if case.exit else ["prepare", *base, "--run-id", "prepare-only"]}
    if case.skip is not None:
        commands["skip"] = ["validate-data", *base, "--set", "data.on_error=skip"]
    return [{"id": f"{case.name}:{kind}", "args": args, "cwd": str(folder), "env": cli_env(case.env),
             "stdout": str(logs / f"{case.name}.{kind}.out"), "stderr": str(logs / f"{case.name}.{kind}.err")}
            for kind, args in commands.items()]


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def results(corpus_root: Path) -> dict[str, Result]:
    logs = corpus_root / "logs"
    logs.mkdir()
    jobs = [job for case in CASES for job in _jobs(case, corpus_root / "cases" / case.name, logs)]
    (corpus_root / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, "-m", "tests.bad_inputs.batch_cli", str(corpus_root / "jobs.json"),
                           str(corpus_root / "results.json"), "--workers", str(os.cpu_count() or 2), "--timeout", "120"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads((corpus_root / "results.json").read_text())
    return {job["id"]: Result(codes[job["id"]], Path(job["stdout"]).read_text(errors="replace"),
                              Path(job["stderr"]).read_text(errors="replace")) for job in jobs}


def _says_all(result: Result, says: tuple[str, ...] | list[str], what: str) -> None:
    missing = [s for s in says if s not in result.text]
    assert not missing, f"{what}: message lacks {missing}:\n{result.text[-3000:]}"


def _no_traceback(result: Result, what: str) -> None:
    assert "Traceback" not in result.text, f"{what} crashed:\n{result.text[-4000:]}"


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _with_xfail(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=BY_NAME[n].xfail or "")) if BY_NAME[n].xfail
            else n for n in names]


ALL = [c.name for c in CASES]
SKIPPABLE = [c.name for c in CASES if c.skip is not None]


def test_the_corpus_is_a_corpus() -> None:
    kinds = {"accepted": [c for c in CASES if c.exit == 0], "refused": [c for c in CASES if c.exit == 2],
             "config": [c for c in CASES if c.skip is None]}
    assert len(CASES) >= 40 and len(BY_NAME) == len(CASES)  # names are unique: each is a folder
    assert all(len(group) >= 10 for group in kinds.values()), {k: len(v) for k, v in kinds.items()}
    assert all(c.exit in (0, 2) for c in CASES)


@pytest.mark.parametrize("name", _with_xfail(ALL))
def test_validate_data_fail_policy(results: dict[str, Result], name: str) -> None:
    case, result = BY_NAME[name], results[f"{name}:validate"]
    _no_traceback(result, "validate-data")
    assert result.exit == case.exit, f"exit {result.exit}, expected {case.exit}:\n{result.text[-3000:]}"
    _says_all(result, case.says, "validate-data")


@pytest.mark.parametrize("name", _with_xfail(ALL))
def test_run_fail_policy(results: dict[str, Result], corpus_root: Path, name: str) -> None:
    case, result = BY_NAME[name], results[f"{name}:run"]
    _no_traceback(result, "run")
    assert result.exit == case.exit, f"exit {result.exit}, expected {case.exit}:\n{result.text[-3000:]}"
    written = _files_under(corpus_root / "out" / name)
    if case.exit:
        _says_all(result, [s for s in case.says if s != "inputs OK"], "run")
        assert not written, f"a refused run left files behind: {written}"
    else:  # prepare read, split and paired the inputs, and recorded it
        assert [p for p in written if p.match("steps/prepare.json")], written
        assert not [p for p in written if p.name == "manifest.json"]


@pytest.mark.parametrize("name", SKIPPABLE)
def test_validate_data_skip_policy(results: dict[str, Result], name: str) -> None:
    case, result = BY_NAME[name], results[f"{name}:skip"]
    assert case.skip is not None
    _no_traceback(result, "validate-data (skip)")
    assert result.exit == (0 if case.skip.ok else 2), result.text[-3000:]
    _says_all(result, case.skip.says, "validate-data (skip)")
    counted = {Path(m["file"]).name: int(m["bad"]) for m in REPORT_LINE.finditer(result.stdout)}
    if case.skip.ok or case.skip.bad:  # counted, before the verdict on whether enough is left
        assert counted, result.stdout
        assert {f: n for f, n in counted.items() if n} == case.skip.bad, result.stdout
    if case.skip.ok:
        expected_tail = "inputs OK" if not case.skip.bad else f"inputs usable: {sum(case.skip.bad.values())} bad rows"
        assert expected_tail in result.stdout


def test_no_invocation_ended_in_a_traceback(results: dict[str, Result]) -> None:
    crashed = sorted(job for job, r in results.items() if "Traceback" in r.text or r.exit not in (0, 2))
    print(f"\nbad-input corpus: {len(CASES)} cases, {len(results)} invocations, {len(crashed)} tracebacks")
    assert not crashed


@pytest.mark.parametrize("name", ["truncated_json_line", "csv_wrong_delimiter", "yaml_alias_bomb", "utf8_bom_jsonl"])
def test_batch_runner_agrees_with_a_fresh_cli_process(results: dict[str, Result], tmp_path: Path, name: str) -> None:
    """The forked runner is only faster: a cold `finetune-job` gives the same exit and messages."""
    case = BY_NAME[name]
    folder = write_case(case, tmp_path / "cases" / name, f"../../out/{name}")
    cold = run_cli("validate-data", "--config", case.config_path, cwd=folder, env=case.env)
    batch = results[f"{name}:validate"]
    assert cold.returncode == batch.exit
    strip = re.compile(r"\d{4}-\d\d-\d\d[ T][\d:.]+Z?|sha256 [0-9a-f]{12}")  # timestamps differ
    assert strip.sub("", cold.stderr) == strip.sub("", batch.stderr)


# ---------------------------------------------------------------- full runs that skip


def test_run_skips_counts_and_finishes(tmp_path: Path) -> None:
    """A whole run with data.on_error: skip over several kinds of bad rows: it trains, and
    training_metadata.json counts every skipped row and says why (file, line, field)."""
    bad_tickets = [b'{"id": "X-1", "title": "cut', json.dumps({"id": "T-3", "title": "dup"}).encode(),
                   json.dumps({"id": "X-2", "title": 7}).encode()]
    good = [json.dumps(r).encode() for r in tickets(60)]
    lines = good[:4] + bad_tickets + good[4:]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tickets.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    link_rows = links(60) + [{"source": "T-1", "target": "NOPE", "relation": "relates"},
                                      {"source": "T-1", "target": "T-2", "relation": "supersedes"}]
    (tmp_path / "in" / "links.jsonl").write_text("".join(json.dumps(r) + "\n" for r in link_rows))
    config = merged(TINY, {"data": {"tickets": str(tmp_path / "in" / "tickets.jsonl"),
                                    "links": str(tmp_path / "in" / "links.jsonl"), "on_error": "skip"},
                           "output": {"uri": str(tmp_path / "out")},
                           "train": {"max_pairs": 16}, "pairs": {"mine_hard_negatives": False}})
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = run_cli("run", "--config", str(tmp_path / "config.json"), "--run-id", "skipping", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "out" / "skipping"
    assert (run / "manifest.json").exists()
    inputs = json.loads((run / "training_metadata.json").read_text())["inputs"]
    skipped = {Path(f["uri"]).name: f["skipped"] for f in inputs["files"]}
    assert skipped == {"tickets.jsonl": 3, "links.jsonl": 2}
    reasons = "\n".join(inputs["skipped_rows"])
    for expected in ("tickets.jsonl line 5: invalid JSON", "tickets.jsonl line 6: field 'id': duplicate id 'T-3'",
                     "tickets.jsonl line 7: field 'title'", "field 'target': 'NOPE' is not a known ticket id",
                     "field 'relation': unknown relation 'supersedes'"):
        assert expected in reasons, reasons

