"""Non-federated baselines of the cold-start benchmark, behind one interface.

Every baseline is a :class:`Scorer`: given a market's split it returns a score for every
(user, item) of that market's catalogue, so the benchmark treats every arm alike (it
gathers the held-out item and its negatives, and ranks the whole catalogue for the
full-catalogue view). Every scorer learns from support data only, for validation and
test alike: the validation item is never an input, so choosing hyperparameters on it
(:func:`tune`) stays honest, and the test ranking sees exactly what the validation
ranking saw.

- :class:`PopularityScorer`: the market's own most-interacted items.
- :class:`ItemKNNScorer`: item-based kNN on the market's own data (Sarwar et al.,
  "Item-based collaborative filtering recommendation algorithms", WWW 2001; top-k
  neighbour models after Deshpande and Karypis, "Item-based top-N recommendation
  algorithms", TOIS 2004).
- :class:`PooledItemKNNScorer`: the same on every market's data pooled, products
  matched by id: a non-private reference.
- :class:`NeuMFScorer`: NeuMF with pre-training (He et al., "Neural Collaborative
  Filtering", WWW 2017) in the configuration of the FOREC code (Bonab et al.,
  "Cross-Market Product Recommendation", CIKM 2021): the published single-market
  baseline, which checks this protocol against the published number.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from torch import nn

from common.metrics import ndcg, rank_of_positive
from common.protocol import MarketSplit

logger = logging.getLogger(__name__)

# Added to every kNN score times a [0, 1] popularity rank, so that items the
# neighbourhood says nothing about (score 0) are ordered by popularity instead of
# tying, which the protocol counts against the held-out item. Far below any
# similarity (above 2e-3 on XMarket) unless scaled by a weight of an item dozens
# of recency steps old; far above the float64 rounding of the sums (~1e-14).
_TIE_BREAK = 1e-9

# Users scored at once by NeuMF over the whole catalogue: bounds the (users, items,
# 64) activations of the first MLP layer to about 100 MB for 6k items.
_SCORE_USERS_PER_CHUNK = 64

# A hyperparameter grid for the kNN scorers, the first value of each list being the
# default. Chosen on validation items of the XMarket markets: similarity shrinkage,
# the asymmetry of the cosine, a recency decay over each user's history and a small
# popularity blend each move validation NDCG@10 by 0.005 to 0.02; the number of
# neighbours and row normalisation matter less, all-neighbours being slightly best.
ITEMKNN_GRID: dict[str, list[Any]] = {
    "neighbours": [None, 200, 50],
    "shrink": [20.0, 5.0, 50.0],
    "alpha": [0.5, 0.3],
    "recency": [0.8, 1.0, 0.6],
    "popularity_weight": [0.1, 0.0, 0.3],
    "normalise": [False, True],
}


class Scorer(Protocol):
    """Anything the benchmark can rank with: scores over a market's catalogue."""

    def score(self, split: MarketSplit, which: str = "test") -> np.ndarray:
        """(U, C) scores of every user of ``split`` for every catalogue item.

        which: ``"valid"`` or ``"test"``, the held-out items that will be ranked.
        """
        ...


# ---------------------------------------------------------------------------
# Popularity
# ---------------------------------------------------------------------------


class PopularityScorer:
    """The market's own most-interacted items, the same list for every user.

    An item's popularity is its number of support interactions (each user counts
    once per item, the protocol having kept one interaction per pair). Equal counts
    are broken by item code (the sorted product id), lower first, so scores are
    distinct: a tie would count against the held-out item.
    """

    def score(self, split: MarketSplit, which: str = "test") -> np.ndarray:
        _check_which(which)
        ranking = popularity_ranking(split)
        return np.broadcast_to(ranking, (split.num_users, split.num_items)).copy()


def support_counts(split: MarketSplit) -> np.ndarray:
    """(C,) number of support interactions of each catalogue item."""
    if split.num_support_interactions == 0:
        return np.zeros(split.num_items, dtype=np.int64)
    return np.bincount(np.concatenate(split.support), minlength=split.num_items)


