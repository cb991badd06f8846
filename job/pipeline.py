"""The whole flow: prepare -> train -> index -> evaluate, classify.

Each step reads what the one before wrote from the run's storage (so steps can run in
separate pods) and also accepts it in memory (so `run` does not re-read, re-load or re-encode:
`Handover`). The steps, their order and what each needs are defined once, in job/runs/steps.py; what
each one runs is STEP_BODIES, at the end. A rerun continues from the first step not yet done
(`reusable_steps`).
"""

from __future__ import annotations

import gc
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from job.config import JobConfig
from job.data.inputs import read_inputs
from job.data.pairs import Budget, Pair, TitleBody, Triplet, build_split_pairs, training_budget
from job.data.records import Link, Ticket
from job.data.split import SPLITS, check_usable, split_by_components
from job.embedding.model import (
    attention_implementation,
    barrier,
    base_revision,
    encode,
    load_model,
    pick_device,
    set_threads,
    world_size,
)
from job.environment import environment_info
from job.errors import InputError, JobError, RunStateError
from job.evaluation import plots
from job.evaluation.evaluate import (
    Embeddings,
    HeldOut,
    ModelEvaluation,
    RetrievalPool,
    lexical_metrics,
    score_model,
)
from job.fleet.drift import InputProfile, compare, profile_inputs
from job.fleet.history import promoted_runs
from job.jsonio import from_jsonl, to_json, to_jsonl
from job.profile import phase
from job.relations.base import FitInputs, RelationLinks, classifier_class
from job.relations.classify import (
    NotEnoughClasses,
    choose_relations,
    relation_confusion,
    relation_metrics,
)
from job.relations.cross_encoder import CHECKPOINTS as CROSS_ENCODER_CHECKPOINTS
from job.retrieval.spec import RETRIEVAL_FILE, fusion_settings, lexical_settings, retrieval_spec
from job.runs.artifacts import check_run_id
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
from job.runs.steps import (
    CLASSIFY,
    EVALUATE,
    INDEX,
    PREPARE,
    STEPS,
    TRAIN,
    Step,
    required_steps,
)
from job.storage import FileRecord, open_store, upload_dir

# ---------------------------------------------------------------- prepare


@dataclass
class PreparedData:
    tickets: dict[str, Ticket]
    links: list[Link]
    members: dict[str, list[str]]
    pairs: dict[str, list[Pair]]
    triplets: list[Triplet]  # train split only
    title_body: list[TitleBody] = field(default_factory=list)  # train split only

    def links_in(self, split: str) -> list[Link]:
        ids = set(self.members[split])
        return [link for link in self.links if link.source in ids]


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
    embed = _lazy_base_embedder(ctx, log) if cfg.pairs.mine_hard_negatives else None
    budget = training_budget(cfg.train, cfg.pairs)
    pairs: dict[str, list[Pair]] = {}
    triplets: list[Triplet] = []
    title_body: list[TitleBody] = []
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
        pairs[name] = built.pairs
        triplets += built.triplets
        title_body += built.title_body
        pair_info[name] = {
            "total": len(built.pairs),
            "triplets": len(built.triplets),
            "by_kind": dict(built.stats.counts),
            "fallbacks": dict(built.stats.fallbacks),
            "mining": built.stats.mining,
        }
        log.info("pairs built", split=name, **pair_info[name])
    pair_info["budget"] = budget_spent(cfg, budget, pairs["train"], triplets, title_body)
    where = split.lookup()
    ticket_rows = [
        {
            "id": t.id,
            "text": t.text,
            "category": t.category,
            "project": t.project,
            "created": t.created,
            "split": where[t.id],
        }
        for t in corpus.tickets.values()
    ]
    link_rows = [
        {"source": k.source, "target": k.target, "relation": k.relation, "split": where[k.source]}
        for k in corpus.links
    ]
    with phase("write"):
        files = _write_prepared(ctx, ticket_rows, link_rows, split.members, pairs, triplets, title_body)
    split_info: dict[str, Any] = {
        name: {"tickets": len(split.members[name]), "linked_pairs": edges_per_split[name]} for name in SPLITS
    }
    split_info["components"] = len(set(split.component.values()))
    with phase("drift"):
        drift = drift_against_promoted(ctx, profile_inputs(ticket_rows, link_rows), log)
    ctx.run.record_step(
        timer.record(files, {"inputs": inputs, "split": split_info, "pairs": pair_info, "drift": drift})
    )
    log.info("prepare done", **{name: split_info[name] for name in SPLITS})
    return PreparedData(corpus.tickets, corpus.links, split.members, pairs, triplets, title_body)


