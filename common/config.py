"""Typed configuration shared by the server, the clients and the simulations.

The Flower run config (kebab-case keys in ``pyproject.toml``) is read once at the
boundary by :func:`from_run_config`; past that point everything sees frozen
dataclasses, never the config system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Weighting = Literal["examples", "uniform"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the recommender.

    embedding_dim: width of the item vectors.
    num_buckets: rows of each hashed item table; a product id is hashed to two rows.
    max_history: a user is represented by at most this many latest items.
    """

    embedding_dim: int = 32
    num_buckets: int = 4096
    max_history: int = 50

    def __post_init__(self) -> None:
        _require_positive(self, "embedding_dim", "num_buckets", "max_history")


@dataclass(frozen=True)
class AdaptConfig:
    """The inner loop: ``inner_steps`` Adam steps at ``inner_lr`` on support data."""

    inner_steps: int = 20
    inner_lr: float = 0.01
    batch_size: int = 64

    def __post_init__(self) -> None:
        _require_positive(self, "inner_steps", "inner_lr", "batch_size")


@dataclass(frozen=True)
class MetaConfig:
    """The Reptile outer loop on the server.

    meta_lr: step size ε of θ ← θ + ε·mean(Δ); 1.0 with one merchant is plain
        fine-tuning, and with many merchants the mean of their adapted weights.
    meta_lr_final: meta_lr is annealed linearly from ``meta_lr`` in the first round
        to this value in the last (the schedule of the Reptile paper).
    weighting: ``examples`` weighs each delta by its merchant's number of support
        interactions, ``uniform`` weighs every merchant alike.
    """

    num_rounds: int = 20
    meta_lr: float = 1.0
    meta_lr_final: float = 0.1
    weighting: Weighting = "examples"
    fraction_train: float = 1.0
    min_train_merchants: int = 2
    round_timeout: float = 600.0

    def __post_init__(self) -> None:
        _require_positive(self, "num_rounds", "meta_lr", "round_timeout")
        if self.meta_lr_final < 0:
            raise ValueError(f"meta_lr_final must be >= 0, got {self.meta_lr_final}")
        if self.weighting not in ("examples", "uniform"):
            raise ValueError(
                f"weighting must be 'examples' or 'uniform', got {self.weighting!r}"
            )
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(
                f"fraction_train must be in (0, 1], got {self.fraction_train}"
            )


@dataclass(frozen=True)
class DataConfig:
    """Where merchants' interactions come from in a simulation."""

    data_format: str = "synthetic"
    data_path: str = ""
    source_markets: tuple[str, ...] = ()
    target_markets: tuple[str, ...] = ()
    merchants_per_market: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.data_format not in ("synthetic", "xmarket", "table"):
            raise ValueError(
                "data_format must be 'synthetic', 'xmarket' or 'table', "
                f"got {self.data_format!r}"
            )
        if self.data_format != "synthetic" and not self.data_path:
            raise ValueError(f"data_format {self.data_format!r} needs a data_path")
        _require_positive(self, "merchants_per_market")


@dataclass(frozen=True)
class EvalConfig:
    """Scoring held-out new merchants during a run.

    adapt_steps, adapt_lr: the adaptation budget a new merchant spends on θ. It is
    smaller than the training inner loop's: a merchant with a handful of interactions
    per customer overfits quickly.
    """

    eval_every: int = 2
    adapt_steps: int = 20
    adapt_lr: float = 0.001
    eval_seeds: int = 3


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs, parsed from the Flower run config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str = ""
    seed: int = 0


def _require_positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _split_list(value: Any) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _pick(cls: type, raw: Mapping[str, Any], **converters: Any) -> Any:
    """Build ``cls`` from the kebab-case keys of ``raw`` that match its fields."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key = f.name.replace("_", "-")
        if key in raw:
            convert = converters.get(f.name)
            kwargs[f.name] = convert(raw[key]) if convert else raw[key]
    return cls(**kwargs)


def from_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Parse a Flower run config (kebab-case keys) into a :class:`RunConfig`."""
    model = _pick(ModelConfig, raw, embedding_dim=int, num_buckets=int, max_history=int)
    adapt = _pick(AdaptConfig, raw, inner_steps=int, inner_lr=float, batch_size=int)
    meta = _pick(
        MetaConfig,
        raw,
        num_rounds=int,
        meta_lr=float,
        meta_lr_final=float,
        fraction_train=float,
        min_train_merchants=int,
        round_timeout=float,
    )
    data = _pick(
        DataConfig,
        raw,
        source_markets=_split_list,
        target_markets=_split_list,
        merchants_per_market=int,
        seed=int,
    )
    evaluation = _pick(
        EvalConfig, raw, eval_every=int, adapt_steps=int, adapt_lr=float, eval_seeds=int
    )
    return RunConfig(
        model=model,
        adapt=adapt,
        meta=meta,
        data=data,
        evaluation=evaluation,
        run_dir=str(raw.get("run-dir", "")),
        seed=int(raw.get("seed", 0)),
    )
