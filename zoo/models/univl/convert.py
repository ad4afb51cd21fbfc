"""UniVL official checkpoints (microsoft/UniVL ``pytorch_model.bin``: stage I / II pre-training, FT-Joint and
FT-Align retrieval, captioning) → this family's names, and ``mmzoo convert univl`` (the model's
``official_converter``).

Every official key has a counterpart, tied ones included (the official state dict lists a tied tensor under each of
its names, as ours does): nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from zoo.hub import WeightsError, convert_keys, rename_by_rules

__all__ = ["OFFICIAL_DROPPED", "convert_official_checkpoint", "convert_official_state_dict",
           "describe_official_checkpoint"]

#: official keys that have no counterpart and are dropped on purpose (regular expressions): none
OFFICIAL_DROPPED: tuple[str, ...] = ()

_DECODER_LAYER = r"^decoder\.decoder\.layer\.(\d+)\."
# (official pattern, our replacement); applied in order, first match wins
_RULES: tuple[tuple[str, str], ...] = (
    (r"^bert\.", "text.model."),
    (r"^normalize_video\.visual_norm2d\.", "vision.norm."),
    (r"^visual\.embeddings\.word_embeddings\.", "vision.embeddings.proj."),
    (r"^visual\.", "vision."),
    (r"^cross\.", "fusion."),
    (r"^similarity_dense\.", "fusion.similarity_dense."),
    (_DECODER_LAYER + r"slf_attn\.att\.", r"decoder.stack.layer.\1.attention.self."),
    (_DECODER_LAYER + r"slf_attn\.output\.", r"decoder.stack.layer.\1.attention.output."),
    (_DECODER_LAYER + r"enc_attn\.att\.", r"decoder.stack.layer.\1.crossattention.self."),
    (_DECODER_LAYER + r"enc_attn\.output\.", r"decoder.stack.layer.\1.crossattention.output."),
    (_DECODER_LAYER + r"(intermediate|output)\.", r"decoder.stack.layer.\1.\2."),
    (r"^decoder\.embeddings\.", "decoder.embeddings."),
    (r"^decoder\.classifier\.cls\.", "decoder.classifier.cls."),
    (r"^cls\.", "mlm.cls."),
    (r"^cls_visual\.predictions\.transform\.", "mfm.transform."),
    (r"^cls_visual\.predictions\.(weight|bias)$", r"mfm.\1"),
)


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map an official UniVL state dict onto this model's names.

    Returns (converted state dict, dropped official keys — always empty). An official LM head's output bias
    (``cls.predictions.bias``, ``decoder.classifier.cls.predictions.bias``) also fills our head's
    ``decoder.bias``, which is the same tensor (the shared ``mlm`` head ties them). A key no rule maps raises
    :class:`~zoo.hub.WeightsError` listing it.
    """

    def rename(key: str, value: Tensor) -> tuple[str, Tensor] | None:
        new = rename_by_rules(key, _RULES)
        return None if new is None else (new, value)

    converted, dropped = convert_keys(state_dict, rename, OFFICIAL_DROPPED, family="UniVL")
    for key in [k for k in converted if k.endswith("cls.predictions.bias")]:
        converted[key[: -len("bias")] + "decoder.bias"] = converted[key]
    return converted, dropped


def describe_official_checkpoint(state_dict: Mapping[str, Tensor], model: str | None = None) -> dict[str, Any]:
    """Which registered model and variant an official UniVL state dict corresponds to: stage I / FT-Joint (text and
    video only: the base model), ``retrieval_align`` (cross encoder, no decoder), ``captioning`` (decoder, no
    pre-training heads), ``pretrain`` (stage II with the MLM / MFM heads).

    ``model``: the registered model the caller names (default ``univl-base``; its widths must then fit)."""
    if "bert.embeddings.word_embeddings.weight" not in state_dict or \
            "visual.embeddings.word_embeddings.weight" not in state_dict:
        raise WeightsError("not an official UniVL checkpoint: no 'bert.embeddings.word_embeddings.weight' / "
                           "'visual.embeddings.word_embeddings.weight' keys")
    has = {part: any(k.startswith(part + ".") for k in state_dict) for part in ("cross", "decoder", "cls")}
    if has["cls"]:
        task = "pretrain"
    elif has["decoder"]:
        task = "captioning"
    elif has["cross"]:
        task = "retrieval_align"
    else:
        task = None
    info: dict[str, Any] = {"model": model or "univl-base", "task": task}
    info["feature_dim"] = int(state_dict["visual.embeddings.word_embeddings.weight"].shape[1])
    return info


def convert_official_checkpoint(checkpoint: str, out_dir: str, model: str | None = None,
                                task: str | None = None) -> dict[str, Any]:
    """Read an official checkpoint (``torch.load(weights_only=True)``), convert it, build the matching registered
    model and variant, load the weights strictly and write a ``save_pretrained`` export to ``out_dir``."""
    from zoo.factory import create_model
    from zoo.hub import load_state_dict, load_weights

    official = load_state_dict(checkpoint)
    info = describe_official_checkpoint(official, model)
    task = task if task is not None else info["task"]
    converted, dropped = convert_official_state_dict(official)
    net = create_model(info["model"], task=task)
    load_weights(net, converted, what=f"{checkpoint} (converted)")
    net.save_pretrained(out_dir)
    return {**info, "task": task, "dropped": dropped, "tensors": len(converted)}
