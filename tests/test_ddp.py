"""Training under torchrun with two CPU processes (gloo): DDP works and only rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLI, TINY, merged, run_cli, synthetic_inputs, write_config

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["retrieval", "mnrl"])
def test_two_process_torchrun_trains_and_rank_zero_publishes(
    tmp_path: Path, synthetic_dir: Path, loss: str
) -> None:
    """retrieval: triplet and pair batches dealt to the ranks in turn (no gather, or it would hang);
    mnrl: triplets only, in-batch negatives gathered across the two processes."""
    config = write_config(
        tmp_path / "config.json",
        merged(
            TINY,
            {
                "data": synthetic_inputs(synthetic_dir),
                "output": {"uri": str(tmp_path / "runs")},
                "runtime": {"work_dir": str(tmp_path / "work"), "threads": 1},
                "train": {"max_pairs": 32, "batch_size": 4, "loss": loss},
                "pairs": {"mine_hard_negatives": False},
            },
        ),
    )
    assert run_cli("prepare", "--config", str(config), "--run-id", "ddp").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    result = subprocess.run(
        [
            TORCHRUN,
            "--standalone",
            "--nproc_per_node=2",
            CLI,
            "train",
            "--config",
            str(config),
            "--run-id",
            "ddp",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "runs/ddp/train/history.json").read_text())
    # Batches of 4 per dataset, dealt to 2 ranks: half as many optimizer steps as on one process.
    budget = json.loads((tmp_path / "runs/ddp/steps/prepare.json").read_text())["info"]["pairs"]["budget"]
    batches = math.ceil(budget["triplets_spent"] / 4) + math.ceil(budget["pairs_spent"] / 4)
    assert budget["triplets_spent"] > 0 and history["global_step"] == math.ceil(batches / 2)
    assert (tmp_path / "runs/ddp/model/model.safetensors").exists()
    # Both ranks share stdout, so lines can interleave: count the event rather than parse lines.
    assert result.stdout.count('"event": "train done"') == 1, "only rank 0 publishes and reports the step"
    assert (tmp_path / "work" / "finetune-ddp-rank1").is_dir(), "rank 1 used its own scratch directory"
    assert not (tmp_path / "runs/ddp/checkpoints").exists(), (
        "checkpoints are removed once the model is published"
    )


@pytest.mark.slow
def test_less_than_a_batch_per_process_fails_instead_of_publishing_the_base_model(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    """8 triplets and 8 pairs in batches of 8, dealt to two processes: no optimizer step can run, and a
    run that 'trained' zero steps must not publish the base model as its result."""
    config = write_config(
        tmp_path / "config.json",
        merged(
            TINY,
            {
                "data": synthetic_inputs(synthetic_dir),
                "output": {"uri": str(tmp_path / "runs")},
                "runtime": {"work_dir": str(tmp_path / "work"), "threads": 1},
                "model": {"max_seq_length": 32},
                "train": {"max_pairs": 16, "batch_size": 8, "loss": "retrieval"},
                "pairs": {"mine_hard_negatives": False, "augment_per_positive": 0},
            },
        ),
    )
    assert run_cli("prepare", "--config", str(config), "--run-id", "tiny").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "job.launch",
            "--standalone",
            "--nproc-per-node=2",
            "--no-python",
            CLI,
            "train",
            "--config",
            str(config),
            "--run-id",
            "tiny",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "training took no optimizer step" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs/tiny/model").exists()
    assert not (tmp_path / "runs/tiny/steps/train.json").exists()