def _write_prepared(
    ctx: RunContext,
    ticket_rows: list[dict[str, Any]],
    link_rows: list[dict[str, Any]],
    members: dict[str, list[str]],
    pairs: dict[str, list[Pair]],
    triplets: list[Triplet],
    title_body: list[TitleBody],
) -> list[FileRecord]:
    return [
        ctx.run.store.write_bytes("prepared/tickets.jsonl", to_jsonl(ticket_rows)),
        ctx.run.store.write_bytes("prepared/links.jsonl", to_jsonl(link_rows)),
        ctx.run.store.write_bytes("prepared/split.json", to_json(members)),
        *[
            ctx.run.store.write_bytes(
                f"prepared/pairs_{name}.jsonl", to_jsonl([p.to_json() for p in pairs[name]])
            )
            for name in SPLITS
        ],
        ctx.run.store.write_bytes("prepared/triplets_train.jsonl", to_jsonl([t.to_json() for t in triplets])),
        ctx.run.store.write_bytes(TITLE_BODY_FILE, to_jsonl([r.to_json() for r in title_body])),
    ]


TITLE_BODY_FILE = "prepared/title_body_train.jsonl"


def budget_spent(
    cfg: JobConfig, budget: Budget, pairs: list[Pair], triplets: list[Triplet], title_body: list[TitleBody]
) -> dict[str, Any]:
    """What train.max_pairs allowed each objective, and what each got (steps/prepare.json: pairs.budget)."""
    related = sum(t.objective == "related" for t in triplets)
    return {
        "max_pairs": cfg.train.max_pairs,
        "loss": cfg.train.loss,
        "triplets_cap": budget.triplets,
        "triplets_spent": len(triplets) - related,
        "pairs_cap": budget.pairs,
        "pairs_spent": len(pairs),
        "related_cap": budget.related,
        "related_spent": related,
        "title_body_cap": budget.title_body,
        "title_body_spent": len(title_body),
    }


def drift_against_promoted(ctx: RunContext, current: InputProfile, log: Any) -> dict[str, Any]:
    """This run's inputs against the promoted run's (drift.* bounds); a warning per bound passed.

    Drift informs and never stops a run: without a promoted run, or when its prepared files cannot
    be read, the section says why it is empty."""
    cfg = ctx.cfg
    root = open_store(cfg.output.uri.rstrip("/"), cfg.storage)
    promoted_run: str | None = None
    try:
        promoted_run, _ = promoted_runs(root, cfg.promote.pointer)
        if promoted_run is None:
            log.info("no drift check: no promoted run yet")
            return {"against_run": None, "skipped": "no promoted run"}
        run = root.child(check_run_id(promoted_run))
        promoted = profile_inputs(
            from_jsonl(run.read_bytes("prepared/tickets.jsonl")),
            from_jsonl(run.read_bytes("prepared/links.jsonl")),
        )
        section = compare(current, promoted, promoted_run, cfg.drift)
    except (JobError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "no drift check: the promoted run's prepared inputs cannot be read",
            promoted_run=promoted_run,
            error=str(exc)[:300],
        )
        return {
            "against_run": promoted_run,
            "skipped": f"cannot read its prepared inputs ({type(exc).__name__})",
        }
    for warning in section["warnings"]:
        log.warning("input drift past bound", against_run=promoted_run, **warning)
    log.info(
        "drift against the promoted run",
        against_run=promoted_run,
        tickets=section["tickets"],
        links=section["links"],
        relation_shift=section["relation_mix"]["shift"],
        length_shift=section["text_length"]["shift"],
        new_projects=section["projects"]["new"],
        new_test_tickets_share=section["new_test_tickets_share"],
        warnings=len(section["warnings"]),
    )
    return section


