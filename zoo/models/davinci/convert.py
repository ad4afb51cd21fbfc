"""DaVinci official checkpoints (shizhediao/DaVinci, with or without the VQGAN image tokenizer) → this family's
names, and ``mmzoo convert davinci`` (the model's ``official_converter``)."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from zoo.hub import WeightsError, convert_keys, rename_by_rules

__all__ = ["OFFICIAL_DROPPED", "convert_official_state_dict", "describe_official_checkpoint",
           "convert_official_checkpoint"]

#: official keys that are dropped on purpose: the relative-position index buffers (recomputed from the grid) and the
#: VQGAN's training-only loss networks
OFFICIAL_DROPPED: tuple[str, ...] = (r"\.relative_index$", r"^d_vae\.model\.loss\.")

# (official pattern, our replacement); first match wins
_RULES: tuple[tuple[str, str], ...] = (
    (r"^visual_encoder\.(cls_token|pos_embed)$", r"vision.\1"),
    (r"^visual_encoder\.", "vision.trunk."),
    (r"^vision_proj\.", "vision_proj."),
    (r"^encoder\.embeddings\.", "text.embeddings."),
    (r"^encoder\.encoder\.layer\.", "text.encoder.layer."),
    (r"^text_decoder\.bert\.", "text_decoder.decoder.bert."),
    (r"^text_decoder\.cls\.", "text_decoder.cls."),
)


def convert_official_state_dict(
    state_dict: Mapping[str, Tensor], *, vision_grid: tuple[int, int] | None = None,
    image_tokenizer_levels: int | None = None,
) -> tuple[dict[str, Tensor], list[str]]:
    """Map an official DaVinci state dict (pre-training, or a fine-tuned wrapper holding it under ``davinci.`` with a
    ``cls_head``) onto this model's names.

    - ``visual_encoder.*`` → ``vision.trunk.*`` (``cls_token``, ``pos_embed`` → ``vision.*``); with ``vision_grid``
      the position table is resized to that grid (official ``interpolate_pos_embed``);
    - ``encoder.*`` → ``text.*``; ``text_decoder.bert.*`` → ``text_decoder.decoder.bert.*``; ``text_decoder.cls.*`` →
      ``text_decoder.cls.*``; ``vision_proj.*`` unchanged;
    - ``cls_head.*`` → ``ve_head.*`` (3 classes) or ``nlvr_head.*`` (2 classes, input 2·width);
    - ``d_vae.model.*`` → ``image_tokenizer.vq.*`` through :func:`zoo.models.davinci.vqgan.convert_taming_state_dict`
      (``loss.*`` dropped).

    Returns (converted state dict, dropped official keys); unknown keys raise :class:`~zoo.hub.WeightsError`.
    """
    state = dict(state_dict)
    if state and all(k.startswith("davinci.") or k.startswith("cls_head.") for k in state):
        state = {(k[len("davinci."):] if k.startswith("davinci.") else k): v for k, v in state.items()}
    out_features = state.get("cls_head.2.weight")
    head = "nlvr_head." if out_features is not None and out_features.shape[0] == 2 else "ve_head."

    def rename(key: str, value: Tensor) -> tuple[str, Tensor] | None:
        if key.startswith("d_vae.model."):  # kept as is here, converted by the taming converter below
            return key, value
        if key.startswith("cls_head."):
            return head + key[len("cls_head."):], value
        new = rename_by_rules(key, _RULES)
        return None if new is None else (new, value)

    out, dropped = convert_keys(state, rename, OFFICIAL_DROPPED, "DaVinci")
    vae = {k[len("d_vae.model."):]: out.pop(k) for k in [k for k in out if k.startswith("d_vae.model.")]}
    if vae:
        from zoo.models.davinci.vqgan import convert_taming_state_dict  # noqa: PLC0415

        converted, vae_dropped = convert_taming_state_dict(vae, image_tokenizer_levels)
        out.update({"image_tokenizer.vq." + k: v for k, v in converted.items()})
        dropped += ["d_vae.model." + k for k in vae_dropped]
    if vision_grid is not None and "vision.pos_embed" in out:
        from zoo.models.davinci.resnet_grid import resize_pos_embed  # noqa: PLC0415

        out["vision.pos_embed"] = resize_pos_embed(out["vision.pos_embed"], tuple(vision_grid))
    return out, dropped


def describe_official_checkpoint(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Registered model, task and resolution of an official DaVinci state dict."""
    keys = {k[len("davinci."):] if k.startswith("davinci.") else k: v for k, v in state_dict.items()}
    if "visual_encoder.pos_embed" not in keys:
        raise WeightsError("not an official DaVinci checkpoint: no 'visual_encoder.pos_embed' key")
    side = int(round((keys["visual_encoder.pos_embed"].shape[1] - 1) ** 0.5))
    task = None
    if "cls_head.2.weight" in keys:
        task = "nlvr" if keys["cls_head.2.weight"].shape[0] == 2 else "ve"
    return {"model": "davinci-base", "task": task, "image_size": side * 16,
            "image_tokenizer": any(k.startswith("d_vae.model.") for k in keys)}


def convert_official_checkpoint(checkpoint: str, out_dir: str, model: str | None = None,
                                task: str | None = None) -> dict[str, Any]:
    """Read an official checkpoint (``torch.load(weights_only=True)``), convert it, build the registered model at the
    checkpoint's resolution, load strictly and write a ``save_pretrained`` export to ``out_dir``."""
    from zoo.factory import create_model  # noqa: PLC0415
    from zoo.hub import load_state_dict, load_weights  # noqa: PLC0415

    official = load_state_dict(checkpoint)
    info = describe_official_checkpoint(official)
    name = model or info["model"]
    task = task if task is not None else info["task"]
    converted, dropped = convert_official_state_dict(official)
    overrides: dict[str, Any] = {"vision.img_size": info["image_size"]}
    net = create_model(name, task=task, **overrides)
    if not info["image_tokenizer"]:
        net.image_tokenizer = None  # the checkpoint carries no VQGAN: the export holds none
        if isinstance(net.zoo_config, dict):
            net.zoo_config["model"]["image_tokenizer"] = None
    load_weights(net, converted, what=f"{checkpoint} (converted)")
    net.save_pretrained(out_dir)
    return {**info, "model": name, "task": task, "dropped": dropped, "tensors": len(converted)}
