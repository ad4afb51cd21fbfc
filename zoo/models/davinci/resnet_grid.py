"""Vision encoder ``resnet_grid``: a ResNet trunk cut after its third stage, as a token grid with a CLS token (DaVinci).

DaVinci (shizhediao/DaVinci @283ea6f, ``ResNetEmb`` / ``resnet101emb`` in models/resnet.py) uses torchvision's
ResNet-101 through ``layer3`` (stride 16, 1024 channels; ``layer4``, the pooling and the classifier are not built):
the map is flattened to ``(B, H/16 · W/16, 1024)``, a learnable CLS token (``cls_token`` ``(1, 1, 1024)``) is
prepended and a learned position embedding (``pos_embed`` ``(1, 1 + N, 1024)``, N = 256 at 256 px) is added; dropout
rate 0. Both are initialised with a truncated normal of std 0.02; convolutions Kaiming-normal (fan_out), BatchNorm
weights 1 and biases 0, as the official constructor does (timm initialises its ResNet the same way).

Position embedding when the grid differs from the configured one (official behaviour first):

- the official forward adds ``pos_embed[:, :1 + N]``, the *first* ``1 + N`` rows. For DaVinci's prefix images (the top
  ``r`` rows of the picture, full width) that is exactly the CLS entry and the first ``r`` grid rows, so a grid with the
  configured width and fewer rows takes that slice;
- the official code changes resolution (VQA 480 px, captioning 576 px) when *loading* a checkpoint
  (``interpolate_pos_embed``: the grid part resized bicubically, ``align_corners=False``, the CLS entry kept); here the
  table belongs to the configured ``img_size`` (:func:`resize_pos_embed` does the load-time resize, and the DaVinci
  converter applies it), and a forward at any other grid interpolates the same way on the fly.

Reused from timm: the trunk (``timm.create_model(model_name, features_only=True, out_indices=(stage,))``; timm's
``resnet101`` stem + ``layer1..3`` has exactly the official 27,535,424 parameters, and its module names equal
torchvision's, so the official ``visual_encoder.{conv1,bn1,layer1..3}.*`` keys become ``trunk.*`` unchanged).
Hand-written: the CLS / position embedding and their resizing (a dozen lines).
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.hub import load_weights
from zoo.modules.outputs import EncoderOutput
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError

__all__ = ["ResNetGrid", "resize_pos_embed"]


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """``(1, prefix + h·w, D)`` → ``(1, prefix + grid[0]·grid[1], D)``: the grid part resized bicubically
    (``align_corners=False``), the prefix (CLS) entries kept, as the official ``interpolate_pos_embed``.

    The source grid must be square (the official tables are); the target may be any ``(rows, cols)``.
    """
    prefix, table = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n, dim = table.shape[1], table.shape[2]
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"position embedding with {n} grid entries is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    table = table.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    work = table if table.dtype in (torch.float32, torch.float64) else table.float()  # bicubic needs fp32+
    table = F.interpolate(work, size=tuple(grid), mode="bicubic", align_corners=False).to(pos_embed.dtype)
    return torch.cat([prefix, table.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


@VISION_ENCODERS.register("resnet_grid")
class ResNetGrid(nn.Module):
    """ResNet stem + first ``stage`` stages (timm), flattened to tokens, with a CLS token and a learned position
    embedding (see the module docstring).

    Args:
        model_name: a timm ResNet-family name (official base: ``resnet101``; the official "huge" model uses
            ``wide_resnet101_2``).
        stage: how many residual stages to keep (official 3: ``layer1..layer3``, stride 16).
        img_size: the resolution the position table is built for (official pre-training 256 → 16×16 + 1 entries).
        drop_rate: dropout after the position embedding (official 0).
        pretrained: local checkpoint of this module (keys ``trunk.*``, ``cls_token``, ``pos_embed``) or of a plain timm
            / torchvision ResNet (``conv1.*``, ``layer1.*``, ...: only the trunk is loaded, ``layer4``/``fc`` dropped,
            as the official ``init_deit`` ImageNet initialisation).
        model_kwargs: further ``timm.create_model`` arguments (e.g. ``{base_width: 16}`` for a narrow toy trunk).
    """

    def __init__(
        self,
        model_name: str = "resnet101",
        stage: int = 3,
        img_size: int = 256,
        drop_rate: float = 0.0,
        pretrained: str | None = None,
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        if not timm.is_model(model_name):
            raise ConfigError(f"unknown timm model {model_name!r} (expected a ResNet such as 'resnet101')")
        if not 1 <= stage <= 4:
            raise ConfigError(f"stage={stage}: a ResNet has residual stages 1..4")
        kwargs = dict(model_kwargs or {})
        for key in ("features_only", "out_indices", "pretrained", "num_classes"):
            if key in kwargs:
                raise ConfigError(f"model_kwargs may not set {key!r} (the encoder sets it)")
        try:
            # feature index 0 is the stem's activation (stride 2); index s is the output of stage s
            self.trunk = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=(stage,),
                                           **kwargs)
        except TypeError as exc:
            raise ConfigError(f"timm model {model_name!r} does not accept these arguments: {exc}") from None
        reduction = int(self.trunk.feature_info.reduction()[-1])
        if img_size % reduction:
            raise ConfigError(f"img_size={img_size} is not a multiple of the trunk's stride {reduction}")
        self.model_name, self.stage, self.image_size = model_name, stage, img_size
        self.stride = reduction
        self.width = int(self.trunk.feature_info.channels()[-1])
        self.grid = (img_size // reduction, img_size // reduction)
        self.num_patches = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, self.width))
        self.pos_drop = nn.Dropout(drop_rate)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if pretrained is not None:
            self.load_pretrained(pretrained)

    # -- weights -----------------------------------------------------------------------------------------------------
    def load_pretrained(self, path: str) -> None:
        """This module's own layout (strict), or a plain ResNet's trunk (``layer4`` and ``fc`` ignored)."""
        from zoo.hub import load_state_dict  # noqa: PLC0415

        state = load_state_dict(path)
        if "pos_embed" in state or any(k.startswith("trunk.") for k in state):
            if "pos_embed" in state and state["pos_embed"].shape != self.pos_embed.shape:
                state["pos_embed"] = resize_pos_embed(state["pos_embed"], self.grid)
            load_weights(self, state, what=f"checkpoint {path!r}")
            return
        own = self.trunk.state_dict()
        trunk = {k: v for k, v in state.items() if k in own}
        load_weights(self.trunk, trunk, what=f"checkpoint {path!r} (ResNet trunk)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    # -- forward -----------------------------------------------------------------------------------------------------
    def position_embedding(self, rows: int, cols: int) -> Tensor:
        """The ``(1, 1 + rows·cols, D)`` table for a ``rows × cols`` grid (see the module docstring)."""
        if (rows, cols) == self.grid:
            return self.pos_embed
        if cols == self.grid[1] and rows < self.grid[0]:  # official prefix images: the first rows of the table
            return self.pos_embed[:, : 1 + rows * cols]
        return resize_pos_embed(self.pos_embed, (rows, cols))

    def forward(self, images: Tensor) -> EncoderOutput:
        """``images`` (B, 3, H, W) → tokens (B, 1 + H/s · W/s, width) (token 0 = CLS), pooled = the CLS token."""
        if images.dim() != 4:
            raise ValueError(f"resnet_grid expects images (B, C, H, W), got shape {tuple(images.shape)}")
        fmap = self.trunk(images)[-1]
        b, _, rows, cols = fmap.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), fmap.flatten(2).transpose(1, 2)], dim=1)
        x = self.pos_drop(x + self.position_embedding(rows, cols))
        return EncoderOutput(tokens=x, pooled=x[:, 0])
