"""X²-VLM official checkpoints (zengyan-97/X2-VLM: pre-training, VQA, retrieval, captioning, video) → this
family's names, and ``mmzoo convert x2vlm`` (the model's ``official_converter``)."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from zoo.hub import WeightsError, convert_keys, rename_by_rules

__all__ = ["OFFICIAL_DROPPED", "convert_official_state_dict", "describe_official_checkpoint",
           "convert_official_checkpoint"]

#: official keys that have no counterpart and are dropped on purpose (regular expressions)
OFFICIAL_DROPPED: tuple[str, ...] = ()

# (official pattern, our replacement); applied in order, first match wins
_RULES: tuple[tuple[str, str], ...] = (
    (r"^absolute_frame_pos_embed$", "vision.absolute_frame_pos_embed"),
    (r"^vision_encoder\.", "{vision}"),
    (r"^text_encoder\.bert\.", "text."),
    (r"^text_encoder\.cls\.", "mlm.cls."),
    (r"^text_encoder\.", "text."),
    (r"^vision_proj\.", "itc.vision_proj."),
    (r"^text_proj\.", "itc.text_proj."),
    (r"^temp$", "itc.temp"),
    (r"^itm_head\.", "itm.mlp."),
    (r"^bbox_head\.", "bbox.mlp."),
    (r"^text_decoder\.bert\.", "vqa.decoder.bert."),
    (r"^text_decoder\.cls\.", "vqa.cls."),
)


def convert_official_state_dict(
    state_dict: Mapping[str, Tensor], lm_head: str = "mlm"
) -> tuple[dict[str, Tensor], list[str]]:
    """Map an official X²-VLM state dict (pre-training, VQA, retrieval, captioning, video) onto this model's names.

    ``lm_head``: the head that receives the official ``text_encoder.cls.*`` (the MLM head in pre-training, the
    ``caption`` head in a captioning model).

    Returns (converted state dict, dropped official keys). Every official key is either mapped or matched by
    :data:`OFFICIAL_DROPPED`; anything else raises :class:`~zoo.hub.WeightsError` listing the keys.
    """
    video = "absolute_frame_pos_embed" in state_dict
    vision_prefix = "vision.image_encoder." if video else "vision."
    rules = [(p, r.replace("{vision}", vision_prefix).replace("mlm.cls.", f"{lm_head}.cls.")) for p, r in _RULES]

    def rename(key: str, value: Tensor) -> tuple[str, Tensor] | None:
        new = rename_by_rules(key, rules)
        return None if new is None else (new, value)

    return convert_keys(state_dict, rename, OFFICIAL_DROPPED)


def describe_official_checkpoint(state_dict: Mapping[str, Tensor], model: str | None = None) -> dict[str, Any]:
    """Which registered model, task and resolution an official X²-VLM state dict corresponds to.

    ``model``: the registered model the caller names; the official widths (768 base, 1024 large) then need not
    match, so an official-layout checkpoint of another size converts into a model registered at that size."""
    if "vision_encoder.cls_token" not in state_dict:
        raise WeightsError("not an official X²-VLM checkpoint: no 'vision_encoder.cls_token' key")
    video = "absolute_frame_pos_embed" in state_dict
    if model is None:
        width = int(state_dict["vision_encoder.cls_token"].shape[-1])
        size = {768: "base", 1024: "large"}.get(width)
        if size is None:
            raise WeightsError(f"vision width {width} is neither base (768) nor large (1024); name the registered "
                               "model it was trained as (--model)")
        model = f"x2vlm-{size}" + ("-video" if video else "")
    has_lm = any(k.startswith("text_encoder.cls.") for k in state_dict)
    if any(k.startswith("text_decoder.") for k in state_dict):
        task = "vqa"
    elif "bbox_head.0.weight" in state_dict or (has_lm and "itm_head.0.weight" in state_dict):
        task = None
    elif has_lm:
        task = "captioning"
    elif "itm_head.0.weight" in state_dict:
        task = "retrieval"
    else:
        raise WeightsError("cannot tell the task of this checkpoint (no text_decoder, bbox_head, MLM or itm_head keys)")
    table = state_dict["vision_encoder.blocks.0.attn.relative_position_bias_table"]
    side = (int(round((table.shape[0] - 3) ** 0.5)) + 1) // 2  # (2W-1)² + 3 entries for a W×W patch grid
    patch = int(state_dict["vision_encoder.patch_embed.proj.weight"].shape[-1])
    info = {"model": model, "task": task, "image_size": side * patch}
    if video:
        info["num_frames"] = int(state_dict["absolute_frame_pos_embed"].shape[1])
    return info


def convert_official_checkpoint(checkpoint: str, out_dir: str, model: str | None = None,
                                task: str | None = None) -> dict[str, Any]:
    """Read an official checkpoint (``torch.load(weights_only=True)``), convert it, build the matching registered
    model, load the weights strictly and write a ``save_pretrained`` export to ``out_dir``."""
    from zoo.factory import create_model  # noqa: PLC0415
    from zoo.hub import load_state_dict, load_weights  # noqa: PLC0415

    official = load_state_dict(checkpoint)
    info = describe_official_checkpoint(official, model)
    name = info["model"]
    task = task if task is not None else info["task"]
    converted, dropped = convert_official_state_dict(official, "caption" if task == "captioning" else "mlm")
    vision_key = "vision.image_encoder" if "num_frames" in info else "vision"
    overrides = {f"{vision_key}.img_size": info["image_size"]}
    if "num_frames" in info:
        overrides["vision.num_frames"] = info["num_frames"]
    net = create_model(name, task=task, **overrides)
    load_weights(net, converted, what=f"{checkpoint} (converted)")
    net.save_pretrained(out_dir)
    return {**info, "task": task, "dropped": dropped, "tensors": len(converted)}
