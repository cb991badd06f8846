"""The bench's measurement knows when the machine was not idle: CPU taken by other processes while a command
ran is counted (speed ratios from a loaded machine are not headlines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.measure import run_measured
from bench.run_bench import idle_report


def test_cpu_used_by_other_processes_is_counted_and_makes_the_run_not_idle(tmp_path: Path) -> None:
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 8\nwhile time.time() < end: pass"]
    )
    try:
        measured = run_measured([sys.executable, "-c", "import time; time.sleep(3)"], tmp_path / "job.log")
    finally:
        spinner.kill()
        spinner.wait()
    assert measured.foreign_cpu_cores >= 0.5, measured
    report = idle_report(measured)
    assert report["idle"] is False and "job: other processes used" in report["why"]
