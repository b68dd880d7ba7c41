"""Adam, written out: the arithmetic of ``torch.optim.Adam`` with its defaults.

Adam (Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015), per
parameter tensor, at its step t:

    m ← β₁ m + (1 − β₁) g          v ← β₂ v + (1 − β₂) g²
    θ ← θ − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

Why not ``torch.optim.Adam`` itself: its first use in a process imports
``torch._dynamo``, which took 2 seconds on an idle core of the development machine
and 9 on a busy one, while the adaptation it serves takes a tenth of a second. A
deployed merchant's ClientApp runs every round in a fresh process, and so does a new
merchant's one-off adaptation, so each paid that import every time.

The update performs the operations of torch's single-tensor Adam (the path it takes
for CPU tensors without weight decay, amsgrad or capturable) in the same order, so
the parameters it produces are bitwise those of ``torch.optim.Adam``; a test checks
it step by step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam over ``parameters`` with step size ``lr`` (betas and ε as torch's)."""

    def __init__(
        self,
        parameters: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.parameters = list(parameters)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.first = [torch.zeros_like(p) for p in self.parameters]  # m
        self.second = [torch.zeros_like(p) for p in self.parameters]  # v
        # Per tensor, as torch counts: a tensor without a gradient does not step.
        self.steps = [0] * len(self.parameters)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (dropped, as torch does by default, or zeroed)."""
        for parameter in self.parameters:
            if set_to_none:
                parameter.grad = None
            elif parameter.grad is not None:
                parameter.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter that has a gradient."""
        for index, parameter in enumerate(self.parameters):
            gradient = parameter.grad
            if gradient is None:
                continue
            self.steps[index] += 1
            step = float(self.steps[index])
            first, second = self.first[index], self.second[index]

            # Moments: m ← m + (1 − β₁)(g − m), v ← β₂ v + (1 − β₂) g².
            first.lerp_(gradient, 1 - self.beta1)
            second.mul_(self.beta2).addcmul_(gradient, gradient, value=1 - self.beta2)

            # Bias-corrected step, in torch's order of operations.
            step_size = self.lr / (1 - self.beta1**step)
            bias_correction2_sqrt = (1 - self.beta2**step) ** 0.5
            denominator = (second.sqrt() / bias_correction2_sqrt).add_(self.eps)
            parameter.addcdiv_(first, denominator, value=-step_size)
