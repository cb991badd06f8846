"""`finetune-job`: parse, load config, call one pipeline function, map errors to exit codes."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from job.config import LoadedConfig, describe_sources, load_config
from job.environment import use_cache_dir
from job.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError, Interrupted, JobError, exit_code_for
from job.log import configure_logging, get_logger, redact
from job.runs.steps import STEP_NAMES, STEPS, TRAIN


def _overrides(
    output: str | None,
    base_model: str | None,
    epochs: int | None,
    max_pairs: int | None,
    seed: int | None,
    settings: tuple[str, ...],
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "output.uri": output,
        "model.base": base_model,
        "train.epochs": epochs,
        "train.max_pairs": max_pairs,
        "train.seed": seed,
    }
    for number, item in enumerate(settings, start=1):
        key, sep, value = item.partition("=")
        if not sep:  # the text is not quoted: it may be a secret typed with ':' for '='
            raise ConfigError(f"--set number {number} has no '=': expected KEY=VALUE")
        try:
            values[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            values[key.strip()] = value
        except RecursionError:
            raise ConfigError(f"--set {key.strip()}: the value is JSON nested too deeply") from None
    return values


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command takes: the config file and the most used overrides."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            envvar="FINETUNE_CONFIG",
            help="YAML or JSON config file (also $FINETUNE_CONFIG).",
        ),
        click.option("--output", help="Override output.uri."),
        click.option("--base-model", help="Override model.base."),
        click.option("--epochs", type=int, help="Override train.epochs."),
        click.option("--max-pairs", type=int, help="Override train.max_pairs."),
        click.option("--seed", type=int, help="Override train.seed."),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any setting, e.g. --set train.loss=cosent (repeatable).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(kwargs: dict[str, Any], flags: dict[str, Any] | None = None) -> LoadedConfig:
    """The config from the common options in `kwargs`, and a command's own setting flags
    (`flags`: key -> value)."""
    overrides = _overrides(
        kwargs.pop("output"),
        kwargs.pop("base_model"),
        kwargs.pop("epochs"),
        kwargs.pop("max_pairs"),
        kwargs.pop("seed"),
        kwargs.pop("settings"),
    )
    overrides.update({key: value for key, value in (flags or {}).items() if value is not None})
    loaded = load_config(kwargs.pop("config_file"), cli_overrides=overrides)
    use_cache_dir(loaded.config.runtime)  # before anything imports the libraries that read it
    secrets = loaded.secrets() + _env_secrets()
    click.get_current_context().meta["secrets"] = secrets
    configure_logging(loaded.config.runtime.log_format, secrets)
    return loaded


def _known_secrets() -> list[str]:
    """Secrets from the loaded config (when it got that far) and from the environment."""
    context = click.get_current_context(silent=True)
    return list(context.meta.get("secrets", [])) + _env_secrets() if context else _env_secrets()


def _env_secrets() -> list[str]:
    """Credentials boto3 reads from the environment: never to be printed either."""
    return [
        os.environ[k]
        for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
        if os.environ.get(k)
    ]


@contextmanager
def _stop_on_sigterm(stop: threading.Event, checkpointing: threading.Event, step: str) -> Iterator[None]:
    """SIGTERM (pod eviction, `kubectl delete`): during training, checkpoint at the end of the
    current step and stop; elsewhere stop at once (outputs are published atomically, manifest
    last, so nothing half-written is left looking finished). Either way the exit code is 75."""

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        if not checkpointing.is_set():
            raise Interrupted(f"{step} stopped by SIGTERM; rerun with the same run id to finish")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Exception as exc:
        if stop.is_set() and not isinstance(exc, Interrupted):
            # Library code (transformers' loaders try one class after another) catches the handler's
            # exception and raises its own; what it says ("not a model") is a consequence of the stop.
            raise Interrupted(f"{step} stopped by SIGTERM; rerun with the same run id to finish") from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _execute(step: str, action: Callable[[], Any]) -> None:
    """Run one command; expected errors become a one-line log and an exit code, never a traceback.

    SIGTERM stops any command with exit 75 (an orchestrator retries that); the step commands install
    their own handler, which checkpoints a training step first."""

    def interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(f"{step} stopped by SIGTERM; run it again to finish")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        action()
    except JobError as exc:
        # Bound here, not before action(): loading the config inside it sets the log format and the
        # secret redaction, and a logger bound earlier keeps structlog's defaults.
        log = get_logger(step=step)
        log.error("failed", error=str(exc), error_type=type(exc).__name__, exit_code=exc.exit_code)
        message = redact(f"finetune-job {step}: error: {exc}", _known_secrets())
        click.echo(message, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"finetune-job {step}: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: keep the traceback for the report
        log = get_logger(step=step)
        log.error("unexpected error", error=str(exc), error_type=type(exc).__name__)
        click.echo(redact(traceback.format_exc(), _known_secrets()), err=True, nl=False)
        sys.exit(exit_code_for(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Fine-tune a sentence-embedding model on tickets and train a relation classifier."""
    # Library progress bars (weights loading, shard writing) would interleave with the JSON log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _step_command(name: str, help_text: str, resume: bool = False) -> None:
    @main.command(name=name, help=help_text)
    @config_options
    @click.option("--run-id", required=name != "run", help="The run to work on (steps share it).")
    @click.option(
        "--force",
        is_flag=True,
        help="Overwrite a finished run, or redo steps recorded with another config or other inputs.",
    )
    @click.option(
        "--resume",
        is_flag=True,
        hidden=not resume,
        help="Resume training from the run's newest checkpoint (fails if there is none).",
    )
    @click.option(
        "--profile",
        is_flag=True,
        help="Print where each step's time went (load, encode, fit, export, score, read, write) at the end.",
    )
    def command(run_id: str | None, force: bool, resume: bool, profile: bool, **kwargs: Any) -> None:
        def action() -> None:
            loaded = _load(kwargs)  # first: it points HF_HOME at runtime.cache_dir before the libraries load
            from job import pipeline
            from job.runs.context import exclusive, open_run, profile_table

            ctx = open_run(loaded, run_id, force=force)
            get_logger(run_id=ctx.run.run_id, step=name).info("start", output=ctx.run.uri)
            with _stop_on_sigterm(ctx.stop, ctx.checkpointing, name), exclusive(ctx, name):
                pipeline.run_step(ctx, name, resume)
            get_logger(run_id=ctx.run.run_id, step=name).info(
                "done", output=ctx.run.uri, finished=ctx.run.is_finished()
            )
            if name == "run":
                _print_outputs(ctx)
            if profile:
                click.echo("\n" + profile_table(ctx, name), err=True)

        _execute(name, action)