def _lazy_base_embedder(ctx: RunContext, log: Any) -> Any:
    """Mining's encoder: the base model, loaded only if mining needs it, and kept for train."""

    def embed(texts: list[str]) -> np.ndarray:
        return encode(ctx.base_model(), texts, ctx.cfg.model.encode_batch_size, log, "encode for mining")

    return embed


def load_prepared(ctx: RunContext, step: Step) -> PreparedData:
    """What prepare wrote, read back from the run's storage for `step`, each file checked against prepare's
    record (a file edited or truncated since stops `step` with exit 2, naming it)."""
    ctx.run.require(step)

    def rows(key: str) -> list[dict[str, Any]]:
        return _parsed(key, lambda: from_jsonl(ctx.run.taken_over(PREPARE, key)))

    tickets = {
        r["id"]: Ticket(r["id"], r["text"], r.get("category"), r.get("project"), r.get("created"))
        for r in rows("prepared/tickets.jsonl")
    }
    links = [Link(r["source"], r["target"], r["relation"]) for r in rows("prepared/links.jsonl")]
    members = _parsed(
        "prepared/split.json", lambda: json.loads(ctx.run.taken_over(PREPARE, "prepared/split.json"))
    )
    pairs = {name: [Pair(**r) for r in rows(f"prepared/pairs_{name}.jsonl")] for name in SPLITS}
    triplets = [Triplet(**r) for r in rows("prepared/triplets_train.jsonl")]
    title_body = [TitleBody(**r) for r in rows(TITLE_BODY_FILE)]
    return PreparedData(tickets, links, members, pairs, triplets, title_body)


def _parsed(key: str, read: Any) -> Any:
    """`read()` of a prepared file; one that matches its record but does not parse was written by another
    version of the job (exit 2 naming it, never a traceback)."""
    try:
        return read()
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise RunStateError(
            f"{key} cannot be read back ({type(exc).__name__}); redo prepare with --force"
        ) from None


# ---------------------------------------------------------------- train


@dataclass
class TrainedModel:
    local_dir: Path
    model: Any = None  # in memory when this process trained or loaded it: handed from step to step in `run`


def finetuned_model(ctx: RunContext, trained: TrainedModel) -> Any:
    """The fine-tuned model: the one in memory, else loaded from the run's model/ once."""
    if trained.model is None:
        trained.model = load_model(str(trained.local_dir), ctx.cfg.model.max_seq_length)
    return trained.model


