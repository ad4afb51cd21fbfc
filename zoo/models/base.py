"""What every assembled model shares: its resolved config, export, parameter accounting."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

__all__ = ["ZooModel", "count_parameters", "input_resolution"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (a tied tensor counts once), as the official reference counts do."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def input_resolution(model: nn.Module) -> int | None:
    """The image side a model takes: its vision part's ``image_size``, else its config's ``default_resolution``."""
    size = getattr(getattr(model, "vision", None), "image_size", None)
    return size or (getattr(model, "zoo_config", None) or {}).get("default_resolution")


class ZooModel(nn.Module):
    """Base class of registered models. :func:`zoo.create_model` fills ``zoo_config`` with the resolved config."""

    zoo_config: dict | None = None

    def save_pretrained(self, directory: str | os.PathLike, *, trainable_only: bool = False, tokenizer=None) -> Path:
        """Export for :func:`zoo.from_pretrained` (see :func:`zoo.hub.save_pretrained`)."""
        from zoo.hub import save_pretrained  # noqa: PLC0415

        return save_pretrained(self, directory, trainable_only=trainable_only, tokenizer=tokenizer)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return count_parameters(self, trainable_only)
