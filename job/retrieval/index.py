"""The ticket index a run hands downstream: every input ticket's vector from the run's model, and the keyword
index, so a consumer never re-embeds its tracker after a retrain and never pairs a new model with old vectors.

Layout under `<run>/index/`:
- `part-00000.parquet` (one part per torchrun rank): `id`, `project`, `created` (strings, nullable) and
  `embedding` (fixed-size list of float32, unit length), written in row groups of `CHUNK` tickets so memory
  stays bounded; the schema metadata names the run, the dimension and the model's weights sha256. pandas,
  DuckDB, Spark and the engines' bulk loaders read it as it is.
- `lexical/`: the BM25 index as bm25s saves it, its tokenizer's vocabulary and stop words, and `ids.json`
  (the ticket id of each of its rows).
- `index.json`: rows, dimension, parts, and the model it was made with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "index"
INDEX_JSON = f"{INDEX}/index.json"
LEXICAL = f"{INDEX}/lexical"
CHUNK = (
    4096  # tickets encoded and written at a time: memory is CHUNK x dimension, whatever the tracker's size
)
FORMAT = 1


def part_name(rank: int) -> str:
    return f"part-{rank:05d}.parquet"


@dataclass(frozen=True)
class IndexRow:
    id: str
    project: str | None
    created: str | None
    text: str


def schema(dim: int, metadata: dict[str, str]) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("project", pa.string()),
            ("created", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ],
        metadata=metadata,
    )


def write_part(
    path: Path,
    rows: list[IndexRow],
    encode: Callable[[list[str]], np.ndarray],
    dim: int,
    metadata: dict[str, str],
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Encode `rows` in chunks and write them as one Parquet file; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_schema = schema(dim, metadata)
    written = 0
    with pq.ParquetWriter(str(path), table_schema, compression="zstd") as writer:
        for chunk in _chunks(rows, CHUNK):
            vectors = np.ascontiguousarray(encode([r.text for r in chunk]), dtype=np.float32)
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
            writer.write_table(
                pa.Table.from_arrays(
                    [
                        pa.array([r.id for r in chunk]),
                        pa.array([r.project for r in chunk], pa.string()),
                        pa.array([r.created for r in chunk], pa.string()),
                        embedding,
                    ],
                    schema=table_schema,
                )
            )
            written += len(chunk)
            progress(len(chunk))
    return written


def _chunks(rows: list[IndexRow], size: int) -> Iterator[list[IndexRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def shard(rows: list[IndexRow], rank: int, world: int) -> list[IndexRow]:
    """This rank's rows: every `world`-th, so each part is a sample of the whole (no scheduler needed)."""
    return rows[rank::world]


@dataclass
class TicketVectors:
    """An index's vectors in memory, with what each row is."""

    ids: list[str]
    projects: list[str | None]
    created: list[str | None]
    vectors: np.ndarray
    metadata: dict[str, str]


def read_parts(paths: list[Path], wanted: set[str] | None = None) -> TicketVectors:
    """The rows of the index parts (only those whose id is in `wanted`, if given), in part order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids: list[str] = []
    projects: list[str | None] = []
    created: list[str | None] = []
    blocks: list[np.ndarray] = []
    metadata: dict[str, str] = {}
    for path in paths:
        parquet = pq.ParquetFile(str(path))
        metadata = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            if wanted is not None:
                table = table.filter(pc.is_in(table["id"], value_set=_value_set(wanted)))
            if not table.num_rows:
                continue
            ids += table["id"].to_pylist()
            projects += table["project"].to_pylist()
            created += table["created"].to_pylist()
            flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            blocks.append(flat.reshape(table.num_rows, -1).astype(np.float32, copy=False))
    dim = int(metadata.get("finetune.dim", "0") or 0)
    vectors = np.vstack(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
    return TicketVectors(ids, projects, created, vectors, metadata)


def _value_set(wanted: set[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(wanted), pa.string())


def describe(run_id: str, rows: int, dim: int, parts: list[str], model_sha256: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "run_id": run_id,
        "rows": rows,
        "dim": dim,
        "parts": parts,
        "model_sha256": model_sha256,
        "lexical": "lexical/",
        "columns": {
            "id": "string",
            "project": "string",
            "created": "string (ISO 8601)",
            "embedding": f"fixed_size_list<float32>[{dim}], unit length",
        },
    }


def save_lexical(folder: Path, ids: list[str], texts: list[str], settings: Any) -> None:
    """The BM25 index as bm25s saves it, and the id of each of its rows."""
    from job.retrieval.lexical import LexicalIndex

    folder.mkdir(parents=True, exist_ok=True)
    LexicalIndex(texts, settings).save(folder)
    (folder / "ids.json").write_text(json.dumps(ids))
