"""Training throughput and MFU of the job's train step on a CUDA GPU, for several batch sizes.

Runs `job.embedding.train.train_model` (the job's own trainer set-up: SentenceTransformerTrainer,
CosineSimilarityLoss, length-grouped batches, precision `auto` = bf16 on CUDA) on pairs of real
ticket texts, and times every optimizer step with CUDA synchronisation. The first steps
(kernel selection, allocator warm-up) are left out of the figures.

MFU = model FLOPs per second / the GPU's peak dense bf16 rate. Model FLOPs count the real
(unpadded) tokens of each sequence: 6 x non-embedding parameters x tokens for the matrix work
of forward + backward, plus 12 x layers x length^2 x hidden for attention. Padding is work the
GPU does that counts for nothing, so it is not in the numerator. The peak is given twice: the
datasheet's and a large bf16 matrix product measured on the same GPU in the same run.

Usage (on the GPU machine):
    python -m bench.gpu_train --tickets tickets.jsonl --model DIR[:name] ... --out results.json
`--model random-mpnet:TOKENIZER_DIR` builds an all-mpnet-base-v2-shaped model (MPNet base,
mean pooling) with random weights and the given tokenizer, for hosts where the real weights
cannot be downloaded: throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "L40S": 362.0}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, the GPU synchronised at both ends."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _sync()
        self.durations.append(time.perf_counter() - self._t0)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measured_matmul_tflops() -> float | None:
    """bf16 8192^3 matrix product on random data, median of 10 after 3 warm-ups."""
    import torch

    if not torch.cuda.is_available():  # a CPU smoke run of this script
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1000)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def build_random_mpnet(tokenizer_dir: Path, out: Path) -> Path:
    """An all-mpnet-base-v2-shaped SentenceTransformer with random weights (see the module doc)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    out.mkdir(parents=True, exist_ok=True)
    MPNetModel(MPNetConfig()).save_pretrained(out / "hf")
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out / "hf")
    encoder = models.Transformer(str(out / "hf"), max_seq_length=384)
    pooling = models.Pooling(encoder.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling, models.Normalize()]).save(str(out / "st"))
    return out / "st"


def model_shape(model: Any) -> dict[str, int]:
    config = model[0].auto_model.config
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return {"params": total, "non_embedding_params": total - embeddings, "layers": config.num_hidden_layers,
            "hidden": config.hidden_size}


def flops_per_sequence(shape: dict[str, int], tokens: int) -> float:
    return 6 * shape["non_embedding_params"] * tokens + 12 * shape["layers"] * tokens**2 * shape["hidden"]


def sample_pairs(texts: list[str], n: int, seed: int) -> tuple[list[str], list[str], list[float]]:
    rng = random.Random(seed)
    a = [rng.choice(texts) for _ in range(n)]
    b = [rng.choice(texts) for _ in range(n)]
    return a, b, [rng.random() for _ in range(n)]


def run_one(model_dir: str, texts: list[str], batch_size: int, steps: int, warmup_steps: int,
            max_seq_length: int, compile_model: bool, work: Path) -> dict[str, Any]:
    import torch

    from job.config import load_config
    from job.embedding.model import load_model
    from job.embedding.train import RankingSets, TrainExamples, TripletExamples, train_model
    from job.log import get_logger
    from job.storage import LocalStore

    cfg = load_config(environ={}, cli_overrides={
        "data.tickets": "unused.jsonl", "output.uri": str(work / "out"), "model.base": model_dir,
        "model.max_seq_length": max_seq_length, "train.epochs": 1, "train.batch_size": batch_size,
        "train.precision": "auto", "train.loss": "cosine", "train.compile": compile_model}).config
    model = load_model(model_dir, max_seq_length, device="cuda" if torch.cuda.is_available() else "cpu")
    train = TrainExamples(*sample_pairs(texts, batch_size * steps, seed=batch_size))
    val = TrainExamples(*sample_pairs(texts, 64, seed=1))
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train_model(cfg, model, train, RankingSets(TripletExamples([], [], [])), val, work / f"bs{batch_size}", LocalStore(work / f"store{batch_size}"),
                         get_logger(step="gpu-bench"), threading.Event(), resume=False, extra_callbacks=[timer])
    shape = model_shape(model)
    tokenizer = model.tokenizer
    lengths = [len(ids) for ids in tokenizer(train.sentence1 + train.sentence2, truncation=True,
                                             max_length=max_seq_length)["input_ids"]]
    flops_total = sum(flops_per_sequence(shape, n) for n in lengths)
    timed = timer.durations[warmup_steps:]
    timed_share = len(timed) / len(timer.durations)
    seconds = sum(timed)
    shutil.rmtree(work / f"bs{batch_size}", ignore_errors=True)
    shutil.rmtree(work / f"store{batch_size}", ignore_errors=True)
    return {
        "batch_size": batch_size, "compiled": compile_model, "steps": len(timer.durations), "timed_steps": len(timed),
        "precision": result.precision, "max_seq_length": max_seq_length,
        "mean_tokens_per_sequence": round(statistics.mean(lengths), 1),
        "median_step_s": round(statistics.median(timed), 4),
        "sequences_per_s": round(2 * batch_size * len(timed) / seconds, 1),
        "pairs_per_s": round(batch_size * len(timed) / seconds, 1),
        "model_tflops_per_s": round(flops_total * timed_share / seconds / 1e12, 1),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None,
        "shape": shape,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=Path, required=True, help="tickets JSONL (title, description)")
    parser.add_argument("--model", action="append", required=True,
                        help="NAME=DIR (a SentenceTransformer folder) or NAME=random-mpnet:TOKENIZER_DIR")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup-steps", type=int, default=5, help="left out of the figures")
    parser.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile)")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-bench"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from job.log import configure_logging

    configure_logging("json")
    rows = [json.loads(line) for line in args.tickets.read_text(encoding="utf-8").split("\n") if line.strip()]
    texts = [f"{r['title']}\n{r.get('description') or ''}" for r in rows]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in gpu), None)
    measured = measured_matmul_tflops()
    report: dict[str, Any] = {"gpu": gpu, "torch": torch.__version__, "datasheet_bf16_tflops": peak,
                              "measured_matmul_bf16_tflops": round(measured, 1) if measured else None, "models": {}}
    for spec in args.model:
        name, _, source = spec.partition("=")
        if source.startswith("random-mpnet:"):
            source = str(build_random_mpnet(Path(source.split(":", 1)[1]), args.work / "random-mpnet"))
        results = []
        for batch_size in args.batch_sizes:
            row = run_one(source, texts, batch_size, args.steps, args.warmup_steps, args.max_seq_length,
                          args.compile, args.work)
            row["mfu_vs_datasheet"] = round(row["model_tflops_per_s"] / peak, 3) if peak else None
            row["mfu_vs_measured_matmul"] = round(row["model_tflops_per_s"] / measured, 3) if measured else None
            results.append(row)
            print(json.dumps({"model": name, **{k: v for k, v in row.items() if k != "shape"}}), flush=True)
        report["models"][name] = results
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\n{gpu}; bf16 matmul measured {measured} TFLOP/s, datasheet {peak}")
    print("| model | batch | seq/s | TFLOP/s | MFU (datasheet) | MFU (measured matmul) | GPU GB |")
    for name, results in report["models"].items():
        for r in results:
            print(f"| {name} | {r['batch_size']} | {r['sequences_per_s']} | {r['model_tflops_per_s']} | "
                  f"{r['mfu_vs_datasheet']} | {r['mfu_vs_measured_matmul']} | {r['peak_gpu_memory_gb']} |")


if __name__ == "__main__":
    main()
