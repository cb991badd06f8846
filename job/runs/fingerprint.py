"""What a step was made from: the settings that shape results, and the input files' sha256.

Each step records its fingerprint; a rerun reuses a recorded step only when the fingerprint it
would record now is the same, so a changed config or a changed input file is never mixed with
results made from the old one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from job.config import JobConfig
from job.data.jira import export_checksum
from job.storage import read_input_files, read_uri

# Sections whose settings change what a run produces. Where the run lives and how it is stored,
# logged, threaded or promoted do not, so pods with other thread counts or credentials share a run.
RESULT_SECTIONS = ("data", "model", "pairs", "train", "evaluate", "retrieval", "classify", "export")
# Where the inputs are read from is left out: their content counts (input_checksums), not their address.
INPUT_FIELDS = ("tickets", "links", "pairs", "relationship_pairs")


def config_checksum(cfg: JobConfig) -> str:
    """sha256 of the result-shaping settings, independent of key order and of where inputs live."""
    settings = cfg.model_dump(mode="json", include=set(RESULT_SECTIONS))
    for name in INPUT_FIELDS:
        settings["data"].pop(name, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def input_checksums(cfg: JobConfig) -> dict[str, str]:
    """sha256 of each configured input file, by its setting's name (never by its address); a Jira export,
    which may be a folder of pages, by its files' names and sha256 (job.data.jira.export_checksum)."""
    if cfg.data.format == "jira" and cfg.data.tickets:
        return {"data.tickets": export_checksum(read_input_files(cfg.data.tickets, cfg.storage, ".json"))}
    return {
        f"data.{name}": hashlib.sha256(read_uri(uri, cfg.storage)).hexdigest()
        for name in INPUT_FIELDS
        if (uri := getattr(cfg.data, name))
    }


@dataclass(frozen=True)
class Fingerprint:
    config_sha256: str
    inputs_sha256: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Fingerprint | None:
        """A recorded fingerprint read back; None when there is none (a record of an older job)."""
        if not isinstance(data, dict) or not isinstance(data.get("config_sha256"), str):
            return None
        inputs = data.get("inputs_sha256")
        return cls(data["config_sha256"], dict(inputs) if isinstance(inputs, dict) else {})

    def changes_since(self, recorded: Fingerprint | None) -> list[str]:
        """What differs from a recorded fingerprint, e.g. ['the config changed', 'input data.tickets
        changed']."""
        if not recorded:
            return ["it has no fingerprint (made by an older version of the job)"]
        changes = [] if recorded.config_sha256 == self.config_sha256 else ["the config changed"]
        before = recorded.inputs_sha256
        changes += [
            f"input {name} changed"
            for name in sorted(set(before) | set(self.inputs_sha256))
            if before.get(name) != self.inputs_sha256.get(name)
        ]
        return changes
