"""MultiModal-GPT (OpenFlamingo + LoRA): the model (:mod:`.model`), its perceiver and gated cross-attention
(:mod:`.flamingo`), its instruction template and language-only side stream (:mod:`.instruction`) and the
official-checkpoint converter (:mod:`.convert`)."""

from __future__ import annotations

from zoo.models.mmgpt.convert import convert_official_state_dict
from zoo.models.mmgpt.model import OFFICIAL_LORA_TARGETS, MultiModalGPT, merge_lora

__all__ = ["MultiModalGPT", "OFFICIAL_LORA_TARGETS", "merge_lora", "convert_official_state_dict"]
