"""OpenFlamingo / MultiModal-GPT official checkpoints (open-mmlab/Multimodal-GPT, with or without LoRA) → this
family's names (read by the model's ``load_flamingo``)."""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import Tensor

__all__ = ["convert_official_state_dict", "convert_official_checkpoint"]

_RULES = [
    (re.compile(r"^lang_encoder\.(?:base_model\.model\.)?gated_cross_attn_layers\.(\d+)\.(.+)$"), r"lm.inserted.\1.\2"),
    (re.compile(r"^lang_encoder\.(?:base_model\.model\.)?model\.layers\.(\d+)\.gated_cross_attn_layer\.(.+)$"),
     r"lm.inserted.\1.\2"),
    (re.compile(r"^lang_encoder\.(?:base_model\.model\.)?model\.layers\.(\d+)\.decoder_layer\.(.+)$"),
     r"lm.model.model.layers.\1.\2"),
    (re.compile(r"^lang_encoder\.(?:base_model\.model\.)?(model\.(?:embed_tokens|norm)\..+|lm_head\..+)$"),
     r"lm.model.\1"),
    (re.compile(r"^perceiver\.(.+)$"), r"perceiver.\1"),
    (re.compile(r"^vision_encoder\.(visual\..+)$"), r"vision.\1"),
]


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """OpenFlamingo / MultiModal-GPT keys (``module.`` prefix allowed) → this model's: ``perceiver.*`` unchanged,
    ``lang_encoder[.base_model.model].gated_cross_attn_layers.<i>.*`` and ``...model.layers.<i>.gated_cross_attn_layer
    .*`` → ``lm.inserted.<i>.*``, ``...model.layers.<i>.decoder_layer.*`` → ``lm.model.model.layers.<i>.*``, embeddings
    and ``lm_head`` → ``lm.model.*``, ``vision_encoder.visual.*`` → ``vision.visual.*``; peft's old LoRA names
    ``lora_A.weight`` get the adapter name (``lora_A.default.weight``). Keys already in this model's names pass;
    the CLIP text tower (``vision_encoder.*`` other than ``visual``) is dropped; others raise."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(("lm.", "vision.")) or key.startswith("perceiver."):
            new = key
        else:
            new = None
            for pattern, repl in _RULES:
                if pattern.match(key):
                    new = pattern.sub(repl, key)
                    break
            if new is None:
                if key.startswith("vision_encoder."):
                    continue
                from zoo.hub import WeightsError  # noqa: PLC0415

                raise WeightsError(f"official MultiModal-GPT key {key!r} has no place in this model")
        new = re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", new)
        out[new] = value
    # one tensor reaches the blocks under two official names: keep one
    return out


def convert_official_checkpoint(checkpoint: str, out_dir: str, model: str | None = None, task: str | None = None,
                                parts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A MultiModal-GPT LoRA checkpoint (the training script's ``{"model_state_dict": ..., "tuning_config": ...}``:
    the trainable tensors with a ``module.`` prefix beside an mmengine config object, which is read as an inert
    placeholder — mmengine is never imported) → a trainable-only export of ``model`` (default
    ``mmgpt-llama7b-vitl14``); its tensors must be exactly the model's LoRA tensors. ``parts``: where the frozen parts
    load from (``flamingo_pretrained``: the OpenFlamingo checkpoint; ``lm.pretrained``; ``vision.pretrained``)."""
    from zoo.hub import load_state_dict, save_adapter_export  # noqa: PLC0415

    name = model or "mmgpt-llama7b-vitl14"
    tensors = convert_official_state_dict(load_state_dict(checkpoint, inert_objects=True))
    save_adapter_export(name, task, tensors, out_dir, parts=parts, what=str(checkpoint))
    return {"model": name, "task": task, "tensors": len(tensors)}