def train(ctx: RunContext, prepared: PreparedData, resume: bool = False) -> TrainedModel:
    """Fine-tune the base model on the train pairs; publish the best model under model/."""
    from job.embedding.train import (
        RankingSets,
        TitleBodyExamples,
        examples_from_pairs,
        train_model,
        triplet_examples,
    )
    from job.embedding.trainer import discard_stale_checkpoints

    cfg, log, timer = ctx.cfg, ctx.log(TRAIN.name), begin_step(ctx, TRAIN)
    threads = set_threads(cfg.runtime.threads)
    texts = {tid: t.text for tid, t in prepared.tickets.items()}
    threshold = cfg.evaluate.positive_threshold
    train_rows = examples_from_pairs(
        prepared.pairs["train"], texts, cfg.train.loss, cfg.train.pair_loss, threshold
    )
    ranking = RankingSets(
        triplet_examples(prepared.triplets, texts),
        triplet_examples(prepared.triplets, texts, "related"),
        TitleBodyExamples.of(prepared.title_body),
    )
    triplet_rows = ranking.triplets
    val_rows = examples_from_pairs(prepared.pairs["val"], texts, "cosine", "cosine", threshold)
    if (
        not train_rows.sentence1
        and not triplet_rows.anchor
        and not ranking.related.anchor
        and not ranking.title_body.anchor
    ):
        raise InputError(
            f"no training rows for train.loss={cfg.train.loss}: the train split has no links of "
            f"pairs.triplet_relations {cfg.pairs.triplet_relations} (mnrl) or no pairs"
        )
    device, base = pick_device(), ctx.take_base_model()
    log.info(
        "training",
        pair_rows=len(train_rows.sentence1),
        triplet_rows=len(triplet_rows.anchor),
        related_rows=len(ranking.related.anchor),
        title_body_rows=len(ranking.title_body.anchor),
        val_pairs=len(val_rows.sentence1),
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
                train_rows,
                ranking,
                val_rows,
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
        ctx.run.store.delete_prefix(
            "model/"
        )  # an earlier attempt's files (its ONNX files) are not this model's
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


def checkpoint_stamp(ctx: RunContext, step: Step) -> str:
    """What `step`'s checkpoints are made from (config checksum, input sha256), written into each one."""
    fingerprint = ctx.fingerprint(step)
    return to_json(
        {"config_sha256": fingerprint.config_sha256, "inputs_sha256": fingerprint.inputs_sha256}
    ).decode()


def fetch_model(ctx: RunContext, step: Step) -> TrainedModel:
    """The published model, downloaded for `step` (once per scratch directory)."""
    ctx.run.require(step)
    return TrainedModel(ctx.run.download_taken_over(TRAIN, "model", ctx.work_dir / "model"))


# ---------------------------------------------------------------- evaluate


def _encode_ids(
    model: Any, prepared: PreparedData, ids: list[str], ctx: RunContext, log: Any, what: str
) -> Embeddings:
    vectors = encode(
        model, [prepared.tickets[t].text for t in ids], ctx.cfg.model.encode_batch_size, log, what
    )
    return Embeddings(ids, vectors)


def evaluate(ctx: RunContext, prepared: PreparedData, trained: TrainedModel) -> None:
    """Base and fine-tuned model on the same test split, each dense and fused with BM25 (the lexical weight
    chosen on val); the fine-tuned vectors come from the index step."""
    cfg, log, timer = ctx.cfg, ctx.log(EVALUATE.name), begin_step(ctx, EVALUATE)
    set_threads(cfg.runtime.threads)
    with phase("lexical"):
        held = held_out(ctx, prepared)
    ids = sorted(set(held.test.ids) | set(held.val.ids))
    results: dict[str, ModelEvaluation] = {}
    embeddings = {
        "base": _encode_ids(ctx.take_base_model(), prepared, ids, ctx, log, "encode base"),
        "finetuned": _reuse_or_encode(ctx, prepared, trained, ids, log),
    }  # the index has these
    for name, emb in embeddings.items():
        with phase("score"):
            results[name] = score_model(emb, held, fusion_settings(cfg))
        log.info("metrics", model=name, **{k: _round(v) for k, v in results[name].metrics.items()})
    metrics: dict[str, Any] = {name: r.metrics for name, r in results.items()}
    with phase("score"):
        metrics["lexical"] = lexical_metrics(held)
    log.info("metrics", model="lexical (BM25)", **{k: _round(v) for k, v in metrics["lexical"].items()})
    metrics["fusion"] = {name: r.fusion for name, r in results.items()}
    metrics["delta"] = {k: _delta(metrics["finetuned"].get(k), metrics["base"].get(k)) for k in DELTA_KEYS}
    spec = retrieval_spec(cfg, ctx.run.run_id, results["finetuned"].fusion)
    files: list[FileRecord] = [ctx.run.write_json(RETRIEVAL_FILE, spec)]
    ctx.run.store.delete_prefix("model/onnx/")  # an earlier attempt's variants, whatever this one writes
    if cfg.export.onnx:
        metrics["exports"], exported = _export_cpu_variants(
            ctx, prepared, trained, held, embeddings["finetuned"], metrics["finetuned"]["threshold"], log
        )
        files += exported
    files.append(ctx.run.write_json("evaluate/metrics.json", metrics))
    with phase("plots"):
        files += _evaluation_plots(ctx, results, metrics)
    ctx.run.record_step(timer.record(files, {"metrics": metrics}))
    finish_if_complete(ctx)


DELTA_KEYS = (
    "average_precision",
    "roc_auc",
    "spearman",
    "recall_at_10",
    "mrr",
    "map",
    "time_aware_recall_at_10",
    "time_aware_mrr",
    "time_aware_map",
    "hybrid_recall_at_10",
    "hybrid_mrr",
    "hybrid_map",
    "hybrid_time_aware_recall_at_10",
    "hybrid_time_aware_mrr",
    "hybrid_average_precision",
)


def held_out(ctx: RunContext, prepared: PreparedData) -> HeldOut:
    """The val and test splits as pairs and as retrieval pools (each with its own BM25 index), built once."""
    cfg = ctx.cfg
    pools = {
        name: RetrievalPool.build(
            ids,
            [prepared.tickets[t].text for t in ids],
            prepared.links,
            cfg.evaluate.retrieval_relations,
            {t: prepared.tickets[t].created for t in ids},
            lexical_settings(cfg),
        )
        for name in ("val", "test")
        for ids in [prepared.members[name]]
    }
    return HeldOut(
        prepared.pairs["val"],
        prepared.pairs["test"],
        pools["val"],
        pools["test"],
        cfg.evaluate.positive_threshold,
        cfg.evaluate.chunk_size,
    )


def _export_cpu_variants(
    ctx: RunContext,
    prepared: PreparedData,
    trained: TrainedModel,
    held: HeldOut,
    finetuned: Embeddings,
    threshold: float,
    log: Any,
) -> tuple[dict[str, Any], list[FileRecord]]:
    """Export the ONNX variants, score each on the gate sample of the test split beside the PyTorch model's own
    vectors of it, and publish under model/ only those within export.max_metric_drop of it (job/embedding/export.py)."""
    from job.embedding.export import ExportGate, export_variants, onnx_transformer, rejection

    cfg, threads = ctx.cfg, set_threads(ctx.cfg.runtime.threads)
    pytorch = _cpu_model(ctx, trained)
    gate = ExportGate.sample(
        held, prepared.links, cfg.evaluate.retrieval_relations, cfg.export.gate_tickets, cfg.train.seed
    )
    with phase("score"):
        reference = gate.metrics(finetuned, threshold)
    reference_texts_per_s = _texts_per_second(
        pytorch, prepared, gate.ids, ctx, log
    )  # the index may have used a GPU
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
            emb = _encode_ids(pytorch, prepared, gate.ids, ctx, log, f"encode {variant.name}")
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
            recall_at_10=_round(scored.get("recall_at_10")),
            average_precision=_round(scored.get("average_precision")),
        )
    return summary, files


