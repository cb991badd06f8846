"""The CPU export: ONNX fp32 and int8 variants that reproduce the PyTorch embeddings, and the rule
that keeps a variant worse than the PyTorch model out of the model folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from job.config import StorageConfig
from job.data.pairs import Pair
from job.data.records import Link
from job.embedding.export import VARIANTS, ExportGate, export_variants, onnx_transformer, rejection
from job.embedding.model import encode, load_model, resolve_model_path, write_portable_module_paths
from job.evaluation.evaluate import Embeddings, HeldOut, RetrievalPool
from job.log import get_logger
from job.retrieval.lexical import LexicalSettings
from tests.conftest import OFFLINE_MODEL, REPO

# The fine-tuned model's test metrics from a tiny run on the shared sample (run c1).
PYTORCH = {"recall_at_10": 0.6667, "average_precision": 0.7345, "mrr": 0.6773}

# Measured on 48 sample tickets at 64 tokens with the offline MiniLM (min cosine to PyTorch):
# fp32 0.99999, int8 (per-channel) 0.98; the bounds leave room for other CPUs' kernels.
FP32_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.97
INT8_MEAN_COSINE = 0.985

# The consumer's environment: sentence-transformers' ONNX backend needs optimum-onnx, which pins
# transformers<4.58, so it is a venv of its own, built once per content of the lock file.
CONSUMER_LOCK = REPO / "requirements-onnx-consumer.lock"
CONSUMER_SCRIPT = Path(__file__).with_name("onnx_consumer.py")
CONSUMER_CACHE = Path.home() / ".cache" / "finetune-test"
INSTALL_TIMEOUT_S = 900
ENCODE_TIMEOUT_S = 300


def test_a_variant_within_the_allowed_drop_is_written() -> None:
    assert rejection(PYTORCH, {"recall_at_10": 0.6667, "average_precision": 0.7301, "mrr": 0.5}, 0.01) is None
    assert rejection(PYTORCH, {"recall_at_10": 0.6667, "average_precision": 0.7245}, 0.01) is None, (
        "exactly 0.01"
    )
    assert rejection(PYTORCH, {"recall_at_10": 0.7, "average_precision": 0.75}, 0.0) is None, "better is fine"


def test_a_variant_more_than_the_allowed_drop_below_pytorch_is_refused() -> None:
    ap = rejection(PYTORCH, {"recall_at_10": 0.6667, "average_precision": 0.7200}, 0.01)
    assert ap == "average_precision 0.7200 vs 0.7345 (more than 0.01 below PyTorch)"
    recall = rejection(PYTORCH, {"recall_at_10": 0.5, "average_precision": 0.7345}, 0.01)
    assert recall is not None and recall.startswith("recall_at_10 0.5000 vs 0.6667")
    assert (
        rejection(PYTORCH, {"recall_at_10": 0.5, "average_precision": 0.70}, 0.01).count("below PyTorch") == 2
    )
    assert rejection(PYTORCH, {"recall_at_10": None, "average_precision": 0.7345}, 0.01) is not None, (
        "missing"
    )
    assert rejection(PYTORCH, {"recall_at_10": float("nan"), "average_precision": 0.7345}, 0.01) is not None


def test_a_metric_the_pytorch_model_lacks_is_not_compared() -> None:
    # A test split without duplicate queries has no recall@10 for either model.
    assert (
        rejection(
            {"recall_at_10": None, "average_precision": 0.7},
            {"recall_at_10": None, "average_precision": 0.7},
            0.01,
        )
        is None
    )


def _sample_texts(shared_sample: Path, count: int) -> list[str]:
    rows = [json.loads(line) for line in (shared_sample / "tickets.jsonl").read_text().splitlines()[:count]]
    return [f"{r['title']}\n{r.get('description') or ''}" for r in rows]


COMPONENTS = [["a1", "a2", "a3"], ["b1", "b2"], ["c1", "c2"], ["d1"], ["d2"], ["d3"], ["d4"], ["d5"]]


def _held_out() -> tuple[HeldOut, list[Link]]:
    ids = [t for members in COMPONENTS for t in members]
    links = [Link(members[0], other, "duplicate") for members in COMPONENTS for other in members[1:]]
    pool = RetrievalPool.build(
        ids, [f"ticket {t} text" for t in ids], links, ["duplicate"], {}, LexicalSettings()
    )
    pairs = [Pair(link.source, link.target, 1.0, "positive") for link in links]
    pairs += [
        Pair("a1", "d1", 0.0, "negative"),
        Pair("b1", "c1", 0.0, "negative"),
        Pair("a2", "b2", 0.0, "negative"),
    ]
    return HeldOut([], pairs, pool, pool), links


def test_the_gate_sample_takes_whole_link_components_in_a_seeded_order_up_to_its_size() -> None:
    held, links = _held_out()
    samples = {}
    for seed in range(6):
        gate = ExportGate.sample(held, links, ["duplicate"], max_tickets=5, seed=seed)
        assert len(gate.ids) <= 5 and gate.of_tickets == len(held.test.ids)
        for members in COMPONENTS:
            assert len(set(members) & set(gate.ids)) in (0, len(members)), (
                "a component is taken whole or not at all"
            )
        assert all(p.a in gate.ids and p.b in gate.ids for p in gate.pairs)
        assert len(gate.pairs) == sum(p.a in gate.ids and p.b in gate.ids for p in held.test_pairs)
        assert gate.ids == ExportGate.sample(held, links, ["duplicate"], 5, seed).ids, (
            "the same seed, the same sample"
        )
        samples[seed] = tuple(gate.ids)
    assert len(set(samples.values())) > 1, "the seed chooses the sample"
    whole = ExportGate.sample(held, links, ["duplicate"], max_tickets=len(held.test.ids), seed=0)
    assert whole.ids == held.test.ids and whole.pairs == held.test_pairs, "a small split is scored whole"


def test_the_gate_scores_the_reference_and_a_variant_on_the_same_tickets() -> None:
    held, links = _held_out()
    gate = ExportGate.sample(held, links, ["duplicate"], max_tickets=7, seed=3)
    vectors = np.random.default_rng(0).normal(size=(len(held.test.ids), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    reference = gate.metrics(Embeddings(held.test.ids, vectors), threshold=0.5)
    noisy = vectors + np.random.default_rng(1).normal(scale=0.5, size=vectors.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    variant = gate.metrics(Embeddings(held.test.ids, noisy), threshold=0.5)
    assert reference["n_pairs"] == variant["n_pairs"] == len(gate.pairs)
    assert reference["n_queries"] == variant["n_queries"] == gate.describe()["queries"] > 0
    assert reference != variant


@pytest.mark.slow
def test_onnx_variants_reproduce_the_pytorch_embeddings(shared_sample: Path, tmp_path: Path) -> None:
    path = resolve_model_path(OFFLINE_MODEL, StorageConfig(), tmp_path)
    texts, log = _sample_texts(shared_sample, 48), get_logger()
    model = load_model(path, 64, device="cpu")  # one model in memory runs every variant, as evaluate does
    reference = encode(model, texts, 16, log, "pytorch")
    variants = export_variants(model, tmp_path / "model")
    assert [v.file for v in variants] == list(VARIANTS.values())
    cosines = {}
    for variant in variants:
        with onnx_transformer(model, variant.path, threads=2):
            vectors = encode(model, texts, 16, log, variant.name)
        assert vectors.shape == reference.shape
        cosines[variant.name] = np.einsum("ij,ij->i", reference, vectors)
    assert np.allclose(encode(model, texts, 16, log, "pytorch again"), reference, atol=1e-6), (
        "after the block the model runs its own transformer again"
    )
    print({name: (round(float(c.min()), 5), round(float(c.mean()), 5)) for name, c in cosines.items()})
    assert cosines["onnx-fp32"].min() >= FP32_MIN_COSINE
    assert cosines["onnx-int8"].min() >= INT8_MIN_COSINE and cosines["onnx-int8"].mean() >= INT8_MEAN_COSINE
    assert not np.allclose(cosines["onnx-int8"], 1.0, atol=1e-4), "int8 is really quantised"
    sizes = {v.name: v.path.stat().st_size for v in variants}
    assert sizes["onnx-int8"] < sizes["onnx-fp32"] / 3


@pytest.mark.slow
def test_the_sentence_transformers_onnx_backend_loads_an_exported_folder(
    shared_sample: Path, tmp_path: Path
) -> None:
    """A consumer in its own environment (requirements-onnx-consumer.lock) loads both variants with
    SentenceTransformer(folder, backend="onnx", model_kwargs={"file_name": ...}) and gets the embeddings
    of the PyTorch model the job saved."""
    python = consumer_python()
    path = resolve_model_path(OFFLINE_MODEL, StorageConfig(), tmp_path)
    folder = tmp_path / "model"
    model = load_model(path, 64, device="cpu")
    model.save_pretrained(str(folder), create_model_card=False)
    write_portable_module_paths(folder)  # as train saves the model: 5.x knows only these class paths
    export_variants(model, folder)
    texts = _sample_texts(shared_sample, 32)
    reference = model.encode(texts, normalize_embeddings=True)

    consumer = encode_in_consumer(python, folder, texts, tmp_path / "consumer.json")
    print(consumer["versions"])
    cosines = {}
    for file, variant in consumer["variants"].items():
        assert variant["loaded"] == file, f"the backend did not load {file} (exported the model itself?)"
        assert variant["class"] == "ORTModelForFeatureExtraction"
        cosines[file] = np.einsum("ij,ij->i", reference, np.array(variant["embeddings"], dtype=np.float32))
    print({file: (round(float(c.min()), 5), round(float(c.mean()), 5)) for file, c in cosines.items()})
    fp32, int8 = cosines[VARIANTS["onnx-fp32"]], cosines[VARIANTS["onnx-int8"]]
    assert fp32.min() >= FP32_MIN_COSINE, f"fp32: min cosine to PyTorch {fp32.min():.5f}"
    assert int8.min() >= INT8_MIN_COSINE, f"int8: min cosine to PyTorch {int8.min():.5f}"
    assert int8.mean() >= INT8_MEAN_COSINE, f"int8: mean cosine to PyTorch {int8.mean():.5f}"


def encode_in_consumer(python: Path, folder: Path, texts: list[str], out: Path) -> dict:
    """Both variants' embeddings of `texts`, computed by tests/onnx_consumer.py in the consumer venv."""
    texts_json = out.with_suffix(".texts.json")
    texts_json.write_text(json.dumps(texts))
    _run(
        [str(python), str(CONSUMER_SCRIPT), str(folder), str(texts_json), str(out), *VARIANTS.values()],
        ENCODE_TIMEOUT_S,
        "the consumer script",
    )
    return json.loads(out.read_text())


