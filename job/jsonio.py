"""How the job writes and reads its own JSON and JSON Lines files (run records, prepared data)."""

from __future__ import annotations

import json
import math
from typing import Any


def to_json(value: Any) -> bytes:
    """Strict JSON (RFC 8259): a NaN or an infinity, which strict readers refuse, is written as null."""
    return (
        json.dumps(finite(value), indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n"
    ).encode("utf-8")


def to_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(finite(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode(
        "utf-8"
    )


def finite(value: Any) -> Any:
    """`value` with every float that is not finite replaced by None (numpy floats included)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def from_jsonl(data: bytes) -> list[dict[str, Any]]:
    # split("\n"), not splitlines(): U+2028 inside a ticket's text is not a record boundary.
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]
