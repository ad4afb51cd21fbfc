"""Adapters mapping vision features into another model's input space.

``linear`` is eP-ALM's connector: one ``Linear(vision_width, lm_width)``. ``mlp`` adds a hidden layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from zoo.registry import ADAPTERS

__all__ = ["LinearAdapter", "MLPAdapter"]


@ADAPTERS.register("linear")
class LinearAdapter(nn.Module):
    def __init__(self, in_width: int, out_width: int, bias: bool = True):
        super().__init__()
        self.in_width, self.width = in_width, out_width
        self.proj = nn.Linear(in_width, out_width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@ADAPTERS.register("mlp")
class MLPAdapter(nn.Module):
    def __init__(self, in_width: int, out_width: int, hidden: int | None = None, activation: str = "gelu"):
        super().__init__()
        acts = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            from zoo.spec import ConfigError  # noqa: PLC0415

            raise ConfigError(f"activation must be one of {', '.join(acts)}, got {activation!r}")
        hidden = hidden or out_width
        self.in_width, self.width = in_width, out_width
        self.net = nn.Sequential(nn.Linear(in_width, hidden), acts[activation](), nn.Linear(hidden, out_width))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
