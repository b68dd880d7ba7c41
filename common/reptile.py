"""The Reptile outer update, as small pure functions on named numpy arrays.

Reptile (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms",
arXiv 1803.02999, Algorithm 2, batched version): each sampled task i adapts θ for k
steps to θ_i, and the meta-initialisation moves towards the adapted weights:

    θ ← θ + ε · Σ_i w_i (θ_i − θ) / Σ_i w_i

Here a task is a merchant, Δ_i = θ_i − θ is the delta it sends, and ε is meta_lr.
With ε = 1 and one inner epoch this is FedAvg; Reptile's gain comes from several inner
steps per round and ε < 1 late in training (the paper anneals ε linearly to 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Arrays = Mapping[str, np.ndarray]


def compute_delta(theta: Arrays, adapted: Arrays) -> dict[str, np.ndarray]:
    """Δ = θ_adapted − θ, array by array (float32)."""
    if set(theta) != set(adapted):
        raise ValueError(
            f"compute_delta: names differ: {sorted(set(theta) ^ set(adapted))}"
        )
    return {
        name: (
            np.asarray(adapted[name], np.float32) - np.asarray(theta[name], np.float32)
        )
        for name in theta
    }


def weighted_mean(
    deltas: Sequence[Arrays], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Σ_i w_i Δ_i / Σ_i w_i, accumulated in float64 and returned as float32."""
    if not deltas:
        raise ValueError("weighted_mean: no deltas")
    if len(deltas) != len(weights):
        raise ValueError(
            f"weighted_mean: {len(deltas)} deltas but {len(weights)} weights"
        )
    weight = np.asarray(weights, dtype=np.float64)
    if np.any(weight < 0) or not np.isfinite(weight).all() or weight.sum() <= 0:
        raise ValueError(
            f"weighted_mean: weights must be >= 0 with a positive sum: {weights}"
        )
    weight = weight / weight.sum()
    mean: dict[str, np.ndarray] = {}
    for name in deltas[0]:
        total = np.zeros(np.shape(deltas[0][name]), dtype=np.float64)
        for w, delta in zip(weight, deltas, strict=True):
            total += w * np.asarray(delta[name], dtype=np.float64)
        mean[name] = total.astype(np.float32)
    return mean


def apply_step(theta: Arrays, step: Arrays, meta_lr: float) -> dict[str, np.ndarray]:
    """θ + meta_lr · step, in float32.

    A huge finite step can overflow to Inf; that is returned, not warned about, so the
    caller decides what a non-finite θ means (the strategy keeps the previous θ).
    """
    with np.errstate(over="ignore"):
        return {
            name: (
                np.asarray(theta[name], np.float32) + np.float32(meta_lr) * step[name]
            ).astype(np.float32)
            for name in theta
        }


def reptile_update(
    theta: Arrays,
    deltas: Sequence[Arrays],
    weights: Sequence[float],
    meta_lr: float,
) -> dict[str, np.ndarray]:
    """One Reptile step: θ + meta_lr · weighted_mean(Δ)."""
    return apply_step(theta, weighted_mean(deltas, weights), meta_lr)


def meta_lr_at(
    server_round: int, num_rounds: int, initial: float, final: float
) -> float:
    """Linearly annealed meta_lr: ``initial`` in round 1, ``final`` in the last."""
    if num_rounds <= 1:
        return initial
    progress = min(max(server_round - 1, 0), num_rounds - 1) / (num_rounds - 1)
    return initial + (final - initial) * progress


def delta_weights(num_examples: Sequence[int], weighting: str) -> list[float]:
    """Aggregation weights: by support interactions (``examples``) or ``uniform``."""
    if weighting == "uniform":
        return [1.0] * len(num_examples)
    if weighting == "examples":
        return [float(n) for n in num_examples]
    raise ValueError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")


def global_norm(arrays: Arrays) -> float:
    """L2 norm of all arrays together."""
    return float(
        np.sqrt(
            sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values())
        )
    )
