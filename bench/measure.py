"""Run one command as a child process tree and measure it: wall time and peak memory.

Peak memory is taken two ways: the sum of RSS over the whole process tree, sampled every
`interval_s` by psutil (what the machine had to hold at once), and `ru_maxrss` of the
children from `getrusage(RUSAGE_CHILDREN)` read in a fresh wrapper process (the largest
single process, exact, not sampled). The report uses the larger of the two.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass
class Measured:
    """What one command cost."""

    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    tree_peak_rss_mb: float
    maxrss_mb: float
    load_before: float
    load_after: float
    log: str
    # CPU cores other processes kept busy while this ran, on average: the machine's busy time (psutil, /proc/stat)
    # minus the command's own (its children's rusage). Speed ratios need this near 0 (an idle machine).
    foreign_cpu_cores: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class _TreeSampler(threading.Thread):
    """Samples the RSS sum of all descendants of a process (the wrapper itself excluded) until stopped."""

    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak_bytes = 0
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.halt.is_set():
            total = 0
            try:
                for proc in root.children(recursive=True):
                    try:
                        total += proc.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
            except psutil.NoSuchProcess:
                return
            self.peak_bytes = max(self.peak_bytes, total)
            self.halt.wait(self.interval_s)


def run_measured(command: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, interval_s: float = 0.2, check: bool = True) -> Measured:
    """Run `command` (through the rusage wrapper below), logging stdout+stderr to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_suffix(".rusage.json")
    wrapped = [sys.executable, "-P", "-m", "bench.measure", str(usage_path), "--", *command]
    load_before = os.getloadavg()[0]
    repo_root = str(Path(__file__).resolve().parent.parent)
    child_env = dict(os.environ if env is None else env)
    # The wrapper imports bench.measure; the wrapped command keeps its own PYTHONPATH.
    child_env["BENCH_WRAPPED_PYTHONPATH"] = child_env.get("PYTHONPATH", "")
    child_env["PYTHONPATH"] = repo_root
    busy_before = _busy_seconds()
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=cwd)
        sampler = _TreeSampler(proc.pid, interval_s)
        sampler.start()
        returncode = proc.wait()
        sampler.halt.set()
        sampler.join()
    wall = time.perf_counter() - start
    busy = _busy_seconds() - busy_before
    usage = json.loads(usage_path.read_text()) if usage_path.exists() else {}
    maxrss_kb = usage.get("maxrss_kb", 0)
    foreign = max(0.0, busy - usage.get("user_s", 0.0) - usage.get("sys_s", 0.0)) / max(wall, 1e-9)
    tree_mb = sampler.peak_bytes / 2**20
    maxrss_mb = maxrss_kb / 1024
    measured = Measured(command, returncode, round(wall, 3), round(max(tree_mb, maxrss_mb), 1), round(tree_mb, 1),
                        round(maxrss_mb, 1), load_before, os.getloadavg()[0], str(log_path), round(foreign, 2))
    if check and returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"command failed with exit code {returncode}: {' '.join(command)}\n{tail}")
    return measured


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (every process, niced ones included)."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def _wrapper_main(argv: list[str]) -> int:
    """`python -m bench.measure USAGE.json -- CMD...`: run CMD, write its ru_maxrss, exit with its code."""
    usage_path, sep, *command = argv
    if sep != "--" or not command:
        raise SystemExit("usage: python -m bench.measure USAGE.json -- COMMAND...")
    env = dict(os.environ)
    env["PYTHONPATH"] = env.pop("BENCH_WRAPPED_PYTHONPATH", "")
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    returncode = subprocess.call(command, env=env)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(usage_path).write_text(json.dumps({"maxrss_kb": usage.ru_maxrss, "user_s": usage.ru_utime,
                                            "sys_s": usage.ru_stime}))
    return returncode


if __name__ == "__main__":
    sys.exit(_wrapper_main(sys.argv[1:]))
