"""Files a step takes over from an earlier one are checked against that step's record (size and sha256):
an edit, a truncation or a corruption between steps stops the next step with exit 2 naming the file and
the step, never a run that finishes on tampered data. Damaged run files are named, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY, merged, run_cli, write_config


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    """A run through prepare, train, index and evaluate (classify left to do), made once for the module."""
    folder = tmp_path_factory.mktemp("takeover")
    config = _config(folder / "runs", synthetic_dir, folder / "config.json")
    for step in ("prepare", "train", "index", "evaluate"):
        done = run_cli(step, "--config", str(config), "--run-id", "base")
        assert done.returncode == 0, done.stderr[-3000:]
    return folder / "runs" / "base"


def _config(output: Path, data: Path, path: Path) -> Path:
    # What these tests check is the hand-over between steps, not what the model learns: two training steps
    # and random negatives (mining encodes every ticket in prepare) make the run, and the forced redo,
    # cheaper.
    return write_config(
        path,
        merged(
            TINY,
            {
                "data": {"tickets": str(data / "tickets.jsonl"), "links": str(data / "links.jsonl")},
                "output": {"uri": str(output)},
                "train": {"max_pairs": 16},
                "pairs": {"mine_hard_negatives": False},
            },
        ),
    )


def _copy(evaluated: Path, tmp_path: Path, synthetic_dir: Path) -> tuple[Path, Path]:
    run = tmp_path / "runs" / "base"
    shutil.copytree(evaluated, run)
    return run, _config(tmp_path / "runs", synthetic_dir, tmp_path / "config.json")


def _same_size_edit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    index = data.index(b"e")
    data[index : index + 1] = b"E"  # one letter of a ticket's text: same size, other content
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tamper", "step", "names"),
    [
        (
            lambda run: _same_size_edit(run / "prepared" / "tickets.jsonl"),
            "classify",
            ("prepared/tickets.jsonl", "step 'prepare'"),
        ),
        (
            lambda run: (run / "prepared" / "triplets_train.jsonl").write_bytes(
                b"".join(
                    (run / "prepared" / "triplets_train.jsonl").read_bytes().splitlines(keepends=True)[:2]
                )
            ),
            "classify",
            ("prepared/triplets_train.jsonl", "step 'prepare'"),
        ),
        (
            lambda run: _same_size_edit(run / "model" / "model.safetensors"),
            "classify",
            ("model/model.safetensors", "step 'train'"),
        ),
        (
            lambda run: _same_size_edit(run / "index" / "part-00000.parquet"),
            "classify",
            ("index/part-00000.parquet", "step 'index'"),
        ),
    ],
)
def test_a_file_changed_between_steps_stops_the_next_step(
    evaluated: Path, tmp_path: Path, synthetic_dir: Path, tamper: object, step: str, names: tuple[str, str]
) -> None:
    run, config = _copy(evaluated, tmp_path, synthetic_dir)
    tamper(run)  # type: ignore[operator]
    done = run_cli(step, "--config", str(config), "--run-id", "base")
    assert done.returncode == 2, done.stderr[-3000:]
    assert all(name in done.stderr for name in names) and "Traceback" not in done.stderr
    assert not (run / "manifest.json").exists(), "nothing finished on tampered data"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (b"", "steps/prepare.json is damaged"),
        (b"[]", "steps/prepare.json is not a step record"),
        (b'{"files": 3}', "steps/prepare.json is not a step record"),
    ],
)
def test_a_damaged_step_record_is_named(
    evaluated: Path, tmp_path: Path, synthetic_dir: Path, damage: bytes, says: str
) -> None:
    run, config = _copy(evaluated, tmp_path, synthetic_dir)
    (run / "steps" / "prepare.json").write_bytes(damage)
    done = run_cli("classify", "--config", str(config), "--run-id", "base")
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr[
        -3000:
    ]


@pytest.mark.slow
def test_an_untampered_copy_finishes(evaluated: Path, tmp_path: Path, synthetic_dir: Path) -> None:
    run, config = _copy(evaluated, tmp_path, synthetic_dir)
    done = run_cli("classify", "--config", str(config), "--run-id", "base")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["run_id"] == "base"


@pytest.mark.slow
def test_a_forced_redo_leaves_no_file_of_the_earlier_attempt(
    evaluated: Path, tmp_path: Path, synthetic_dir: Path
) -> None:
    """An earlier attempt exported ONNX variants; this config exports none: they must not stay beside the
    model."""
    run, config = _copy(evaluated, tmp_path, synthetic_dir)
    (run / "model" / "onnx").mkdir()
    (run / "model" / "onnx" / "model.onnx").write_bytes(b"an older model's export")
    done = run_cli("evaluate", "--config", str(config), "--run-id", "base", "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (run / "model" / "onnx").exists()
    (run / "model" / "stale.safetensors").write_bytes(b"left by an older train")
    done = run_cli("train", "--config", str(config), "--run-id", "base", "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (run / "model" / "stale.safetensors").exists()