def popularity_ranking(split: MarketSplit) -> np.ndarray:
    """(C,) float scores (1.0 for the most popular item down to 1 / C), all distinct.

    Items are ordered by support count, most first, equal counts by item code.
    """
    counts = support_counts(split)
    order = np.lexsort((np.arange(split.num_items), -counts))
    ranking = np.empty(split.num_items, dtype=np.float64)
    ranking[order] = np.arange(split.num_items, 0, -1) / max(split.num_items, 1)
    return ranking


# ---------------------------------------------------------------------------
# Item-based kNN
# ---------------------------------------------------------------------------


class ItemKNNScorer:
    """Item-based kNN on the market's own support data.

    score(u, i) = Σ_{j ∈ support(u)} w_u(j) · sim(i, j)
                  + popularity_weight · count(i) / max count

    sim is the asymmetric cosine of Aiolli ("Efficient top-N recommendation for very
    large scale binary rated datasets", RecSys 2013) with shrinkage (Bell and
    Koren, ICDM 2007) over the binary user-item matrix:

        sim(i, j) = |U_i ∩ U_j| / (|U_i|^alpha · |U_j|^(1 − alpha) + shrink)

    with U_i the users who interacted with i; ``alpha = 0.5`` is the plain cosine,
    a lower alpha penalises popular candidates less. Each history item j keeps its
    ``neighbours`` most similar candidates (Deshpande and Karypis 2004), optionally
    scaled to sum to one (``normalise``). A user's k-th latest support item weighs
    w_u(j) = recency^k (1.0: every item alike): the held-out items are each user's
    latest, so recent taste predicts them best. Remaining ties are broken by
    popularity.

    Hyperparameters are meant to be chosen with :func:`tune` (``ITEMKNN_GRID``).
    """

    def __init__(
        self,
        neighbours: int | None = None,
        shrink: float = 20.0,
        alpha: float = 0.5,
        recency: float = 0.8,
        popularity_weight: float = 0.1,
        normalise: bool = False,
    ) -> None:
        _check_knn_parameters(neighbours, shrink, alpha, recency, popularity_weight)
        self.neighbours = neighbours
        self.shrink = shrink
        self.alpha = alpha
        self.recency = recency
        self.popularity_weight = popularity_weight
        self.normalise = normalise

    def score(self, split: MarketSplit, which: str = "test") -> np.ndarray:
        _check_which(which)
        interactions = interaction_matrix(split.support, split.num_items)
        similarity = item_similarity(
            interactions, self.neighbours, self.shrink, self.alpha, self.normalise
        )
        return _knn_scores(self, split, similarity)


class PooledItemKNNScorer(ItemKNNScorer):
    """Item-based kNN on every market's support data pooled: non-private.

    The similarity of two items of the target's catalogue is computed over the
    users of every market: products are matched by id across markets, and each
    market's users are distinct users (the same id in two markets is two rows).
    Only the target's users are scored, over the target's catalogue, and the
    popularity blend uses the target's own counts (the market being served).
    Same hyperparameters as :class:`ItemKNNScorer`.

    others: the splits of the other markets (not the target's).
    """

    def __init__(
        self,
        others: Sequence[MarketSplit],
        neighbours: int | None = None,
        shrink: float = 20.0,
        alpha: float = 0.5,
        recency: float = 0.8,
        popularity_weight: float = 0.1,
        normalise: bool = False,
    ) -> None:
        super().__init__(
            neighbours, shrink, alpha, recency, popularity_weight, normalise
        )
        self.others = list(others)

    def score(self, split: MarketSplit, which: str = "test") -> np.ndarray:
        _check_which(which)
        clash = [other.market for other in self.others if other.market == split.market]
        if clash:
            raise ValueError(
                f"pooled-itemknn: the other markets must not include the target "
                f"{split.market!r}: its support is pooled already; got markets "
                f"{', '.join(other.market for other in self.others)}"
            )

        # Target's users first, then every other market's, over the target items.
        blocks = [interaction_matrix(split.support, split.num_items)]
        for other in self.others:
            blocks.append(_on_catalogue(other, split.item_ids))
        interactions = sparse.vstack(blocks, format="csr")
        logger.debug(
            "pooled-itemknn: %s: %s users of %s markets, %s interactions on its items",
            split.market,
            f"{interactions.shape[0]:,}",
            1 + len(self.others),
            f"{interactions.nnz:,}",
        )
        similarity = item_similarity(
            interactions, self.neighbours, self.shrink, self.alpha, self.normalise
        )
        return _knn_scores(self, split, similarity)


