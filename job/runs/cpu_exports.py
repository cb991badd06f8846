"""The evaluate step's ONNX export: each variant scored on the gate sample of the test split beside the
PyTorch model's own vectors of it, and published under model/ only when within export.max_metric_drop of
it (the gate itself is job/embedding/export.py)."""

from __future__ import annotations

import random
import time
from typing import Any

from job.embedding.model import pick_device, set_threads
from job.evaluation.evaluate import Embeddings, HeldOut, rounded
from job.profile import phase
from job.runs.context import RunContext
from job.runs.models import TrainedModel, cpu_model, encode_ids
from job.runs.prepared import PreparedData
from job.storage import FileRecord

SPEED_SAMPLE = 256  # texts: enough for a rate within a few percent, a fraction of the split's encode


def export_cpu_variants(
    ctx: RunContext,
    prepared: PreparedData,
    trained: TrainedModel,
    held: HeldOut,
    finetuned: Embeddings,
    threshold: float,
    log: Any,
) -> tuple[dict[str, Any], list[FileRecord]]:
    """Export, gate and publish the variants: what evaluate/metrics.json says of them, the files written."""
    from job.embedding.export import ExportGate, export_variants, onnx_transformer, rejection

    cfg, threads = ctx.cfg, set_threads(ctx.cfg.runtime.threads)
    pytorch = cpu_model(ctx, trained)
    gate = ExportGate.sample(
        held, prepared.links, cfg.evaluate.retrieval_relations, cfg.export.gate_tickets, cfg.train.seed
    )
    with phase("score"):
        reference = gate.metrics(finetuned, threshold)
    reference_texts_per_s = _texts_per_second(
        pytorch, prepared, gate.ids, ctx, log
    )  # the index may use a GPU
    with phase("export"):
        variants = export_variants(pytorch, ctx.work_dir / "export")
    summary: dict[str, Any] = {
        "reference": {
            "backend": f"pytorch ({pick_device()})",
            "texts_per_s": round(reference_texts_per_s, 2),
            "metrics": reference,
        },
        "max_metric_drop": cfg.export.max_metric_drop,
        "gate": gate.describe(),
        "variants": {},
    }
    files: list[FileRecord] = []
    for variant in variants:
        with onnx_transformer(pytorch, variant.path, threads):
            started = time.monotonic()
            emb = encode_ids(pytorch, prepared, gate.ids, ctx, log, f"encode {variant.name}")
            speed = len(gate.ids) / max(time.monotonic() - started, 1e-9)
        with phase("score"):
            scored = gate.metrics(emb, threshold)
        refused = rejection(reference, scored, cfg.export.max_metric_drop)
        summary["variants"][variant.name] = {
            "file": variant.file,
            "written": refused is None,
            "rejected": refused,
            "size_mb": round(variant.path.stat().st_size / 1e6, 1),
            "texts_per_s": round(speed, 2),
            "speedup": round(speed / reference_texts_per_s, 2) if reference_texts_per_s else None,
            "metrics": scored,
            **{k: scored.get(k) for k in ("recall_at_10", "average_precision")},
        }
        if refused:
            log.warning(
                "export not written: worse than the PyTorch model", variant=variant.name, reason=refused
            )
            ctx.run.store.delete(f"model/{variant.file}")  # an earlier attempt's copy must not stay behind
            continue
        with phase("write"):
            files.append(ctx.run.store.upload_file(variant.path, f"model/{variant.file}"))
        log.info(
            "export written",
            variant=variant.name,
            file=f"model/{variant.file}",
            texts_per_s=round(speed, 1),
            **rounded({k: scored.get(k) for k in ("recall_at_10", "average_precision")}),
        )
    return summary, files


def _texts_per_second(model: Any, prepared: PreparedData, ids: list[str], ctx: RunContext, log: Any) -> float:
    """PyTorch's own encode rate on CPU, on a seeded sample of the split (the reference the variants are sped
    up against)."""
    sample = sorted(random.Random(ctx.cfg.train.seed).sample(ids, min(len(ids), SPEED_SAMPLE)))
    started = time.monotonic()
    encode_ids(model, prepared, sample, ctx, log, "encode pytorch (speed reference)")
    return len(sample) / max(time.monotonic() - started, 1e-9)
