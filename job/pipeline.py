"""The whole flow: prepare -> train -> index -> evaluate, classify.

Each step reads what the one before wrote from the run's storage (so steps can run in
separate pods) and also accepts it in memory (so `run` does not re-read, re-load or re-encode:
`Handover`). The steps, their order and what each needs are defined once, in job/runs/steps.py; what
each one runs is STEP_BODIES, at the end. A rerun continues from the first step not yet done
(`reusable_steps`). The bodies below say what each step does; how is in the packages they call.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from job.data.inputs import read_inputs
from job.data.pairs import build_split_pairs, training_budget
from job.data.split import SPLITS, check_usable, split_by_components
from job.embedding.model import (
    attention_implementation,
    barrier,
    base_revision,
    pick_device,
    set_threads,
    world_size,
)
from job.environment import environment_info
from job.evaluation import plots
from job.evaluation.evaluate import ModelEvaluation, lexical_metrics, metric_deltas, rounded, score_model
from job.fleet.drift import profile_inputs
from job.fleet.promoted_drift import drift_against_promoted
from job.profile import phase
from job.relations.classify import NotEnoughClasses, choose_relations
from job.relations.cross_encoder import CHECKPOINTS as CROSS_ENCODER_CHECKPOINTS
from job.relations.fit import fit_and_publish
from job.retrieval.spec import RETRIEVAL_FILE, fusion_settings, lexical_settings, retrieval_spec
from job.runs.context import (
    RunContext,
    base_model_path,
    begin_step,
    finish_if_complete,
    publish_step_metrics,
    reusable_steps,
    reuse_or_refuse,
    stop_if_asked,
)
from job.runs.cpu_exports import export_cpu_variants
from job.runs.models import (
    TrainedModel,
    base_embedder,
    checkpoint_stamp,
    encode_ids,
    fetch_model,
    finetuned_embeddings,
    finetuned_model,
    model_sha,
)
from job.runs.prepared import PreparedData, budget_spent, load_prepared, prepared_rows, write_prepared
from job.runs.steps import CLASSIFY, EVALUATE, INDEX, PREPARE, STEPS, TRAIN, Step, required_steps
from job.runs.ticket_index import index_rows, publish_index, write_own_part
from job.storage import FileRecord, upload_dir


def prepare(ctx: RunContext) -> PreparedData:
    """Read inputs, split by connected components, build pairs per split, write them."""
    cfg, log, timer = ctx.cfg, ctx.log(PREPARE.name), begin_step(ctx, PREPARE)
    with phase("read"):
        corpus, inputs = read_inputs(cfg)
    log.info(
        "inputs loaded", tickets=inputs["tickets"], links=inputs["links"], skipped=len(inputs["skipped_rows"])
    )
    edges = corpus.edges()
    split = split_by_components(sorted(corpus.tickets), edges, cfg.pairs.split, cfg.train.seed)
    edges_per_split = check_usable(split, edges)
    embed = base_embedder(ctx, log) if cfg.pairs.mine_hard_negatives else None
    budget = training_budget(cfg.train, cfg.pairs)
    prepared = PreparedData(corpus.tickets, corpus.links, split.members, {}, [], [])
    pair_info: dict[str, Any] = {}
    for name in SPLITS:
        with phase("pairs"):
            built = build_split_pairs(
                name,
                corpus,
                split,
                cfg.pairs,
                random.Random(f"{cfg.train.seed}-{name}"),
                embed,
                budget if name == "train" else None,
                lexical_settings(cfg),
            )
        prepared.pairs[name] = built.pairs
        prepared.triplets += built.triplets
        prepared.title_body += built.title_body
        pair_info[name] = {
            "total": len(built.pairs),
            "triplets": len(built.triplets),
            "by_kind": dict(built.stats.counts),
            "fallbacks": dict(built.stats.fallbacks),
            "mining": built.stats.mining,
        }
        log.info("pairs built", split=name, **pair_info[name])
    pair_info["budget"] = budget_spent(
        cfg, budget, prepared.pairs["train"], prepared.triplets, prepared.title_body
    )
    rows = prepared_rows(corpus, split)
    with phase("write"):
        files = write_prepared(ctx, rows, prepared)
    split_info: dict[str, Any] = {
        name: {"tickets": len(split.members[name]), "linked_pairs": edges_per_split[name]} for name in SPLITS
    }
    split_info["components"] = len(set(split.component.values()))
    with phase("drift"):
        drift = drift_against_promoted(cfg, profile_inputs(rows.tickets, rows.links), log)
    ctx.run.record_step(
        timer.record(files, {"inputs": inputs, "split": split_info, "pairs": pair_info, "drift": drift})
    )
    log.info("prepare done", **{name: split_info[name] for name in SPLITS})
    return prepared


def train(ctx: RunContext, prepared: PreparedData, resume: bool = False) -> TrainedModel:
    """Fine-tune the base model on the train pairs; publish the best model under model/."""
    from job.embedding.train import train_model, training_rows
    from job.embedding.trainer import discard_stale_checkpoints

    cfg, log, timer = ctx.cfg, ctx.log(TRAIN.name), begin_step(ctx, TRAIN)
    threads = set_threads(cfg.runtime.threads)
    texts = {tid: t.text for tid, t in prepared.tickets.items()}
    rows = training_rows(
        cfg, texts, prepared.pairs["train"], prepared.pairs["val"], prepared.triplets, prepared.title_body
    )
    device, base = pick_device(), ctx.take_base_model()
    log.info(
        "training",
        **rows.counts(),
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        loss=cfg.train.loss,
        device=device,
        threads=threads,
        attention=attention_implementation(base),
        max_seq_length=base.max_seq_length,
    )
    stamp = checkpoint_stamp(ctx, TRAIN)
    discarded = discard_stale_checkpoints(ctx.run.store, stamp, log) if ctx.rank == 0 else None
    ctx.checkpointing.set()
    try:
        with phase("fit"):
            result = train_model(
                cfg,
                base,
                rows.pairs,
                rows.ranking,
                rows.val,
                ctx.work_dir,
                ctx.run.store,
                log,
                ctx.stop,
                resume,
                stamp=stamp,
            )
    finally:
        ctx.checkpointing.clear()
    trained = TrainedModel(result.model_dir, result.model)
    if ctx.rank != 0:  # DDP workers trained in lock-step; rank 0 publishes
        return trained
    with phase("write"):
        # an earlier attempt's files (its ONNX files) are not this model's
        ctx.run.store.delete_prefix("model/")
        files = upload_dir(ctx.run.store, result.model_dir, "model")
        plot = plots.loss_curve(
            result.loss_curve, result.val_history, ctx.work_dir / "plots" / "loss_curve.png"
        )
        files.append(ctx.run.store.upload_file(plot, "plots/loss_curve.png"))
    info = {k: v for k, v in vars(result).items() if k not in ("model_dir", "model")}
    info["discarded_checkpoint"] = discarded
    info["environment"] = environment_info(device)
    info["model"] = {
        "attention": attention_implementation(base),
        "max_seq_length": base.max_seq_length,
        "base_revision": base_revision(cfg.model.base, base_model_path(ctx)),
    }
    files.append(ctx.run.write_json("train/history.json", info))
    ctx.run.record_step(timer.record(files, info))
    ctx.run.store.delete_prefix("checkpoints/")  # only needed to resume; the model is published
    log.info(
        "train done",
        steps=result.global_step,
        seconds=result.train_seconds,
        pairs_per_s=result.pairs_per_second,
        best_val_spearman=result.best_metric,
    )
    return trained


def index(ctx: RunContext, prepared: PreparedData, trained: TrainedModel) -> None:
    """Every ticket of the input encoded once with the fine-tuned model, and the keyword index: index/ in the
    run (job/retrieval/index.py). Under torchrun each rank encodes every world-th ticket into its own part;
    rank 0 writes the lexical index and the record once every part is there."""
    cfg, log, timer = ctx.cfg, ctx.log(INDEX.name), begin_step(ctx, INDEX) if ctx.rank == 0 else None
    set_threads(cfg.runtime.threads)
    rows, world = index_rows(prepared), world_size()
    model = finetuned_model(ctx, trained)
    dim = int(model.get_embedding_dimension())
    metadata = {
        "finetune.run_id": ctx.run.run_id,
        "finetune.dim": str(dim),
        "finetune.model_sha256": model_sha(ctx),
    }
    part = write_own_part(ctx, rows, world, model, metadata, log)
    barrier(world)
    if timer is None:
        return
    files = publish_index(ctx, rows, world, metadata)
    info = {
        "rows": len(rows),
        "dim": dim,
        "parts": world,
        "size_bytes": sum(f.size for f in files),
        "texts_per_s": round(part.rows / max(part.seconds, 1e-9), 2),
        "encode_seconds": round(part.seconds, 3),
        "device": pick_device(),
    }
    ctx.run.record_step(timer.record(files, info))
    log.info("index written", **info)


def evaluate(ctx: RunContext, prepared: PreparedData, trained: TrainedModel) -> None:
    """Base and fine-tuned model on the same test split, each dense and fused with BM25 (the lexical weight
    chosen on val); the fine-tuned vectors come from the index step."""
    cfg, log, timer = ctx.cfg, ctx.log(EVALUATE.name), begin_step(ctx, EVALUATE)
    set_threads(cfg.runtime.threads)
    with phase("lexical"):
        held = prepared.held_out(cfg)
    ids = sorted(set(held.test.ids) | set(held.val.ids))
    embeddings = {
        "base": encode_ids(ctx.take_base_model(), prepared, ids, ctx, log, "encode base"),
        "finetuned": finetuned_embeddings(ctx, prepared, trained, ids, log),  # the index has these
    }
    results: dict[str, ModelEvaluation] = {}
    for name, emb in embeddings.items():
        with phase("score"):
            results[name] = score_model(emb, held, fusion_settings(cfg))
        log.info("metrics", model=name, **rounded(results[name].metrics))
    metrics: dict[str, Any] = {name: r.metrics for name, r in results.items()}
    with phase("score"):
        metrics["lexical"] = lexical_metrics(held)
    log.info("metrics", model="lexical (BM25)", **rounded(metrics["lexical"]))
    metrics["fusion"] = {name: r.fusion for name, r in results.items()}
    metrics["delta"] = metric_deltas(metrics["finetuned"], metrics["base"])
    spec = retrieval_spec(cfg, ctx.run.run_id, results["finetuned"].fusion)
    files: list[FileRecord] = [ctx.run.write_json(RETRIEVAL_FILE, spec)]
    ctx.run.store.delete_prefix("model/onnx/")  # an earlier attempt's variants, whatever this one writes
    if cfg.export.onnx:
        metrics["exports"], exported = export_cpu_variants(
            ctx, prepared, trained, held, embeddings["finetuned"], metrics["finetuned"]["threshold"], log
        )
        files += exported
    files.append(ctx.run.write_json("evaluate/metrics.json", metrics))
    with phase("plots"):
        scores = {name: r.test for name, r in results.items()}
        made = plots.evaluation_figures(scores, metrics, ctx.work_dir / "plots")
        files += [ctx.run.store.upload_file(path, f"plots/{path.name}") for path in made]
    ctx.run.record_step(timer.record(files, {"metrics": metrics}))
    finish_if_complete(ctx)


def classify(ctx: RunContext, prepared: PreparedData, trained: TrainedModel) -> dict[str, Any]:
    """Relation classifier (classify.method) under classifier/; skipped (and said why) when it cannot
    train."""
    cfg, log, timer = ctx.cfg, ctx.log(CLASSIFY.name), begin_step(ctx, CLASSIFY)
    set_threads(cfg.runtime.threads)
    files: list[FileRecord] = []
    info: dict[str, Any] = {}
    try:
        links = choose_relations(
            prepared.links_in("train"),
            prepared.links_in("test"),
            cfg.classify.min_class_count,
            prepared.links_in("val"),
        )
    except NotEnoughClasses as exc:
        metrics: dict[str, Any] = {"skipped": str(exc)}
        log.warning("classifier skipped", reason=str(exc))
    else:
        published = fit_and_publish(ctx, prepared, trained, links, log)
        metrics, info, files = published.metrics, published.info, published.files
        plot = plots.confusion(
            published.confusion, links.classes, ctx.work_dir / "plots" / "confusion_matrix.png"
        )
        files.append(ctx.run.store.upload_file(plot, "plots/confusion_matrix.png"))
        log.info(
            "classifier",
            method=cfg.classify.method,
            **rounded({k: metrics[k] for k in ("macro_f1", "majority_macro_f1")}),
            n_train=metrics["n_train"],
            n_test=metrics["n_test"],
            notes=metrics["notes"],
        )
    files.append(ctx.run.write_json("classifier/metrics.json", metrics))
    ctx.run.record_step(timer.record(files, {"metrics": metrics, **info}))
    # only needed to resume; the classifier is published
    ctx.run.store.delete_prefix(f"{CROSS_ENCODER_CHECKPOINTS}/")
    finish_if_complete(ctx)
    return metrics


# ---------------------------------------------------------------- all steps


def run_all(ctx: RunContext, resume: bool = False) -> dict[str, Any]:
    """Every step in one process, handing data over in memory. A rerun continues where the last
    attempt stopped: steps it finished are taken over from the run's storage, not redone."""
    done = reusable_steps(ctx)
    for step in sorted(done, key=STEPS.index):
        ctx.log(step.name).info("step already done; reusing what it recorded")
    if (
        TRAIN in done
    ):  # a stop right after train recorded itself leaves the checkpoints it was about to delete
        ctx.run.store.delete_prefix("checkpoints/")
    handover = Handover(ctx)
    for step in required_steps(ctx.cfg.classify.enabled):
        if step not in done:
            stop_if_asked(ctx, step)
            STEP_BODIES[step](handover, resume)
    if not ctx.run.is_finished():  # every step was taken over: the last attempt stopped before the manifest
        finish_if_complete(ctx)
    publish_step_metrics(ctx, STEPS)
    return ctx.run.read_json("metrics.json")


