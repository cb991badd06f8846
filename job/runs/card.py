"""The job's model card: `model/README.md` in the Hugging Face model-card format.

It replaces sentence-transformers' generated card, which quotes training rows (customer ticket
text) in a widget block and a samples table. This one says what the job knows instead: the base
model and its exact revision, the training data as counts, projects, dates and checksums, the
loss and settings, base vs fine-tuned metrics on the held-out test split, the threshold chosen
on val, the relation classifier's scores, the exported CPU variants, and the run it came from.
Ticket text appears only when `model.card_samples` is true.

Built from the steps' records (what they measured), so it is written once the run is complete.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from job.config import JobConfig
from job.embedding.losses import LOSSES
from job.log import redact_url_userinfo
from job.runs.records import RunResults

MODEL_CARD = "model/README.md"
CARD_SAMPLES = 5  # test pairs quoted when model.card_samples is true

# (metrics.json key, label) in the order the card shows them; the first ones go into model-index.
CARD_METRICS = (
    ("average_precision", "Average precision (pairs)"),
    ("roc_auc", "ROC-AUC (pairs)"),
    ("best_f1", "F1 at the val threshold (pairs)"),
    ("recall_at_1", "Recall@1 (pool)"),
    ("recall_at_10", "Recall@10 (pool)"),
    ("mrr", "MRR (pool)"),
    ("map", "MAP (pool)"),
    ("time_aware_recall_at_10", "Recall@10 (time-aware)"),
    ("time_aware_mrr", "MRR (time-aware)"),
    ("time_aware_map", "MAP (time-aware)"),
    ("hybrid_recall_at_10", "Recall@10 (hybrid: fused with BM25)"),
    ("hybrid_mrr", "MRR (hybrid)"),
    ("hybrid_time_aware_recall_at_10", "Recall@10 (hybrid, time-aware)"),
    ("hybrid_average_precision", "Average precision (hybrid pair score)"),
)
INDEX_METRICS = (
    "average_precision",
    "roc_auc",
    "recall_at_10",
    "mrr",
    "map",
    "time_aware_recall_at_10",
    "hybrid_recall_at_10",
    "hybrid_mrr",
)


@dataclass(frozen=True)
class CardSample:
    """One test pair quoted in the card (only with model.card_samples)."""

    text_a: str
    text_b: str
    score: float
    kind: str


def model_card(
    run_id: str, cfg: JobConfig, results: RunResults, samples: list[CardSample] | None = None
) -> str:
    """The card's text: YAML front matter (huggingface_hub's ModelCardData) and a Markdown body, from the
    finished steps' results."""
    sections = [
        f"# Ticket similarity model, run {run_id}",
        _summary(results),
        _base_model(cfg, results),
        _training_data(results),
        _training(cfg, results),
        _evaluation(cfg, results),
        _hybrid(results),
        _classifier(results.classifier),
        _exports(results.exports),
        _use_and_limits(cfg, results),
        _provenance(run_id, results),
    ]
    if samples:
        sections.append(_samples(samples))
    front = _front_matter(run_id, cfg, results).to_yaml()
    return f"---\n{front}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def _front_matter(run_id: str, cfg: JobConfig, results: RunResults) -> ModelCardData:
    finetuned = results.model_metrics("finetuned")
    scores = [
        EvalResult(
            task_type="sentence-similarity",
            task_name="Duplicate and related ticket detection",
            dataset_type="tickets",
            dataset_name="held-out test split",
            dataset_split="test",
            metric_type=key,
            metric_name=dict(CARD_METRICS)[key],
            metric_value=round(finetuned[key], 4),
        )
        for key in INDEX_METRICS
        if isinstance(finetuned.get(key), float)
    ]
    return ModelCardData(
        library_name="sentence-transformers",
        base_model=_base_name(cfg.model.base),
        pipeline_tag="sentence-similarity",
        tags=[
            "sentence-transformers",
            "sentence-similarity",
            "feature-extraction",
            "duplicate-detection",
            "finetune-job",
        ],
        model_name=f"ticket-similarity-{run_id}",
        eval_results=scores or None,
    )


