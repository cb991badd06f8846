"""The index step's files in the run: each rank's part of the vectors (job/retrieval/index.py's layout),
then, on rank 0 once every part is there, the keyword index and index.json."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from job.embedding.model import encode
from job.profile import phase
from job.retrieval import index as layout
from job.retrieval.spec import lexical_settings
from job.runs.context import RunContext
from job.runs.prepared import PreparedData
from job.storage import FileRecord, upload_dir


@dataclass
class EncodedPart:
    rows: int
    seconds: float


def index_rows(prepared: PreparedData) -> list[layout.IndexRow]:
    return [layout.IndexRow(t.id, t.project, t.created, t.text) for _, t in sorted(prepared.tickets.items())]


def write_own_part(
    ctx: RunContext, rows: list[layout.IndexRow], world: int, model: Any, metadata: dict[str, str], log: Any
) -> EncodedPart:
    """This rank's share of `rows` (every world-th) encoded into its part, uploaded, with a note of its
    record for rank 0."""
    folder, name = ctx.work_dir / layout.INDEX, layout.part_name(ctx.rank)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    written = layout.write_part(
        folder / name,
        layout.shard(rows, ctx.rank, world),
        lambda texts: encode(model, texts, ctx.cfg.model.encode_batch_size, log, "encode for the index"),
        int(metadata["finetune.dim"]),
        metadata,
    )
    seconds = time.monotonic() - started
    with phase("write"):
        part = ctx.run.store.upload_file(folder / name, f"{layout.INDEX}/{name}")
    ctx.run.write_json(
        f"{layout.INDEX}/{name}.json", {**asdict(part), "rows": written, "seconds": round(seconds, 3)}
    )
    return EncodedPart(written, seconds)


def publish_index(
    ctx: RunContext, rows: list[layout.IndexRow], world: int, metadata: dict[str, str]
) -> list[FileRecord]:
    """Rank 0, every part written: the parts' records collected, the keyword index and index.json written,
    and whatever an earlier attempt left under index/ that this one did not write deleted."""
    parts = [ctx.run.read_json(f"{layout.INDEX}/{layout.part_name(r)}.json") for r in range(world)]
    for r in range(world):
        ctx.run.store.delete(f"{layout.INDEX}/{layout.part_name(r)}.json")
    folder = ctx.work_dir / layout.INDEX
    with phase("lexical"):
        layout.save_lexical(
            folder / "lexical", [r.id for r in rows], [r.text for r in rows], lexical_settings(ctx.cfg)
        )
    files = [FileRecord(p["path"], p["size"], p["sha256"]) for p in parts]
    with phase("write"):
        files += upload_dir(ctx.run.store, folder / "lexical", layout.LEXICAL)
    described = layout.describe(
        ctx.run.run_id,
        len(rows),
        int(metadata["finetune.dim"]),
        [layout.part_name(r) for r in range(world)],
        metadata["finetune.model_sha256"],
    )
    files.append(ctx.run.write_json(layout.INDEX_JSON, described))
    _drop_unlisted(ctx, f"{layout.INDEX}/", files)
    return files


def _drop_unlisted(ctx: RunContext, prefix: str, files: list[FileRecord]) -> None:
    """Delete what an earlier attempt left under `prefix` that this one did not write (a part of more
    ranks)."""
    kept = {f.path for f in files}
    for key, _ in ctx.run.store.list_keys(prefix):
        if key not in kept:
            ctx.run.store.delete(key)
