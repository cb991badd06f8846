"""docs/configuration-reference.md, generated from the typed config (job/config.py): every setting, its type,
default, environment variable and description, so the reference cannot drift from the code (a test
compares the file with this output).

    python -m job.config_reference > docs/configuration-reference.md
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from job.config import ENV_PREFIX, JobConfig, Section

HEADER = """# Configuration reference

Generated from `job/config.py` by `python -m job.config_reference > docs/configuration-reference.md`
(`tests/test_config.py` fails when this file and the code disagree). How settings are layered, the
inputs and the environment names operators use: [configuration.md](configuration.md).
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " / ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return "secret string"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, SecretStr):
        return "(secret)"
    text = json.dumps(value, default=lambda v: v.model_dump() if isinstance(v, BaseModel) else str(v))
    return text if len(text) <= 60 else text[:57] + "..."


def _cell(text: str) -> str:
    """One table cell: a wrapped docstring or description on one line."""
    return " ".join(text.replace("|", "\\|").split())


def _section_type(annotation: Any) -> type[Section] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def _rows(model: type[Section], path: list[str]) -> list[str]:
    rows: list[str] = []
    for name, info in model.model_fields.items():
        key = [*path, name]
        nested = _section_type(info.annotation)
        if nested is not None:
            rows += _rows(nested, key)
            continue
        env = ENV_PREFIX + "__".join(k.upper() for k in key)
        rows.append(
            f"| `{'.'.join(key)}` | {_cell(_type_name(info.annotation))} | `{_cell(_default(info))}` | "
            f"`{env}` | {_cell(info.description or '')} |"
        )
    return rows


def reference() -> str:
    lines = [HEADER]
    for name, info in JobConfig.model_fields.items():
        section = _section_type(info.annotation)
        assert section is not None, f"top-level setting {name} is not a section"
        lines += [
            f"## `{name}`",
            "",
            _cell((section.__doc__ or "").strip()) if section.__doc__ else "",
            "",
            "| setting | type | default | environment | what it does |",
            "|---|---|---|---|---|",
            *_rows(section, [name]),
            "",
        ]
    return "\n".join(line for n, line in enumerate(lines) if line or lines[n - 1]) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(reference(), end="")