def _print_outputs(ctx: Any) -> None:
    """A human summary on stderr; stdout stays pure JSON lines for log collectors."""
    metrics = ctx.run.read_json("metrics.json")
    click.echo(f"\nrun {ctx.run.run_id} finished: {ctx.run.uri}", err=True)
    click.echo(f"  model:    {ctx.run.uri}/model/", err=True)
    click.echo(f"  metrics:  {ctx.run.uri}/metrics.json", err=True)
    click.echo(f"  plots:    {ctx.run.uri}/plots/", err=True)
    for key in ("average_precision", "roc_auc", "recall_at_10", "mrr", "hybrid_recall_at_10", "hybrid_mrr"):
        base, tuned = metrics["base"].get(key), metrics["finetuned"].get(key)
        if isinstance(base, float) and isinstance(tuned, float):
            click.echo(f"  {key:<19} base {base:.4f} -> fine-tuned {tuned:.4f}", err=True)
    lexical = metrics.get("lexical", {})
    if isinstance(lexical.get("recall_at_10"), float):
        click.echo(
            f"  {'BM25 alone':<19} recall_at_10 {lexical['recall_at_10']:.4f}, mrr {lexical['mrr']:.4f}; "
            f"hybrid_* fuse it with the model (weight {metrics['finetuned'].get('hybrid_weight')}, chosen on "
            "val)",
            err=True,
        )
    classifier = metrics.get("classifier", {})
    if classifier.get("macro_f1") is not None:
        click.echo(
            f"  relation classifier macro-F1 {classifier['macro_f1']:.4f} "
            f"(majority baseline {classifier['majority_macro_f1']:.4f})",
            err=True,
        )


_step_command(
    "run",
    f"Run every step ({', '.join(STEP_NAMES)}) in one process; a rerun continues where the last one stopped.",
    resume=True,
)
for _step in STEPS:
    _step_command(_step.name, _step.summary, resume=_step is TRAIN)


@main.command(name="promote")
@config_options
@click.option("--run-id", required=True, help="The finished run to promote.")
def promote_run(run_id: str, **kwargs: Any) -> None:
    """Move the promoted-model pointer to RUN_ID if it is not worse than the promoted run
    (exit 3 if it is)."""

    def action() -> None:
        loaded = _load(kwargs)  # before the import, as in every command (HF_HOME, MPLCONFIGDIR)
        from job.fleet.promote import promote

        promote(loaded, run_id)

    _execute("promote", action)


