"""An open_clip image tower as a vision encoder (OpenFlamingo / MultiModal-GPT style), registered as ``open_clip``.

From open_clip: the architecture registry and factory (``open_clip.create_model(model_name, pretrained=None)``, its
``visual`` tower is kept, the text tower is discarded), the tower's own pieces (``_embeds``: patch conv, class token,
position embedding, patch dropout, ``ln_pre``; ``transformer``; ``_pool``: ``ln_post`` and the token split),
``resize_pos_embed`` for checkpoints at another resolution, and ``set_grad_checkpointing``.

Written here: the encoder contract and the loader of LOCAL weights. The tower is held as ``self.visual``, so this
encoder's state-dict keys are exactly the ``visual.*`` keys of an open_clip CLIP checkpoint (``visual.conv1.weight``,
``visual.transformer.resblocks.N.*``, ``visual.proj``, ...). ``pretrained`` accepts a full open_clip checkpoint (its
``visual.*`` keys are used, the text tower's are ignored) or a tower-only state dict (keys without ``visual.``); the
hub is never contacted.

Output (ViT towers: ``open_clip.transformer.VisionTransformer`` with class-token pooling):

- ``tokens``: ``output="patch"``: the patch tokens after ``ln_post``, without the class token (what OpenFlamingo feeds
  its perceiver resampler: ``visual(x)[1]`` with ``output_tokens``); ``output="all"``: class token + patches.
- ``pooled``: the class token after ``ln_post`` BEFORE the CLIP projection, so that its width is ``width`` like the
  tokens'. The CLIP image embedding is ``encoder.project(pooled)`` (``pooled @ visual.proj``, width ``embed_dim``).
  ``visual.proj`` therefore gets no gradient from ``tokens``/``pooled`` (freeze it, or use ``project``, under DDP).
- ``hidden_states``: the input of the first block and the output of every block (open_clip's
  ``forward_intermediates``), class token included, before ``ln_post``.

Attention runs in open_clip's blocks (``nn.MultiheadAttention``), not on the framework op.
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any, Literal

import open_clip
import torch
from open_clip.model import resize_pos_embed
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from zoo.hub import load_state_dict, load_weights
from zoo.modules.outputs import EncoderOutput
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError

__all__ = ["OpenCLIPVisionEncoder"]


def _drop_random_init_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No pretrained weights loaded")


class OpenCLIPVisionEncoder(nn.Module):
    """The image tower of an open_clip model returning patch tokens (and the pre-projection class token as ``pooled``).

    Args:
        model_name: an open_clip architecture name (``ViT-L-14``, ``ViT-B-16``, ...; see ``open_clip.list_models()``,
            or register one with ``open_clip.add_model_config``), or ``local-dir:PATH`` of a folder holding an
            ``open_clip_config.json`` (and possibly weights, which open_clip then loads). Towers whose model has a
            Hugging Face text tower need that text config locally (open_clip builds the whole CLIP first).
        pretrained: a LOCAL checkpoint file (.safetensors / .pt / .pth / .bin): a full open_clip checkpoint or a
            tower-only state dict. The position embedding is resized when ``img_size`` differs.
        img_size: input resolution (None: the architecture's).
        output: ``patch`` (patch tokens only) or ``all`` (class token + patch tokens).
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = None,
        img_size: int | None = None,
        output: Literal["patch", "all"] = "patch",
    ):
        super().__init__()
        if output not in ("patch", "all"):
            raise ConfigError(f"output must be 'patch' or 'all', got {output!r}")
        if model_name.startswith("hf-hub:"):
            raise ConfigError("hf-hub: names are not fetched; use a built-in name or local-dir:PATH")
        if not model_name.startswith("local-dir:") and open_clip.get_model_config(model_name) is None:
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else " (see open_clip.list_models())"
            raise ConfigError(f"unknown open_clip model {model_name!r}{hint}")
        root = logging.getLogger()
        root.addFilter(_drop_random_init_notice)  # weights, if any, are loaded below
        try:
            clip = open_clip.create_model(
                model_name, pretrained=None, force_image_size=img_size, pretrained_text=False,
                device=torch.get_default_device(),
            )
        finally:
            root.removeFilter(_drop_random_init_notice)
        visual = clip.visual
        # the tower's preprocessing as open_clip configures it (mean, std, interpolation, resize mode)
        self._preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(clip))
        if not isinstance(visual, VisionTransformer):
            raise ConfigError(
                f"open_clip model {model_name!r} has a {type(visual).__name__} image tower; this encoder supports ViT "
                "towers (open_clip.transformer.VisionTransformer)"
            )
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            raise ConfigError(
                f"open_clip model {model_name!r}: its tower pools with attn_pool={visual.attn_pool is not None}, "
                f"pool_type={visual.pool_type!r}, final_ln_after_pool={visual.final_ln_after_pool}; this encoder "
                "expects class-token pooling after ln_post"
            )
        visual.output_tokens = True
        self.visual = visual
        self.model_name = model_name
        self.output = output
        self.width = int(visual.transformer.width)
        self.embed_dim = int(visual.output_dim)
        self.image_size = int(visual.image_size[0])
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def preprocess_defaults(self) -> dict[str, Any]:
        """open_clip's preprocessing of this tower (``get_model_preprocess_cfg``): mean, std, interpolation and
        resize mode (``shortest``: shorter side to the size, then centre crop; ``squash``)."""
        cfg = self._preprocess_cfg
        out = {k: tuple(cfg[k]) for k in ("mean", "std") if cfg.get(k) is not None}
        if cfg.get("interpolation") in ("bicubic", "bilinear", "nearest", "lanczos"):
            out["interpolation"] = cfg["interpolation"]
        if cfg.get("resize_mode") in ("squash", "shortest"):
            out["resize_mode"] = cfg["resize_mode"]
        return out

    def forward(self, images: Tensor, output_hidden_states: bool = False) -> EncoderOutput:
        """``images`` (B, C, H, W) -> tokens (B, P or 1 + P, width), pooled (B, width) (pre-projection class token)."""
        if images.dim() != 4:
            raise ValueError(f"open_clip encoder expects images (B, C, H, W), got shape {tuple(images.shape)}")
        visual = self.visual
        x = visual._embeds(images)
        hidden = None
        if output_hidden_states:
            embeds = x
            x, intermediates = visual.transformer.forward_intermediates(x)
            hidden = (embeds, *intermediates)
        else:
            x = visual.transformer(x)
        pooled, patches = visual._pool(x)  # ln_post(x) split into class token and patches
        tokens = patches if self.output == "patch" else torch.cat((pooled.unsqueeze(1), patches), dim=1)
        return EncoderOutput(tokens=tokens, pooled=pooled, hidden_states=hidden)

    def project(self, pooled: Tensor) -> Tensor:
        """The CLIP image embedding of ``pooled``: ``pooled @ visual.proj`` (width ``embed_dim``)."""
        return pooled @ self.visual.proj

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def load_pretrained(self, path: str | os.PathLike) -> None:
        """Load a full open_clip checkpoint's ``visual.*`` keys, or a tower-only state dict, strictly."""
        state_dict = load_state_dict(path)
        if any(k.startswith("visual.") for k in state_dict):
            state_dict = {k: v for k, v in state_dict.items() if k.startswith("visual.")}
        else:
            state_dict = {f"visual.{k}": v for k, v in state_dict.items()}
        resize_pos_embed(state_dict, self)  # reads self.visual.grid_size; no-op at the same resolution
        load_weights(self, state_dict, what=f"checkpoint {str(path)!r}")


VISION_ENCODERS.register("open_clip")(OpenCLIPVisionEncoder)
