"""CCLM official checkpoints (zengyan-97/CCLM, both layouts: Swin + BERT ``cclm`` and the X²-VLM-based
``cclm-x2vlm``) → this family's names, and ``mmzoo convert cclm`` (the model's ``official_converter``)."""

from __future__ import annotations

import re
from typing import Any, Literal, Mapping

from torch import Tensor

from zoo.hub import WeightsError, convert_keys, rename_by_rules
from zoo.models.base import input_resolution

__all__ = ["OFFICIAL_DROPPED", "Layout", "detect_official_layout", "convert_official_state_dict",
           "describe_official_checkpoint", "convert_official_checkpoint"]

#: official keys with no counterpart here, dropped on purpose (regular expressions): Swin's computed buffers (timm
#: rebuilds them) and XLM-R's ``position_ids`` buffer in the CCLM-X2VLM layout (transformers 5 does not store it)
OFFICIAL_DROPPED: dict[str, tuple[str, ...]] = {
    "cclm": (r"^vision_encoder\..*\.(relative_position_index|attn_mask)$",),
    "cclm-x2vlm": (r"^text_encoder\.(roberta\.)?embeddings\.position_ids$", r"^text_encoder\.(roberta\.)?pooler\."),
}

# (official pattern, our replacement); applied in order, first match wins
_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "cclm": (
        (r"^vision_encoder\.", "vision."),  # then Swin's downsample index moves (see below)
        (r"^text_encoder\.bert\.", "text."),
        (r"^text_encoder\.cls\.", "mlm.cls."),
        (r"^text_encoder\.", "text."),  # fine-tuning models hold a BertModel (no "bert." level)
        (r"^text_decoder\.bert\.", "vqa.decoder.bert."),
        (r"^text_decoder\.cls\.", "vqa.cls."),
    ),
    "cclm-x2vlm": (
        (r"^vision_encoder\.", "vision."),
        (r"^text_encoder\.(roberta\.)?", "text.model."),
        (r"^cross_encoder\.", "fusion."),
        (r"^mlm_head\.", "mlm.cls."),
        (r"^text_decoder\.bert\.", "vqa.decoder.bert."),
        (r"^text_decoder\.cls\.", "vqa.cls."),
    ),
}
_SHARED_RULES: tuple[tuple[str, str], ...] = (
    (r"^vision_proj\.", "itc.vision_proj."),
    (r"^text_proj\.", "itc.text_proj."),
    (r"^temp$", "itc.temp"),
    (r"^itm_head\.", "itm.mlp."),
    (r"^bbox_head\.", "bbox.mlp."),
    (r"^cls_head\.", "xvnli.mlp."),
)
_SWIN_DOWNSAMPLE = re.compile(r"^vision\.layers\.(\d+)\.downsample\.")

Layout = Literal["cclm", "cclm-x2vlm"]


def detect_official_layout(state_dict: Mapping[str, Tensor]) -> Layout:
    """``"cclm-x2vlm"`` when the state dict has a separate ``cross_encoder``, else ``"cclm"`` (one split stack)."""
    if any(k.startswith("cross_encoder.") for k in state_dict):
        return "cclm-x2vlm"
    if any(k.startswith("text_encoder.") for k in state_dict):
        return "cclm"
    raise WeightsError("not an official CCLM checkpoint: no 'text_encoder.' keys")


