"""Any timm backbone as a vision encoder (registered as ``timm``), and the checkpoint helpers of the timm-based encoders.

From timm: the model (``timm.create_model(model_name, num_classes=0, ...)``), its ``forward_features`` /
``forward_head(pre_logits=True)`` / ``forward_intermediates`` / ``set_grad_checkpointing``, the model family's own ``checkpoint_filter_fn`` (position
embedding / relative position table resizing, legacy layouts), applied as timm's builder applies it.

Written here: the encoder contract (:class:`~zoo.modules.outputs.EncoderOutput`), the attention routing switch, and a
strict load with precise errors. timm's own ``pretrained=True`` path drops the classifier and then loads with
``strict=False``, logging missing keys only; here a checkpoint (read by :func:`zoo.hub.load_state_dict`) that does
not fit raises :class:`zoo.hub.WeightsError`
naming the file, the missing / unexpected keys and every shape mismatch.

Output:

- ``tokens``: ``forward_features`` as a sequence: ViT-like models give ``(B, N, D)`` including their prefix tokens
  (``num_prefix_tokens`` of them: CLS, distillation, registers); feature maps ``(B, C, H, W)`` (or ``(B, H, W, C)`` for
  models whose ``output_fmt`` is ``NHWC``, e.g. Swin) are flattened to ``(B, H*W, C)``.
- ``pooled``: ``forward_head(tokens, pre_logits=True)`` (timm's global pool / CLS plus any pre-logits layer); for a
  model built without pooling (``global_pool=''``) the mean of ``tokens``.
- ``hidden_states`` (``output_hidden_states=True``): timm's ``forward_intermediates`` (one entry per block or stage),
  each flattened to ``(B, H*W, C)`` spatial tokens (prefix tokens are not included, widths may vary per stage);
  models without ``forward_intermediates`` raise a clear error.

State-dict keys are timm's under ``model.``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import timm
from torch import Tensor, nn

from zoo.hub import load_state_dict, load_weights
from zoo.modules.outputs import EncoderOutput
from zoo.modules.vision._timm_attention import route_timm_attention
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError

__all__ = ["TimmEncoder"]

AttentionMode = Literal["auto", "timm", "zoo"]





def _select_prefix(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Keys under the first of ``prefixes`` that occurs (prefix stripped, other keys dropped); else all keys."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)


def _as_tokens(x: Tensor, fmt: str = "NCHW") -> Tensor:
    """``(B, N, D)`` from a sequence, a ``(B, C, H, W)`` map (``fmt='NCHW'``) or a ``(B, H, W, C)`` map (``'NHWC'``)."""
    if x.dim() == 3:
        return x
    if x.dim() != 4:
        raise ValueError(f"expected a (B, N, D) sequence or a 4-D feature map, got shape {tuple(x.shape)}")
    return x.flatten(1, 2) if fmt == "NHWC" else x.flatten(2).transpose(1, 2)


def _apply_attention(model: nn.Module, attention: str) -> None:
    """The ``attention`` argument of the timm-based encoders: keep timm's forward, or route through the op."""
    if attention not in ("auto", "timm", "zoo"):
        raise ConfigError(f"attention must be 'auto', 'timm' or 'zoo', got {attention!r}")
    if attention != "timm":
        route_timm_attention(model, mode=attention)


def _family_filter(model: nn.Module) -> Callable | None:
    """The ``checkpoint_filter_fn`` of the timm module defining ``model``'s class (timm's convention), if any."""
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


