"""eP-ALM official checkpoints (mshukor/eP-ALM: the trained connector and prompt only; the frozen parts come from
their own pretrained files) → this family's names."""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import Tensor

__all__ = ["convert_official_state_dict", "convert_official_checkpoint"]

_CONNECTOR = re.compile(r"^connector\.(\d+)\.(weight|bias)$")


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official eP-ALM checkpoint (``connector.{i}.{weight,bias}``, ``prompt_module.prefix_embedding.*``; frozen
    parts are not in it) → this model's names (``connector.{i}.proj.*``; prompt keys unchanged). Other keys raise."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        m = _CONNECTOR.match(key)
        if m:
            out[f"connector.{m.group(1)}.proj.{m.group(2)}"] = value
        elif key.startswith("prompt_module.prefix_embedding."):
            out[key] = value
        else:
            from zoo.hub import WeightsError  # noqa: PLC0415

            raise WeightsError(f"official eP-ALM checkpoint key {key!r} is not a connector or prompt tensor")
    return out


def convert_official_checkpoint(checkpoint: str, out_dir: str, model: str | None = None, task: str | None = None,
                                parts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An official eP-ALM checkpoint (``torch.save`` of ``{"model": ..., "optimizer": ..., "config": ...}``, read with
    ``weights_only=True``) → a trainable-only export of ``model`` (default ``epalm-opt2.7b-vitb16``, the "ePALM"
    checkpoints: OPT-2.7B + ViT-B/16) built for ``task``; its tensors must be exactly the model's connectors and
    prompt. ``parts``: where the frozen parts load from (``lm.pretrained``, ``vision.pretrained``)."""
    from zoo.hub import load_state_dict, save_adapter_export  # noqa: PLC0415

    name = model or "epalm-opt2.7b-vitb16"
    tensors = convert_official_state_dict(load_state_dict(checkpoint))
    save_adapter_export(name, task, tensors, out_dir, parts=parts, what=str(checkpoint))
    return {"model": name, "task": task, "tensors": len(tensors)}