def convert_official_state_dict(
    state_dict: Mapping[str, Tensor], layout: Layout | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """Map an official CCLM (``"cclm"``) or CCLM-X2VLM (``"cclm-x2vlm"``) state dict onto this model's names.

    Pre-training, retrieval, VQA (``text_decoder``) and XVNLI (``cls_head``) checkpoints are covered. Swin's patch
    merging moves from the end of stage i (official) to the start of stage i + 1 (timm), as
    :func:`zoo.modules.vision.swin.convert_official_swin`. Returns (converted state dict, dropped official keys);
    every other key must match a rule, else :class:`~zoo.hub.WeightsError` lists the unknown keys.
    """
    layout = layout or detect_official_layout(state_dict)
    if layout not in _RULES:
        raise WeightsError(f"layout={layout!r}: expected 'cclm' or 'cclm-x2vlm'")
    if layout == "cclm" and any(k.startswith("ta_head.") for k in state_dict):
        raise WeightsError("this is the original CCLM NLVR/MaRVL model (fusion layers duplicated per image, ta_head); "
                           "it has no counterpart here (MaRVL uses X²-VLM's nlvr head)")
    rules = _RULES[layout] + _SHARED_RULES

    def rename(key: str, value: Tensor) -> tuple[str, Tensor] | None:
        new = rename_by_rules(key, rules)
        if new is not None and layout == "cclm":
            new = _SWIN_DOWNSAMPLE.sub(lambda m: f"vision.layers.{int(m.group(1)) + 1}.downsample.", new)
        return None if new is None else (new, value)

    return convert_keys(state_dict, rename, OFFICIAL_DROPPED[layout], layout)


def describe_official_checkpoint(state_dict: Mapping[str, Tensor], model: str | None = None) -> dict[str, Any]:
    """Which registered model, task and resolution an official CCLM / CCLM-X2VLM state dict corresponds to.

    ``model``: the registered model the caller names; the official sizes (Swin window 7 or 12, vision width 768 or
    1024) then need not match, so an official-layout checkpoint of another size converts into a model registered at
    that size (a Swin image size the window does not tell is the named model's own)."""
    layout = detect_official_layout(state_dict)
    if layout == "cclm":
        name = model or "cclm-base"
        table = state_dict.get("vision_encoder.layers.0.blocks.0.attn.relative_position_bias_table")
        if table is None:
            raise WeightsError("not an official CCLM checkpoint: no Swin 'vision_encoder.layers.0.blocks.0.attn."
                               "relative_position_bias_table'")
        window = (int(round(table.shape[0] ** 0.5)) + 1) // 2  # (2W - 1)² entries for a W×W window
        image_size = {7: 224, 12: 384}.get(window)
        if image_size is None and model is None:
            raise WeightsError(f"Swin window {window}: expected 7 (224 px) or 12 (384 px); name the registered "
                               "model it was trained as (--model)")
        vision = {"vision.window_size": window}
        if image_size is not None:
            vision["vision.img_size"] = image_size
    else:
        width = int(state_dict["vision_encoder.cls_token"].shape[-1])
        size = {768: "base", 1024: "large"}.get(width)
        if size is None and model is None:
            raise WeightsError(f"vision width {width} is neither base (768) nor large (1024); name the registered "
                               "model it was trained as (--model)")
        name = model or f"cclm-x2vlm-{size}"
        table = state_dict["vision_encoder.blocks.0.attn.relative_position_bias_table"]
        side = (int(round((table.shape[0] - 3) ** 0.5)) + 1) // 2  # (2S - 1)² + 3 entries for an S×S patch grid
        patch = int(state_dict["vision_encoder.patch_embed.proj.weight"].shape[-1])
        image_size = side * patch
        vision = {"vision.img_size": image_size}
    has_mlm = any(k.startswith(("text_encoder.cls.", "mlm_head.")) for k in state_dict)
    if any(k.startswith("text_decoder.") for k in state_dict):
        task = "vqa"
    elif any(k.startswith("cls_head.") for k in state_dict):
        task = "xvnli"
    elif has_mlm:
        task = None  # pre-training
    elif "itm_head.0.weight" in state_dict:
        task = "retrieval"
    else:
        raise WeightsError("cannot tell the task of this checkpoint (no text_decoder, cls_head, MLM or itm_head keys)")
    return {"model": name, "layout": layout, "task": task, "image_size": image_size, "overrides": vision}


def convert_official_checkpoint(checkpoint: str, out_dir: str, model: str | None = None,
                                task: str | None = None) -> dict[str, Any]:
    """Read an official checkpoint (``torch.load(weights_only=True)``), convert it, build the matching registered
    model, load the weights strictly and write a ``save_pretrained`` export to ``out_dir`` (``mmzoo convert cclm``)."""
    from zoo.factory import create_model  # noqa: PLC0415
    from zoo.hub import load_state_dict, load_weights  # noqa: PLC0415

    official = load_state_dict(checkpoint)
    info = describe_official_checkpoint(official, model)
    name = info["model"]
    task = task if task is not None else info["task"]
    converted, dropped = convert_official_state_dict(official, info["layout"])
    net = create_model(name, task=task, **info.pop("overrides"))
    load_weights(net, converted, what=f"{checkpoint} (converted)")
    net.save_pretrained(out_dir)
    return {**info, "image_size": input_resolution(net), "task": task, "dropped": dropped, "tensors": len(converted)}
