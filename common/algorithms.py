"""What a merchant computes in a round, per federated algorithm, and central training.

Reptile and FedAvg send the same thing, Δ = θ_i − θ after ``inner_steps`` of local
training; they differ on the server (Reptile anneals meta_lr, FedAvg keeps it at 1 so
θ becomes the average of the merchants' weights). First-order MAML (Finn et al. ICML
2017, first-order variant; Nichol et al. 2018 §3) adapts on support batches and sends
the gradient of a separate query batch taken at the adapted weights.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

import numpy as np
import torch

from common.adapt import (
    AdaptResult,
    MerchantData,
    adapt,
    example_loss,
    item_rows,
    with_item_rows,
)
from common.config import AdaptConfig, ModelConfig
from common.model import build_model, to_numpy
from common.reptile import compute_delta


def merchant_delta(
    algorithm: str,
    theta: dict[str, np.ndarray],
    data: MerchantData,
    model: ModelConfig,
    config: AdaptConfig,
    seed: int,
) -> tuple[dict[str, np.ndarray], AdaptResult]:
    """The delta a merchant sends for ``algorithm``, and its inner-loop facts."""
    result = adapt(theta, data, model, config, seed)
    if algorithm in ("reptile", "fedavg"):
        return compute_delta(theta, result.parameters), result
    if algorithm != "fomaml":
        raise ValueError(f"unknown algorithm {algorithm!r}")

    # First-order MAML: ∇ of a query batch at the adapted weights θ_i, applied at θ.
    # Δ = −inner_lr · inner_steps · ∇L_query(θ_i): the size of a Reptile step.
    adapted = build_model(model, result.parameters)
    generator = torch.Generator().manual_seed(seed + 1)
    batch = torch.randint(
        data.num_examples,
        (min(config.batch_size, data.num_examples),),
        generator=generator,
    )
    loss = example_loss(
        adapted,
        torch.from_numpy(data.catalogue),
        torch.from_numpy(data.histories),
        torch.from_numpy(data.example_user)[batch],
        torch.from_numpy(data.example_position)[batch],
    )
    adapted.zero_grad(set_to_none=False)
    loss.backward()
    scale = -config.inner_lr * config.inner_steps
    delta = {
        name: (scale * parameter.grad.detach().numpy()).astype(np.float32)
        if parameter.grad is not None
        else np.zeros(tuple(parameter.shape), np.float32)
        for name, parameter in adapted.named_parameters()
    }
    return delta, result


def train_pooled(
    theta: dict[str, np.ndarray],
    datasets: Sequence[MerchantData],
    model: ModelConfig,
    config: AdaptConfig,
    seed: int,
    snapshots: Collection[int] = (),
) -> dict[int, dict[str, np.ndarray]]:
    """Central training on several merchants' data pooled (a non-private reference).

    One model and one Adam optimiser; each step takes a minibatch from one merchant,
    chosen in proportion to its number of examples (each merchant keeps its own
    catalogue for the softmax, as in federated training). Returns θ after
    ``config.inner_steps`` steps and after each step count of ``snapshots``, keyed by
    step count, so that a training length can be chosen on validation in one run.

    As in :func:`common.adapt.adapt`, only the item-table rows some catalogue hashes
    to are trained, on a compact copy: the other rows never get a gradient, so Adam
    leaves them exactly where they are.
    """
    rows = np.unique(np.concatenate([d.catalogue.ravel() for d in datasets]))
    net = build_model(replace(model, num_buckets=len(rows)), item_rows(theta, rows))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.inner_lr)
    rng = np.random.default_rng(seed)
    sizes = np.array([d.num_examples for d in datasets], dtype=np.float64)
    tensors = [
        (
            torch.from_numpy(np.searchsorted(rows, d.catalogue).astype(np.int64)),
            torch.from_numpy(d.histories),
            torch.from_numpy(d.example_user),
            torch.from_numpy(d.example_position),
        )
        for d in datasets
    ]

    def written_back() -> dict[str, np.ndarray]:
        return with_item_rows(theta, rows, to_numpy(net))

    generator = torch.Generator().manual_seed(seed)
    kept = {0: written_back()} if 0 in snapshots or config.inner_steps == 0 else {}
    for step in range(1, config.inner_steps + 1):
        index = int(rng.choice(len(datasets), p=sizes / sizes.sum()))
        catalogue, histories, users, positions = tensors[index]
        batch = torch.randint(
            len(users), (min(config.batch_size, len(users)),), generator=generator
        )
        loss = example_loss(net, catalogue, histories, users[batch], positions[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in snapshots or step == config.inner_steps:
            kept[step] = written_back()
    return kept
