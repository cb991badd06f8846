"""The training objectives, one table entry each, the way sentence-transformers keeps one class per loss.

`train.loss` names an entry of LOSSES: whether it ranks triplets (MultipleNegativesRankingLoss, in-batch and
mined negatives), which pair objective of PAIR_LOSSES trains its scored pairs (if any), and what the model
card says. From these alone prepare splits the row budget (job/data/pairs.py `training_budget`), train
builds its datasets and losses (job/embedding/train.py) and the card describes the run (job/runs/card.py).
Adding a loss is one entry here (and, for a new pair objective, one in PAIR_LOSSES); config validates names
against these tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RANKING_CARD = "MultipleNegativesRankingLoss on (anchor, duplicate, mined negative) triplets"


def _st_loss(name: str) -> Callable[[Any], Any]:
    def make(model: Any) -> Any:
        from sentence_transformers.sentence_transformer import losses

        return getattr(losses, name)(model)

    return make


@dataclass(frozen=True)
class PairObjective:
    """A loss over scored (text, text) pairs."""

    factory: Callable[[Any], Any]  # model -> the sentence-transformers loss
    binary_labels: bool  # trained on 0/1 labels at evaluate.positive_threshold instead of the scores
    card: str


PAIR_LOSSES: dict[str, PairObjective] = {
    "cosine": PairObjective(_st_loss("CosineSimilarityLoss"), False, "CosineSimilarityLoss on scored pairs"),
    "cosent": PairObjective(_st_loss("CoSENTLoss"), False, "CoSENTLoss on scored pairs"),
    "online_contrastive": PairObjective(
        _st_loss("OnlineContrastiveLoss"),
        True,
        "OnlineContrastiveLoss on pairs labelled at the positive threshold",
    ),
}


@dataclass(frozen=True)
class Loss:
    """What one `train.loss` trains on. `pair_objective` maps the configured `train.pair_loss` to the pair
    objective this loss uses (None: it trains no scored pairs)."""

    ranks_triplets: bool
    pair_objective: Callable[[str], str | None]
    summary: str  # for `finetune-job config` and the configuration reference

    def card(self, pair_loss: str) -> str:
        objective = self.pair_objective(pair_loss)
        parts = ([RANKING_CARD] if self.ranks_triplets else []) + (
            [PAIR_LOSSES[objective].card] if objective else []
        )
        return " plus ".join(parts)


def _pairs_only(name: str) -> Loss:
    return Loss(False, lambda _configured: name, f"{PAIR_LOSSES[name].card} alone")


LOSSES: dict[str, Loss] = {
    "mnrl": Loss(True, lambda _configured: None, "triplets only"),
    "retrieval": Loss(
        True,
        lambda configured: configured,
        "triplets plus train.pair_loss on scored pairs (train.retrieval_share of the rows on triplets)",
    ),
    "cosine": _pairs_only("cosine"),  # the notebooks'
    "cosent": _pairs_only("cosent"),
    "online_contrastive": _pairs_only("online_contrastive"),
}


def describe_losses() -> str:
    return "; ".join(f"{name}: {loss.summary}" for name, loss in LOSSES.items())
