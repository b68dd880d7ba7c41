"""Bounding and robustly aggregating merchants' deltas: pure functions on named arrays.

Three defences against a careless or hostile merchant, each usable alone:

- Norm clipping: every delta is scaled down to an L2 norm of at most ``clip_norm``
  (the per-client clipping of DP-FedAvg, McMahan et al. 2018, "Learning
  Differentially Private Recurrent Language Models", arXiv 1710.06963). One merchant
  then moves the mean of k deltas by at most ``clip_norm / k``, however large its
  delta, and the bound is what differential privacy's noise is calibrated to.
- Coordinate-wise median and coordinate-wise trimmed mean (Yin, Chen, Ramchandran and
  Bartlett 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
  Rates", arXiv 1803.01498): a single extreme value in a coordinate is ignored
  entirely instead of being averaged in.

Why not Flower's ``FedMedian``, ``FedTrimmedAvg`` and DP wrappers: they are strategies
that read the replies themselves. The robust ones would compute the right thing on
deltas (a median or trimmed mean is unchanged by adding the same θ to every input), but
they run Flower's own reply consistency check, which ends the run on one malformed
reply, and they return weights rather than a step for the Reptile update. The DP
wrappers compute ``reply − sent`` and so assume merchants send full weights. Here the
server has already validated and decoded every delta, so the aggregation is a plain
function of a list of arrays, testable without Flower.

The median and the trimmed mean ignore the merchants' weights: weighting by a
self-reported number of examples would hand a hostile merchant the lever the robust
statistic is meant to take away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.config import DefenceConfig
from common.privacy import noisy_mean
from common.reptile import global_norm, weighted_mean

Arrays = Mapping[str, np.ndarray]

AGGREGATIONS = ("mean", "median", "trimmed-mean")


@dataclass(frozen=True)
class Clipped:
    """A delta after clipping, its norm before, and whether it was scaled down."""

    delta: dict[str, np.ndarray]
    norm: float
    clipped: bool = False


def clip_by_norm(delta: Arrays, clip_norm: float) -> Clipped:
    """Scale ``delta`` so that its global L2 norm is at most ``clip_norm``.

    Δ · min(1, C / ‖Δ‖). ``clip_norm <= 0`` turns clipping off. The norm is taken over
    all arrays together (as in DP-FedAvg), so the bound holds for the whole update.
    """
    norm = global_norm(delta)
    if clip_norm <= 0 or norm <= clip_norm:
        return Clipped({k: np.asarray(v, np.float32) for k, v in delta.items()}, norm)
    scale = clip_norm / norm
    return Clipped(
        {
            k: (np.asarray(v, np.float64) * scale).astype(np.float32)
            for k, v in delta.items()
        },
        norm,
        clipped=True,
    )


def _stack(deltas: Sequence[Arrays], name: str) -> np.ndarray:
    return np.stack([np.asarray(d[name], dtype=np.float64) for d in deltas])


def coordinate_median(deltas: Sequence[Arrays]) -> dict[str, np.ndarray]:
    """The median of every coordinate over the merchants (float32)."""
    if not deltas:
        raise ValueError("coordinate_median: no deltas")
    return {
        name: np.median(_stack(deltas, name), axis=0).astype(np.float32)
        for name in deltas[0]
    }


def trim_count(num_deltas: int, trim_fraction: float) -> int:
    """How many values are dropped at each end: ⌊trim_fraction · k⌋.

    Never so many that nothing is left: at most (k − 1) // 2 per end.
    """
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    count = math.floor(trim_fraction * num_deltas + 1e-9)
    return min(count, (num_deltas - 1) // 2)


def trimmed_mean(
    deltas: Sequence[Arrays], trim_fraction: float
) -> dict[str, np.ndarray]:
    """Per coordinate, the mean after dropping the ⌊βk⌋ largest and smallest values."""
    if not deltas:
        raise ValueError("trimmed_mean: no deltas")
    cut = trim_count(len(deltas), trim_fraction)
    result = {}
    for name in deltas[0]:
        ordered = np.sort(_stack(deltas, name), axis=0)
        kept = ordered[cut : len(deltas) - cut]
        result[name] = kept.mean(axis=0).astype(np.float32)
    return result


def aggregate(
    deltas: Sequence[Arrays],
    weights: Sequence[float],
    method: str = "mean",
    trim_fraction: float = 0.2,
) -> dict[str, np.ndarray]:
    """The step the Reptile update applies: weighted mean, median or trimmed mean."""
    if method == "mean":
        return weighted_mean(deltas, weights)
    if method == "median":
        return coordinate_median(deltas)
    if method == "trimmed-mean":
        return trimmed_mean(deltas, trim_fraction)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")


@dataclass(frozen=True)
class Step:
    """The aggregated step of one round and what clipping did to get it."""

    step: dict[str, np.ndarray]
    clipped: int  # deltas scaled down to the clipping bound
    norms: tuple[float, ...]  # each delta's norm before clipping

    @property
    def clip_rate(self) -> float:
        """Share of the round's deltas that were scaled down."""
        return self.clipped / len(self.norms) if self.norms else 0.0


def defended_step(
    deltas: Sequence[Arrays],
    weights: Sequence[float],
    defence: DefenceConfig,
    num_sampled: int,
    rng: np.random.Generator | None = None,
) -> Step:
    """Clip every delta, then aggregate: noisy sum with DP, else mean / median / trim.

    ``num_sampled`` is the number of merchants the round asked (the DP denominator);
    ``rng`` draws the DP noise. Without one, a generator seeded from the operating
    system is used: noise derived from the run's public seed could be subtracted.
    """
    clipped = [clip_by_norm(delta, defence.clip_norm) for delta in deltas]
    bounded = [c.delta for c in clipped]
    if defence.dp_noise_multiplier > 0:
        step = noisy_mean(
            bounded,
            num_sampled,
            defence.dp_noise_multiplier,
            defence.clip_norm,
            rng if rng is not None else np.random.default_rng(),
        )
    else:
        step = aggregate(bounded, weights, defence.aggregation, defence.trim_fraction)
    return Step(
        step,
        clipped=sum(c.clipped for c in clipped),
        norms=tuple(c.norm for c in clipped),
    )
