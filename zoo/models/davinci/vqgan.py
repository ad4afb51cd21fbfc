"""Image tokenizer ``vqgan``: the taming-transformers VQGAN as diffusers' ``VQModel`` (DaVinci's frozen ``d_vae``).

DaVinci (shizhediao/DaVinci @283ea6f) turns pictures into discrete codes with the taming ``vqgan_imagenet_f16_1024``
model, wrapped by ``VQGanVAE`` in models/dalle_pytorch/vae.py: ``get_codebook_indices(img)`` maps pixels in [0, 1] to
[-1, 1] (``2·img − 1``), runs ``VQModel.encode`` and returns the codebook indices, a 16×16 grid at 256 px; ``decode``
looks the codes up, runs the decoder and maps back with ``(clamp(x, −1, 1) + 1) / 2``. Configuration (the public taming
yml; the DaVinci repo downloads it at run time): ``embed_dim`` 256, ``n_embed`` 1024, ``z_channels`` 256, ``ch`` 128,
``ch_mult`` [1, 1, 2, 2, 4], 2 residual blocks per level, attention at resolution 16, resolution 256, no dropout.

How it maps onto diffusers' ``VQModel`` (reused as is; nothing of the network is hand-written here):

- encoder level ``i`` (resolution ``resolution / 2**i``) → ``DownEncoderBlock2D``, or ``AttnDownEncoderBlock2D`` when
  that resolution is in ``attn_resolutions`` (taming's ``down[i].attn[j]`` follows ``down[i].block[j]``, as diffusers'
  attention follows each resnet); the last level has no downsampler in both; diffusers' downsampler pads (0, 1, 0, 1)
  and convolves with stride 2 and padding 0, as taming's ``Downsample(with_conv=True)``;
- decoder level ``i`` → ``up_blocks[L − 1 − i]`` (diffusers lists them in the order they run) with
  ``num_res_blocks + 1`` resnets, ``AttnUpDecoderBlock2D`` at the attention resolutions, nearest ×2 + 3×3 conv
  upsampler;
- mid blocks: resnet → attention → resnet in both; GroupNorm(32 groups, eps 1e-6) and SiLU everywhere; single-head
  attention with scale ``C**-0.5`` (taming's 1×1-conv ``q, k, v, proj_out`` become linear ``to_q, to_k, to_v,
  to_out.0``; the converter squeezes the 1×1 kernels);
- ``quant_conv``, ``quantize.embedding`` (nearest code by squared distance), ``post_quant_conv``: same names.

With that configuration diffusers builds exactly taming's network: 72,141,699 parameters = the official 89,623,492 minus
the 17,481,793 of ``loss.*`` (LPIPS VGG-16 + PatchGAN discriminator, training-only, dropped by the converter), and the
343 tensors map one to one. What diffusers cannot express, so these taming options are refused: ``double_z``
(diffusers' VQ encoder has single-width output), ``resamp_with_conv=False`` (average-pool down / conv-less up sampling),
``give_pre_end`` / ``tanh_out``, dropout inside the residual blocks, a GroupNorm with other than ``norm_num_groups``
groups, and taming's ``remap`` of codebook indices. (The quantiser's straight-through training loss also differs in
where ``beta`` sits under taming's ``legacy`` flag; the tokenizer here is frozen, so only the nearest-code lookup
matters, which is identical.)

Weights come from a local file only (``pretrained``): taming's layout (``encoder.down.*``, a Lightning ``state_dict``
nesting or DaVinci's ``d_vae.model.`` prefix are fine; ``loss.*`` is dropped) or this module's (``vq.*``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from zoo.hub import WeightsError, convert_keys, load_state_dict, load_weights
from zoo.modules.outputs import EncoderOutput
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError

__all__ = ["VQGANTokenizer", "convert_taming_state_dict", "TAMING_DROPPED"]

#: taming keys without a counterpart (training-only: LPIPS perceptual loss and the patch discriminator)
TAMING_DROPPED: tuple[str, ...] = (r"^loss\.",)


@VISION_ENCODERS.register("vqgan")
class VQGANTokenizer(nn.Module):
    """Frozen VQGAN image tokenizer: pixels in [0, 1] ↔ code grids (see the module docstring).

    Args:
        embed_dim: code vector size (taming ``embed_dim``; official 256).
        n_embed: codebook size (official 1024).
        z_channels: encoder output channels before ``quant_conv`` (official 256).
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution: taming's ``ddconfig`` (official 128, [1,1,2,2,4], 2,
            [16], 256); the code grid is ``resolution / 2**(len(ch_mult) - 1)`` per side (16 at 256 px).
        in_channels, out_ch: image channels (3).
        norm_num_groups: GroupNorm groups (taming: 32; a toy width may need fewer).
        pretrained: local weights file or folder (taming or this module's layout).
        frozen: no gradients, always in eval mode (DaVinci never trains the tokenizer).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        n_embed: int = 1024,
        z_channels: int = 256,
        ch: int = 128,
        ch_mult: list[int] = (1, 1, 2, 2, 4),  # type: ignore[assignment]
        num_res_blocks: int = 2,
        attn_resolutions: list[int] = (16,),  # type: ignore[assignment]
        resolution: int = 256,
        in_channels: int = 3,
        out_ch: int = 3,
        norm_num_groups: int = 32,
        pretrained: str | None = None,
        frozen: bool = True,
    ):
        super().__init__()
        from diffusers import VQModel  # noqa: PLC0415

        ch_mult = list(ch_mult)
        if not ch_mult:
            raise ConfigError("ch_mult must list at least one level")
        levels = len(ch_mult)
        if resolution % 2 ** (levels - 1):
            raise ConfigError(f"resolution={resolution} is not divisible by 2**{levels - 1} "
                              "(len(ch_mult) - 1 halvings)")
        channels = [ch * m for m in ch_mult]
        for c in channels + [z_channels]:
            if c % norm_num_groups:
                raise ConfigError(f"channel count {c} is not a multiple of norm_num_groups={norm_num_groups}")
        level_res = [resolution // 2**i for i in range(levels)]
        attn = {int(r) for r in attn_resolutions}
        unused = attn - set(level_res)
        if unused:
            raise ConfigError(f"attn_resolutions {sorted(unused)} match no level (level resolutions {level_res})")
        down = tuple("AttnDownEncoderBlock2D" if r in attn else "DownEncoderBlock2D" for r in level_res)
        up = tuple("AttnUpDecoderBlock2D" if r in attn else "UpDecoderBlock2D" for r in reversed(level_res))
        self.vq = VQModel(
            in_channels=in_channels, out_channels=out_ch, down_block_types=down, up_block_types=up,
            block_out_channels=tuple(channels), layers_per_block=num_res_blocks, act_fn="silu",
            latent_channels=z_channels, sample_size=resolution, num_vq_embeddings=n_embed, vq_embed_dim=embed_dim,
            norm_num_groups=norm_num_groups,
        )
        self.levels = levels
        self.width = embed_dim
        self.n_embed = n_embed
        self.image_size = resolution
        self.downsample = 2 ** (levels - 1)
        self.grid = (resolution // self.downsample, resolution // self.downsample)
        self.frozen = frozen
        if pretrained is not None:
            self.load_pretrained(pretrained)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> VQGANTokenizer:
        return super().train(False if self.frozen else mode)

    # -- weights -----------------------------------------------------------------------------------------------------
    def load_pretrained(self, path: str) -> None:
        """A local taming checkpoint (converted) or an export of this module; strict."""
        state = load_state_dict(path)
        if any(k.startswith("vq.") for k in state):
            load_weights(self, state, what=f"checkpoint {path!r}")
            return
        converted, _ = convert_taming_state_dict(state, levels=self.levels)
        load_weights(self.vq, converted, what=f"checkpoint {path!r} (taming layout, converted)")

    # -- codes -------------------------------------------------------------------------------------------------------
    def _check(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.vq.config.in_channels:
            raise ValueError(f"expected images (B, {self.vq.config.in_channels}, H, W) in [0, 1], got "
                             f"{tuple(images.shape)}")
        if images.shape[-2] % self.downsample or images.shape[-1] % self.downsample:
            raise ValueError(f"image side {tuple(images.shape[-2:])} is not a multiple of the tokenizer's "
                             f"downsampling {self.downsample}")

    def quantize(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels ``(B, 3, H, W)`` in [0, 1] → (quantised latents ``(B, embed_dim, h, w)``, codes ``(B, h, w)``)."""
        self._check(images)
        latents = self.vq.encode(images * 2 - 1).latents
        z_q, _, (_, _, indices) = self.vq.quantize(latents)
        b, _, h, w = latents.shape
        return z_q, indices.reshape(b, h, w).long()

    def encode_codes(self, images: Tensor) -> Tensor:
        """Pixels in [0, 1] → codebook indices ``(B, H/f, W/f)`` in ``[0, n_embed)`` (official
        ``get_codebook_indices``; flatten(1) gives DaVinci's row-major code sequence)."""
        return self.quantize(images)[1]

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codebook indices ``(B, h, w)`` (or ``(B, h·w)`` for a square grid) → pixels ``(B, 3, h·f, w·f)`` in
        [0, 1]."""
        if codes.dim() == 2:
            side = int(round(codes.shape[1] ** 0.5))
            if side * side != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes do not form a square grid: pass them as (B, h, w)")
            codes = codes.view(codes.shape[0], side, side)
        if codes.dim() != 3:
            raise ValueError(f"expected codes (B, h, w), got {tuple(codes.shape)}")
        if int(codes.min()) < 0 or int(codes.max()) >= self.n_embed:
            raise ValueError(f"codes must lie in [0, {self.n_embed}); got [{int(codes.min())}, {int(codes.max())}]")
        b, h, w = codes.shape
        z = self.vq.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, self.width))
        pixels = self.vq.decode(z, force_not_quantize=True).sample
        return (pixels.clamp(-1.0, 1.0) + 1.0) / 2.0

    def forward(self, images: Tensor) -> EncoderOutput:
        """The vision-encoder contract: quantised code vectors as tokens ``(B, h·w, embed_dim)``, pooled = their
        mean. :meth:`encode_codes` gives the indices."""
        z_q, _ = self.quantize(images)
        tokens = z_q.flatten(2).transpose(1, 2)
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(1))


# ---------------------------------------------------------------------------------------------------------------------
# taming → diffusers key conversion
# ---------------------------------------------------------------------------------------------------------------------
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_STRIP = ("d_vae.model.", "model.")


def _rename(key: str, levels: int) -> str | None:
    m = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if m is None:
        return key if re.match(r"^(quantize\.embedding\.weight|quant_conv\.|post_quant_conv\.)", key) else None
    side, rest = m.groups()
    simple = {"conv_in.": "conv_in.", "conv_out.": "conv_out.", "norm_out.": "conv_norm_out."}
    for src, dst in simple.items():
        if rest.startswith(src):
            return f"{side}.{dst}{rest[len(src):]}"
    if m2 := re.match(r"^mid\.block_([12])\.(.*)$", rest):
        return f"{side}.mid_block.resnets.{int(m2.group(1)) - 1}.{m2.group(2).replace('nin_shortcut', 'conv_shortcut')}"
    if m2 := re.match(r"^mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", rest):
        return f"{side}.mid_block.attentions.0.{_ATTN[m2.group(1)]}.{m2.group(2)}"
    level_key = "down" if side == "encoder" else "up"
    blocks = "down_blocks" if side == "encoder" else "up_blocks"
    m2 = re.match(rf"^{level_key}\.(\d+)\.(.*)$", rest)
    if m2 is None:
        return None
    level, tail = int(m2.group(1)), m2.group(2)
    idx = level if side == "encoder" else levels - 1 - level
    if m3 := re.match(r"^block\.(\d+)\.(.*)$", tail):
        return f"{side}.{blocks}.{idx}.resnets.{m3.group(1)}.{m3.group(2).replace('nin_shortcut', 'conv_shortcut')}"
    if m3 := re.match(r"^attn\.(\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$", tail):
        return f"{side}.{blocks}.{idx}.attentions.{m3.group(1)}.{_ATTN[m3.group(2)]}.{m3.group(3)}"
    if m3 := re.match(r"^(downsample|upsample)\.conv\.(weight|bias)$", tail):
        sampler = "downsamplers" if side == "encoder" else "upsamplers"
        return f"{side}.{blocks}.{idx}.{sampler}.0.conv.{m3.group(2)}"
    return None


def convert_taming_state_dict(
    state_dict: Mapping[str, Tensor], levels: int | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """taming ``VQModel`` keys → diffusers ``VQModel`` keys (see the module docstring for the correspondence).

    ``levels``: number of resolution levels (``len(ch_mult)``; read from the ``encoder.down.N`` keys when None). A
    ``d_vae.model.`` or ``model.`` prefix is stripped. Returns (converted, dropped keys); ``loss.*`` is dropped
    (:data:`TAMING_DROPPED`), anything else unknown raises :class:`~zoo.hub.WeightsError`. Attention 1×1 convolution
    kernels ``(C, C, 1, 1)`` become linear weights ``(C, C)``.
    """
    state = dict(state_dict)
    for prefix in _STRIP:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    if levels is None:
        found = [int(m.group(1)) for k in state if (m := re.match(r"^encoder\.down\.(\d+)\.", k))]
        if not found:
            raise WeightsError("not a taming VQGAN state dict: no encoder.down.N.* keys")
        levels = max(found) + 1

    def rename(key: str, value: Tensor) -> tuple[str, Tensor] | None:
        new = _rename(key, levels)
        if new is None:
            return None
        if ".attentions." in new and new.endswith(".weight") and value.dim() == 4:  # 1×1 conv → linear
            value = value.reshape(value.shape[0], value.shape[1])
        return new, value

    return convert_keys(state, rename, TAMING_DROPPED, "taming VQGAN")


def taming_shapes_to_diffusers(shapes: Sequence[tuple[str, Sequence[int]]], levels: int) -> dict[str, tuple[int, ...]]:
    """The converted ``{key: shape}`` of a taming key/shape list (what the reference layouts hold), for checks."""
    meta = {k: torch.empty(tuple(s), device="meta") for k, s in shapes}
    converted, _ = convert_taming_state_dict(meta, levels)
    return {k: tuple(v.shape) for k, v in converted.items()}
