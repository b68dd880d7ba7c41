"""The written-out Adam: bitwise torch.optim.Adam, and the textbook first step."""

from __future__ import annotations

import numpy as np
import torch

from common.adam import Adam


def _parameters(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(6, 3, generator=generator).requires_grad_(),
        torch.randn(4, generator=generator).requires_grad_(),
    ]


def _loss(parameters: list[torch.Tensor], step: int) -> torch.Tensor:
    table, bias = parameters
    weights = torch.linspace(-1.0, 2.0, 3) * (step + 1)
    return ((table @ weights).sin() ** 2).sum() + (bias**3).mean()


def test_every_step_is_bitwise_that_of_torch_adam() -> None:
    # Prepare: the same parameters under both optimisers; the bias gets no gradient
    # on odd steps, which torch's Adam skips without counting a step.
    ours, theirs = _parameters(0), _parameters(0)
    mine = Adam(ours, lr=0.01)
    reference = torch.optim.Adam(theirs, lr=0.01)

    for step in range(25):
        # Execute
        for parameters, optimiser in ((ours, mine), (theirs, reference)):
            optimiser.zero_grad(set_to_none=True)
            loss = _loss(parameters, step)
            if step % 2:
                loss = ((parameters[0] ** 2).sum() * 0.5) + 0 * loss.detach()
            loss.backward()
            optimiser.step()

        # Assert: identical bits after every step.
        for one, other in zip(ours, theirs, strict=True):
            assert torch.equal(one, other), f"differs after step {step}"


def test_the_first_step_moves_each_value_by_lr_against_its_gradient_sign() -> None:
    # Prepare: after one step m̂ = g and v̂ = g², so θ moves by lr · g / (|g| + ε),
    # i.e. by lr (to within ε) against the sign of the gradient.
    parameter = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    optimiser = Adam([parameter], lr=0.1)

    # Execute
    (parameter * torch.tensor([3.0, -0.5, 0.0])).sum().backward()
    optimiser.step()

    # Assert: gradients 3, -0.5, 0 -> moves -0.1, +0.1, 0.
    np.testing.assert_allclose(
        parameter.detach().numpy(), [0.9, -1.9, 0.5], rtol=0, atol=1e-6
    )


def test_zero_grad_drops_or_zeroes_the_gradients() -> None:
    # Prepare
    parameter = torch.ones(2, requires_grad=True)
    optimiser = Adam([parameter], lr=0.1)
    parameter.sum().backward()

    # Execute / Assert
    optimiser.zero_grad(set_to_none=False)
    assert parameter.grad is not None and torch.equal(parameter.grad, torch.zeros(2))
    optimiser.zero_grad()
    assert parameter.grad is None