def _cpu_model(ctx: RunContext, trained: TrainedModel) -> Any:
    """The fine-tuned model on the CPU (where the variants run): the one in memory when it is there already."""
    if trained.model is not None and str(trained.model.device) == "cpu":
        return trained.model
    return load_model(str(trained.local_dir), ctx.cfg.model.max_seq_length, device="cpu")


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _delta(new: Any, old: Any) -> float | None:
    return round(new - old, 5) if isinstance(new, float) and isinstance(old, float) else None


def _evaluation_plots(
    ctx: RunContext, results: dict[str, ModelEvaluation], metrics: dict[str, Any]
) -> list[FileRecord]:
    scores = {name: r.test for name, r in results.items()}
    folder = ctx.work_dir / "plots"
    made = [
        plots.similarity_distributions(scores, folder / "similarity_distributions.png"),
        plots.f1_vs_threshold(scores, metrics, folder / "f1_vs_threshold.png"),
    ]
    if all(metrics[m]["roc_auc"] is not None for m in ("base", "finetuned")):
        made += [
            plots.roc(scores, metrics, folder / "roc.png"),
            plots.precision_recall(scores, metrics, folder / "pr.png"),
        ]
    return [ctx.run.store.upload_file(path, f"plots/{path.name}") for path in made]


def _texts_per_second(model: Any, prepared: PreparedData, ids: list[str], ctx: RunContext, log: Any) -> float:
    """PyTorch's own encode rate on CPU, on a seeded sample of the split (the reference the variants are sped
    up against)."""
    sample = sorted(random.Random(ctx.cfg.train.seed).sample(ids, min(len(ids), SPEED_SAMPLE)))
    started = time.monotonic()
    _encode_ids(model, prepared, sample, ctx, log, "encode pytorch (speed reference)")
    return len(sample) / max(time.monotonic() - started, 1e-9)