def interaction_matrix(
    support: Sequence[np.ndarray], num_items: int, recency: float = 1.0
) -> sparse.csr_matrix:
    """(U, C) user-item matrix of support items; binary when ``recency`` is 1.0.

    With ``recency`` < 1, a user's k-th latest item (k = 0 for the latest) weighs
    recency^k. Items repeated within a user's support are counted once.
    """
    lengths = np.fromiter((len(items) for items in support), np.int64, len(support))
    rows = np.arange(len(support)).repeat(lengths)
    columns = (
        np.concatenate([np.asarray(items, dtype=np.int64) for items in support])
        if lengths.sum()
        else np.zeros(0, dtype=np.int64)
    )
    ends = np.cumsum(lengths)
    age = ends[rows] - 1 - np.arange(len(columns))  # 0 for each user's latest
    weights = np.power(recency, age, dtype=np.float64)

    # Keep one entry per (user, item), the latest (largest weight).
    matrix = sparse.coo_matrix(
        (weights, (rows, columns)), shape=(len(support), num_items)
    )
    return _max_duplicates(matrix)


def item_similarity(
    interactions: sparse.csr_matrix,
    neighbours: int | None,
    shrink: float,
    alpha: float,
    normalise: bool = False,
) -> sparse.csr_matrix:
    """(C, C) sparse S with S[j, i] = sim(i, j) of :class:`ItemKNNScorer`.

    Row j holds the ``neighbours`` most similar candidates i of history item j (all
    when None; equal similarities by lower item code), scaled to sum to one when
    ``normalise``. The diagonal is zero: an item does not recommend itself.
    interactions: (users, C), any positive value counts as one interaction.
    """
    binary = interactions.copy().tocsr()
    binary.data = np.ones_like(binary.data, dtype=np.float64)
    binary.eliminate_zeros()
    num_items = binary.shape[1]
    users_of = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()

    # Co-occurrence counts |U_i ∩ U_j| off the diagonal.
    common = (binary.T @ binary).tocoo()
    off_diagonal = common.row != common.col
    history = common.row[off_diagonal].astype(np.int64)  # j
    candidate = common.col[off_diagonal].astype(np.int64)  # i
    values = common.data[off_diagonal]
    values = values / (
        np.power(users_of[candidate], alpha) * np.power(users_of[history], 1.0 - alpha)
        + shrink
    )

    # Each history item keeps its most similar candidates.
    order = np.lexsort((candidate, -values, history))
    history, candidate, values = history[order], candidate[order], values[order]
    if neighbours is not None:
        first = np.searchsorted(history, np.arange(num_items))
        keep = np.arange(len(history)) - first[history] < neighbours
        history, candidate, values = history[keep], candidate[keep], values[keep]
    similarity = sparse.csr_matrix(
        (values, (history, candidate)), shape=(num_items, num_items)
    )
    if normalise:
        totals = np.asarray(similarity.sum(axis=1)).ravel()
        totals[totals == 0.0] = 1.0
        similarity = sparse.csr_matrix(sparse.diags(1.0 / totals) @ similarity)
    return similarity


def _knn_scores(
    knn: ItemKNNScorer, split: MarketSplit, similarity: sparse.csr_matrix
) -> np.ndarray:
    """(U, C) Σ_j w_u(j) sim(i, j) + the popularity blend and its tie-break."""
    history = interaction_matrix(split.support, split.num_items, knn.recency)
    scores = np.asarray((history @ similarity).toarray(), dtype=np.float64)
    counts = support_counts(split).astype(np.float64)
    if knn.popularity_weight and counts.max() > 0:
        scores += knn.popularity_weight * counts / counts.max()
    scores += _TIE_BREAK * popularity_ranking(split)
    return scores


