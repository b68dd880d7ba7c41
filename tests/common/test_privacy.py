"""The privacy accountant against a published value and a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.config import DefenceConfig, MetaConfig, RunConfig
from common.privacy import ORDERS, epsilon, noise_stddev, rdp


def test_rdp_reproduces_the_moments_accountant_value_of_abadi_et_al() -> None:
    # Prepare: Abadi et al. 2016, "Deep Learning with Differential Privacy" (arXiv
    # 1607.00133), Section 3.1: q = 0.01, σ = 4, δ = 1e-5, T = 10,000 steps gives
    # ε ≈ 1.26 with the moments accountant, whose conversion is ε = min_α RDP(α) +
    # log(1/δ) / (α − 1) (Mironov 2017, Proposition 3).
    curve = rdp(noise_multiplier=4.0, sample_rate=0.01, rounds=10_000)
    orders = np.asarray(ORDERS)

    # Execute
    classic = float(np.min(curve + math.log(1 / 1e-5) / (orders - 1)))

    # Assert: the published value to its two decimals.
    assert classic == pytest.approx(1.26, abs=0.005)
    # The reported ε uses the tighter conversion of Balle et al. 2020: never larger.
    assert epsilon(4.0, 0.01, 10_000, 1e-5) < classic


def test_epsilon_without_subsampling_matches_the_gaussian_mechanism_by_hand() -> None:
    # Prepare: q = 1, z = 3, 20 rounds. The Gaussian mechanism's RDP is α / (2z²) per
    # round (Mironov 2017, Proposition 7), so 20 rounds give 20α / 18. Balle et al.'s
    # conversion: ε(α) = RDP(α) + log(1/δ)/(α−1) − log(α)/(α−1) + log((α−1)/α).
    # At δ = 1e-4 the grid's optimum is α = 3.7 (its neighbours 3.6 and 3.8 give
    # more): 20·3.7/18 = 4.1111; (log(1e4) − log 3.7)/2.7 = (9.2103 − 1.3083)/2.7 =
    # 2.9267; log(2.7/3.7) = −0.3151; ε = 4.1111 + 2.9267 − 0.3151 = 6.7227.
    expected = 6.7227

    # Execute
    value = epsilon(noise_multiplier=3.0, sample_rate=1.0, rounds=20, delta=1e-4)

    # Assert
    assert value == pytest.approx(expected, abs=1e-4)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    # Execute
    by_round = [epsilon(1.0, 1.0, rounds, 1e-5) for rounds in (1, 2, 10)]
    by_noise = [epsilon(z, 1.0, 10, 1e-5) for z in (0.5, 1.0, 4.0)]

    # Assert
    assert by_round == sorted(by_round) and by_round[0] < by_round[-1]
    assert by_noise == sorted(by_noise, reverse=True)
    assert epsilon(0.0, 1.0, 3, 1e-5) == math.inf
    assert epsilon(1.0, 1.0, 0, 1e-5) == 0.0


def test_noise_stddev_and_bad_inputs() -> None:
    # Execute / Assert
    assert noise_stddev(1.2, 5.0) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="clip_norm"):
        noise_stddev(1.0, 0.0)
    with pytest.raises(ValueError, match="delta"):
        epsilon(1.0, 1.0, 3, 1.5)
    with pytest.raises(ValueError, match="sample_rate"):
        rdp(1.0, 0.0, 3)


def test_dp_needs_uniform_weighting() -> None:
    # Execute / Assert: weights would let one merchant exceed the clipping bound.
    dp = DefenceConfig(clip_norm=1.0, aggregation="mean", dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="weighting = 'uniform'"):
        RunConfig(defence=dp)
    RunConfig(meta=MetaConfig(weighting="uniform"), defence=dp)
