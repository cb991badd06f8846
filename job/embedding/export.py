"""CPU variants of the fine-tuned model: ONNX fp32, and int8 by dynamic quantisation.

Consumers embed incoming tickets on CPU pods; ONNX Runtime is faster there than PyTorch, and
int8 weights faster again (bench/results/encode-backends.md). The transformer is exported once
here, in the layout sentence-transformers' ONNX backend reads (`onnx/model.onnx`, output
`last_hidden_state`; the model's own tokenizer, pooling and normalisation stay as they are), so
`SentenceTransformer(path, backend="onnx", model_kwargs={"file_name": "onnx/model_qint8.onnx"})`
reads it where `optimum-onnx` is installed.

sentence-transformers' own export helpers and its ONNX backend need `optimum-onnx`, whose latest
release (0.1.0) pins transformers<4.58, while sentence-transformers 6 needs transformers 5: neither
can run next to this job. So the export is `torch.onnx.export` plus
`onnxruntime.quantization.quantize_dynamic`, and the job scores a variant by running the same
SentenceTransformer with its transformer swapped for an ONNX Runtime session (`load_variant`), which
is what the ONNX backend does. tests/test_export.py loads both files through that backend in a
separate environment (requirements-onnx-consumer.lock: sentence-transformers 5.7, transformers 4.57.6,
optimum-onnx 0.1.0), from the folder as train writes it (portable modules.json class paths), and
compares them with PyTorch.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from job.data.pairs import Pair
from job.data.records import Link
from job.data.split import connected_components
from job.evaluation.evaluate import (
    Embeddings,
    HeldOut,
    pair_metrics,
    pair_scores,
    retrieval_metrics,
    retrieval_queries,
)

# variant name -> file under the model directory (sentence-transformers' names for them)
VARIANTS = {"onnx-fp32": "onnx/model.onnx", "onnx-int8": "onnx/model_qint8.onnx"}
OUTPUT = "last_hidden_state"
GUARDED_METRICS = ("recall_at_10", "average_precision")  # a variant may not lose more than allowed on these


@dataclass(frozen=True)
class ExportedVariant:
    name: str
    file: str  # relative to the model directory
    path: Path  # where it was written locally


def export_variants(model: Any, out_dir: Path) -> list[ExportedVariant]:
    """Write every variant of the SentenceTransformer `model`'s transformer under `out_dir`."""
    fp32 = out_dir / VARIANTS["onnx-fp32"]
    fp32.parent.mkdir(parents=True, exist_ok=True)
    _export_fp32(model, fp32)
    int8 = out_dir / VARIANTS["onnx-int8"]
    _quantize_int8(fp32, int8)
    return [
        ExportedVariant("onnx-fp32", VARIANTS["onnx-fp32"], fp32),
        ExportedVariant("onnx-int8", VARIANTS["onnx-int8"], int8),
    ]