def _base_name(base: str) -> str:
    """A hub id as it is; any other source (package, directory, s3) without credentials in it."""
    return redact_url_userinfo(base)


def _summary(results: RunResults) -> str:
    base, tuned = results.model_metrics("base"), results.model_metrics("finetuned")
    gains = [
        f"{label} {_num(base.get(key))} -> {_num(tuned.get(key))}"
        for key, label in (("average_precision", "average precision"), ("recall_at_10", "recall@10"))
        if isinstance(tuned.get(key), float)
    ]
    said = f" On the held-out test split: {'; '.join(gains)} (base -> fine-tuned)." if gains else ""
    return (
        "A sentence-embedding model fine-tuned by finetune-job on a tracker's linked tickets, to find "
        f"duplicate and related tickets (cosine similarity of the embeddings).{said}"
    )


def _base_model(cfg: JobConfig, results: RunResults) -> str:
    revision = results.base_model.get("base_revision") or "unknown"
    prefix = f"; every text is prefixed with `{cfg.model.text_prefix}`" if cfg.model.text_prefix else ""
    length = results.base_model.get("max_seq_length", cfg.model.max_seq_length)
    return (
        f"## Base model\n\n- Model: {_code(_base_name(cfg.model.base))}\n"
        f"- Revision: {_code(str(revision))}\n"
        f"- Inputs longer than {length} tokens are cut{prefix}"
    )


def _training_data(results: RunResults) -> str:
    inputs, split = results.inputs, results.split
    if not inputs:
        return ""
    lines = [
        "## Training data",
        "",
        f"{inputs.get('tickets')} tickets and {inputs.get('links')} links (no ticket text is quoted here).",
        "",
    ]
    projects = inputs.get("tickets_per_project") or {}
    if projects:
        lines.append(
            "- Projects: " + ", ".join(f"{_md(name)} ({count})" for name, count in sorted(projects.items()))
        )
    dates = inputs.get("created_range")
    if dates:
        lines.append(f"- Created: {dates['first'][:10]} to {dates['last'][:10]}")
    relations = inputs.get("links_per_relation") or {}
    if relations:
        lines.append(
            "- Links per relation: " + ", ".join(f"{_md(r)} {n}" for r, n in sorted(relations.items()))
        )
    if split:
        lines.append(
            "- Split by connected components of the link graph (no ticket on two sides): "
            + ", ".join(
                f"{name} {split[name]['tickets']} tickets / {split[name]['linked_pairs']} links"
                for name in ("train", "val", "test")
                if name in split
            )
        )
    files = inputs.get("files") or []
    if files:
        lines += ["", "| input file | rows | kept | sha256 |", "|---|---:|---:|---|"]
        lines += [
            f"| {_md(PurePosixPath(f['uri']).name)} | {f['rows']} | {f['kept']} | {_code(f['sha256'])} |"
            for f in files
        ]
    return "\n".join(lines)


def _training(cfg: JobConfig, results: RunResults) -> str:
    tc, train = cfg.train, results.training
    loss = LOSSES[tc.loss].card(tc.pair_loss)
    lines = [
        "## Training",
        "",
        f"- Loss: `{tc.loss}`: {loss}",
        f"- Epochs {tc.epochs}, batch size {tc.batch_size}, learning rate {tc.learning_rate:g}, "
        f"warm-up ratio {tc.warmup_ratio:g}, seed {tc.seed}, row cap {tc.max_pairs or 'none'}",
        f"- Negatives per positive {cfg.pairs.negatives_per_positive} (mix {cfg.pairs.negative_mix}), "
        f"hard-negative mining {'on' if cfg.pairs.mine_hard_negatives else 'off'}",
    ]
    if cfg.pairs.related_relations:
        lines.append(
            f"- A second ranking objective on {', '.join(cfg.pairs.related_relations)} links "
            f"(weight {tc.related_weight:g}, share {cfg.pairs.related_share:g} of the row cap)"
        )
    if cfg.pairs.title_body:
        lines.append(
            "- Each train ticket's title against its description as a third ranking objective "
            f"(weight {tc.title_body_weight:g}, share {cfg.pairs.title_body_share:g} "
            "of the row cap)"
        )
    if train:
        lines.append(
            f"- {train.get('global_step')} steps in {_num(train.get('train_seconds'), 0)} s "
            f"({train.get('precision')}, {_num(train.get('pairs_per_second'), 1)} rows/s)"
        )
    return "\n".join(lines)


