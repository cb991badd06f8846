"""Config: precedence, provenance, unknown keys, validation and redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from job.config import JobConfig, describe_sources, load_config
from job.errors import ConfigError
from job.storage import uri_problem
from tests.conftest import run_cli


def test_defaults_are_valid_and_production_ready() -> None:
    cfg = load_config(environ={}).config
    assert cfg.model.base == "sentence-transformers/all-mpnet-base-v2"
    assert cfg.train.loss == "mnrl"  # chosen on the unseen-project benchmark's val splits, several seeds
    assert cfg.pairs.relation_scores["duplicate"] == 1.0


def test_precedence_file_env_cli_and_sources(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "train:\n  epochs: 2\n  batch_size: 8\n  learning_rate: 0.001\nmodel:\n  max_seq_length: 64\n"
    )
    env = {"FINETUNE_TRAIN__EPOCHS": "5", "FINETUNE_TRAIN__BATCH_SIZE": "16"}
    loaded = load_config(str(config), environ=env, cli_overrides={"train.epochs": 7, "output.uri": None})
    cfg = loaded.config
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate, cfg.model.max_seq_length) == (
        7,
        16,
        0.001,
        64,
    )
    sources = {key: source for key, _, source in describe_sources(loaded)}
    assert sources["train.epochs"] == "cli"
    assert sources["train.batch_size"] == "env FINETUNE_TRAIN__BATCH_SIZE"
    assert sources["train.learning_rate"] == f"file {config}"
    assert sources["train.seed"] == "default"


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"max_pairs": 99}}))
    assert load_config(environ={"FINETUNE_CONFIG": str(config)}).config.train.max_pairs == 99


def test_operator_keys_exist_with_their_exact_names() -> None:
    env = {
        "FINETUNE_DATA__TICKETS": "t.jsonl",
        "FINETUNE_DATA__LINKS": "l.jsonl",
        "FINETUNE_OUTPUT__URI": "s3://b/out",
        "FINETUNE_MODEL__BASE": "x",
        "FINETUNE_MODEL__MAX_SEQ_LENGTH": "128",
        "FINETUNE_TRAIN__EPOCHS": "1",
        "FINETUNE_TRAIN__BATCH_SIZE": "4",
        "FINETUNE_TRAIN__MAX_PAIRS": "10",
        "FINETUNE_STORAGE__ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    cfg = load_config(environ=env).config
    assert cfg.data.tickets == "t.jsonl" and cfg.output.uri == "s3://b/out" and cfg.train.max_pairs == 10
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9000" and cfg.model.max_seq_length == 128


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  epochz: 3\n", "unknown config key 'train.epochz'"),
        ("trian:\n  epochs: 3\n", "unknown config key 'trian'.*sections: data"),
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  batch_size: -4\n", "train.batch_size"),
        ("train:\n  epochs: three\n", "train.epochs"),
        ("pairs:\n  split: {train: 0.5, val: 0.1, test: 0.1}\n", "must sum to 1"),
        ("a: &a [1, 2]\nb: *a\n", "aliases are not allowed"),
        ("train: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_config_file_names_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(str(config), environ={})


def test_unknown_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="FINETUNE_TRAIN__EPOCHSS"):
        load_config(environ={"FINETUNE_TRAIN__EPOCHSS": "3"})


def test_wrong_type_from_environment_names_key_and_variable() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs \(from env FINETUNE_TRAIN__EPOCHS\)"):
        load_config(environ={"FINETUNE_TRAIN__EPOCHS": "many"})


def test_output_inside_input_folder_is_refused(tmp_path: Path) -> None:
    env = {
        "FINETUNE_DATA__TICKETS": str(tmp_path / "in" / "t.jsonl"),
        "FINETUNE_OUTPUT__URI": str(tmp_path / "in" / "out"),
    }
    with pytest.raises(ConfigError, match="inside the folder of data.tickets"):
        load_config(environ=env)


def test_unknown_schemes_are_refused_when_the_config_loads_and_no_secret_shows() -> None:
    assert "secret-token" not in str(uri_problem("nope://secret-token@host/l.jsonl")), "quotes none"
    with pytest.raises(ConfigError) as raised:
        load_config(
            environ={
                "FINETUNE_DATA__LINKS": "nope://secret-token@host/l.jsonl",
                "FINETUNE_DATA__TICKETS": "t.jsonl",
            }
        )
    message = str(raised.value)
    assert "data.links" in message and "unsupported URI scheme: use s3://, file:// or a path" in message
    assert "secret-token" not in message
    with pytest.raises(ConfigError, match=r"output.uri .*an s3:// URI needs a bucket"):
        load_config(environ={"FINETUNE_OUTPUT__URI": "s3:///runs"})


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.yaml"), environ={})


def test_secrets_are_redacted_in_dump_and_cli(tmp_path: Path) -> None:
    sentinel = "SENTINEL-secret-4242"
    config = tmp_path / "c.yaml"
    config.write_text(f"storage:\n  access_key_id: AKIAEXAMPLE\n  secret_access_key: {sentinel}\n")
    cfg = load_config(str(config), environ={}).config
    assert cfg.redacted()["storage"]["secret_access_key"] == "***"
    assert isinstance(cfg, JobConfig)
    result = run_cli("config", "--config", str(config), env={"AWS_SECRET_ACCESS_KEY": sentinel + "-env"})
    assert result.returncode == 0, result.stderr
    assert sentinel not in result.stdout + result.stderr
    assert "storage.secret_access_key" in result.stdout and "***" in result.stdout
    assert f"file {config}" in result.stdout


def test_cli_reports_bad_config_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  epochs: 0\n")
    result = run_cli("config", "--config", str(config))
    assert result.returncode == 2
    assert "train.epochs" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_the_configuration_reference_is_generated_from_the_code() -> None:
    """docs/configuration-reference.md is exactly what job.config_reference writes, so it cannot drift
    from the typed config; every setting has a description."""
    from job.config_reference import reference

    docs = Path(__file__).resolve().parents[1] / "docs" / "configuration-reference.md"
    assert docs.read_text() == reference(), (
        "run: python -m job.config_reference > docs/configuration-reference.md"
    )
    assert "|  |\n" not in reference(), "a setting without a description"