def _on_catalogue(split: MarketSplit, item_ids: np.ndarray) -> sparse.csr_matrix:
    """(U, C) binary matrix of ``split``'s support on another catalogue ``item_ids``.

    Items of ``split`` missing from ``item_ids`` (sorted) are dropped.
    """
    position = np.searchsorted(item_ids, split.item_ids)
    position = np.minimum(position, len(item_ids) - 1)
    found = item_ids[position] == split.item_ids
    translated = np.where(found, position, -1)
    support = [
        kept[kept >= 0] for kept in (translated[items] for items in split.support)
    ]
    return interaction_matrix(support, len(item_ids))


def _max_duplicates(matrix: sparse.coo_matrix) -> sparse.csr_matrix:
    """CSR of ``matrix`` where duplicate entries keep their largest value."""
    rows, columns, values = matrix.row, matrix.col, matrix.data
    order = np.lexsort((-values, columns, rows))
    rows, columns, values = rows[order], columns[order], values[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (columns[1:] != columns[:-1])
    return sparse.csr_matrix(
        (values[first], (rows[first], columns[first])), shape=matrix.shape
    )


def _check_knn_parameters(
    neighbours: int | None,
    shrink: float,
    alpha: float,
    recency: float,
    popularity_weight: float,
) -> None:
    problems = []
    if neighbours is not None and neighbours < 1:
        problems.append(f"neighbours >= 1 or None, got {neighbours}")
    if shrink < 0:
        problems.append(f"shrink >= 0, got {shrink}")
    if not 0.0 <= alpha <= 1.0:
        problems.append(f"alpha in [0, 1], got {alpha}")
    if not 0.0 < recency <= 1.0:
        problems.append(f"recency in (0, 1], got {recency}")
    if popularity_weight < 0:
        problems.append(f"popularity_weight >= 0, got {popularity_weight}")
    if problems:
        raise ValueError(f"itemknn: expected {'; '.join(problems)}")


# ---------------------------------------------------------------------------
# NeuMF
# ---------------------------------------------------------------------------


class _GMF(nn.Module):
    """Generalised matrix factorisation: logit = h · (p_u ⊙ q_i) + b."""

    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items, dim)
        self.output = nn.Linear(dim, 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.output(self.users(users) * self.items(items)).squeeze(-1)


class _MLP(nn.Module):
    """logit = h · tower([p_u; q_i]) + b, a ReLU tower over the concatenation."""

    def __init__(
        self, num_users: int, num_items: int, dim: int, layers: Sequence[int]
    ) -> None:
        super().__init__()
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items, dim)
        self.tower = nn.ModuleList(
            nn.Linear(size_in, size_out)
            for size_in, size_out in itertools.pairwise(layers)
        )
        self.output = nn.Linear(layers[-1], 1)

    def hidden(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        vector = torch.cat([self.users(users), self.items(items)], dim=-1)
        for layer in self.tower:
            vector = F.relu(layer(vector))
        return vector

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(users, items)).squeeze(-1)