def run_step(ctx: RunContext, name: str, resume: bool = False) -> None:
    """One command of the CLI: `run`, or one step on its own, reading what it needs from the run's
    storage. A step already done with this config and these inputs is not redone (an orchestrator's
    retry after the step recorded itself must not train again: the checkpoints are gone)."""
    if name == "run":
        run_all(ctx, resume=resume)
        return
    step = next(s for s in STEPS if s.name == name)
    if not ctx.force:  # --force redoes the step whatever it recorded
        ctx.run.refuse_or_reopen_finished(force=False)
        if reuse_or_refuse(ctx, step):
            ctx.log(step.name).info("step already done; nothing to do")
            publish_step_metrics(ctx, (step,))
            return
    STEP_BODIES[step](Handover(ctx), resume)
    publish_step_metrics(ctx, (step,))


@dataclass
class Handover:
    """What the steps of one process hand each other in memory (the prepared data, the trained model); what
    an earlier process made is read from the run's storage the first time a step needs it."""

    ctx: RunContext
    prepared: PreparedData | None = None
    trained: TrainedModel | None = None

    def prepared_for(self, step: Step) -> PreparedData:
        if self.prepared is None:
            self.prepared = load_prepared(self.ctx, step)
        return self.prepared

    def trained_for(self, step: Step) -> TrainedModel:
        if self.trained is None:
            self.trained = fetch_model(self.ctx, step)
        return self.trained


