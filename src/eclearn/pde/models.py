"""The fully connected network used for physics-informed problems."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["MLP"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


class MLP(nn.Module):
    """``depth`` hidden layers of width ``hidden`` with a smooth activation; Xavier init.

    The default, 4 × 50 tanh on inputs ``(x, t)``, is the network of the convection
    experiments (Krishnapriyan et al. 2021; Barthakur & Chamon 2025). Weights are
    Xavier-uniform and biases zero. Smooth activations (tanh) matter: PDE residuals use
    second derivatives of the output, which vanish for ReLU.
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden: int = 50,
        depth: int = 4,
        out_features: int = 1,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("hidden", hidden),
            ("depth", depth),
            ("out_features", out_features),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MLP({name}={value!r}): must be a positive integer")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"MLP(activation={activation!r}): unknown; choose one of {sorted(_ACTIVATIONS)}"
            )
        widths = [in_features] + [hidden] * depth
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(hidden, out_features))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = out_features
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases (draws from torch's global RNG)."""
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        """``[n, in_features] -> [n, out_features]``."""
        if inputs.dim() != 2 or inputs.shape[1] != self.in_features:
            raise ValueError(
                f"MLP.forward(inputs=...): expected shape [n, {self.in_features}], got "
                f"{tuple(inputs.shape)}"
            )
        return self.net(inputs)
