"""The inner loop: a merchant adapts θ on its own support data.

Training signal. Every support interaction (user, item) is one example: the user is
represented by the support items *before* it, as a held-out item is predicted from
the history before it, and the item must win a softmax over the merchant's whole
catalogue, from which the user's other known items are removed (they are positives
too, not negatives). A catalogue of a few thousand items makes the full softmax
cheap, and it matches how items are ranked at evaluation time. (Predicting each item
from all the user's other items instead scored lower on XMarket validation items.)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from common.adam import Adam
from common.config import AdaptConfig, ModelConfig
from common.model import (
    ITEM_TABLES,
    PAD,
    Recommender,
    build_model,
    item_buckets,
    to_numpy,
)

if TYPE_CHECKING:
    from common.protocol import MarketSplit

logger = logging.getLogger(__name__)

LOSS_SAMPLE = 1024  # support examples used to report the loss before and after


_warned_crowded = False


def _warn_if_crowded(num_items: int, num_buckets: int) -> None:
    """Warn once when a catalogue crowds the hashed item tables.

    Each product takes two of ``num_buckets`` rows; beyond about one product per four
    rows, products share a row often enough to blur their vectors.
    """
    global _warned_crowded  # noqa: PLW0603 - a once-per-process warning
    if num_items * 4 > num_buckets and not _warned_crowded:
        _warned_crowded = True
        logger.warning(
            "model: %d products in one catalogue for %d hash rows: products will "
            "share rows; raise num-buckets to at least %d",
            num_items,
            num_buckets,
            num_items * 4,
        )


@dataclass(frozen=True)
class MerchantData:
    """A merchant's support data, ready for the model.

    catalogue: ``(C, 2)`` hashed rows of the merchant's catalogue (item code order).
    histories: ``(U, L)`` each user's latest ``L`` support item codes, oldest first,
        padded on the right with ``PAD``.
    example_user, example_position: one row per support interaction used for training.
    """

    catalogue: np.ndarray
    histories: np.ndarray
    example_user: np.ndarray
    example_position: np.ndarray

    @property
    def num_examples(self) -> int:
        """Support interactions this merchant trains on."""
        return int(self.example_user.shape[0])

    @classmethod
    def from_split(cls, split: MarketSplit, model: ModelConfig) -> MerchantData:
        """Tensors of a split's support data (held-out items are not included)."""
        length = max(1, min(model.max_history, max(len(s) for s in split.support)))
        histories = np.full((len(split.support), length), PAD, dtype=np.int64)
        for user, items in enumerate(split.support):
            latest = items[-length:]
            histories[user, : len(latest)] = latest
        users, positions = np.nonzero(histories != PAD)
        _warn_if_crowded(split.num_items, model.num_buckets)
        return cls(
            catalogue=item_buckets(split.item_ids, model.num_buckets),
            histories=histories,
            example_user=users.astype(np.int64),
            example_position=positions.astype(np.int64),
        )


def item_rows(
    parameters: dict[str, np.ndarray], rows: np.ndarray
) -> dict[str, np.ndarray]:
    """θ with its item tables cut to ``rows`` (the rows some catalogue hashes to)."""
    return {
        name: array[rows] if name in ITEM_TABLES else array
        for name, array in parameters.items()
    }


def with_item_rows(
    parameters: dict[str, np.ndarray],
    rows: np.ndarray,
    trained: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """``trained`` (item tables cut to ``rows``) with its item rows written back into
    a copy of ``parameters``' full tables; the other arrays as trained."""
    full = dict(trained)
    for name in ITEM_TABLES:
        table = np.array(parameters[name], dtype=np.float32, copy=True)
        table[rows] = trained[name]
        full[name] = table
    return full


def round_seed(seed: int, server_round: int, merchant_id: str) -> int:
    """A seed unique to (run seed, round, merchant), the same in every process.

    The inner loop's minibatches come from it, so a merchant's delta in a round does
    not depend on which engine ran it or in what order.
    """
    text = f"{seed}/{server_round}/{merchant_id}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little")


@dataclass(frozen=True)
class AdaptResult:
    """What one inner loop produced."""

    parameters: dict[str, np.ndarray]
    loss_before: float
    loss_after: float
    num_examples: int
    # θ after each asked number of steps (see ``adapt``'s ``snapshots``).
    snapshots: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