SPEED_SAMPLE = 256  # texts: enough for a rate within a few percent, a fraction of the split's encode


# ---------------------------------------------------------------- index


def index(ctx: RunContext, prepared: PreparedData, trained: TrainedModel) -> None:
    """Every ticket of the input encoded once with the fine-tuned model, and the keyword index: index/ in the
    run (job/retrieval/index.py). Under torchrun each rank encodes every world-th ticket into its own part;
    rank 0 writes the lexical index and the record once every part is there."""
    from job.retrieval import index as layout

    cfg, log, timer = ctx.cfg, ctx.log(INDEX.name), begin_step(ctx, INDEX) if ctx.rank == 0 else None
    set_threads(cfg.runtime.threads)
    rows = [layout.IndexRow(t.id, t.project, t.created, t.text) for _, t in sorted(prepared.tickets.items())]
    world = world_size()
    mine = layout.shard(rows, ctx.rank, world)
    model = finetuned_model(ctx, trained)
    dim = int(model.get_embedding_dimension())
    metadata = {
        "finetune.run_id": ctx.run.run_id,
        "finetune.dim": str(dim),
        "finetune.model_sha256": model_sha(ctx),
    }
    folder, name = ctx.work_dir / layout.INDEX, layout.part_name(ctx.rank)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    written = layout.write_part(
        folder / name,
        mine,
        lambda texts: encode(model, texts, cfg.model.encode_batch_size, log, "encode for the index"),
        dim,
        metadata,
    )
    seconds = time.monotonic() - started
    with phase("write"):
        part = ctx.run.store.upload_file(folder / name, f"{layout.INDEX}/{name}")
    ctx.run.write_json(
        f"{layout.INDEX}/{name}.json", {**asdict(part), "rows": written, "seconds": round(seconds, 3)}
    )
    barrier(world)
    if timer is None:
        return
    parts = [ctx.run.read_json(f"{layout.INDEX}/{layout.part_name(r)}.json") for r in range(world)]
    for r in range(world):
        ctx.run.store.delete(f"{layout.INDEX}/{layout.part_name(r)}.json")
    with phase("lexical"):
        layout.save_lexical(
            folder / "lexical", [r.id for r in rows], [r.text for r in rows], lexical_settings(cfg)
        )
    files = [FileRecord(p["path"], p["size"], p["sha256"]) for p in parts]
    with phase("write"):
        files += upload_dir(ctx.run.store, folder / "lexical", layout.LEXICAL)
    described = layout.describe(
        ctx.run.run_id,
        len(rows),
        dim,
        [layout.part_name(r) for r in range(world)],
        metadata["finetune.model_sha256"],
    )
    files.append(ctx.run.write_json(layout.INDEX_JSON, described))
    _drop_unlisted(ctx, f"{layout.INDEX}/", files)
    info = {
        "rows": len(rows),
        "dim": dim,
        "parts": world,
        "size_bytes": sum(f.size for f in files),
        "texts_per_s": round(written / max(seconds, 1e-9), 2),
        "encode_seconds": round(seconds, 3),
        "device": pick_device(),
    }
    ctx.run.record_step(timer.record(files, info))
    log.info("index written", **info)


