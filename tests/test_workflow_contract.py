"""The Argo workflows, run for real on this machine: if the YAML and the CLI drift apart, this fails.

A small stand-in for the Argo controller and the kubelet reads argo/*.yaml (the Workflow joined
with the WorkflowTemplate it refers to, templateDefaults merged: tests/argo_spec.py), resolves parameters
the way Argo does (`{{workflow.name}}` inside a parameter's default, template inputs, task
arguments), orders the DAG (and a DAG nested in it) by `depends`, and runs each step's own container
`command` + `args` with the container's own environment (secretKeyRef read from a fake Secret pointing at the
loopback S3 server, resourceFieldRef from the CPU limit) in a fresh process, parallel tasks in
parallel. Volume mounts become temp directories: the ConfigMap mount holds a tiny config made from
the real k8s/base/config.yaml, each pod gets its own emptyDirs. Steps share nothing but the
bucket, as in the cluster. Then every artifact of the run is checked, and for the scheduled
CronWorkflow -> WorkflowTemplate, that promote moved the pointer.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.argo_spec import executed_spec, job_arguments, join_template
from tests.conftest import OFFLINE_MODEL, TINY, merged
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

REPO = Path(__file__).resolve().parents[1]
ARGO = REPO / "argo"
CONFIG_MAP = REPO / "k8s" / "base" / "config.yaml"
BIN = Path(sys.executable).parent

# TINY from conftest, smaller still: no hard-negative mining (one fewer model load) and few pairs,
# but two batches per training set, so that each of the two processes of `gpus=2` gets one.
CONTRACT_TINY = merged(
    TINY,
    {
        "model": {"base": OFFLINE_MODEL, "max_seq_length": 32},
        "train": {"max_pairs": 32},
        "pairs": {"mine_hard_negatives": False, "augment_per_positive": 0},
    },
)

_VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


# ---------------------------------------------------------------- what Argo would do with the YAML


def substitute(value: Any, variables: dict[str, str]) -> Any:
    """Replace `{{name}}` everywhere in strings; an unknown name fails like Argo's 'failed to resolve'."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise AssertionError(f"failed to resolve {{{{{name}}}}} (known: {sorted(variables)})")
            return variables[name]

        return _VARIABLE.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


@dataclass
class Submitted:
    """A workflow as the controller sees it after submission: a name, a spec, resolved globals."""

    name: str
    spec: dict[str, Any]
    variables: dict[str, str]


def submit(spec: dict[str, Any], name: str, parameters: dict[str, str]) -> Submitted:
    """`argo submit -p k=v`: overrides replace defaults; defaults may use {{workflow.name}}."""
    spec = executed_spec(spec)
    declared = {p["name"]: p.get("value") for p in spec.get("arguments", {}).get("parameters", [])}
    unknown = set(parameters) - set(declared)
    assert not unknown, f"argo would reject -p {sorted(unknown)}: not a parameter of the workflow"
    variables = {
        "workflow.name": name,
        "workflow.namespace": "finetune",
        "workflow.serviceAccountName": spec.get("serviceAccountName", "default"),
    }
    for key, default in declared.items():
        value = parameters.get(key, default)
        assert value is not None, f"parameter {key} has no value"
        variables[f"workflow.parameters.{key}"] = substitute(str(value), variables)
    return Submitted(name, spec, variables)


def submit_workflow(path: Path, parameters: dict[str, str]) -> Submitted:
    doc = load_yaml(path)
    assert doc["kind"] == "Workflow"
    name = doc["metadata"]["generateName"] + secrets.token_hex(3)[:5]
    return submit(doc["spec"], name, parameters)


