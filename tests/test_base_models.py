"""Base models of the BERT and ModernBERT families train and encode through the job's code:
SDPA attention, max_seq_length capped at what the model can take, a text prefix saved with the model.

The models are tiny and randomly initialised (no hub here), built with the offline MiniLM's
tokenizer: the architecture paths are what is tested, not the quality.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from job.config import StorageConfig, load_config
from job.embedding.model import (
    attention_implementation,
    encode,
    load_model,
    position_limit,
    resolve_model_path,
)
from tests.conftest import OFFLINE_MODEL

POSITIONS = 64


def _tiny_base(kind: str, folder: Path, tokenizer_dir: str) -> Path:
    """A saved sentence-transformers model: a 2-layer random transformer of `kind` + mean pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel, ModernBertConfig, ModernBertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sizes: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": POSITIONS,
    }
    if kind == "bert":
        model: Any = BertModel(BertConfig(**sizes))
    else:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        }
        model = ModernBertModel(
            ModernBertConfig(**sizes, **ids, global_attn_every_n_layers=2, local_attention=16)
        )
    raw = folder / f"{kind}-raw"
    model.save_pretrained(raw)
    # "unset", as many hub tokenizers are: the cap must come from the model
    tokenizer.model_max_length = 100_000_000
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw))
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    saved = folder / kind
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(saved))
    return saved


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "modernbert"])
def test_bert_and_modernbert_bases_train_and_encode_with_sdpa_a_prefix_and_a_capped_length(
    tmp_path: Path, kind: str
) -> None:
    from job.embedding.train import RankingSets, TrainExamples, TripletExamples, train_model
    from job.log import get_logger
    from job.storage import LocalStore

    tokenizer_dir = resolve_model_path(OFFLINE_MODEL, StorageConfig(), tmp_path)
    base = _tiny_base(kind, tmp_path, tokenizer_dir)
    model = load_model(str(base), max_seq_length=512, text_prefix="query: ")
    # capped, not an index error
    assert position_limit(model) == POSITIONS and model.max_seq_length == POSITIONS
    assert attention_implementation(model) == "sdpa"
    cfg = load_config(
        environ={},
        cli_overrides={
            "data.tickets": "t.jsonl",
            "output.uri": str(tmp_path / "out"),
            "model.base": str(base),
            "model.text_prefix": "query: ",
            "train.epochs": 1,
            "train.batch_size": 4,
            "train.loss": "retrieval",
        },
    ).config
    texts = [f"namenode {word} fails with a long stack trace " * 20 for word in "abcdefgh"]
    pairs = TrainExamples(texts[:4], texts[4:], [1.0, 0.0, 0.6, 0.0])
    triplets = TripletExamples(texts[:4], texts[4:], texts[2:6])
    result = train_model(
        cfg,
        model,
        pairs,
        RankingSets(triplets),
        pairs,
        tmp_path / "work",
        LocalStore(tmp_path / "store"),
        get_logger(step="test"),
        threading.Event(),
        resume=False,
    )
    tuned = load_model(str(result.model_dir), max_seq_length=512)  # no prefix given: it comes with the model
    assert tuned.default_prompt_name and tuned.prompts[tuned.default_prompt_name] == "query: "
    vectors = encode(tuned, texts, 4, get_logger(step="test"), "encode")
    assert vectors.shape == (8, 32)
    with_prefix = tuned.encode(["query: " + texts[0]], prompt="", normalize_embeddings=True)
    plain = tuned.encode([texts[0]], prompt="", normalize_embeddings=True)
    assert abs(float(vectors[0] @ with_prefix[0]) - 1.0) < 1e-4  # the job encodes with the prefix...
    assert float(vectors[0] @ plain[0]) < 1.0 - 1e-4  # ...which changes the embedding
