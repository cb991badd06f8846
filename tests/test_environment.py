"""job/environment.py: the cache paths a run sets for the libraries it loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_python_caller_of_the_pipeline_gets_the_cache_paths_the_cli_sets(tmp_path: Path) -> None:
    """HF_HOME and MPLCONFIGDIR follow runtime.cache_dir for `job.pipeline` used as a library, too."""
    cache = tmp_path / "cache"
    script = f"""
import os, sys
from pathlib import Path
from job.config import load_config
from job.runs.context import open_run
from job.evaluation import plots
loaded = load_config(None, environ={{}}, cli_overrides={{"runtime.cache_dir": {str(cache)!r},
                                                          "output.uri": {str(tmp_path / "runs")!r}}})
assert "matplotlib" not in sys.modules, "imported before the config could set MPLCONFIGDIR"
open_run(loaded, "lib")
plots.loss_curve([{{"step": 1, "loss": 0.5}}], [], Path({str(tmp_path / "loss.png")!r}))
import matplotlib
print(os.environ["HF_HOME"], matplotlib.get_configdir())
"""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HOME", "MPLCONFIGDIR") and not k.startswith("FINETUNE_")
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(cache), str(cache / "matplotlib")]
