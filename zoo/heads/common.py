"""Small pieces shared by heads."""

from __future__ import annotations

from torch import nn

__all__ = ["mlp_head"]


def mlp_head(width: int, out: int, hidden: int | None = None, eps: float = 1e-5) -> nn.Sequential:
    """``Linear(d, h) → LayerNorm → GELU → Linear(h, out)`` (X²-VLM's ``build_mlp``: itm/bbox/classifier heads, keys
    ``0``, ``1``, ``3``; its LayerNorm keeps torch's default eps 1e-5)."""
    hidden = hidden or 2 * width
    return nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden, eps=eps), nn.GELU(), nn.Linear(hidden, out))
