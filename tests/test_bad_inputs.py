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
import re
from pathlib import Path
from typing import Any

import pytest

from tests.bad_inputs.batch_cli import Outcome, run_many
from tests.bad_inputs.make_cases import CASES, Case, links, tickets, write_case, write_corpus
from tests.conftest import TINY, merged, run_cli

BY_NAME = {case.name: case for case in CASES}
NEVER_LOADED = "/nonexistent/model-that-must-never-load"
REPORT_LINE = re.compile(
    r"^(?P<file>\S+): (?P<rows>\d+) rows, (?P<kept>\d+) kept, (?P<bad>\d+) bad, "
    r"(?P<dups>\d+) duplicates dropped",
    re.MULTILINE,
)


def _invocations(case: Case, folder: Path) -> dict[str, tuple[list[str], Path, dict[str, str]]]:
    base = ["--config", case.config_path, *case.args]
    # A refused run must stop before the model: point model.base at nothing and turn mining on, so
    # reaching for the model would fail with a different message than the one the case expects.
    never_loaded = ["--set", f"model.base={NEVER_LOADED}", "--set", "pairs.mine_hard_negatives=true"]
    commands = {
        "validate": ["validate-data", *base],
        "run": (
            ["run", *base, *never_loaded] if case.exit else ["prepare", *base, "--run-id", "prepare-only"]
        ),
    }
    if case.skip is not None:
        commands["skip"] = ["validate-data", *base, "--set", "data.on_error=skip"]
    return {f"{case.name}:{kind}": (args, folder, case.env) for kind, args in commands.items()}


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def results(corpus_root: Path) -> dict[str, Outcome]:
    invocations = {
        k: v for case in CASES for k, v in _invocations(case, corpus_root / "cases" / case.name).items()
    }
    return run_many(invocations, corpus_root / "logs")


def _says_all(result: Outcome, says: tuple[str, ...] | list[str], what: str) -> None:
    missing = [s for s in says if s not in result.text]
    assert not missing, f"{what}: message lacks {missing}:\n{result.text[-3000:]}"


def _no_traceback(result: Outcome, what: str) -> None:
    assert "Traceback" not in result.text, f"{what} crashed:\n{result.text[-4000:]}"


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _with_xfail(names: list[str]) -> list[Any]:
    return [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=BY_NAME[n].xfail or ""))
        if BY_NAME[n].xfail
        else n
        for n in names
    ]


ALL = [c.name for c in CASES]
SKIPPABLE = [c.name for c in CASES if c.skip is not None]


def test_the_corpus_is_a_corpus() -> None:
    kinds = {
        "accepted": [c for c in CASES if c.exit == 0],
        "refused": [c for c in CASES if c.exit == 2],
        "config": [c for c in CASES if c.skip is None],
    }
    assert len(CASES) >= 40 and len(BY_NAME) == len(CASES)  # names are unique: each is a folder
    assert all(len(group) >= 10 for group in kinds.values()), {k: len(v) for k, v in kinds.items()}
    assert all(c.exit in (0, 2) for c in CASES)


@pytest.mark.parametrize("name", _with_xfail(ALL))
def test_validate_data_fail_policy(results: dict[str, Outcome], name: str) -> None:
    case, result = BY_NAME[name], results[f"{name}:validate"]
    _no_traceback(result, "validate-data")
    assert result.exit == case.exit, f"exit {result.exit}, expected {case.exit}:\n{result.text[-3000:]}"
    _says_all(result, case.says, "validate-data")


@pytest.mark.parametrize("name", _with_xfail(ALL))
def test_run_fail_policy(results: dict[str, Outcome], corpus_root: Path, name: str) -> None:
    case, result = BY_NAME[name], results[f"{name}:run"]
    _no_traceback(result, "run")
    assert result.exit == case.exit, f"exit {result.exit}, expected {case.exit}:\n{result.text[-3000:]}"
    written = _files_under(corpus_root / "out" / name)
    if case.exit:
        _says_all(result, [s for s in case.says if s != "inputs OK"], "run")
        assert not written, f"a refused run left files behind: {written}"
        assert "encode" not in result.stdout and "model-that-must-never-load" not in result.stderr
    else:  # prepare read, split and paired the inputs, and recorded it
        assert [p for p in written if p.match("steps/prepare.json")], written
        assert not [p for p in written if p.name == "manifest.json"]


@pytest.mark.parametrize("name", SKIPPABLE)
def test_validate_data_skip_policy(results: dict[str, Outcome], name: str) -> None:
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
        expected_tail = (
            "inputs OK" if not case.skip.bad else f"inputs usable: {sum(case.skip.bad.values())} bad rows"
        )
        assert expected_tail in result.stdout


def test_no_invocation_ended_in_a_traceback(results: dict[str, Outcome]) -> None:
    crashed = sorted(job for job, r in results.items() if "Traceback" in r.text or r.exit not in (0, 2))
    print(f"\nbad-input corpus: {len(CASES)} cases, {len(results)} invocations, {len(crashed)} tracebacks")
    assert not crashed


@pytest.mark.parametrize("name", ["csv_wrong_delimiter", "utf8_bom_jsonl"])
def test_batch_runner_agrees_with_a_fresh_cli_process(
    results: dict[str, Outcome], tmp_path: Path, name: str
) -> None:
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
    bad_tickets = [
        b'{"id": "X-1", "title": "cut',
        json.dumps({"id": "T-3", "title": "dup"}).encode(),
        json.dumps({"id": "X-2", "title": 7}).encode(),
    ]
    good = [json.dumps(r).encode() for r in tickets(60)]
    lines = good[:4] + bad_tickets + good[4:]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tickets.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    link_rows = links(60) + [
        {"source": "T-1", "target": "NOPE", "relation": "relates"},
        {"source": "T-1", "target": "T-2", "relation": "supersedes"},
    ]
    (tmp_path / "in" / "links.jsonl").write_text("".join(json.dumps(r) + "\n" for r in link_rows))
    config = merged(
        TINY,
        {
            "data": {
                "tickets": str(tmp_path / "in" / "tickets.jsonl"),
                "links": str(tmp_path / "in" / "links.jsonl"),
                "on_error": "skip",
            },
            "output": {"uri": str(tmp_path / "out")},
            "train": {"max_pairs": 16},
            "pairs": {"mine_hard_negatives": False},
            "classify": {"enabled": False},
        },
    )  # the read-only run in test_secrets covers those
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = run_cli("run", "--config", str(tmp_path / "config.json"), "--run-id", "skipping", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "out" / "skipping"
    assert (run / "manifest.json").exists()
    inputs = json.loads((run / "training_metadata.json").read_text())["inputs"]
    skipped = {Path(f["uri"]).name: f["skipped"] for f in inputs["files"]}
    assert skipped == {"tickets.jsonl": 3, "links.jsonl": 2}
    reasons = "\n".join(inputs["skipped_rows"])
    for expected in (
        "tickets.jsonl line 5: invalid JSON",
        "tickets.jsonl line 6: field 'id': duplicate id 'T-3'",
        "tickets.jsonl line 7: field 'title'",
        "field 'target': 'NOPE' is not a known ticket id",
        "field 'relation': unknown relation 'supersedes'",
    ):
        assert expected in reasons, reasons