def _evaluation(cfg: JobConfig, results: RunResults) -> str:
    base, tuned = results.model_metrics("base"), results.model_metrics("finetuned")
    if not base or not tuned:
        return ""
    lines = [
        "## Evaluation on the held-out test split",
        "",
        f"Pairs: {tuned.get('n_pairs')} test pairs ({tuned.get('n_positive')} positive). "
        f"Retrieval: each test ticket with a {_code(str(tuned.get('retrieval_relations')))} link "
        f"is a query ranked against the other test tickets ({tuned.get('n_queries')} queries); "
        "time-aware ranks only tickets filed before the query.",
        "",
        "| metric | base | fine-tuned | change |",
        "|---|---:|---:|---:|",
    ]
    for key, label in CARD_METRICS:
        if tuned.get(key) is None and base.get(key) is None:
            continue
        both = isinstance(tuned.get(key), float) and isinstance(base.get(key), float)
        change = (tuned[key] - base[key]) if both else None
        lines.append(f"| {label} | {_num(base.get(key))} | {_num(tuned.get(key))} | {_signed(change)} |")
    threshold = tuned.get("threshold")
    if threshold is not None:
        lines += [
            "",
            f"**Threshold {threshold:.2f}.** Two tickets whose embeddings have cosine "
            f"similarity >= {threshold:.2f} are predicted related. It is the threshold with the best "
            "F1 on the val split (pairs whose target score is >= "
            f"{cfg.evaluate.positive_threshold:g} are positives: the relations "
            f"scored {_positive_relations(cfg)}), and the F1 above is that threshold applied to test.",
        ]
    return "\n".join(lines)


def _hybrid(results: RunResults) -> str:
    fusion, lexical = results.fusion, results.model_metrics("lexical")
    if not fusion:
        return ""
    method = (
        "per query, both scores min-max normalised over the candidates, then a weighted sum"
        if fusion.get("method") == "minmax"
        else f"weighted reciprocal rank fusion (k = {fusion.get('rrf_k')})"
    )
    chosen = "chosen on val duplicate retrieval" if fusion.get("chosen_on") == "val" else "set in the config"
    return "\n".join(
        [
            "## Hybrid retrieval (with a keyword index)",
            "",
            f"Search ranks tickets by this model's cosine fused with BM25: {method}, BM25 weight "
            f"{_num(fusion.get('weight'), 2)} ({chosen}). `retrieval.json`, next to `model/` in the run, "
            "holds everything needed to rank the same way (the BM25 settings, the tokenizer and its stop "
            "words, the fusion). "
            f"BM25 alone on the same test split: recall@10 {_num(lexical.get('recall_at_10'))}, MRR "
            f"{_num(lexical.get('mrr'))}; the hybrid rows in the table above are this model with it. "
            "Pair score a threshold applies to, by val average precision: "
            f"{fusion.get('pair_score', 'dense')}.",
        ]
    )


def _positive_relations(cfg: JobConfig) -> str:
    chosen = [r for r, s in sorted(cfg.pairs.relation_scores.items()) if s >= cfg.evaluate.positive_threshold]
    return ", ".join(chosen) or "none"