class _NeuMF(nn.Module):
    """NeuMF: logit = h · [MLP tower output; p_u ⊙ q_i] + b (He et al. 2017, §3.4)."""

    def __init__(self, gmf: _GMF, mlp: _MLP) -> None:
        super().__init__()
        self.gmf = gmf
        self.mlp = mlp
        gmf_dim = gmf.output.in_features
        self.output = nn.Linear(mlp.output.in_features + gmf_dim, 1)

        # Pre-training (He et al. 2017, §3.4.1): h = [0.5 h_MLP; 0.5 h_GMF], the
        # bias the mean of the two biases.
        with torch.no_grad():
            self.output.weight.copy_(
                0.5 * torch.cat([mlp.output.weight, gmf.output.weight], dim=-1)
            )
            self.output.bias.copy_(0.5 * (mlp.output.bias + gmf.output.bias))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        product = self.gmf.users(users) * self.gmf.items(items)
        vector = torch.cat([self.mlp.hidden(users, items), product], dim=-1)
        return self.output(vector).squeeze(-1)

    @torch.no_grad()
    def catalogue_logits(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), C) logits of each user for every item.

        The first MLP layer acts on [p_u; q_i], so it splits into a user part and an
        item part computed once each, added per (user, item) pair.
        """
        gmf_weight = self.output.weight[0, -self.gmf.output.in_features :]
        mlp_weight = self.output.weight[0, : -self.gmf.output.in_features]
        items = self.gmf.items.weight * gmf_weight  # (C, d)
        logits = self.gmf.users(users) @ items.T + self.output.bias  # (B, C)

        layers = [layer for layer in self.mlp.tower if isinstance(layer, nn.Linear)]
        first = layers[0]
        dim = self.mlp.users.embedding_dim
        user_part = self.mlp.users(users) @ first.weight[:, :dim].T + first.bias
        item_part = self.mlp.items.weight @ first.weight[:, dim:].T
        vector = F.relu(user_part[:, None, :] + item_part[None, :, :])  # (B, C, h)
        for layer in layers[1:]:
            vector = F.relu(layer(vector))
        return logits + vector @ mlp_weight


@dataclass(frozen=True)
class _Positives:
    """A market's support interactions as (user, item) pairs, for NeuMF."""

    users: np.ndarray  # (P,) int64
    items: np.ndarray  # (P,) int64
    num_items: int
    known: np.ndarray  # sorted keys user * num_items + item of every positive

    @classmethod
    def of(cls, split: MarketSplit) -> _Positives:
        lengths = np.fromiter(
            (len(items) for items in split.support), np.int64, split.num_users
        )
        if (lengths >= split.num_items).any():
            raise ValueError(
                f"neumf: {split.market}: a user has every catalogue item in support, "
                "so no negative can be drawn"
            )
        users = np.arange(split.num_users).repeat(lengths)
        items = (
            np.concatenate(split.support).astype(np.int64)
            if lengths.sum()
            else np.zeros(0, dtype=np.int64)
        )
        known = np.unique(users * split.num_items + items)
        return cls(users, items, split.num_items, known)

    def with_negatives(
        self, per_positive: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Users, items and 0/1 labels: each positive and ``per_positive`` negatives.

        Negatives are uniform over the catalogue minus the user's support items,
        drawn by rejection (redraw those inside the support).
        """
        negative_users = self.users.repeat(per_positive)
        negative_items = rng.integers(0, self.num_items, size=len(negative_users))
        while True:
            keys = negative_users * self.num_items + negative_items
            clash = _contains(self.known, keys)
            if not clash.any():
                break
            negative_items[clash] = rng.integers(
                0, self.num_items, size=int(clash.sum())
            )
        users = np.concatenate([self.users, negative_users])
        items = np.concatenate([self.items, negative_items])
        labels = np.zeros(len(users), dtype=np.float32)
        labels[: len(self.users)] = 1.0
        return (
            torch.from_numpy(users),
            torch.from_numpy(items),
            torch.from_numpy(labels),
        )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads (unchanged if None), then restore."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which ``keys`` occur in the sorted array ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[position] == keys


class NeuMFScorer:
    """NeuMF with pre-training, trained on the market's support data alone.

    The configuration of the FOREC code (Bonab et al. 2021) as run by its
    reproduction (Bhargav et al., "Market Aware Models for Efficient Cross-Market
    Recommendation", ECIR 2023), whose single-market NeuMF numbers it is checked
    against:

    - implicit feedback: every support interaction is a positive, with
      ``negatives`` (4) items per positive drawn uniformly among the items outside
      the user's support, anew every epoch as the reproduction's data loader does.
      (The original FOREC loader draws them once for all epochs; on mx that
      overfits, test NDCG@10 0.46 instead of 0.53. Both also keep the user's
      held-out items out of the draw, which uses held-out data; here only support
      items are excluded.)
    - embedding size 8 for GMF and for MLP; MLP tower 16 → 64 → 32 → 16 → 8
      (16 = user and item embeddings concatenated), ReLU;
    - three stages of ``epochs`` (25) each, batch size 1024, shuffled, Adam with
      L2 weight decay 1e-7, binary cross-entropy: GMF at learning rate 0.005; MLP
      at 0.01, its embeddings started from GMF's (as the FOREC code does); NeuMF
      at 0.01, started from both (He et al. 2017, §3.4.1: output weights halved
      and concatenated). The FOREC code copies the MLP tower's weights but not its
      biases into NeuMF; here the whole tower is copied, as He et al. describe;
    - the last epoch is scored, with no early stopping. Scores are logits: the
      sigmoid is monotone and would only add float ties near 0 and 1.

    Users are the split's rows, each with their own embeddings: a local baseline.
    Training is seeded by ``seed`` and leaves the caller's global torch random
    state alone; ``threads`` sets torch's intra-op threads while training and
    scoring (restored after; None keeps the caller's setting). The scores of the
    last split trained on are kept, so scoring it for validation and then test
    trains once.
    """

    def __init__(
        self,
        dim: int = 8,
        layers: Sequence[int] = (16, 64, 32, 16, 8),
        negatives: int = 4,
        epochs: int = 25,
        batch_size: int = 1024,
        gmf_lr: float = 0.005,
        lr: float = 0.01,
        weight_decay: float = 1e-7,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        layers = list(layers)
        if not layers or layers[0] != 2 * dim:
            raise ValueError(
                f"neumf: the MLP tower must start at 2 * dim = {2 * dim} (user and "
                f"item embeddings concatenated), got layers {layers}"
            )
        if min(negatives, epochs, batch_size, dim) < 1 or seed < 0:
            raise ValueError(
                "neumf: expected dim, negatives, epochs and batch_size >= 1 and "
                f"seed >= 0, got {dim}, {negatives}, {epochs}, {batch_size}, {seed}"
            )
        if threads is not None and threads < 1:
            raise ValueError(f"neumf: threads must be >= 1 or None, got {threads}")
        self.dim = dim
        self.layers = layers
        self.negatives = negatives
        self.epochs = epochs
        self.batch_size = batch_size
        self.gmf_lr = gmf_lr
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.threads = threads
        self.losses: dict[str, list[float]] = {}
        self._scored: tuple[MarketSplit, np.ndarray] | None = None

    def score(self, split: MarketSplit, which: str = "test") -> np.ndarray:
        _check_which(which)
        if self._scored is not None and self._scored[0] is split:
            return self._scored[1].copy()
        model = self.fit(split)
        with _torch_threads(self.threads):
            scores = self._catalogue_scores(model, split)
        self._scored = (split, scores)
        return scores.copy()

    def fit(self, split: MarketSplit) -> _NeuMF:
        """Train GMF, then MLP, then NeuMF from both; losses go to ``self.losses``."""
        positives = _Positives.of(split)
        if len(positives.users) == 0:
            raise ValueError(
                f"neumf: {split.market}: no support interactions to train on"
            )
        with _torch_threads(self.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # model initialisation
            return self._fit(split, positives)

    def _fit(self, split: MarketSplit, positives: _Positives) -> _NeuMF:
        rng = np.random.default_rng(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        num_users, num_items = split.num_users, split.num_items

        def train(model: nn.Module, lr: float) -> list[float]:
            return self._train(model, lr, positives, rng, generator)

        # Stage 1: GMF.
        gmf = _GMF(num_users, num_items, self.dim)
        self.losses["gmf"] = train(gmf, self.gmf_lr)

        # Stage 2: MLP, its embeddings started from GMF's.
        mlp = _MLP(num_users, num_items, self.dim, self.layers)
        with torch.no_grad():
            mlp.users.weight.copy_(gmf.users.weight)
            mlp.items.weight.copy_(gmf.items.weight)
        self.losses["mlp"] = train(mlp, self.lr)

        # Stage 3: NeuMF from both.
        neumf = _NeuMF(gmf, mlp)
        self.losses["neumf"] = train(neumf, self.lr)
        logger.info(
            "neumf: %s: trained on %s positives; last-epoch loss gmf %.4f, mlp %.4f, "
            "neumf %.4f",
            split.market,
            f"{len(positives.users):,}",
            self.losses["gmf"][-1],
            self.losses["mlp"][-1],
            self.losses["neumf"][-1],
        )
        return neumf

    def _train(
        self,
        model: nn.Module,
        lr: float,
        positives: _Positives,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> list[float]:
        """``epochs`` passes of shuffled mini-batches; the mean loss of each epoch.

        Each epoch draws fresh negatives for every positive.
        """
        optimiser = torch.optim.Adam(
            model.parameters(), lr=lr, weight_decay=self.weight_decay
        )
        model.train()
        losses = []
        for _ in range(self.epochs):
            users, items, labels = positives.with_negatives(self.negatives, rng)
            order = torch.randperm(len(labels), generator=generator)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                logits = model(users[batch], items[batch])
                loss = F.binary_cross_entropy_with_logits(logits, labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            losses.append(total / len(labels))
        return losses

    def _catalogue_scores(self, model: _NeuMF, split: MarketSplit) -> np.ndarray:
        model.eval()
        scores = np.empty((split.num_users, split.num_items), dtype=np.float64)
        for start in range(0, split.num_users, _SCORE_USERS_PER_CHUNK):
            users = torch.arange(
                start, min(start + _SCORE_USERS_PER_CHUNK, split.num_users)
            )
            scores[start : start + len(users)] = model.catalogue_logits(users).numpy()
        return scores


# ---------------------------------------------------------------------------
# Validation and tuning
# ---------------------------------------------------------------------------


def held_out_ranks(scores: np.ndarray, split: MarketSplit, which: str) -> np.ndarray:
    """(U,) rank of each user's held-out item among its sampled negatives.

    scores: (U, C) from a :class:`Scorer`; ties count against the held-out item.
    """
    _check_which(which)
    expected = (split.num_users, split.num_items)
    if scores.shape != expected:
        raise ValueError(
            f"rank: {split.market}: expected scores of shape {expected} (users, "
            f"catalogue), got {scores.shape}"
        )
    held_out = split.test_item if which == "test" else split.valid_item
    negatives = split.test_negatives if which == "test" else split.valid_negatives
    positive = scores[np.arange(split.num_users), held_out]
    return rank_of_positive(positive, np.take_along_axis(scores, negatives, axis=1))


def tune(
    scorer_factory: Callable[..., Scorer],
    grid: Mapping[str, Sequence[Any]],
    split: MarketSplit,
    budget: int,
    seed: int = 0,
    k: int = 10,
) -> dict[str, Any]:
    """Hyperparameters of ``scorer_factory`` with the best validation NDCG@k.

    Random search (Bergstra and Bengio, JMLR 2012) over the product of ``grid``:
    ``budget`` configurations are scored, always including the first (the first
    value of every list, meant as the default) and the others drawn without
    replacement with ``seed``; the whole grid when it has ``budget`` points or
    fewer. Each configuration ``scorer_factory(**params)`` is ranked on the
    validation items and negatives only, never on test items. Equal scores go to
    the configuration earlier in grid order.
    """
    if budget < 1:
        raise ValueError(f"tune: budget must be >= 1 configuration, got {budget}")
    empty = [name for name, values in grid.items() if len(values) == 0]
    if empty:
        raise ValueError(f"tune: grid lists no value for {', '.join(empty)}")
    names = list(grid)
    sizes = [len(grid[name]) for name in names]
    total = math.prod(sizes)
    if total <= budget:
        chosen = np.arange(total)
    else:
        rng = np.random.default_rng(seed)
        others = rng.choice(np.arange(1, total), size=budget - 1, replace=False)
        chosen = np.sort(np.concatenate(([0], others)))

    best_params: dict[str, Any] = {}
    best_value = -math.inf
    for index in chosen:
        position = np.unravel_index(int(index), sizes) if sizes else ()
        params = {
            name: grid[name][int(at)] for name, at in zip(names, position, strict=True)
        }
        scores = scorer_factory(**params).score(split, "valid")
        value = float(ndcg(held_out_ranks(scores, split, "valid"), k).mean())
        logger.debug(
            "tune: %s: %s -> valid ndcg@%s %.4f", split.market, params, k, value
        )
        if value > best_value:
            best_params, best_value = params, value
    logger.info(
        "tune: %s: best of %s configurations (of %s) %s, valid ndcg@%s %.4f",
        split.market,
        len(chosen),
        total,
        best_params,
        k,
        best_value,
    )
    return best_params


def _check_which(which: str) -> None:
    if which not in ("valid", "test"):
        raise ValueError(f"score: which must be 'valid' or 'test', got {which!r}")