def submit_cron(cron_path: Path, template_path: Path, parameters: dict[str, str]) -> Submitted:
    """What the CronWorkflow controller creates at a tick: the template's spec, the cron's arguments on
    top."""
    cron, template = load_yaml(cron_path), load_yaml(template_path)
    assert cron["kind"] == "CronWorkflow" and template["kind"] == "WorkflowTemplate"
    assert cron["spec"]["workflowSpec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"], (
        "the CronWorkflow must run this WorkflowTemplate"
    )
    spec = join_template(cron["spec"]["workflowSpec"])
    return submit(spec, f"{cron['metadata']['name']}-{int(time.time())}", parameters)


def evaluate_depends(expression: str, phases: dict[str, str]) -> bool:
    """Argo's enhanced `depends`: `a && b`, `a || b`, `!a`, `a.Succeeded`; bare `a` = succeeded or skipped."""

    def task(match: re.Match[str]) -> str:
        name, result = match.group(1), match.group(2)
        phase = phases[name]
        ok = phase == result if result else phase in ("Succeeded", "Skipped", "Daemoned")
        return f" {ok} "

    python = re.sub(
        r"([A-Za-z0-9][A-Za-z0-9-]*)(?:\.(Succeeded|Failed|Errored|Skipped|Omitted|Daemoned))?",
        task,
        expression,
    )
    python = python.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
    return bool(eval(python, {"__builtins__": {}}))  # noqa: S307 - only True/False/and/or/not/() remain


