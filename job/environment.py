"""The process's environment: what a run records about it, and the cache paths it sets for libraries."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from job.config import RuntimeConfig


def use_cache_dir(runtime: RuntimeConfig) -> None:
    """Point the model and font caches at `runtime.cache_dir` (pods have a read-only root filesystem).

    Called by the CLI and by `job.runs.context.open_run`, so a Python caller gets the same paths. A value
    already in the environment wins (the images set MPLCONFIGDIR). Effective for the libraries the
    job imports lazily (sentence-transformers, matplotlib), which read these when first imported.
    """
    if runtime.cache_dir:
        os.environ.setdefault("HF_HOME", runtime.cache_dir)
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(runtime.cache_dir, "matplotlib"))


def environment_info(device: str | None = None) -> dict[str, Any]:
    """Versions of everything that can change a result, and the hardware it ran on."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {
            name: version(name)
            for name in (
                "torch",
                "sentence-transformers",
                "transformers",
                "scikit-learn",
                "numpy",
                "imbalanced-learn",
                "boto3",
                "ticket-finetune-job",
            )
        },
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "git_revision": git_revision(),
    }
    return info


def git_revision() -> str | None:
    """The source revision: baked into images as a file next to the package, else from git."""
    stamp = Path(__file__).with_name("GIT_REVISION")
    if stamp.exists():
        return stamp.read_text().strip() or None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