def _classifier(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    if "skipped" in metrics:
        return f"## Relation classifier\n\nNot trained: {metrics['skipped']}"
    lines = [
        "## Relation classifier",
        "",
        "Logistic regression over pair features of the fine-tuned embeddings, "
        f"{metrics.get('n_train')} train links, "
        f"{metrics.get('n_test')} test links: macro F1 {_num(metrics.get('macro_f1'))} "
        f"(always predicting the majority class {_code(str(metrics.get('majority_class')))}: "
        f"{_num(metrics.get('majority_macro_f1'))}).",
        "",
        "| relation | precision | recall | F1 | test links |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in sorted((metrics.get("per_class") or {}).items()):
        lines.append(
            f"| {_md(name)} | {_num(row['precision'])} | {_num(row['recall'])} | "
            f"{_num(row['f1'])} | {row['support']} |"
        )
    return "\n".join(lines)


def _exports(exports: dict[str, Any] | None) -> str:
    if not exports:
        return ""
    lines = [
        "## CPU variants (ONNX)",
        "",
        "| variant | file | written | recall@10 | average precision | texts/s | x PyTorch |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, row in exports.get("variants", {}).items():
        verdict = "yes" if row.get("written") else f"no: {row.get('rejected')}"  # the job's own words
        lines.append(
            f"| {name} | `{row.get('file') or '-'}` | {verdict} | {_num(row.get('recall_at_10'))} | "
            f"{_num(row.get('average_precision'))} | {_num(row.get('texts_per_s'), 1)} | "
            f"{_num(row.get('speedup'), 2)} |"
        )
    written = [row["file"] for row in exports.get("variants", {}).values() if row.get("written")]
    if written:
        lines += [
            "",
            "The files are in the layout of sentence-transformers' ONNX backend (it needs `optimum-onnx`):",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            'model = SentenceTransformer("path/to/model", backend="onnx", '
            f'model_kwargs={{"file_name": "{written[-1]}"}})',
            "```",
        ]
    return "\n".join(lines)


def _use_and_limits(cfg: JobConfig, results: RunResults) -> str:
    projects = sorted(results.inputs.get("tickets_per_project") or {})
    seen = f" ({', '.join(_md(p) for p in projects)})" if projects else ""
    return "\n".join(
        [
            "## Intended use",
            "",
            "Embed ticket text (title and description, as the training data was built with "
            f"{_code(repr(cfg.data.text_template))}) to suggest likely duplicates and related tickets to a "
            "person who triages them, and as features for the relation classifier. A suggestion, "
            "not a decision: nothing should be closed as a duplicate without a person looking.",
            "",
            "## Known limits",
            "",
            f"- Trained and tested on the projects in its data{seen}; other trackers, products or languages "
            "were not measured and will score lower.",
            "- The threshold is calibrated on this data's val split; recalibrate it for another population.",
            "- Retrieval was scored within the test split only; a production index is larger, so recall@k "
            "there is lower for the same k.",
            f"- Text beyond {cfg.model.max_seq_length} tokens (long stack traces) is not seen.",
            "- Links made by people are incomplete: an unlinked pair scored as a negative may be a real "
            "duplicate.",
        ]
    )


def _provenance(run_id: str, results: RunResults) -> str:
    env = results.environment
    libraries = env.get("libraries") or {}
    return "\n".join(
        [
            "## Provenance",
            "",
            f"- Run id: `{run_id}` (its training_metadata.json and manifest.json sit next to this model)",
            f"- finetune-job git revision: `{env.get('git_revision') or 'unknown'}`",
            f"- sentence-transformers {libraries.get('sentence-transformers')}, transformers "
            f"{libraries.get('transformers')}, torch {libraries.get('torch')}; device {env.get('device')}",
        ]
    )


def _samples(samples: list[CardSample]) -> str:
    lines = [
        "## Samples (test pairs; model.card_samples is on)",
        "",
        "| ticket A | ticket B | target | kind |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {_cell(s.text_a)} | {_cell(s.text_b)} | {s.score:g} | {s.kind} |" for s in samples]
    return "\n".join(lines)


# Markdown's punctuation that could make a link, an image, emphasis, code or a table cell (values never
# start a line: newlines are collapsed, so '-', '.' and '+' cannot start a list).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#!|~])")


def _md(text: Any) -> str:
    """A value from the data (a project key, a file name, a relation) as plain text in Markdown: one line,
    HTML escaped, Markdown punctuation backslash-escaped, so no value can add a heading, a link or a tag."""
    return _MARKDOWN.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=False))


def _code(text: str) -> str:
    """A value in a code span: one line, no backtick to close it early."""
    return "`" + " ".join(text.replace("`", "'").split()) + "`"


def _cell(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"