def consumer_python() -> Path:
    """The consumer venv's python: built on first use under ~/.cache, in a temporary folder renamed into
    place once installed and checked, so an interrupted build is never reused and a new lock rebuilds."""
    digest = hashlib.sha256(CONSUMER_LOCK.read_bytes()).hexdigest()[:12]
    venv = CONSUMER_CACHE / f"onnx-consumer-{digest}"
    if not venv.exists():
        CONSUMER_CACHE.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f"{venv.name}.building-", dir=CONSUMER_CACHE))
        try:
            build_consumer_venv(building)
            building.rename(venv)
        except OSError:
            if not venv.exists():  # else another test run built it first: use that one
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    # Call python -m pip, never bin/pip: the scripts' shebangs still name the temporary folder.
    return venv / "bin" / "python"


def build_consumer_venv(venv: Path) -> None:
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], 120, "python -m venv")
    python = str(venv / "bin" / "python")
    # --no-deps: the lock lists every package, and pip check fails the build when it misses one.
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-r",
            str(CONSUMER_LOCK),
        ],
        INSTALL_TIMEOUT_S,
        f"installing {CONSUMER_LOCK.name}",
    )
    _run([python, "-m", "pip", "check"], 120, f"pip check ({CONSUMER_LOCK.name} misses a dependency?)")


def _run(command: list[str], timeout_s: int, what: str) -> None:
    # Offline, and without the job's PYTHONPATH: the consumer sees only its own venv. The environment is
    # made here, not passed in, so that a failure's traceback does not print it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took more than {timeout_s} s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}",
            pytrace=False,
        )