def _export_fp32(model: Any, path: Path) -> None:
    transformer = model[0].auto_model.eval()
    names = list(model.tokenizer.model_input_names)

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    example = tuple(torch.ones((2, 8), dtype=torch.long, device=transformer.device) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT]}
    with torch.inference_mode():
        torch.onnx.export(
            LastHiddenState(),
            example,
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _quantize_int8(fp32: Path, int8: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales: mean cosine to fp32 0.993 instead of 0.955 with one scale per tensor
    # (64 sample tickets, 48 tokens), at the same size and speed.
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)


def load_variant(model: Any, onnx_path: Path, threads: int) -> Any:
    """`model` (a SentenceTransformer on CPU) with its transformer run by ONNX Runtime from `onnx_path`:
    tokenisation, prompts, pooling and normalisation stay the model's own, as in the ONNX backend."""
    model[0].model = _OnnxTransformer(onnx_path, model[0].model.config, threads)
    return model


@contextlib.contextmanager
def onnx_transformer(model: Any, onnx_path: Path, threads: int) -> Iterator[Any]:
    """`model` run by the variant at `onnx_path` inside the block (load_variant), and its own transformer
    again after it: one model in memory scores every variant, instead of a fresh load for each."""
    own = model[0].model
    try:
        yield load_variant(model, onnx_path, threads)
    finally:
        model[0].model = own


@dataclass(frozen=True)
class ExportGate:
    """The tickets of the test split a variant is scored on beside the PyTorch model: whole link components
    (a query's duplicates come with it) in a seeded order, up to `export.gate_tickets`; the whole split when
    it is smaller. The two are compared on the same tickets, by the metrics the gate guards (dense: the
    variants are vectors; the keyword side of the hybrid is the same for both)."""

    ids: list[str]
    pairs: list[Pair]
    relevant: list[set[int]]
    of_tickets: int
    held: HeldOut

    @classmethod
    def sample(
        cls, held: HeldOut, links: list[Link], relations: list[str], max_tickets: int, seed: int
    ) -> ExportGate:
        chosen = _whole_components(held.test.ids, links, max_tickets, seed)
        kept = set(chosen)
        relevant, _ = retrieval_queries(chosen, links, relations)
        pairs = [p for p in held.test_pairs if p.a in kept and p.b in kept]
        return cls(chosen, pairs, relevant, len(held.test.ids), held)

    def metrics(self, emb: Embeddings, threshold: float) -> dict[str, Any]:
        """Pair metrics (the F1 at the model's threshold chosen on val) and dense retrieval on the sample."""
        scored: dict[str, Any] = dict(
            pair_metrics(pair_scores(emb, self.pairs, self.held.positive_threshold), threshold)
        )
        scored.update(retrieval_metrics(emb, self.ids, self.relevant, self.held.chunk_size))
        return scored

    def describe(self) -> dict[str, Any]:
        return {
            "tickets": len(self.ids),
            "of_test_tickets": self.of_tickets,
            "pairs": len(self.pairs),
            "queries": sum(1 for r in self.relevant if r),
        }


def _whole_components(ids: list[str], links: list[Link], max_tickets: int, seed: int) -> list[str]:
    """Up to `max_tickets` of `ids`, taken link component by link component in a seeded order (all of them,
    in their own order, when they fit)."""
    if len(ids) <= max_tickets:
        return list(ids)
    inside = set(ids)
    edges = [(link.source, link.target) for link in links if link.source in inside and link.target in inside]
    component = connected_components(ids, edges)
    components: dict[int, list[str]] = {}
    for t in ids:
        components.setdefault(component[t], []).append(t)
    order = sorted(components.values(), key=lambda members: members[0])
    random.Random(seed).shuffle(order)
    chosen: list[str] = []
    for members in order:
        if len(chosen) + len(members) <= max_tickets:
            chosen += members
    position = {t: n for n, t in enumerate(ids)}
    return sorted(chosen, key=position.__getitem__)


class _OnnxTransformer(torch.nn.Module):
    """Stands in for the Hugging Face transformer inside sentence-transformers' Transformer module."""

    def __init__(self, path: Path, config: Any, threads: int) -> None:
        import onnxruntime as ort

        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config = config

    def forward(self, **features: Any) -> dict[str, Any]:
        feed = {name: features[name].cpu().numpy().astype(np.int64) for name in self.inputs}
        return {OUTPUT: torch.from_numpy(self.session.run([OUTPUT], feed)[0])}


def rejection(reference: dict[str, Any], variant: dict[str, Any], max_drop: float) -> str | None:
    """Why a variant must not be written, or None: its test recall@10 or average precision is more
    than `max_drop` below the PyTorch model's (a metric the reference lacks is not compared)."""
    problems = []
    for key in GUARDED_METRICS:
        ref, got = reference.get(key), variant.get(key)
        if not isinstance(ref, float) or math.isnan(ref):
            continue
        if not isinstance(got, float) or math.isnan(got) or ref - got > max_drop + 1e-12:
            shown = "none" if not isinstance(got, float) else f"{got:.4f}"
            problems.append(f"{key} {shown} vs {ref:.4f} (more than {max_drop:g} below PyTorch)")
    return "; ".join(problems) or None
