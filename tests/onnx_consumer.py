"""A consumer of the ONNX export, run by tests/test_export.py with the python of the environment pinned in
requirements-onnx-consumer.lock (sentence-transformers 5.x, optimum-onnx): loads each variant of an
exported model folder through sentence-transformers' ONNX backend and writes the embeddings as JSON.

    python tests/onnx_consumer.py FOLDER TEXTS_JSON OUT_JSON FILE [FILE ...]

Only the standard library, numpy and sentence-transformers: the job's own packages are not installed there.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer


def main(folder: Path, texts_json: Path, out_json: Path, files: list[str]) -> None:
    texts = json.loads(texts_json.read_text())
    # The folder as the job wrote it: no edits (its modules.json uses the class paths 5.x knows).
    results = {file: encode_with_onnx_backend(folder, file, texts) for file in files}
    versions = {
        name: version(name)
        for name in ("sentence-transformers", "transformers", "optimum-onnx", "onnxruntime")
    }
    out_json.write_text(json.dumps({"versions": versions, "variants": results}))


def encode_with_onnx_backend(folder: Path, file: str, texts: list[str]) -> dict[str, Any]:
    model = SentenceTransformer(str(folder), backend="onnx", model_kwargs={"file_name": file}, device="cpu")
    onnx_model = model[0].auto_model
    # Which file ONNX Runtime opened: the backend exports the model itself when it finds no file to load.
    loaded = Path(onnx_model.session._model_path).resolve().relative_to(folder.resolve()).as_posix()
    embeddings = model.encode(texts, normalize_embeddings=True)
    return {"loaded": loaded, "class": type(onnx_model).__name__, "embeddings": embeddings.tolist()}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