def _drop_unlisted(ctx: RunContext, prefix: str, files: list[FileRecord]) -> None:
    """Delete what an earlier attempt left under `prefix` that this one did not write (a part of more ranks)."""
    kept = {f.path for f in files}
    for key, _ in ctx.run.store.list_keys(prefix):
        if key not in kept:
            ctx.run.store.delete(key)


def model_sha(ctx: RunContext) -> str:
    """The fine-tuned weights' sha256, as train recorded them: what the index's vectors were made with."""
    record = ctx.run.step_record(TRAIN.name) or {}
    weights = [f["sha256"] for f in record.get("files", []) if f["path"].endswith(".safetensors")]
    return ",".join(sorted(weights))


def indexed_embeddings(ctx: RunContext, ids: list[str]) -> Embeddings | None:
    """The index's vectors of `ids` (checked against the index step's record and made by this run's model);
    None before the index step recorded itself."""
    from job.retrieval.index import INDEX as FOLDER
    from job.retrieval.index import read_parts

    if ctx.run.step_record(INDEX.name) is None:
        return None
    folder = ctx.run.download_taken_over(INDEX, FOLDER, ctx.work_dir / FOLDER)
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


# ---------------------------------------------------------------- classify


def classify(ctx: RunContext, prepared: PreparedData, trained: TrainedModel) -> dict[str, Any]:
    """Relation classifier (classify.method) under classifier/; skipped (and said why) when it cannot train."""
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
        metrics, confusion, info = _fit_classifier(ctx, prepared, trained, links, log, files)
        plot = plots.confusion(confusion, links.classes, ctx.work_dir / "plots" / "confusion_matrix.png")
        files.append(ctx.run.store.upload_file(plot, "plots/confusion_matrix.png"))
        log.info(
            "classifier",
            method=cfg.classify.method,
            macro_f1=_round(metrics["macro_f1"]),
            majority_macro_f1=_round(metrics["majority_macro_f1"]),
            n_train=metrics["n_train"],
            n_test=metrics["n_test"],
            notes=metrics["notes"],
        )
    files.append(ctx.run.write_json("classifier/metrics.json", metrics))
    ctx.run.record_step(timer.record(files, {"metrics": metrics, **info}))
    ctx.run.store.delete_prefix(
        f"{CROSS_ENCODER_CHECKPOINTS}/"
    )  # only needed to resume; the classifier is published
    finish_if_complete(ctx)
    return metrics


def _fit_classifier(
    ctx: RunContext,
    prepared: PreparedData,
    trained: TrainedModel,
    links: RelationLinks,
    log: Any,
    files: list[FileRecord],
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """The classify.method of job/relations/methods.py trained on `links`, saved and published as
    classifier/; its metrics.json (the same scores for every method, plus the method's own), confusion and
    step info."""
    inputs = FitInputs(
        links=links,
        tickets=prepared.tickets,
        cfg=ctx.cfg,
        embeddings=lambda ids: _reuse_or_encode(ctx, prepared, trained, ids, log),
        finetuned_model=trained.local_dir,
        base_model=lambda: base_model_path(ctx),
        work_dir=ctx.work_dir,
        store=ctx.run.store,
        checkpoint_stamp=lambda: checkpoint_stamp(ctx, CLASSIFY),
        log=log,
        stop=ctx.stop,
        checkpointing=ctx.checkpointing,
    )
    with phase("fit"):  # the embeddings it asks for are timed as encode
        fitted = classifier_class(ctx.cfg.classify.method).fit(inputs)
    folder = ctx.work_dir / "classifier"
    fitted.classifier.save(folder)
    files += upload_dir(ctx.run.store, folder, "classifier")
    metrics = {**relation_metrics(links, fitted.test_predictions, ctx.cfg.classify.method), **fitted.metrics}
    return metrics, relation_confusion(links, fitted.test_predictions), fitted.info


def _reuse_or_encode(
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
    return _encode_ids(finetuned_model(ctx, trained), prepared, ids, ctx, log, "encode finetuned")


# ---------------------------------------------------------------- finish


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