def example_loss(
    model: Recommender,
    catalogue: torch.Tensor,
    histories: torch.Tensor,
    users: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Mean softmax cross-entropy of support examples, each predicted from the
    items before it (as a held-out item is predicted from the history before it)."""
    history = histories[users]  # (B, L) item codes
    targets = history[torch.arange(len(users)), positions]  # (B,)
    present = history != PAD
    mask = present & (torch.arange(history.shape[1])[None, :] < positions[:, None])
    scores = model(catalogue[history.clamp(min=0)], mask, catalogue)  # (B, C)

    # The user's other known items are positives too: remove them from the softmax.
    others = present.clone()
    others[torch.arange(len(users)), positions] = False
    known = torch.zeros_like(scores, dtype=torch.bool)
    known.scatter_(1, history.clamp(min=0), others)
    scores = scores.masked_fill(known, float("-inf"))
    return F.cross_entropy(scores, targets)


def adapt(
    parameters: dict[str, np.ndarray],
    data: MerchantData,
    model_config: ModelConfig,
    config: AdaptConfig,
    seed: int,
    snapshots: Collection[int] = (),
) -> AdaptResult:
    """Run ``config.inner_steps`` Adam steps from ``parameters`` on ``data``
    (the item biases at ``config.bias_lr`` when it is set).

    Deterministic for a given seed: minibatches are drawn from a seeded generator, so
    the same merchant in the same round produces the same delta under any engine.
    For the same reason a run's first k steps are exactly a k-step run: ``snapshots``
    keeps θ after each of those step counts (0 to ``inner_steps``), so several
    adaptation budgets at one learning rate cost one run.

    Only the item-table rows the merchant's catalogue hashes to are trained, on a
    compact copy of those rows, and written back into θ. This is exact, not an
    approximation: a row no item of the catalogue hashes to is never looked up, so
    its gradient is always zero, Adam's moments for it stay zero, and Adam's step
    lr · m̂ / (√v̂ + ε) leaves it exactly where it was (Kingma and Ba, "Adam",
    ICLR 2015). Updating those untouched rows anyway was most of Adam's time.
    """
    if data.num_examples == 0:
        raise ValueError("adapt: the merchant has no support interactions")
    rows, local_rows = np.unique(data.catalogue, return_inverse=True)
    model = build_model(
        replace(model_config, num_buckets=len(rows)), item_rows(parameters, rows)
    )
    # torch.optim's Adam, bitwise; the popularity term b may take its own step size.
    if config.bias_lr is None:
        optimizers = [Adam(model.parameters(), lr=config.inner_lr)]
    else:
        bias = model.item_bias.weight
        optimizers = [
            Adam([p for p in model.parameters() if p is not bias], lr=config.inner_lr),
            Adam([bias], lr=config.bias_lr),
        ]
    catalogue = torch.from_numpy(
        local_rows.reshape(data.catalogue.shape).astype(np.int64)
    )
    histories = torch.from_numpy(data.histories)
    example_user = torch.from_numpy(data.example_user)
    example_position = torch.from_numpy(data.example_position)
    generator = torch.Generator().manual_seed(seed)

    # A fixed sample of examples measures the loss before and after adaptation.
    probe = torch.randperm(data.num_examples, generator=generator)[:LOSS_SAMPLE]

    def probe_loss() -> float:
        with torch.no_grad():
            return float(
                example_loss(
                    model,
                    catalogue,
                    histories,
                    example_user[probe],
                    example_position[probe],
                )
            )

    outside = sorted(k for k in snapshots if not 0 <= k <= config.inner_steps)
    if outside:
        raise ValueError(
            f"adapt: snapshots {outside} are outside 0..{config.inner_steps} steps"
        )

    def written_back() -> dict[str, np.ndarray]:
        return with_item_rows(parameters, rows, to_numpy(model))

    kept: dict[int, dict[str, np.ndarray]] = {}
    loss_before = probe_loss()
    batch_size = min(config.batch_size, data.num_examples)
    for step in range(config.inner_steps + 1):
        if step in snapshots:
            kept[step] = written_back()
        if step == config.inner_steps:
            break
        batch = torch.randint(data.num_examples, (batch_size,), generator=generator)
        loss = example_loss(
            model, catalogue, histories, example_user[batch], example_position[batch]
        )
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    loss_after = probe_loss()
    logger.debug(
        "adapt: %d steps on %d examples, loss %.4f -> %.4f",
        config.inner_steps,
        data.num_examples,
        loss_before,
        loss_after,
    )

    adapted = kept.get(config.inner_steps) or written_back()
    return AdaptResult(adapted, loss_before, loss_after, data.num_examples, kept)


@dataclass(frozen=True)
class Scores:
    """Per-user ranking scores of held-out items."""

    positive: np.ndarray  # (U,)
    negatives: np.ndarray  # (U, N)
    catalogue: np.ndarray | None = None  # (U, C) when full-catalogue scores are asked


def score_held_out(
    parameters: dict[str, np.ndarray],
    data: MerchantData,
    split: MarketSplit,
    model_config: ModelConfig,
    which: str = "test",
    full_catalogue: bool = False,
) -> Scores:
    """Score each user's held-out item (``valid`` or ``test``) and its negatives."""
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    held_out = split.test_item if which == "test" else split.valid_item
    negatives = split.test_negatives if which == "test" else split.valid_negatives
    model = build_model(model_config, parameters).eval()
    catalogue = torch.from_numpy(data.catalogue)
    histories = torch.from_numpy(data.histories)
    mask = histories != PAD
    candidates = torch.from_numpy(
        np.concatenate([held_out[:, None], negatives], axis=1)
    )
    with torch.no_grad():
        user_vectors = model.user_vectors(catalogue[histories.clamp(min=0)], mask)
        vectors, bias = model.item_vectors(catalogue)
        all_scores = user_vectors @ vectors.T + bias  # (U, C)
        picked = torch.gather(all_scores, 1, candidates).numpy()
    return Scores(
        positive=picked[:, 0],
        negatives=picked[:, 1:],
        catalogue=all_scores.numpy() if full_catalogue else None,
    )
