"""`validate-data` (job/data/validate.py): a bad export's problems are counted in full,
shown in part, listed in a file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bad_inputs.make_cases import links, tickets
from tests.conftest import run_cli, write_config

BAD_ROWS = 120  # more than the 50 shown per file


def _inputs(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps(t) for t in tickets(60)] + [f'{{"id": "BAD-{i}", "title": ' for i in range(BAD_ROWS)]
    (folder / "tickets.jsonl").write_text("\n".join(rows) + "\n")
    bad_links = [{"source": "T-1", "target": "NOPE", "relation": "relates"}] * 3
    (folder / "links.jsonl").write_text("".join(json.dumps(r) + "\n" for r in links(60) + bad_links))
    return {"tickets": str(folder / "tickets.jsonl"), "links": str(folder / "links.jsonl")}


def test_many_problems_show_the_first_50_per_file_and_the_counts_and_list_every_one_in_a_file(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "config.json",
        {
            "data": {**_inputs(tmp_path / "in"), "on_error": "skip"},
            "runtime": {"work_dir": str(tmp_path / "work")},
        },
    )
    result = run_cli("validate-data", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"tickets.jsonl: {60 + BAD_ROWS} rows, 60 kept, {BAD_ROWS} bad" in out
    assert "links.jsonl: 33 rows, 30 kept, 3 bad" in out
    shown = [line for line in out.splitlines() if line.startswith("  ") and "tickets.jsonl line" in line]
    assert len(shown) == 50 and "line 61:" in shown[0]
    assert f"  ... and {BAD_ROWS - 50} more problem(s) in this file" in out
    short = [line for line in out.splitlines() if "links.jsonl line" in line]
    assert len(short) == 3, "a short list is shown whole"
    listed = [line for line in out.splitlines() if line.startswith(f"every problem ({BAD_ROWS + 3}): ")]
    assert len(listed) == 1
    problems_file = Path(listed[0].split(": ", 1)[1])
    assert problems_file.parent == tmp_path / "work", "the default is under runtime.work_dir"
    written = problems_file.read_text().splitlines()
    assert len(written) == BAD_ROWS + 3 and written[0] == shown[0].strip()
    assert "links.jsonl line 31:" in written[-3]
    assert f"inputs usable: {BAD_ROWS + 3} bad rows will be skipped" in out

    failing = run_cli(
        "validate-data",
        "--config",
        str(config),
        "--set",
        "data.on_error=fail",
        "--problems-file",
        str(tmp_path / "all.txt"),
    )
    assert failing.returncode == 2 and "problem(s) found (data.on_error=fail)" in failing.stderr
    assert len((tmp_path / "all.txt").read_text().splitlines()) == BAD_ROWS + 3


def test_a_short_list_is_shown_whole_and_writes_no_file(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in")
    Path(inputs["tickets"]).write_text("".join(json.dumps(t) + "\n" for t in tickets(60)) + '{"id": "cut\n')
    config = write_config(
        tmp_path / "config.json",
        {"data": {**inputs, "on_error": "skip"}, "runtime": {"work_dir": str(tmp_path / "work")}},
    )
    result = run_cli("validate-data", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "every problem" not in result.stdout and not (tmp_path / "work").exists()