def _prepare_step(h: Handover, resume: bool) -> None:
    h.prepared = prepare(h.ctx)


def _train_step(h: Handover, resume: bool) -> None:
    h.trained = train(h.ctx, h.prepared_for(TRAIN), resume=resume)
    gc.collect()  # the trainer's optimizer state and batches are garbage now, in cycles plain refcounts miss


def _index_step(h: Handover, resume: bool) -> None:
    index(h.ctx, h.prepared_for(INDEX), h.trained_for(INDEX))


def _evaluate_step(h: Handover, resume: bool) -> None:
    evaluate(h.ctx, h.prepared_for(EVALUATE), h.trained_for(EVALUATE))
    gc.collect()  # the base model and the export's sessions


def _classify_step(h: Handover, resume: bool) -> None:
    classify(h.ctx, h.prepared_for(CLASSIFY), h.trained_for(CLASSIFY))


# What `run` (in STEPS order) and each step's own command call. A new step: its Step in job/runs/steps.py, its
# function above, one entry here (and its task in the workflow files).
STEP_BODIES: dict[Step, Callable[[Handover, bool], None]] = {
    PREPARE: _prepare_step,
    TRAIN: _train_step,
    INDEX: _index_step,
    EVALUATE: _evaluate_step,
    CLASSIFY: _classify_step,
}
