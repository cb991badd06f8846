"""What the Argo controller makes of argo/*.yaml before it runs a pod.

A spec with `workflowTemplateRef` runs the referenced WorkflowTemplate's spec, with the referring
spec's own fields (entrypoint, arguments by name) on top; `templateDefaults` are merged into
every template, the template's own values winning. Both the schema checks (test_manifests.py)
and the workflow contract (test_workflow_contract.py) read the YAML through this.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ARGO = Path(__file__).resolve().parents[1] / "argo"


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ARGO / name).read_text())
    assert isinstance(doc, dict), name
    return doc


def template_named(name: str) -> dict[str, Any]:
    """The WorkflowTemplate called `name` among argo/*.yaml (as `kubectl apply` would have created it)."""
    found = [
        doc
        for path in sorted(ARGO.glob("*.yaml"))
        if (doc := load(path.name))["kind"] == "WorkflowTemplate" and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, (
        f"workflowTemplateRef {name!r}: {len(found)} WorkflowTemplates of that name in argo/"
    )
    return found[0]


def join_template(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec referring to a WorkflowTemplate, as the controller joins them."""
    own = {k: v for k, v in spec.items() if k != "workflowTemplateRef"}
    template = template_named(spec["workflowTemplateRef"]["name"])["spec"]
    assert "templates" not in own, (
        "a Workflow that refers to the template must not define templates of its own"
    )
    joined = {**template, **{k: v for k, v in own.items() if k != "arguments"}}
    params = {p["name"]: p for p in template.get("arguments", {}).get("parameters", [])}
    for p in own.get("arguments", {}).get("parameters", []):
        assert p["name"] in params, f"passes {p['name']}, which the template does not declare"
        params[p["name"]] = {**params[p["name"]], **p}
    joined["arguments"] = {"parameters": list(params.values())}
    return joined


def merge_defaults(defaults: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """Enough of a strategic merge for templateDefaults: maps merge, the template's own values win."""
    out = copy.deepcopy(defaults)
    for key, value in own.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_defaults(out[key], value) if both_maps else value
    return out


def executed_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec the controller runs: template joined, defaults merged. A DAG template keeps its type,
    so container defaults do not turn it into a pod."""
    if "workflowTemplateRef" in spec:
        spec = join_template(spec)
    defaults = spec.get("templateDefaults", {})
    templates = []
    for template in spec["templates"]:
        applicable = {k: v for k, v in defaults.items() if "dag" not in template or k != "container"}
        templates.append(merge_defaults(applicable, template))
    return {**spec, "templates": templates}


def pod_tasks(spec: dict[str, Any], dag: str | None = None) -> Iterator[dict[str, Any]]:
    """Every task of the entrypoint DAG that runs a pod, nested DAGs walked in order."""
    templates = {t["name"]: t for t in spec["templates"]}
    for task in templates[dag or spec["entrypoint"]]["dag"]["tasks"]:
        if "dag" in templates[task["template"]]:
            yield from pod_tasks(spec, task["template"])
        else:
            yield task


# The train step's launcher: torchrun's own options, then `--no-python finetune-job <command> ...`.
LAUNCHER = ["python", "-m", "job.launch"]


def job_arguments(container: dict[str, Any]) -> list[str] | None:
    """The `finetune-job` arguments a container runs, directly or one process per GPU under
    job.launch; None for a container that does not run the job."""
    command, args = container.get("command"), list(container.get("args", []))
    if command == ["finetune-job"]:
        return args
    if command == LAUNCHER and "--no-python" in args:
        start = args.index("--no-python") + 1
        if args[start : start + 1] == ["finetune-job"]:
            return args[start + 1 :]
    return None
