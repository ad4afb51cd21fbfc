"""LoRA helpers over peft: merging injected LoRA layers into their base layers."""

from __future__ import annotations

from torch import nn

__all__ = ["has_lora", "merge_lora"]


def has_lora(module: nn.Module) -> bool:
    """Whether peft LoRA layers are injected anywhere under ``module``."""
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    return any(isinstance(m, LoraLayer) for m in module.modules())


def merge_lora(module: nn.Module) -> int:
    """Merge every peft LoRA layer under ``module`` into its base layer (peft's ``merge``) and put the base layer back
    in its place (what ``merge_and_unload`` does); returns how many were merged."""
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    targets = [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in targets:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(targets)
