"""A run's models: the base model's encoder for mining, the fine-tuned model (in memory when this process
trained it, else fetched from the run's model/ once) and its vectors, taken from the index step when it
made them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job.embedding.model import encode, load_model
from job.errors import RunStateError
from job.evaluation.evaluate import Embeddings
from job.jsonio import to_json
from job.retrieval.index import INDEX as INDEX_FOLDER
from job.retrieval.index import read_parts
from job.runs.context import RunContext
from job.runs.prepared import PreparedData
from job.runs.steps import INDEX, TRAIN, Step


@dataclass
class TrainedModel:
    local_dir: Path
    model: Any = None  # in memory when this process trained or loaded it: handed from step to step in `run`


def finetuned_model(ctx: RunContext, trained: TrainedModel) -> Any:
    """The fine-tuned model: the one in memory, else loaded from the run's model/ once."""
    if trained.model is None:
        trained.model = load_model(str(trained.local_dir), ctx.cfg.model.max_seq_length)
    return trained.model


def cpu_model(ctx: RunContext, trained: TrainedModel) -> Any:
    """The fine-tuned model on the CPU (where the ONNX variants run): the one in memory when it is there."""
    if trained.model is not None and str(trained.model.device) == "cpu":
        return trained.model
    return load_model(str(trained.local_dir), ctx.cfg.model.max_seq_length, device="cpu")


def fetch_model(ctx: RunContext, step: Step) -> TrainedModel:
    """The published model, downloaded for `step` (once per scratch directory)."""
    ctx.run.require(step)
    return TrainedModel(ctx.run.download_taken_over(TRAIN, "model", ctx.work_dir / "model"))


def checkpoint_stamp(ctx: RunContext, step: Step) -> str:
    """What `step`'s checkpoints are made from (config checksum, input sha256), written into each one."""
    fingerprint = ctx.fingerprint(step)
    return to_json(
        {"config_sha256": fingerprint.config_sha256, "inputs_sha256": fingerprint.inputs_sha256}
    ).decode()


def model_sha(ctx: RunContext) -> str:
    """The fine-tuned weights' sha256, as train recorded them: what the index's vectors were made with."""
    record = ctx.run.step_record(TRAIN.name)
    weights = [f.sha256 for f in (record.files if record else []) if f.path.endswith(".safetensors")]
    return ",".join(sorted(weights))


def base_embedder(ctx: RunContext, log: Any) -> Callable[[list[str]], np.ndarray]:
    """Mining's encoder: the base model, loaded only if mining needs it, and kept for train."""

    def embed(texts: list[str]) -> np.ndarray:
        return encode(ctx.base_model(), texts, ctx.cfg.model.encode_batch_size, log, "encode for mining")

    return embed


def encode_ids(
    model: Any, prepared: PreparedData, ids: list[str], ctx: RunContext, log: Any, what: str
) -> Embeddings:
    texts = [prepared.tickets[t].text for t in ids]
    return Embeddings(ids, encode(model, texts, ctx.cfg.model.encode_batch_size, log, what))


def finetuned_embeddings(
    ctx: RunContext, prepared: PreparedData, trained: TrainedModel, ids: list[str], log: Any
) -> Embeddings:
    """The fine-tuned embeddings of `ids`: the index step's, or (a run made before that step existed, a Python
    caller that skipped it) encoded here."""
    found = indexed_embeddings(ctx, ids)
    log.info(
        "embeddings",
        reused=len(ids) if found is not None else 0,
        encoded=0 if found is not None else len(ids),
    )
    if found is not None:
        return found
    return encode_ids(finetuned_model(ctx, trained), prepared, ids, ctx, log, "encode finetuned")


def indexed_embeddings(ctx: RunContext, ids: list[str]) -> Embeddings | None:
    """The index's vectors of `ids` (checked against the index step's record and made by this run's model);
    None before the index step recorded itself."""
    if ctx.run.step_record(INDEX.name) is None:
        return None
    folder = ctx.run.download_taken_over(INDEX, INDEX_FOLDER, ctx.work_dir / INDEX_FOLDER)
    found = read_parts(sorted(folder.glob("part-*.parquet")), set(ids))
    if found.metadata.get("finetune.model_sha256") != model_sha(ctx):
        raise RunStateError(
            f"run {ctx.run.run_id}: its index was made by another model than model/; redo the "
            "index step with --force"
        )
    rows = {tid: n for n, tid in enumerate(found.ids)}
    missing = [t for t in ids if t not in rows]
    if missing:
        raise RunStateError(
            f"run {ctx.run.run_id}: the index has no vector for {len(missing)} ticket(s) of the "
            f"split (first: {missing[0]}); redo the index step with --force"
        )
    return Embeddings(ids, found.vectors[[rows[t] for t in ids]])
