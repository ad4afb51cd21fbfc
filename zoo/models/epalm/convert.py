"""eP-ALM official checkpoints (mshukor/eP-ALM: the trained connector and prompt only; the frozen parts come from
their own pretrained files) → this family's names."""

from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor

__all__ = ["convert_official_state_dict"]

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
