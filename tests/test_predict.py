"""`predict`: a consumer's relation probabilities from a saved classifier, for both methods, and the
`finetune-job predict` command on a run (with its errors: exit 2, no traceback, no typed value echoed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from job.config import ClassifyConfig, StorageConfig
from job.embedding.model import encode, load_model, resolve_model_path
from job.evaluation.evaluate import Embeddings
from job.log import get_logger
from job.relations.classify import (
    dumps_model,
    logistic_probabilities,
    pair_features,
    predict,
    train_classifier,
)
from job.relations.predict import load_predictor
from tests.conftest import OFFLINE_MODEL, TINY, SampleSplit, merged, run_cli, synthetic_inputs, write_config


def test_logistic_probabilities_agree_with_its_predictions_in_both_branches() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 3))
    for n_rows in (1, 3):  # scikit-learn stores one row of weights for two classes
        model = {
            "classes": ["a", "b"] if n_rows == 1 else ["a", "b", "c"],
            "coef": rng.normal(size=(n_rows, 3)).tolist(),
            "intercept": rng.normal(size=n_rows).tolist(),
            "scaler_mean": [0.0] * 3,
            "scaler_scale": [1.0] * 3,
        }
        probabilities = logistic_probabilities(model, features)
        assert np.allclose(probabilities.sum(axis=1), 1.0)
        assert [model["classes"][i] for i in probabilities.argmax(axis=1)] == predict(model, features)


@pytest.mark.slow
def test_logistic_predict_reencodes_the_texts_into_the_step_s_features(
    sample_split: SampleSplit, tmp_path: Path
) -> None:
    """The logistic classifier, reloaded with the embedding model, gives the probabilities of the features
    the classify step computed (same encoder, same metadata)."""
    model_dir = resolve_model_path(OFFLINE_MODEL, StorageConfig(), tmp_path / "cache")
    encoder = load_model(model_dir, 32, "cpu")
    tickets, links = sample_split.tickets, sample_split.links
    ids = sorted({t for k in links["train"] + links["test"] for t in (k.source, k.target)})
    emb = Embeddings(
        ids, encode(encoder, [tickets[t].text for t in ids], 32, get_logger(step="test"), "encode")
    )
    result = train_classifier(
        links["train"], links["test"], tickets, emb, ClassifyConfig(smote=False), seed=0
    )
    result.model["embedding_max_seq_length"] = 32
    folder = tmp_path / "classifier"
    folder.mkdir()
    (folder / "model.json").write_bytes(dumps_model(result.model))
    predictor = load_predictor(folder, Path(model_dir), device="cpu")
    assert predictor.method == "logistic" and predictor.classes == result.classes
    test = [k for k in links["test"] if k.relation in result.classes]
    got = predictor.probabilities([(tickets[k.source], tickets[k.target]) for k in test])
    expected = logistic_probabilities(result.model, pair_features(test, tickets, emb))
    assert np.allclose(got, expected, atol=1e-4)


def test_predict_command_refuses_a_run_without_a_classifier_and_a_bad_date(tmp_path: Path) -> None:
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    config = write_config(tmp_path / "config.json", {"output": {"uri": str(tmp_path / "runs")}})
    common = (
        "predict",
        "--config",
        str(config),
        "--run-id",
        "r1",
        "--source-text",
        "a",
        "--target-text",
        "b",
    )
    missing = run_cli(*common)
    assert missing.returncode == 2 and "cannot predict with run r1: it is not finished" in missing.stderr
    bad_date = run_cli(*common, "--source-created", "s3cr3t-not-a-date")
    assert bad_date.returncode == 2 and "source ticket: created: expected an ISO 8601 time" in bad_date.stderr
    assert "s3cr3t" not in bad_date.stderr + bad_date.stdout
    assert "Traceback" not in missing.stderr + bad_date.stderr


@pytest.mark.slow
def test_run_with_the_cross_encoder_then_predict_from_the_cli(tmp_path: Path, synthetic_dir: Path) -> None:
    config = write_config(
        tmp_path / "config.json",
        merged(
            TINY,
            {
                "data": synthetic_inputs(synthetic_dir),
                "output": {"uri": str(tmp_path / "runs")},
                "classify": {
                    "method": "cross_encoder",
                    "min_class_count": 3,
                    "cross_encoder": {
                        "epochs": 1,
                        "max_length": 32,
                        "start_from": "finetuned",
                        "max_train_rows": 32,
                    },
                },
            },
        ),
    )
    run = run_cli("run", "--config", str(config), "--run-id", "xenc")
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "runs" / "xenc"
    metrics = json.loads((folder / "classifier" / "metrics.json").read_text())
    assert metrics["method"] == "cross_encoder"
    assert {"macro_f1", "per_class", "majority_class", "majority_macro_f1", "classes", "n_test"} <= set(
        metrics
    )
    assert set(metrics["per_class"]) == set(metrics["classes"])
    assert (folder / "plots" / "confusion_matrix.png").stat().st_size > 5000
    assert (folder / "classifier" / "cross_encoder" / "model.safetensors").exists()
    assert not (folder / "classifier-checkpoints").exists(), "checkpoints go once the classifier is published"
    assert json.loads((folder / "metrics.json").read_text())["classifier"]["method"] == "cross_encoder"

    answer = run_cli(
        "predict",
        "--config",
        str(config),
        "--run-id",
        "xenc",
        "--source-text",
        "disk full on node",
        "--target-text",
        "namenode out of disk space",
        "--source-created",
        "2020-01-02T00:00:00Z",
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    printed = json.loads(answer.stdout.strip().splitlines()[-1])
    assert printed["method"] == "cross_encoder" and list(printed["probabilities"]) == metrics["classes"]
    assert sum(printed["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    def refused(*texts: str) -> str:
        done = run_cli(
            "predict",
            "--config",
            str(config),
            "--run-id",
            "xenc",
            "--source-text",
            texts[0],
            "--target-text",
            texts[1],
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        return done.stderr

    assert "source ticket: text: expected a title or a description" in refused(" ", "")
    assert "source ticket: text: expected UTF-8 text" in refused("bad \udcff byte", "fine")
    descriptor_path = folder / "classifier" / "model.json"
    original = descriptor_path.read_bytes()
    descriptor = json.loads(original)
    descriptor["weights"] = "../../../../"
    descriptor_path.write_text(json.dumps(descriptor))  # edited, the manifest not: refused as changed
    assert "classifier/model.json is not the file manifest.json lists" in refused("a", "b")
    _relist(
        folder, "classifier/model.json"
    )  # edited and the manifest rewritten to match: the path is refused
    assert "weights: expected a folder inside" in refused("a", "b")
    descriptor_path.write_bytes(original)
    _relist(folder, "classifier/model.json")
    (folder / "manifest.json").unlink()
    assert "it is not finished" in refused("a", "b")


def _relist(run: Path, path: str) -> None:
    """The manifest rewritten to vouch for `path` as it is now (an attacker who edits both)."""
    import hashlib

    manifest = json.loads((run / "manifest.json").read_text())
    data = (run / path).read_bytes()
    for entry in manifest["files"]:
        if entry["path"] == path:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ({"classes": ["duplicate"]}, "classes: expected a list of at least two"),
        ({"classes": "abcdef"}, "classes: expected a list"),
        ({"coef": [["x"]]}, "coef: expected numbers"),
        ({"coef": [[float("nan")]]}, "coef: expected finite numbers"),
        ({"coef": [[1.0, 2.0]]}, "do not fit"),
        ({"intercept": [[[[0.0]]]]}, "do not fit"),
    ],
)
def test_an_edited_logistic_model_is_refused_naming_the_field(edit: dict, says: str) -> None:
    from job.errors import RunStateError
    from job.relations.classify import check_logistic_model

    model = {
        "classes": ["duplicate", "relates", "causes"],
        "coef": [[0.1, 0.2]] * 3,
        "intercept": [0.0] * 3,
        "scaler_mean": [0.0, 0.0],
        "scaler_scale": [1.0, 1.0],
    }
    check_logistic_model(model, "model.json")  # as classify writes it
    with pytest.raises(RunStateError, match=says):
        check_logistic_model({**model, **edit}, "model.json")