def depends_on(task: dict[str, Any]) -> set[str]:
    if "dependencies" in task:
        return set(task["dependencies"])
    return set(re.findall(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:\.[A-Za-z]+)?", task.get("depends", "")))


def should_retry(strategy: dict[str, Any] | None, exit_code: int, attempt: int) -> bool:
    """Evaluate a template's retryStrategy the way the controller does, for the expressions used here."""
    if not strategy or attempt > int(strategy.get("limit", 0)):
        return False
    expression = strategy.get("expression")
    if not expression:
        return strategy.get("retryPolicy", "OnFailure") in ("Always", "OnFailure")
    python = expression.replace("lastRetry.exitCode", repr(str(exit_code))).replace(
        "lastRetry.status", "'Failed'"
    )
    python = python.replace("&&", " and ").replace("||", " or ")
    return bool(eval(python, {"__builtins__": {}, "asInt": int}))  # noqa: S307 - a known, tiny expression


# ---------------------------------------------------------------- what the kubelet would do with a pod


def cpu_count(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@dataclass
class Node:
    """The machine standing in for the cluster: the Secret, the ConfigMap content, the executable."""

    secrets: dict[str, dict[str, str]]
    config: dict[str, Any]
    root: Path
    ran: list[tuple[str, list[str], int]] = field(default_factory=list)
    mounted: dict[str, dict[str, Path]] = field(
        default_factory=dict
    )  # pod -> its mounts, read after it exits

    def mounts(
        self, pod: str, volume_list: list[dict[str, Any]], container: dict[str, Any]
    ) -> dict[str, Path]:
        """mountPath -> a directory here: the ConfigMap's files, or a fresh emptyDir for this pod."""
        volumes = {v["name"]: v for v in volume_list}
        paths: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            host = Path(tempfile.mkdtemp(prefix=f"{pod}-{mount['name']}-", dir=self.root))
            assert "configMap" in volume or "emptyDir" in volume, f"volume {mount['name']}: unsupported kind"
            paths[mount["mountPath"]] = host
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                assert volume["configMap"]["name"] == "finetune-config", volume
                host_config = to_host(self.config, paths)
                (paths[mount["mountPath"]] / "config.yaml").write_text(yaml.safe_dump(host_config))
        return paths

    def environment(self, pod: str, container: dict[str, Any], paths: dict[str, Path]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        if "/tmp" in paths:
            env["TMPDIR"] = str(paths["/tmp"])
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = to_host(item.get("value", ""), paths)
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = self.secrets.get(ref["name"], {}).get(ref["key"])
                if value is None:
                    assert ref.get("optional"), (
                        f"{pod}: secret {ref['name']}/{ref['key']} missing (CreateContainerConfigError)"
                    )
                    continue
                env[item["name"]] = value
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                assert ref["resource"] == "limits.cpu", ref
                limit = cpu_count(container["resources"]["limits"]["cpu"]) / cpu_count(
                    ref.get("divisor", "1")
                )
                # A node this small could not schedule the pod; stand in for one big enough (the
                # cores this test process may use, not the host's: see conftest's pytest_configure).
                env[item["name"]] = str(min(math.ceil(limit), len(os.sched_getaffinity(0))))
            else:
                raise AssertionError(f"{pod}: env {item['name']} uses an unsupported source {source}")
        return env

    def start(
        self, pod: str, volumes: list[dict[str, Any]], container: dict[str, Any]
    ) -> subprocess.Popen[str]:
        """The container's own command: the image's console script, or `python -m job.launch` (torchrun,
        one process per GPU; here one CPU process each, gloo) starting it."""
        assert job_arguments(container) is not None, "containers must run the image's console script"
        paths = self.mounted[pod] = self.mounts(pod, volumes, container)
        args = [to_host(a, paths) for a in container.get("args", [])]
        env = self.environment(pod, container, paths)
        log = (self.root / f"{pod}.log").open("w")
        executable = (
            [str(BIN / "finetune-job")]
            if container["command"] == ["finetune-job"]
            else [str(BIN / container["command"][0]), *container["command"][1:]]
        )
        return subprocess.Popen(
            [*executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )


def to_host(value: Any, paths: dict[str, Path]) -> Any:
    """Translate container paths under a mount to the directory standing in for it."""
    if isinstance(value, str):
        for mount in sorted(paths, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(paths[mount]) + value[len(mount) :]
        return value
    if isinstance(value, dict):
        return {k: to_host(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [to_host(v, paths) for v in value]
    return value


# ---------------------------------------------------------------- the controller loop


@dataclass
class Outcome:
    phases: dict[str, str]
    attempts: dict[str, int]
    order: list[list[str]]  # the groups of tasks started together, in order
    commands: dict[str, list[str]]
    metrics: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> Prometheus metrics it emitted


def run_workflow(workflow: Submitted, node: Node) -> Outcome:
    """Run the entrypoint DAG: tasks whose `depends` hold start together, each retried per its
    retryStrategy."""
    outcome = Outcome(phases={}, attempts={}, order=[], commands={})
    run_dag(workflow, node, workflow.spec["entrypoint"], outcome)
    return outcome


def run_dag(workflow: Submitted, node: Node, dag: str, outcome: Outcome) -> str:
    """Run one DAG template (a task running a DAG runs it in turn); returns the DAG's phase."""
    templates = {t["name"]: t for t in workflow.spec["templates"]}
    tasks = {t["name"]: t for t in templates[dag]["dag"]["tasks"]}
    volumes = substitute(workflow.spec.get("volumes", []), workflow.variables)
    phases: dict[str, str] = {}  # `depends` names tasks of this DAG
    while len(phases) < len(tasks):
        ready = [n for n, t in tasks.items() if n not in phases and depends_on(t) <= set(phases)]
        assert ready, f"the DAG has a cycle or a dangling dependency: {set(tasks) - set(phases)}"
        group = []
        for name in ready:
            if "depends" in tasks[name] and not evaluate_depends(tasks[name]["depends"], phases):
                phases[name] = outcome.phases[name] = "Omitted"
            elif "dag" in templates[tasks[name]["template"]]:
                phases[name] = run_dag(workflow, node, tasks[name]["template"], outcome)
            else:
                group.append(name)
        if group:
            outcome.order.append(group)
            run_group(
                workflow,
                node,
                {name: pod_for(workflow, templates, tasks[name]) for name in group},
                volumes,
                outcome,
            )
            phases.update({name: outcome.phases[name] for name in group})
    return "Failed" if {"Failed", "Omitted"} & set(phases.values()) else "Succeeded"


def run_group(
    workflow: Submitted,
    node: Node,
    pods: dict[str, tuple[dict[str, Any], dict[str, Any]]],
    volumes: list[dict[str, Any]],
    outcome: Outcome,
) -> None:
    """Start the pods of one DAG level together; rerun a failed one while its retryStrategy says so."""
    waiting = list(pods)
    while waiting:
        running = {}
        for name in waiting:
            template, container = pods[name]
            outcome.commands[name] = job_arguments(container) or []
            outcome.attempts[name] = outcome.attempts.get(name, 0) + 1
            running[name] = node.start(f"{workflow.name}-{name}-{outcome.attempts[name]}", volumes, container)
        waiting = []
        for name, proc in running.items():
            code = proc.wait(timeout=600)
            node.ran.append((name, outcome.commands[name], code))
            if code == 0:
                outcome.phases[name] = "Succeeded"
            elif should_retry(pods[name][0].get("retryStrategy"), code, outcome.attempts[name]):
                waiting.append(name)
            else:
                outcome.phases[name] = "Failed"
            if (
                name in outcome.phases
            ):  # the last attempt: the controller reads its outputs, emits its metrics
                pod = f"{workflow.name}-{name}-{outcome.attempts[name]}"
                outputs = collect_outputs(pods[name][0], node.mounted[pod])
                outcome.metrics[name] = emitted_metrics(pods[name][0], outcome.phases[name], code, outputs)


def collect_outputs(template: dict[str, Any], paths: dict[str, Path]) -> dict[str, str]:
    """Output parameters as the executor saves them: the file at valueFrom.path, or its default when there
    is none."""
    found = {}
    for param in template.get("outputs", {}).get("parameters", []):
        source = param["valueFrom"]
        host = Path(to_host(source["path"], paths))
        if host.is_file():
            found[param["name"]] = host.read_text().strip()
        else:
            assert "default" in source, (
                f"output {param['name']}: {source['path']} missing and no default (pod fails)"
            )
            found[param["name"]] = source["default"]
    return found


def emitted_metrics(
    template: dict[str, Any], status: str, exit_code: int, outputs: dict[str, str]
) -> dict[str, str]:
    """Template-level Prometheus metrics the controller would emit: `when` holds, `value` resolved."""
    variables = {
        "status": status,
        "exitCode": str(exit_code),
        **{f"outputs.parameters.{k}": v for k, v in outputs.items()},
        **{k: v for k, v in template.get("_inputs", {}).items()},
    }
    emitted = {}
    for metric in template.get("metrics", {}).get("prometheus", []):
        resolved = substitute(metric, variables)
        if "when" in resolved and not holds(resolved["when"]):
            continue
        kind = next(k for k in ("gauge", "counter", "histogram") if k in resolved)
        emitted[resolved["name"]] = resolved[kind]["value"]
    return emitted


def holds(condition: str) -> bool:
    """A resolved `when` made of `a == b` terms joined by `&&` (all this workflow uses), compared as text."""
    terms = [term.split("==") for term in condition.split("&&")]
    assert all(len(term) == 2 for term in terms), f"unsupported when: {condition!r}"
    return all(left.strip() == right.strip() for left, right in terms)


def pod_for(
    workflow: Submitted, templates: dict[str, Any], task: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template a task runs, with its inputs and the workflow's globals substituted."""
    template = templates[task["template"]]
    given = {p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])}
    variables = dict(workflow.variables)
    for param in template.get("inputs", {}).get("parameters", []):
        value = given.pop(param["name"], param.get("value"))
        assert value is not None, f"task {task['name']}: input {param['name']} has no value"
        variables[f"inputs.parameters.{param['name']}"] = substitute(str(value), workflow.variables)
    assert not given, (
        f"task {task['name']} passes {sorted(given)}, which template {template['name']} does not take"
    )
    # Metrics are resolved after the pod ran, from its status and outputs (emitted_metrics).
    resolved = substitute({k: v for k, v in template.items() if k != "metrics"}, variables)
    if resolved.get("podSpecPatch"):
        assert isinstance(json.loads(resolved["podSpecPatch"]), dict), "podSpecPatch must be a JSON object"
    resolved["metrics"] = template.get("metrics", {})
    resolved["_inputs"] = {k: v for k, v in variables.items() if k.startswith("inputs.parameters.")}
    return resolved, resolved["container"]


# ---------------------------------------------------------------- the tests


@dataclass
class Cluster:
    """A bucket with the inputs uploaded, the Secret the manifests name, and a node holding the ConfigMap."""

    bucket: str
    node: Node
    parameters: dict[str, str]


def make_cluster(s3: S3Server, bucket: str, inputs: Path, root: Path) -> Cluster:
    client = s3.client()
    for name in ("tickets.jsonl", "links.jsonl"):
        client.upload_file(str(inputs / name), bucket, f"input/{name}")
    node = Node(
        secrets={
            "finetune-s3": {
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": s3.endpoint,
            }
        },
        config=merged(yaml.safe_load(CONFIG_MAP.read_text()), CONTRACT_TINY),
        root=root,
    )
    parameters = {
        "tickets": f"s3://{bucket}/input/tickets.jsonl",
        "links": f"s3://{bucket}/input/links.jsonl",
        "output": f"s3://{bucket}/runs",
    }
    return Cluster(bucket, node, parameters)


@dataclass
class Finished:
    cluster: Cluster
    workflow: Submitted
    outcome: Outcome


@pytest.fixture(scope="module")
def finished(
    s3: S3Server, synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Finished]:
    """The plain Workflow and one tick of the CronWorkflow, run at the same time in separate buckets
    (each pipeline's imports and uploads fill the other's waits on this worker's core)."""
    submitters = {
        "workflow": lambda parameters: submit_workflow(ARGO / "finetune.yaml", parameters),
        "scheduled": lambda parameters: submit_cron(
            ARGO / "finetune-cron.yaml", ARGO / "finetune-template.yaml", parameters
        ),
    }

    def run(kind: str) -> Finished:
        cluster = make_cluster(
            s3,
            s3.create_bucket(f"contract-{kind}-{secrets.token_hex(4)}"),
            synthetic_dir,
            tmp_path_factory.mktemp(kind),
        )
        # The ad-hoc run trains on "two GPUs": the train step's own launcher starts two processes.
        workflow = submitters[kind]({**cluster.parameters, **({"gpus": "2"} if kind == "workflow" else {})})
        return Finished(cluster, workflow, run_workflow(workflow, cluster.node))

    with ThreadPoolExecutor(max_workers=len(submitters)) as pool:
        futures = {kind: pool.submit(run, kind) for kind in submitters}
        return {kind: future.result() for kind, future in futures.items()}


def objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, int]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix) :]: int(o["Size"]) for page in pages for o in page.get("Contents", [])}


def read_json(s3: S3Server, bucket: str, key: str) -> Any:
    return json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def failure_logs(node: Node) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(node.root.glob("*.log")))


def check_finished_run(s3: S3Server, bucket: str, run_id: str) -> dict[str, Any]:
    """Every artifact a finished run must have, each listed in the manifest with its real size."""
    prefix = f"runs/{run_id}/"
    stored = objects(s3, bucket, prefix)
    assert "manifest.json" in stored, f"no manifest: the run did not finish ({sorted(stored)})"
    manifest = read_json(s3, bucket, prefix + "manifest.json")
    assert manifest["run_id"] == run_id
    listed = {f["path"]: f["size"] for f in manifest["files"]}
    for path, size in listed.items():
        assert stored.get(path) == size, f"{path}: manifest says {size} bytes, bucket has {stored.get(path)}"
    model_files = {p for p in listed if p.startswith("model/")}
    assert {"model/modules.json", "model/config.json"} <= model_files, sorted(model_files)
    assert any(p.endswith(".safetensors") for p in model_files), sorted(model_files)
    for plot in ("loss_curve.png", "similarity_distributions.png", "f1_vs_threshold.png"):
        assert f"plots/{plot}" in listed, plot
    assert {f"steps/{s}.json" for s in ("prepare", "train", "index", "evaluate", "classify")} <= set(listed)
    assert "index/part-00000.parquet" in listed and "index/lexical/ids.json" in listed
    metrics = read_json(s3, bucket, prefix + "metrics.json")
    assert {"base", "finetuned", "classifier"} <= set(metrics), sorted(metrics)
    assert isinstance(metrics["finetuned"]["average_precision"], float)
    assert "skipped" not in metrics["classifier"], metrics["classifier"]
    assert 0 <= metrics["classifier"]["macro_f1"] <= 1 and metrics["classifier"]["per_class"]
    return metrics


def test_finetune_workflow_runs_step_by_step_through_object_storage(
    s3: S3Server, finished: dict[str, Finished]
) -> None:
    run = finished["workflow"]
    outcome, name, bucket = run.outcome, run.workflow.name, run.cluster.bucket
    assert outcome.phases == dict.fromkeys(
        ["prepare", "train", "index", "evaluate", "classify"], "Succeeded"
    ), (outcome.phases, failure_logs(run.cluster.node))
    assert outcome.order == [["prepare"], ["train"], ["index"], ["evaluate", "classify"]]
    assert all(args[1:3] == ["--run-id", name] for args in outcome.commands.values()), outcome.commands
    check_finished_run(s3, bucket, name)
    # Two processes shared the batches: half as many optimizer steps as one process takes (tests/test_ddp.py).
    budget = read_json(s3, bucket, f"runs/{name}/steps/prepare.json")["info"]["pairs"]["budget"]
    history = read_json(s3, bucket, f"runs/{name}/train/history.json")
    batch = run.cluster.node.config["train"]["batch_size"]
    batches = math.ceil(budget["triplets_spent"] / batch) + math.ceil(budget["pairs_spent"] / batch)
    assert history["global_step"] == math.ceil(batches / 2), (history["global_step"], batches)
    assert "promoted.json" not in objects(s3, bucket, "runs/"), "the plain workflow must not promote"


def test_scheduled_workflow_trains_then_promotes(s3: S3Server, finished: dict[str, Finished]) -> None:
    run = finished["scheduled"]
    outcome, name, bucket = run.outcome, run.workflow.name, run.cluster.bucket
    assert outcome.phases == dict.fromkeys(
        ["prepare", "train", "index", "evaluate", "classify", "promote"], "Succeeded"
    ), (outcome.phases, failure_logs(run.cluster.node))
    assert outcome.order == [["prepare"], ["train"], ["index"], ["evaluate", "classify"], ["promote"]]
    metrics = check_finished_run(s3, bucket, name)
    pointer = read_json(s3, bucket, "runs/promoted.json")
    metric = run.cluster.node.config["promote"]["metric"]
    assert pointer["run_id"] == name
    assert pointer["metric"] == metric and pointer["value"] == metrics["finetuned"][metric]
    history = read_json(s3, bucket, "runs/history.json")  # promote refreshed it, from a read-only pod
    assert history["promoted_run"] == name and [r["run_id"] for r in history["runs"]] == [name]
    assert history["runs"][0]["metrics"][metric] == metrics["finetuned"][metric]
    assert "history.png" in objects(s3, bucket, "runs/")


def test_each_step_publishes_its_numbers_as_prometheus_metrics(
    s3: S3Server, finished: dict[str, Finished]
) -> None:
    """What Grafana would see after the scheduled run: the run's own numbers, each from the step that made
    them."""
    run = finished["scheduled"]
    name, bucket, emitted = run.workflow.name, run.cluster.bucket, run.outcome.metrics
    metrics = read_json(s3, bucket, f"runs/{name}/metrics.json")
    train = read_json(s3, bucket, f"runs/{name}/steps/train.json")["info"]
    prepare = read_json(s3, bucket, f"runs/{name}/steps/prepare.json")["info"]
    metric = run.cluster.node.config["promote"]["metric"]
    assert float(emitted["evaluate"]["finetune_promote_metric"]) == pytest.approx(
        metrics["finetuned"][metric], abs=1e-6
    )
    for name in ("recall_at_10", "hybrid_recall_at_10"):
        assert float(emitted["evaluate"][f"finetune_{name}"]) == pytest.approx(
            metrics["finetuned"][name], abs=1e-6
        )
    assert float(emitted["train"]["finetune_train_duration_seconds"]) == pytest.approx(
        train["train_seconds"], abs=1e-3
    )
    assert float(emitted["train"]["finetune_train_pairs_per_second"]) > 0
    assert float(emitted["prepare"]["finetune_input_tickets"]) == prepare["inputs"]["tickets"]
    # Each gauge comes from its own step only, and a promotion that went through counts no refusal.
    assert set(emitted["classify"]) == set() and set(emitted["promote"]) == set(), emitted
    assert "finetune_recall_at_10" not in emitted["prepare"]


def test_a_refused_promotion_counts_once_and_emits_no_gauge() -> None:
    spec = submit_cron(ARGO / "finetune-cron.yaml", ARGO / "finetune-template.yaml", {}).spec
    templates = {t["name"]: t for t in spec["templates"]}
    promote = {**templates["cpu-step"], "_inputs": {"inputs.parameters.command": "promote"}}
    nothing = {p["name"]: "NaN" for p in promote["outputs"]["parameters"]}
    assert emitted_metrics(promote, "Failed", 3, nothing) == {"finetune_promotion_refused": "1"}
    assert emitted_metrics(promote, "Failed", 2, nothing) == {}  # a broken run is not a refusal
    assert emitted_metrics(promote, "Succeeded", 0, nothing) == {}


def test_bad_input_fails_the_first_step_without_retrying_or_training(
    s3: S3Server, bucket: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    cluster = make_cluster(s3, bucket, synthetic_dir, tmp_path)
    workflow = submit_workflow(
        ARGO / "finetune.yaml", {**cluster.parameters, "tickets": f"s3://{bucket}/input/missing.jsonl"}
    )
    outcome = run_workflow(workflow, cluster.node)
    assert outcome.phases["prepare"] == "Failed" and outcome.attempts["prepare"] == 1  # exit 2 is not retried
    assert {outcome.phases[t] for t in ("train", "index", "evaluate", "classify")} == {"Omitted"}
    assert [code for _, _, code in cluster.node.ran] == [2]


@pytest.mark.parametrize("path", ["finetune.yaml", "finetune-template.yaml"])
def test_retry_strategy_retries_only_the_transient_exit_code(path: str) -> None:
    for template in executed_spec(load_yaml(ARGO / path)["spec"])["templates"]:
        if "container" not in template:
            continue
        strategy = template["retryStrategy"]
        retried = {code for code in (0, 1, 2, 3, 75, 130, 137) if should_retry(strategy, code, attempt=1)}
        assert retried == {75}, f"{path} {template['name']}: retries exit codes {sorted(retried)}"
        assert not should_retry(strategy, 75, attempt=int(strategy["limit"]) + 1), "retries must be bounded"
        assert strategy["backoff"]["duration"] and strategy["backoff"]["maxDuration"]


def test_run_id_defaults_to_the_workflow_name_and_is_a_valid_run_id() -> None:
    from job.runs.artifacts import check_run_id

    workflow = submit_workflow(ARGO / "finetune.yaml", {})
    assert workflow.variables["workflow.parameters.run-id"] == workflow.name
    check_run_id(workflow.name)
    cron = submit_cron(ARGO / "finetune-cron.yaml", ARGO / "finetune-template.yaml", {})
    assert cron.variables["workflow.parameters.run-id"] == cron.name
    check_run_id(cron.name)
