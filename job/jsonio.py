"""How the job writes and reads its own JSON and JSON Lines files (run records, prepared data)."""

from __future__ import annotations

import json
from typing import Any


def to_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def to_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def from_jsonl(data: bytes) -> list[dict[str, Any]]:
    # split("\n"), not splitlines(): U+2028 inside a ticket's text is not a record boundary.
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]
