"""Differential privacy of the Reptile update: the Gaussian mechanism and its ε.

The mechanism is DP-FedAvg's (McMahan, Ramage, Talwar and Zhang 2018, "Learning
Differentially Private Recurrent Language Models", arXiv 1710.06963), with the merchant
as the unit of privacy:

    step = (Σ_i clip(Δ_i, C) + N(0, z²C²·I)) / m

m is the number of merchants sampled in the round, fixed by the server before any
merchant answers; a merchant that fails counts as a zero delta. Adding or removing one
merchant changes the sum by at most C, so each round is a Gaussian mechanism with noise
multiplier z, subsampled at rate q = m / N when the server samples m of N merchants.

The noise is central: the server adds it, so the server is trusted with the noise-free
sum (and, without secure aggregation, with each delta). What the guarantee protects is
everything derived from θ: the model other merchants and new merchants receive.
A guarantee for one merchant covers all of its customers at once, so it is at least as
strong as a guarantee for any one customer.

Accounting: the Rényi DP of the subsampled Gaussian mechanism (Mironov, Talwar and Zhang
2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism", arXiv 1908.10530),
composed over rounds and converted to (ε, δ) with Balle et al. 2020 ("Hypothesis
Testing Interpretations and Rényi Differential Privacy", arXiv 1905.09982, Theorem 21),
both as implemented by Opacus' RDP accountant. The analysis assumes Poisson sampling;
the server samples a fixed number of merchants without replacement, for which this is
the usual approximation. With every merchant in every round (q = 1) it is exact.
Flower itself computes the noise of its DP wrappers but has no accountant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Arrays = Mapping[str, np.ndarray]

# Rényi orders at which the privacy loss is tracked (Opacus' default grid, extended
# so that small noise multipliers over few rounds still find an interior optimum).
ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    *(64, 96, 128, 256, 512, 1024),
)


def noise_stddev(noise_multiplier: float, clip_norm: float) -> float:
    """Standard deviation z·C of the noise added to the sum of clipped deltas."""
    if noise_multiplier < 0 or clip_norm <= 0:
        raise ValueError(
            "noise_stddev: noise_multiplier must be >= 0 and clip_norm > 0, got "
            f"{noise_multiplier} and {clip_norm}"
        )
    return noise_multiplier * clip_norm


def noisy_mean(
    clipped: Sequence[Arrays],
    num_sampled: int,
    noise_multiplier: float,
    clip_norm: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """(Σ clipped Δ_i + N(0, z²C²)) / m, with m the number of merchants sampled.

    ``clipped`` must already be clipped to ``clip_norm``; the sum is not re-checked.
    """
    if not clipped:
        raise ValueError("noisy_mean: no deltas")
    if num_sampled < len(clipped):
        raise ValueError(
            f"noisy_mean: {len(clipped)} deltas, only {num_sampled} merchants sampled"
        )
    stddev = noise_stddev(noise_multiplier, clip_norm)
    result = {}
    for name in clipped[0]:
        total = np.zeros(np.shape(clipped[0][name]), dtype=np.float64)
        for delta in clipped:
            total += np.asarray(delta[name], dtype=np.float64)
        total += rng.normal(0.0, stddev, size=total.shape)
        result[name] = (total / num_sampled).astype(np.float32)
    return result


def rdp(noise_multiplier: float, sample_rate: float, rounds: int) -> np.ndarray:
    """Rényi DP of ``rounds`` subsampled Gaussian rounds, at each order of ORDERS."""
    if noise_multiplier <= 0:
        raise ValueError(f"rdp: noise_multiplier must be > 0, got {noise_multiplier}")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"rdp: sample_rate must be in (0, 1], got {sample_rate}")
    # Imported here: Opacus pulls in torch.distributed (seconds), and every merchant's
    # ClientApp process imports this module for noisy_mean's neighbours, never for ε.
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(
        compute_rdp(
            q=sample_rate,
            noise_multiplier=noise_multiplier,
            steps=rounds,
            orders=list(ORDERS),
        ),
        dtype=np.float64,
    )


def epsilon(
    noise_multiplier: float, sample_rate: float, rounds: int, delta: float
) -> float:
    """ε of the whole run after ``rounds`` rounds, for the given δ.

    A pure function of the run's settings and the round number, so a run resumed from
    a checkpoint reports the same ε as one that never stopped. ``inf`` without noise.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"epsilon: delta must be in (0, 1), got {delta}")
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants.analysis.rdp import get_privacy_spent

    value, _ = get_privacy_spent(
        orders=list(ORDERS), rdp=rdp(noise_multiplier, sample_rate, rounds), delta=delta
    )
    return float(value)