# ---------------------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------------------
class TimmEncoder(nn.Module):
    """A timm backbone (built with ``num_classes=0``) returning tokens and a pooled vector.

    Args:
        model_name: a timm model name (``vit_base_patch16_224``, ``resnet50``, ``convnext_tiny``, ...).
        pretrained: a LOCAL checkpoint file (.safetensors / .pth / .bin) in timm's layout for that model (a
            classifier in it is dropped); the family's checkpoint filter adapts position embeddings to ``img_size``.
        img_size: input resolution for models that take one (ViT, Swin, ...); None keeps the model's default.
        drop_path_rate: stochastic depth rate.
        model_kwargs: further keyword arguments for ``timm.create_model`` (``embed_dim``, ``depth``, ``global_pool``,
            ``dynamic_img_size``, ...).
        attention: ``timm`` keeps timm's attention; ``zoo`` routes ViT / BEiT / Swin attention modules through the
            framework op; ``auto`` routes them but lets timm's own fused SDPA run whenever the op would pick sdpa
            anyway (see :mod:`zoo.modules.vision._timm_attention`).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        img_size: int | None = None,
        drop_path_rate: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
        attention: AttentionMode = "auto",
    ):
        super().__init__()
        if not timm.is_model(model_name):
            import difflib

            close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"unknown timm model {model_name!r}{hint}")
        kwargs = dict(model_kwargs or {})
        for key in ("num_classes", "pretrained"):
            if key in kwargs:
                raise ConfigError(f"model_kwargs may not set {key!r} (the encoder sets it)")
        if img_size is not None:
            kwargs["img_size"] = img_size
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"timm model {model_name!r} does not accept these arguments: {exc}") from None
        self.model_name = model_name
        self.width = int(self.model.num_features)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.image_size = _image_size(self.model, img_size)
        if pretrained is not None:
            self.load_pretrained(pretrained)
        _apply_attention(self.model, attention)

    def forward(self, images: Tensor, output_hidden_states: bool = False) -> EncoderOutput:
        """``images`` (B, C, H, W) -> tokens (B, N, D) and pooled (B, D')."""
        if images.dim() != 4:
            raise ValueError(f"timm encoder expects images (B, C, H, W), got shape {tuple(images.shape)}")
        hidden = None
        if output_hidden_states:
            if not hasattr(self.model, "forward_intermediates"):
                raise ValueError(
                    f"output_hidden_states is not supported for timm model {self.model_name!r}: it has no "
                    "forward_intermediates"
                )
            features, intermediates = self.model.forward_intermediates(images)
            hidden = tuple(_as_tokens(h, "NCHW") for h in intermediates)
        else:
            features = self.model.forward_features(images)
        pooled = self.model.forward_head(features, pre_logits=True)
        tokens = _as_tokens(features, getattr(self.model, "output_fmt", "NCHW"))
        if pooled.dim() != 2:  # a model built without pooling
            pooled = tokens.mean(dim=1)
        return EncoderOutput(tokens=tokens, pooled=pooled, hidden_states=hidden)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def preprocess_defaults(self) -> dict[str, Any]:
        """The timm model's own normalisation and interpolation (its ``pretrained_cfg``), for
        :meth:`zoo.models.base.ZooModel.preprocess_config`."""
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        out = {k: tuple(cfg[k]) for k in ("mean", "std") if cfg.get(k) is not None}
        if cfg.get("interpolation") in ("bicubic", "bilinear", "nearest", "lanczos"):
            out["interpolation"] = cfg["interpolation"]
        return out

    def export_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the timm model's weights as ``directory/model.safetensors`` in timm's layout (what ``pretrained``
        loads; no classifier: the encoder is built with ``num_classes=0``). Returns the file."""
        from zoo.hub import _atomic_save_file, _unique_state_dict  # noqa: PLC0415

        path = Path(directory) / "model.safetensors"
        _atomic_save_file(_unique_state_dict(self.model), path, metadata={"format": "pt", "timm_model": self.model_name})
        return path

    def load_pretrained(self, path: str | os.PathLike) -> None:
        """Load a local timm-layout checkpoint: family filter, classifier dropped, then a strict, checked load."""
        state_dict = load_state_dict(path)
        filter_fn = _family_filter(self.model)
        if filter_fn is not None:
            try:
                state_dict = filter_fn(state_dict, self.model)
            except TypeError:  # older one-argument filters, as timm's builder allows
                state_dict = filter_fn(state_dict)
        classifiers = (getattr(self.model, "pretrained_cfg", None) or {}).get("classifier") or ()
        own = self.model.state_dict()
        for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
            for key in (f"{name}.weight", f"{name}.bias"):
                if key not in own:
                    state_dict.pop(key, None)
        load_weights(self.model, state_dict, what=f"checkpoint {str(path)!r}")


def _image_size(model: nn.Module, img_size: int | None) -> int | None:
    if img_size is not None:
        return img_size
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size:
        return int(size[0])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size")
    return int(input_size[-1]) if input_size else None


VISION_ENCODERS.register("timm")(TimmEncoder)
