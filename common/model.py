"""The recommender: a user is the items in their own history.

There are no per-user parameters. A user's taste vector is computed from the items
they interacted with (a factored item-similarity model in the spirit of FISM, Kabbur et
al. KDD 2013), so a merchant's brand-new customer is served from their first
interaction, and nothing about a user is ever part of the shared parameters θ.

Items are keyed by the product id itself, hashed into two rows of each item table
(the "hashing trick" with two hash functions, Weinberger et al. ICML 2009; Svenstrup et
al. NeurIPS 2017). A product sold in several markets hashes to the same rows
everywhere, which is what links the markets, and no merchant has to publish its
catalogue to agree on an item vocabulary. Two products share both rows with
probability about 1 / num_buckets², so collisions are rare and harmless.

    item vectors  q_j = Q[h1(j)] + Q[h2(j)],   p_i = P[h1(i)] + P[h2(i)]
    user vector   u = W · Σ_j r^age(j) q_j / Σ_j r^age(j) + c
    score         s(u, i) = u · p_i + b_i

where age(j) counts the user's items after j and r is ``ModelConfig.recency``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from common.config import ModelConfig

PAD = -1  # marks an empty slot in a padded history
# θ's arrays indexed by hashed item row (first axis: ``num_buckets`` rows).
ITEM_TABLES = ("history_items.weight", "target_items.weight", "item_bias.weight")
# The user transform (W, c): scaling both scales the user-item term u · p_i of every
# score and leaves the item biases b_i.
TASTE = ("user_transform.weight", "user_transform.bias")


def item_buckets(item_ids: Sequence[str] | np.ndarray, num_buckets: int) -> np.ndarray:
    """Hash product ids to two table rows each: an ``(n, 2)`` int64 array.

    blake2b is used rather than Python's ``hash`` because the latter is salted per
    process: every merchant and the server must agree on the rows of a product.
    """
    if num_buckets <= 0:
        raise ValueError(f"num_buckets must be > 0, got {num_buckets}")
    out = np.empty((len(item_ids), 2), dtype=np.int64)
    for row, item in enumerate(item_ids):
        digest = hashlib.blake2b(str(item).encode("utf-8"), digest_size=8).digest()
        out[row, 0] = int.from_bytes(digest[:4], "little") % num_buckets
        out[row, 1] = int.from_bytes(digest[4:], "little") % num_buckets
    return out


class Recommender(nn.Module):
    """Item-history recommender with hashed item tables (see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim, rows = config.embedding_dim, config.num_buckets
        self.history_items = nn.Embedding(rows, dim)  # Q: items as evidence of taste
        self.target_items = nn.Embedding(rows, dim)  # P: items as candidates
        self.item_bias = nn.Embedding(rows, 1)  # b: popularity, per item
        self.user_transform = nn.Linear(dim, dim)  # W, c
        nn.init.normal_(self.history_items.weight, std=0.1)
        nn.init.normal_(self.target_items.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.eye_(self.user_transform.weight)
        nn.init.zeros_(self.user_transform.bias)

    def item_vectors(self, buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate vectors ``(..., d)`` and biases ``(...)`` of bucketed items."""
        vectors = self.target_items(buckets).sum(dim=-2)  # (..., 2, d) -> (..., d)
        bias = self.item_bias(buckets).sum(dim=(-2, -1))  # (..., 2, 1) -> (...)
        return vectors, bias

    def user_vectors(
        self, history_buckets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Taste vectors ``(N, d)`` from histories ``(N, L, 2)`` and a ``(N, L)`` mask.

        A visible item followed by ``age`` later visible items weighs
        ``recency ** age``. A user with an empty history gets ``c``, the learned
        average taste.
        """
        items = self.history_items(history_buckets).sum(dim=-2)  # (N, L, d)
        visible = mask.to(items.dtype)  # (N, L)
        age = visible.flip(1).cumsum(1).flip(1) - visible  # later visible items
        weights = visible * self.config.recency**age
        total = weights.sum(dim=1, keepdim=True).clamp(min=1e-12)  # (N, 1)
        mean = (items * weights.unsqueeze(-1)).sum(dim=1) / total  # (N, d)
        return self.user_transform(mean)

    def forward(
        self,
        history_buckets: torch.Tensor,
        mask: torch.Tensor,
        candidate_buckets: torch.Tensor,
    ) -> torch.Tensor:
        """Scores ``(N, K)`` of per-user candidates ``(N, K, 2)``, or ``(N, C)`` of a
        shared catalogue ``(C, 2)``."""
        users = self.user_vectors(history_buckets, mask)  # (N, d)
        vectors, bias = self.item_vectors(candidate_buckets)
        if candidate_buckets.dim() == 2:  # one catalogue for every user
            return users @ vectors.T + bias  # (N, C)
        return torch.einsum("nd,nkd->nk", users, vectors) + bias  # (N, K)


def scale_taste(
    parameters: dict[str, np.ndarray], scale: float
) -> dict[str, np.ndarray]:
    """Parameters whose scores are ``scale · u · p_i + b_i``: how far a merchant
    trusts the learned taste term against its items' popularity (1: unchanged)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"taste scale must be a finite number > 0, got {scale}")
    if scale == 1.0:
        return parameters
    scaled = dict(parameters)
    for name in TASTE:
        scaled[name] = (parameters[name] * np.float32(scale)).astype(np.float32)
    return scaled


def parameter_names(config: ModelConfig) -> list[str]:
    """The names of θ's arrays, in a fixed order."""
    return list(Recommender(config).state_dict().keys())


def init_parameters(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """A freshly initialised θ as float32 numpy arrays (seeded)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Recommender(config)
    return to_numpy(model)


def to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as float32 numpy arrays (copies)."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }


def build_model(config: ModelConfig, parameters: dict[str, np.ndarray]) -> Recommender:
    """A model holding ``parameters``; names and shapes must match exactly."""
    model = Recommender(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    received = {k: tuple(np.shape(v)) for k, v in parameters.items()}
    if expected != received:
        raise ValueError(
            f"parameters do not fit the model: expected {expected}, got {received}"
        )
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in parameters.items()}
    )
    return model