@main.command(name="predict")
@config_options
@click.option("--run-id", required=True, help="The run whose classifier to use (under output.uri).")
@click.option(
    "--source-text", required=True, help="The first ticket's text (title, a newline, the description)."
)
@click.option("--target-text", required=True, help="The second ticket's text.")
@click.option("--source-created", help="The first ticket's creation time (ISO 8601).")
@click.option("--target-created", help="The second ticket's creation time (ISO 8601).")
@click.option("--source-project", help="The first ticket's project key.")
@click.option("--target-project", help="The second ticket's project key.")
def predict_relation(
    run_id: str,
    source_text: str,
    target_text: str,
    source_created: str | None,
    target_created: str | None,
    source_project: str | None,
    target_project: str | None,
    **kwargs: Any,
) -> None:
    """Print the relation probabilities of (source, target) as JSON, from RUN_ID's classifier.

    Directed relations (blocks, causes, depends) read "source <relation> target"."""

    def action() -> None:
        loaded = _load(kwargs)
        from job.data.records import Ticket
        from job.relations.predict import predict_run_pair

        source = Ticket("source", source_text, project=source_project, created=source_created)
        target = Ticket("target", target_text, project=target_project, created=target_created)
        click.echo(json.dumps(predict_run_pair(loaded.config, run_id, source, target), allow_nan=False))

    _execute("predict", action)


@main.command(name="history")
@config_options
def show_history(**kwargs: Any) -> None:
    """Every run under output.uri as a table; writes history.json and history.png beside them."""

    def action() -> None:
        loaded = _load(kwargs)
        from job.fleet.history import HISTORY_JSON, HISTORY_PLOT, refresh_history

        click.echo(refresh_history(loaded).table())
        click.echo(f"\nwrote {HISTORY_JSON} and {HISTORY_PLOT} at the top of output.uri", err=True)

    _execute("history", action)


@main.command(name="config")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show_config(as_json: bool, **kwargs: Any) -> None:
    """Print the effective config (secrets redacted) and where each value came from."""

    def action() -> None:
        loaded = _load(kwargs)
        rows = describe_sources(loaded)
        if as_json:
            click.echo(json.dumps({k: {"value": v, "source": s} for k, v, s in rows}, indent=2, default=str))
            return
        width = max(len(k) for k, _, _ in rows)
        for key, value, source in rows:
            click.echo(f"{key:<{width}}  {json.dumps(value, default=str):<40}  {source}")

    _execute("config", action)


@main.command(name="validate-data")
@config_options
@click.option(
    "--problems-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write every problem when there are too many to print "
    "(default: a new file under runtime.work_dir or the temp directory).",
)
def validate_data(problems_file: Path | None, **kwargs: Any) -> None:
    """Check the inputs: counts, the problems found, and whether the split is usable. No training."""

    def action() -> None:
        loaded = _load(kwargs)
        from job.data.validate import validate_data

        validate_data(loaded.config, click.echo, problems_file)

    _execute("validate-data", action)


@main.command(name="suggest")
@config_options
@click.option("--run-id", help="The run whose index to ask (default: the promoted run).")
@click.option("--text", help="The new ticket's text (title, a newline, the description).")
@click.option("--title", help="The new ticket's title (with --description instead of --text).")
@click.option("--description", help="The new ticket's description.")
@click.option("--before", help="Only tickets filed before this ISO 8601 date or time.")
@click.option("--project", help="Only tickets of this project.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many suggestions.")
def suggest_tickets(
    run_id: str | None,
    text: str | None,
    title: str | None,
    description: str | None,
    before: str | None,
    project: str | None,
    k: int,
    **kwargs: Any,
) -> None:
    """Print the K existing tickets most like a new one (dense, lexical and hybrid scores) as JSON."""

    def action() -> None:
        loaded = _load(kwargs)
        from job.errors import InputError
        from job.suggest import open_index, suggestions_json

        if text is not None and (title is not None or description is not None):
            raise InputError("give --text, or --title and --description, not both")
        found = open_index(loaded.config, run_id)
        query = text if text is not None else found.text(title or "", description or "")
        click.echo(
            json.dumps(suggestions_json(found, found.suggest(query, k, before, project), k), allow_nan=False)
        )

    _execute("suggest", action)


@main.command(name="export-jira")
@config_options
@click.option("--url", help="Jira's base URL, e.g. https://issues.example.com (overrides jira_api.url).")
@click.option("--jql", help="The search, e.g. 'project = OPS ORDER BY key' (overrides jira_api.jql).")
def export_jira_pages(url: str | None, jql: str | None, **kwargs: Any) -> None:
    """Page through Jira's REST search API and write the pages to data.tickets (data.format: jira).

    The token comes from the environment variable jira_api.token_env names ($JIRA_TOKEN), never a flag."""

    def action() -> None:
        from job.data.jira_export import export_jira

        done = export_jira(
            _load(kwargs, {"jira_api.url": url, "jira_api.jql": jql}).config, get_logger(step="export-jira")
        )
        removed = f"; removed {done.removed} page(s) of an earlier export" if done.removed else ""
        click.echo(
            f"wrote {done.pages} page(s), {done.issues} of the search's {done.total} issues, to "
            f"{done.uri}{removed}",
            err=True,
        )

    _execute("export-jira", action)


__all__ = ["main", "EXIT_OK", "EXIT_BAD_INPUT"]

if __name__ == "__main__":  # pragma: no cover
    main()
