"""What a step's fingerprint is made of: every setting that shapes a result, and nothing that does not, so a
rerun after such a change is refused (or redone with --force) and a move of the output is not."""

from __future__ import annotations

import pytest

from job.config import JobConfig
from job.runs.fingerprint import config_checksum

DEFAULT = JobConfig()

# One result-shaping setting per section (a change in any of them must change the checksum).
SHAPES_RESULTS = {
    "data.text_template": "{title}",
    "data.on_error": "skip",
    "model.base": "sentence-transformers/all-MiniLM-L12-v2",
    "model.max_seq_length": 128,
    "pairs.negatives_per_positive": 1,
    "train.epochs": 7,
    "train.learning_rate": 0.001,
    "train.loss": "cosine",
    "evaluate.positive_threshold": 0.7,
    "retrieval.lexical.k1": 0.9,
    "retrieval.fusion.method": "rrf",
    "classify.method": "cross_encoder",
    "export.onnx": False,
}
# Settings that only say where things go or how the job runs.
SHAPES_NOTHING = {
    "output.uri": "s3://elsewhere/runs",
    "storage.endpoint_url": "http://other:9000",
    "runtime.threads": 3,
    "promote.margin": 0.5,
    "data.tickets": "s3://moved/tickets.jsonl",
}


def _with(key: str, value: object) -> JobConfig:
    section, _, rest = key.partition(".")
    dumped = DEFAULT.model_dump()
    node = dumped[section]
    *parents, leaf = rest.split(".")
    for name in parents:
        node = node[name]
    node[leaf] = value
    return JobConfig.model_validate(dumped)


@pytest.mark.parametrize("key", sorted(SHAPES_RESULTS))
def test_a_result_shaping_setting_changes_the_fingerprint(key: str) -> None:
    assert config_checksum(_with(key, SHAPES_RESULTS[key])) != config_checksum(DEFAULT), key


@pytest.mark.parametrize("key", sorted(SHAPES_NOTHING))
def test_where_and_how_the_job_runs_leaves_the_fingerprint_alone(key: str) -> None:
    assert config_checksum(_with(key, SHAPES_NOTHING[key])) == config_checksum(DEFAULT), key


def test_every_result_section_has_a_setting_above() -> None:
    from job.runs.fingerprint import RESULT_SECTIONS

    assert {k.split(".")[0] for k in SHAPES_RESULTS} == set(RESULT_SECTIONS)
