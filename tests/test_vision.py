"""Vision encoders ``timm``, ``beit_v2``, ``swin``, ``open_clip``, ``video`` and the timm attention routing.

References: official parameter counts and state-dict key/shape lists (tests/reference/*.json, built from the official
X²-VLM @21ed5a5 and CCLM @a00c3c0 code), architecture formulas written out here, and the libraries' own models (timm,
open_clip) run on the same weights. Official sizes are built on the meta device only; everything that runs is tiny.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import zoo.modules.vision._timm_attention as routing
import zoo.modules.vision.video as video_module
from zoo.modules.attention import force_backend, set_attention_backend
from zoo.modules.outputs import EncoderOutput
from zoo.modules.vision._timm_attention import (
    RoutedBeitAttention,
    RoutedTimmAttention,
    RoutedWindowAttention,
    route_timm_attention,
    routed_attention_modules,
)
from zoo.modules.vision.beit import BEiTv2Encoder
from zoo.modules.vision.open_clip import OpenCLIPVisionEncoder
from zoo.modules.vision.swin import SwinEncoder, convert_official_swin
from zoo.hub import WeightsError
from zoo.modules.vision.timm_encoder import TimmEncoder
from zoo.modules.vision.video import TemporalAttentionLayer, VideoEncoder, temporal_shift
from conftest import load_reference, reference_shapes
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError, build

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

VE = "vision_encoder."

TINY_BEIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_SWIN = {"img_size": 32, "patch_size": 2, "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4), "window_size": 4}
TINY_VIT = {"model_name": "vit_tiny_patch16_224", "img_size": 32,
            "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}}
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


_ref = load_reference


def _ref_shapes(name: str, prefix: str = VE) -> dict[str, tuple[int, ...]]:
    return reference_shapes(name, prefix)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (zero-initialised tables, biases and layer scales included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _assert_backward_reaches(module: torch.nn.Module, out: EncoderOutput, patch_weight: torch.Tensor) -> None:
    (out.tokens.square().mean() + out.pooled.square().mean()).backward()
    assert patch_weight.grad is not None and torch.isfinite(patch_weight.grad).all()
    assert patch_weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------------------------------
# official sizes (meta device)
# ---------------------------------------------------------------------------------------------------------------------
def test_beit_v2_matches_official_counts_and_keys():
    with torch.device("meta"):
        base, large, base768 = BEiTv2Encoder(), BEiTv2Encoder(embed_dim=1024, depth=24, num_heads=16), \
            BEiTv2Encoder(img_size=768)
    assert _count(base) == _ref("x2vlm_base_pretrain")["params_by_prefix"]["vision_encoder"] == 85_761_984
    assert _count(large) == _ref("x2vlm_large_pretrain")["params_by_prefix"]["vision_encoder"] == 303_405_568
    assert _count(base768) == _ref("x2vlm_base_vqa")["params_by_prefix"]["vision_encoder"] == 86_956_608
    # the full ordered key/shape list, buffers (relative_position_index) included, no prefix
    official = [(k[len(VE):], tuple(s)) for k, s in _ref("x2vlm_base_pretrain")["state_dict"] if k.startswith(VE)]
    assert [(k, tuple(v.shape)) for k, v in base.state_dict().items()] == official
    assert _shapes(base768) == _ref_shapes("x2vlm_base_vqa")  # 768 px: tables (9028, 12), index (2305, 2305)
    assert _shapes(base768)["blocks.0.attn.relative_position_bias_table"] == (9028, 12)
    assert _shapes(large) == _ref_shapes("x2vlm_large_pretrain")
    assert base.width == 768 and base.image_size == 224 and large.width == 1024


def test_swin_matches_official_count_and_converted_keys():
    with torch.device("meta"):
        swin = SwinEncoder()
    assert _count(swin) == _ref("cclm_pretrain_4m_swinB224")["params_by_prefix"]["vision_encoder"] == 86_743_224
    assert swin.width == 1024
    official = _ref_shapes("cclm_pretrain_4m_swinB224")
    # timm's names differ from the official ones: that is why convert_official_swin exists
    assert set(official) != set(swin.state_dict())
    converted = convert_official_swin({k: torch.empty(s, device="meta") for k, s in official.items()})
    assert {k: tuple(v.shape) for k, v in converted.items()} == _shapes(swin)
    # what the conversion drops are exactly the official buffers, and timm holds the same ones (non-persistent)
    dropped = {k: s for k, s in official.items() if k.endswith(("relative_position_index", "attn_mask"))}
    buffers = {k: tuple(v.shape) for k, v in swin.named_buffers()}
    assert dropped and dropped == {k: s for k, s in buffers.items() if k in dropped}
    assert len(dropped) == 24 + 11  # one index per block, one mask per shifted block outside the 7x7 last stage


def test_video_adds_the_official_frame_position_embedding():
    with torch.device("meta"):
        video = VideoEncoder(BEiTv2Encoder(), num_frames=3)
    video_total = _ref("x2vlm_base_video_stage2")["total_params"]
    image_total = _ref("x2vlm_base_pretrain")["total_params"]
    assert video_total - image_total == 2_304 == 3 * 768
    assert _count(video) - _count(video.image_encoder) == video_total - image_total
    assert "absolute_frame_pos_embed" in _ref_shapes("x2vlm_base_video_stage2", prefix="")
    assert tuple(video.absolute_frame_pos_embed.shape) == (1, 3, 1, 768)


def test_open_clip_vit_l_14_count_from_the_architecture_formula():
    with torch.device("meta"):
        enc = OpenCLIPVisionEncoder("ViT-L-14")
    d, layers, patch, grid, out = 1024, 24, 14, 16, 768
    block = (3 * d * d + 3 * d) + (d * d + d) + 2 * (2 * d) + (d * 4 * d + 4 * d + 4 * d * d + d)
    expected = 3 * patch * patch * d + d + (grid * grid + 1) * d + 2 * d + layers * block + 2 * d + d * out
    assert _count(enc) == expected == 303_966_208
    assert enc.width == 1024 and enc.embed_dim == 768 and enc.image_size == 224
    assert all(k.startswith("visual.") for k in enc.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# beit_v2
# ---------------------------------------------------------------------------------------------------------------------
def _plain_timm_beit(enc: BEiTv2Encoder) -> torch.nn.Module:
    """timm's own Beit with the same settings and weights (its relative_position_index is non-persistent)."""
    from functools import partial

    from timm.layers import LayerNorm
    from timm.models.beit import Beit

    ref = Beit(img_size=32, patch_size=8, num_classes=0, global_pool="avg", embed_dim=32, depth=2, num_heads=2,
               qkv_bias=True, norm_layer=partial(LayerNorm, eps=1e-6), init_values=0.1, use_abs_pos_emb=False,
               use_rel_pos_bias=True)
    sd = {k: v for k, v in enc.state_dict().items() if not k.endswith("relative_position_index")}
    ref.load_state_dict(sd, strict=True)
    return ref.eval()


def test_beit_output_quirk_against_timm_forward_features():
    enc = _randomize(BEiTv2Encoder(**TINY_BEIT, drop_path_rate=0.0)).eval()
    ref = _plain_timm_beit(enc)
    x = _images()
    with torch.no_grad():
        out = enc(x)
        feats = ref.forward_features(x).double()  # (B, 1 + 16, D): CLS + patches, no final norm
    w, b = enc.fc_norm.weight.double(), enc.fc_norm.bias.double()
    patches = F.layer_norm(feats[:, 1:], (32,), w, b, eps=1e-6)  # CLS dropped, fc_norm on every patch
    assert out.tokens.shape == (2, 17, 32) and out.pooled.shape == (2, 32)
    assert _max_diff(out.tokens[:, 1:].double(), patches) < 1e-5
    assert _max_diff(out.tokens[:, 0].double(), patches.mean(dim=1)) < 1e-5  # token 0 = mean of normalised patches
    assert torch.equal(out.pooled, out.tokens[:, 0])
    # timm pools the other way round (mean, then fc_norm): the quirk matters
    assert _max_diff(ref.forward_head(feats.float(), pre_logits=True), out.pooled) > 1e-3


def test_beit_forward_backward_hidden_states_and_checkpointing():
    enc = _randomize(BEiTv2Encoder(**TINY_BEIT))
    out = enc(_images(), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 17, 32)
    _assert_backward_reaches(enc, out, enc.patch_embed.proj.weight)
    # gradient checkpointing changes memory, not results (eval: no drop path randomness)
    enc.eval()
    grads = []
    for flag in (False, True):
        enc.zero_grad()
        enc.set_grad_checkpointing(flag)
        enc(_images()).tokens.sum().backward()
        grads.append(enc.patch_embed.proj.weight.grad.clone())
    assert _max_diff(*grads) < 1e-5


def test_beit_loads_official_checkpoint_layout(tmp_path):
    src = _randomize(BEiTv2Encoder(**TINY_BEIT)).eval()
    # an X²-VLM training checkpoint: {'model': full state dict}, vision keys under vision_encoder., others beside
    full = {VE + k: v for k, v in src.state_dict().items()}
    full["text_encoder.bert.embeddings.word_embeddings.weight"] = torch.randn(10, 4)
    torch.save({"model": full, "epoch": 3}, tmp_path / "x2vlm.pth")
    dst = BEiTv2Encoder(**TINY_BEIT, pretrained=str(tmp_path / "x2vlm.pth")).eval()
    with torch.no_grad():
        assert torch.equal(dst(_images()).tokens, src(_images()).tokens)
    # a BEiT-v2 checkpoint: one shared table (copied into every block), classifier head, no index buffers
    sd = {k: v for k, v in src.state_dict().items() if "relative_position" not in k}
    table = torch.randn_like(src.blocks[0].attn.relative_position_bias_table)
    sd |= {"rel_pos_bias.relative_position_bias_table": table, "head.weight": torch.randn(5, 32)}
    save_file(sd, str(tmp_path / "beitv2.safetensors"))
    dst = BEiTv2Encoder(**TINY_BEIT, pretrained=str(tmp_path / "beitv2.safetensors"))
    assert all(torch.equal(blk.attn.relative_position_bias_table, table) for blk in dst.blocks)


def test_beit_resolution_change_resizes_relative_position_tables(tmp_path):
    from timm.layers import resize_rel_pos_bias_table

    src = _randomize(BEiTv2Encoder(**TINY_BEIT))  # 32 px / 8 -> 4x4 grid: (7*7 + 3, 2) table
    save_file(src.state_dict(), str(tmp_path / "beit32.safetensors"))
    big = BEiTv2Encoder(**dict(TINY_BEIT, img_size=48), pretrained=str(tmp_path / "beit32.safetensors"))
    old = src.blocks[1].attn.relative_position_bias_table.detach()
    new = big.blocks[1].attn.relative_position_bias_table.detach()
    assert old.shape == (52, 2) and new.shape == (11 * 11 + 3, 2)
    assert torch.equal(new[-3:], old[-3:])  # cls<->token entries are carried over
    assert torch.allclose(new, resize_rel_pos_bias_table(old, (6, 6), (124, 2)))
    assert big.blocks[1].attn.relative_position_index.shape == (37, 37)
    assert "blocks.1.attn.relative_position_index" in big.state_dict()
    big(_images(size=48)).tokens.sum().backward()
    # timm's in-place resize keeps the official (persistent) index buffers
    src.set_input_size(img_size=48)
    assert src.image_size == 48 and _shapes(src) == _shapes(big)
    assert torch.allclose(src.blocks[1].attn.relative_position_bias_table, new)


def test_beit_checkpoint_errors_name_file_and_keys(tmp_path):
    sd = BEiTv2Encoder(**dict(TINY_BEIT, embed_dim=48, num_heads=2)).state_dict()
    save_file(sd, str(tmp_path / "wide.safetensors"))
    with pytest.raises(WeightsError, match=r"wide\.safetensors.*shape mismatch.*blocks\.0\.attn\.proj\.bias: file \(48,\) vs model \(32,\)"):
        BEiTv2Encoder(**TINY_BEIT, pretrained=str(tmp_path / "wide.safetensors"))
    with pytest.raises(WeightsError, match="missing.pth: no such weights file"):
        BEiTv2Encoder(**TINY_BEIT, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        BEiTv2Encoder(img_size=30, patch_size=8)


# ---------------------------------------------------------------------------------------------------------------------
# swin
# ---------------------------------------------------------------------------------------------------------------------
def _plain_timm_swin(enc: SwinEncoder) -> torch.nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    ref = SwinTransformer(img_size=32, patch_size=2, num_classes=0, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                          window_size=4)
    ref.load_state_dict(enc.state_dict(), strict=True)
    return ref.eval()


def _to_official_swin(sd: dict[str, torch.Tensor], enc: SwinEncoder) -> dict[str, torch.Tensor]:
    """timm layout -> official layout (downsample moved back one stage, buffers stored), written independently."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        out[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k] = v
    for name, buf in enc.named_buffers():
        out[name] = buf.clone()
    return out


def test_swin_cclm_output_against_timm():
    enc = _randomize(SwinEncoder(**TINY_SWIN, drop_path_rate=0.0)).eval()
    ref = _plain_timm_swin(enc)
    x = _images()
    with torch.no_grad():
        out = enc(x)
        feats = ref.forward_features(x)  # (B, 8, 8, 32), final norm applied
        pooled = ref.forward_head(feats, pre_logits=True)
    assert out.tokens.shape == (2, 1 + 64, 32) and enc.width == 32
    assert _max_diff(out.tokens[:, 1:], feats.flatten(1, 2)) < 1e-5
    assert _max_diff(out.pooled, pooled) < 1e-5 and torch.equal(out.tokens[:, 0], out.pooled)


def test_swin_forward_backward_hidden_states_and_official_checkpoint(tmp_path):
    src = _randomize(SwinEncoder(**TINY_SWIN))
    out = src(_images(), output_hidden_states=True)
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 256, 16), (2, 256, 16), (2, 64, 32)]
    _assert_backward_reaches(src, out, src.patch_embed.proj.weight)
    official = {VE + k: v for k, v in _to_official_swin(src.state_dict(), src).items()}
    assert "vision_encoder.layers.0.downsample.reduction.weight" in official
    torch.save({"model": official}, tmp_path / "cclm.pth")
    dst = SwinEncoder(**TINY_SWIN, pretrained=str(tmp_path / "cclm.pth")).eval()
    with torch.no_grad():
        assert torch.equal(dst(_images()).tokens, src.eval()(_images()).tokens)


# ---------------------------------------------------------------------------------------------------------------------
# timm (generic)
# ---------------------------------------------------------------------------------------------------------------------
def test_timm_vit_tokens_and_pooled_are_timms(tmp_path):
    enc = _randomize(TimmEncoder(**TINY_VIT)).eval()
    x = _images()
    with torch.no_grad():
        out = enc(x, output_hidden_states=True)
        feats = enc.model.forward_features(x)
    assert enc.width == 32 and enc.num_prefix_tokens == 1 and enc.image_size == 32
    assert torch.equal(out.tokens, feats) and out.tokens.shape == (2, 17, 32)  # CLS + 16 patches
    assert torch.equal(out.pooled, feats[:, 0])  # ViT: class-token pooling
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 16, 32)] * 2
    # a timm checkpoint with a classifier head (num_classes=7) loads; the head is dropped
    plain = _randomize(timm.create_model("vit_tiny_patch16_224", num_classes=7, img_size=32, **TINY_VIT["model_kwargs"]))
    torch.save(plain.state_dict(), tmp_path / "vit.pth")
    loaded = TimmEncoder(**TINY_VIT, pretrained=str(tmp_path / "vit.pth")).eval()
    with torch.no_grad():
        assert _max_diff(loaded(x).pooled, plain.eval().forward_head(plain.forward_features(x), pre_logits=True)) < 1e-6
    # ... and resized position embeddings when img_size differs (timm's ViT filter)
    big = TimmEncoder(**dict(TINY_VIT, img_size=48), pretrained=str(tmp_path / "vit.pth"))
    assert big(_images(size=48)).tokens.shape == (2, 37, 32)


def test_timm_cnn_feature_map_is_flattened():
    enc = TimmEncoder("resnet18")
    out = enc(_images(size=64))
    assert out.tokens.shape == (2, 4, 512) and enc.width == 512
    assert _max_diff(out.pooled, out.tokens.mean(dim=1)) < 1e-5  # global average pool
    _assert_backward_reaches(enc, out, enc.model.conv1.weight)


def test_timm_errors():
    with pytest.raises(ConfigError, match="unknown timm model 'vit_tiny_patch16_22'.*vit_tiny_patch16_224"):
        TimmEncoder("vit_tiny_patch16_22")
    with pytest.raises(ConfigError, match="may not set 'num_classes'"):
        TimmEncoder("resnet18", model_kwargs={"num_classes": 3})
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-L-15'.*'ViT-L-14'"):
        OpenCLIPVisionEncoder("ViT-L-15")


def test_timm_forward_backward():
    enc = TimmEncoder(**TINY_VIT, drop_path_rate=0.1)
    _assert_backward_reaches(enc, enc(_images()), enc.model.patch_embed.proj.weight)


# ---------------------------------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("open_clip") / "zoo-test-tiny-vit.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return "zoo-test-tiny-vit"


def test_open_clip_tokens_match_open_clip_and_backward(tiny_clip_name):
    enc = OpenCLIPVisionEncoder(tiny_clip_name).eval()
    x = _images()
    with torch.no_grad():
        out = enc(x, output_hidden_states=True)
        proj_pooled, patch_tokens = enc.visual(x)  # open_clip's own forward with output_tokens
    assert enc.width == 32 and enc.embed_dim == 16 and enc.image_size == 32
    assert out.tokens.shape == (2, 16, 32) and torch.equal(out.tokens, patch_tokens)
    assert _max_diff(enc.project(out.pooled), proj_pooled) < 1e-6
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 17, 32)
    enc_all = OpenCLIPVisionEncoder(tiny_clip_name, output="all").train()
    out = enc_all(x)
    assert out.tokens.shape == (2, 17, 32) and torch.equal(out.tokens[:, 0], out.pooled)
    _assert_backward_reaches(enc_all, out, enc_all.visual.conv1.weight)


def test_open_clip_loads_local_tower_and_full_checkpoints(tiny_clip_name, tmp_path):
    src = _randomize(OpenCLIPVisionEncoder(tiny_clip_name)).eval()
    x = _images()
    # tower-only state dict (open_clip's visual module keys, no prefix)
    save_file({k: v.contiguous() for k, v in src.visual.state_dict().items()}, str(tmp_path / "tower.safetensors"))
    dst = OpenCLIPVisionEncoder(tiny_clip_name, pretrained=str(tmp_path / "tower.safetensors")).eval()
    with torch.no_grad():
        assert torch.equal(dst(x).tokens, src(x).tokens)
    # a full open_clip checkpoint: {'state_dict': {'module.visual.*', 'module.text...'}}
    clip = open_clip.create_model(tiny_clip_name)
    clip.visual.load_state_dict(src.visual.state_dict())
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, tmp_path / "clip.pt")
    dst = OpenCLIPVisionEncoder(tiny_clip_name, pretrained=str(tmp_path / "clip.pt")).eval()
    with torch.no_grad():
        assert torch.equal(dst(x).pooled, src(x).pooled)
    # another resolution: the position embedding is resized by open_clip's helper
    big = OpenCLIPVisionEncoder(tiny_clip_name, img_size=48, pretrained=str(tmp_path / "tower.safetensors"))
    assert big(_images(size=48)).tokens.shape == (2, 36, 32)
    with pytest.raises(WeightsError, match="tower.safetensors"):
        OpenCLIPVisionEncoder("ViT-B-32", pretrained=str(tmp_path / "tower.safetensors"))


# ---------------------------------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------------------------------
def _frames(b: int = 2, t: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_video_avgpool_equals_mean_of_frame_encodings():
    image = _randomize(BEiTv2Encoder(**TINY_BEIT)).eval()
    video = VideoEncoder(image, num_frames=3).eval()
    assert video.absolute_frame_pos_embed.abs().sum() > 0  # trunc-normal init, as X²-VLM
    frames = _frames()
    with torch.no_grad():
        out = video(frames)
        per_frame = [image(frames[:, f]) for f in range(3)]  # each frame on its own
    pos = video.absolute_frame_pos_embed.detach().double()  # (1, 3, 1, D)
    tokens = sum(o.tokens.double() + pos[:, f] for f, o in enumerate(per_frame)) / 3
    pooled = sum(o.pooled.double() + pos[0, f] for f, o in enumerate(per_frame)) / 3
    assert out.tokens.shape == (2, 17, 32) and video.width == 32 and video.image_size == 32
    assert _max_diff(out.tokens.double(), tokens) < 1e-5
    assert _max_diff(out.pooled.double(), pooled) < 1e-5
    assert torch.equal(out.pooled, out.tokens[:, 0])  # beit_v2: pooled stays token 0


def test_video_concat_keeps_every_frame_in_order():
    """``combine: concat``: token 0 the pooled vector (mean over frames of each frame's pooled + position), then frame
    0's tokens + its frame position, frame 1's, ... (float64 reference from each frame on its own). Catches the frames
    interleaved by token (a transpose), the position left out, or the summary token missing."""
    image = _randomize(BEiTv2Encoder(**TINY_BEIT)).eval()
    video = VideoEncoder(image, num_frames=3, combine="concat").eval()
    frames = _frames()
    with torch.no_grad():
        out = video(frames)
        per_frame = [image(frames[:, f]) for f in range(3)]
    pos = video.absolute_frame_pos_embed.detach().double()  # (1, 3, 1, D)
    tokens = torch.cat([o.tokens.double() + pos[:, f] for f, o in enumerate(per_frame)], dim=1)
    pooled = sum(o.pooled.double() + pos[0, f] for f, o in enumerate(per_frame)) / 3
    assert out.tokens.shape == (2, 1 + 3 * 17, 32)
    assert _max_diff(out.tokens.double()[:, 1:], tokens) < 1e-5
    assert _max_diff(out.pooled.double(), pooled) < 1e-5
    assert torch.equal(out.tokens[:, 0], out.pooled)  # token 0: the video's summary, as avgpool's
    with pytest.raises(ConfigError, match="'avgpool', 'temporal_attention' or 'concat'"):
        VideoEncoder(image, combine="stack")
    # with the temporal layer: the identity at initialisation, and then frame 0's tokens see frame 2's content at the
    # same position (without the layer they do not: each frame's tokens are its own encoding)
    both = VideoEncoder(image, num_frames=3, combine="concat", temporal_layer=True, num_heads=4).eval()
    both.absolute_frame_pos_embed.data.copy_(video.absolute_frame_pos_embed.data)
    other = frames.clone()
    other[:, 2] = torch.randn_like(other[:, 2])
    with torch.no_grad():
        assert _max_diff(both(frames).tokens, out.tokens) < 1e-5
        _randomize(both.temporal, seed=4)
        n = 17
        assert _max_diff(both(frames).tokens[:, 1:1 + n], both(other).tokens[:, 1:1 + n]) > 1e-3
        assert _max_diff(video(frames).tokens[:, 1:1 + n], video(other).tokens[:, 1:1 + n]) == 0


@pytest.mark.parametrize("span", ["position", "clip", "divided"])
def test_temporal_layer_span_against_torch_multihead_attention(span):
    """The temporal layer's attention equals torch's ``nn.MultiheadAttention`` (its own weights copied in, float64) over
    the sequences its span names: each token position's T frames (``position``), all T·P tokens of a clip
    (``clip``), or the position attention then a second one over each frame's P tokens (``divided``). Catches the heads
    split from the wrong axis, the span's sequences built across clips of the batch, or the tokens put back in another
    order."""
    torch.manual_seed(0)
    b, t, p, d, heads = 2, 3, 5, 16, 4
    layer = TemporalAttentionLayer(d, heads, num_frames=t, span=span).double().eval()
    for param in layer.parameters():
        torch.nn.init.normal_(param, std=0.3)
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True).double().eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.qkv.weight)
        mha.in_proj_bias.copy_(layer.qkv.bias)
        mha.out_proj.weight.copy_(layer.proj.weight)
        mha.out_proj.bias.copy_(layer.proj.bias)
        x = torch.randn(b, t, p, d, dtype=torch.float64)
        h = layer.norm1(x) + layer.time_embed.unsqueeze(2)
        if span in ("position", "divided"):
            seq = h.permute(0, 2, 1, 3).reshape(b * p, t, d)
            a = mha(seq, seq, seq, need_weights=False)[0].reshape(b, p, t, d).permute(0, 2, 1, 3)
        else:
            seq = h.reshape(b, t * p, d)
            a = mha(seq, seq, seq, need_weights=False)[0].reshape(b, t, p, d)
        y = x + a
        if span == "divided":
            spatial = torch.nn.MultiheadAttention(d, heads, batch_first=True).double().eval()
            spatial.in_proj_weight.copy_(layer.qkv_s.weight)
            spatial.in_proj_bias.copy_(layer.qkv_s.bias)
            spatial.out_proj.weight.copy_(layer.proj_s.weight)
            spatial.out_proj.bias.copy_(layer.proj_s.bias)
            seq = layer.norm_s(y).reshape(b * t, p, d)
            y = y + spatial(seq, seq, seq, need_weights=False)[0].reshape(b, t, p, d)
        ref = y + layer.mlp(layer.norm2(y))
        assert _max_diff(layer(x), ref) < 1e-10
        # the spans differ: with a clip span, a token sees the other positions
        moved = x.clone()
        moved[:, 1, 2] = torch.randn(b, d, dtype=torch.float64)  # another token at frame 1, position 2
        changed = (layer(moved) - layer(x)).abs().amax(dim=-1)  # (B, T, P)
        other_positions = changed[:, :, [0, 1, 3, 4]]
        assert (other_positions.max() > 1e-3) == (span != "position")
    with pytest.raises(ConfigError, match="'position', 'clip' or 'divided'"):
        TemporalAttentionLayer(d, heads, num_frames=t, span="frames")


def _shift_reference(x, frames: int, fraction: float):
    """TSM's shift written out index by index: channel k < c of frame t from frame t-1, c <= k < 2c from frame t+1,
    zero past the clip's ends; ``x`` (B·T, N, D) with each clip's frames consecutive."""
    out = x.clone()
    c = int(x.shape[-1] * fraction / 2)
    for row in range(x.shape[0]):
        clip, t = divmod(row, frames)
        for k in range(2 * c):
            src = t - 1 if k < c else t + 1
            out[row, :, k] = x[clip * frames + src, :, k] if 0 <= src < frames else 0.0
    return out


def test_temporal_shift_against_an_index_by_index_reference():
    """Catches the two directions swapped, the shifted channel count off (c = D · fraction / 2, floored), frames
    leaking from one clip into the next at the batch's clip boundary, and the padding at the wrong end."""
    x = torch.randn(3 * 4, 5, 16, dtype=torch.float64)
    for fraction in (0.25, 0.3, 1.0):
        assert torch.equal(temporal_shift(x, 4, fraction), _shift_reference(x, 4, fraction))
    assert temporal_shift(x, 4, 0.1) is x  # 16 · 0.05 < 1 channel: nothing shifts
    with pytest.raises(ValueError, match="T=5 frames per clip"):
        temporal_shift(x, 5, 0.25)


def test_video_temporal_shift_equals_blocks_run_by_hand():
    """``temporal_shift``: the image encoder's blocks with the attention branch reading the shifted input and the
    residual stream its own (float64, blocks called part by part). Catches the shift applied to the residual stream
    too (TSM's in-place variant), a hook left on the image encoder used alone, and state-dict keys changed."""
    image = _randomize(BEiTv2Encoder(**TINY_BEIT)).double().eval()
    plain = VideoEncoder(image, num_frames=3, combine="concat").double().eval()
    shifted = VideoEncoder(image, num_frames=3, combine="concat", temporal_shift=0.25).double().eval()
    assert list(shifted.state_dict()) == list(plain.state_dict())
    shifted.absolute_frame_pos_embed.data.copy_(plain.absolute_frame_pos_embed.data)
    frames = _frames().double()
    with torch.no_grad():
        flat = frames.flatten(0, 1)
        x = torch.cat((image.cls_token.expand(flat.shape[0], -1, -1), image.patch_embed(flat)), dim=1)
        x = x + image.pos_embed if image.pos_embed is not None else x
        for block in image.blocks:
            branch = block.attn(block.norm1(_shift_reference(x, 3, 0.25)))
            x = x + (branch if block.gamma_1 is None else block.gamma_1 * branch)
            mlp = block.mlp(block.norm2(x))
            x = x + (mlp if block.gamma_2 is None else block.gamma_2 * mlp)
        patches = image.fc_norm(image.norm(x[:, 1:])).unflatten(0, (2, 3))  # (B, T, N, D)
        tokens = torch.cat((patches.mean(dim=2, keepdim=True), patches), dim=2)  # beit_v2: the mean token first
        pos = shifted.absolute_frame_pos_embed
        ref = torch.cat([tokens[:, f] + pos[:, f] for f in range(3)], dim=1)
        out = shifted(frames)
        assert _max_diff(out.tokens[:, 1:], ref) < 1e-10
        assert _max_diff(out.tokens, plain(frames).tokens) > 1e-3  # the shift changes the encoding
        assert torch.equal(image(flat).tokens, plain.image_encoder(flat).tokens)  # the image encoder alone: no shift
    with pytest.raises(ConfigError, match="temporal_shift must lie in"):
        VideoEncoder(image, num_frames=3, temporal_shift=1.5)
    # blocks recomputed in backward would run unshifted (other gradients): refused, not silently wrong
    with pytest.raises(ConfigError, match="train.grad_checkpointing: gradient checkpointing does not combine"):
        shifted.set_grad_checkpointing(True)
    plain.set_grad_checkpointing(True)  # without the shift it stays available
    with pytest.raises(ConfigError, match="no transformer blocks"):
        VideoEncoder(_PlainImageEncoder(), num_frames=3, temporal_shift=0.25)


class _PlainImageEncoder(torch.nn.Module):
    width, image_size = 8, 32

    def forward(self, images):
        tokens = images.flatten(2).transpose(1, 2)[..., :8]
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(1))


def test_video_of_one_repeated_image_with_zero_frame_pos_is_the_image_encoding():
    image = _randomize(BEiTv2Encoder(**TINY_BEIT)).eval()
    video = VideoEncoder(image, num_frames=3).eval()
    with torch.no_grad():
        video.absolute_frame_pos_embed.zero_()
        img = _images()
        out, ref = video(img.unsqueeze(1).expand(-1, 3, -1, -1, -1)), image(img)
    assert _max_diff(out.tokens, ref.tokens) < 1e-5 and _max_diff(out.pooled, ref.pooled) < 1e-5


def test_video_frame_count_and_temporal_attention(monkeypatch):
    image = _randomize(BEiTv2Encoder(**TINY_BEIT))
    with pytest.raises(ValueError, match="num_frames=3.*got 4 frames"):
        VideoEncoder(image, num_frames=3)(_frames(t=4))
    assert VideoEncoder(image, num_frames=3, frame_pos=False)(_frames(t=4)).tokens.shape == (2, 17, 32)
    avg = VideoEncoder(image, num_frames=3).eval()
    temporal = VideoEncoder(image, num_frames=3, combine="temporal_attention", num_heads=4).eval()
    temporal.absolute_frame_pos_embed.data.copy_(avg.absolute_frame_pos_embed.data)
    frames = _frames()
    with torch.no_grad():  # output projections start at zero: identical to avgpool at initialisation
        assert _max_diff(temporal(frames).tokens, avg(frames).tokens) < 1e-6
    _randomize(temporal.temporal, seed=3)
    calls = []
    original = video_module.attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    monkeypatch.setattr(video_module, "attention", spy)
    set_attention_backend(temporal, "math")
    out = temporal.train()(frames)
    assert calls == ["math"]  # the temporal layer runs on the framework op, with its attn_backend
    with torch.no_grad():
        assert _max_diff(out.tokens, avg(frames).tokens) > 1e-3
    _assert_backward_reaches(temporal, out, image.patch_embed.proj.weight)
    # time: with the frame position embedding at zero, the layer's own time embedding alone tells a clip from the clip
    # played backwards (without it the layer is equivariant to frame order and the mean after it invariant)
    temporal.eval()
    with torch.no_grad():
        temporal.absolute_frame_pos_embed.zero_()
        forward, backward = temporal(frames).tokens, temporal(frames.flip(1)).tokens
        assert _max_diff(forward, backward) > 1e-2
        temporal.temporal.time_embed.zero_()
        assert _max_diff(temporal(frames).tokens, temporal(frames.flip(1)).tokens) < 1e-5
    with pytest.raises(ValueError, match="built for 3 frames, got 4"):
        temporal.temporal(torch.zeros(2, 4, 5, 32))
    with pytest.raises(ConfigError, match="num_heads 5 must divide"):
        VideoEncoder(image, combine="temporal_attention", num_heads=5)


def test_video_loads_frame_embedding_saved_for_another_frame_count():
    image = BEiTv2Encoder(**TINY_BEIT)
    four = VideoEncoder(image, num_frames=4)
    three = VideoEncoder(BEiTv2Encoder(**TINY_BEIT), num_frames=3)
    with pytest.warns(UserWarning, match="first 3"):
        four.load_state_dict(three.state_dict())
    assert torch.equal(four.absolute_frame_pos_embed[:, :3], three.absolute_frame_pos_embed)


# ---------------------------------------------------------------------------------------------------------------------
# attention routing
# ---------------------------------------------------------------------------------------------------------------------
def _pair(kind: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The same tiny encoder twice, with timm's attention and routed through the op, on the same weights."""
    if kind == "vit":
        make = lambda attention: TimmEncoder(**TINY_VIT, attention=attention)
    elif kind == "beit":
        make = lambda attention: BEiTv2Encoder(**TINY_BEIT, attention=attention)
    else:
        make = lambda attention: SwinEncoder(**TINY_SWIN, attention=attention)
    ref = _randomize(make("timm")).eval()
    zoo = make("zoo").eval()
    zoo.load_state_dict(ref.state_dict())
    return ref, zoo, _images()


@pytest.mark.parametrize("kind,routed_cls", [
    ("vit", RoutedTimmAttention), ("beit", RoutedBeitAttention), ("swin", RoutedWindowAttention)
])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_routed_attention_equals_timm(kind, routed_cls, backend):
    ref, zoo, x = _pair(kind)
    assert not routed_attention_modules(ref)
    routed = routed_attention_modules(zoo)
    assert len(routed) == (4 if kind == "swin" else 2) and all(type(m) is routed_cls for m in routed)
    assert all(hasattr(m, "attn_backend") for m in routed)
    set_attention_backend(zoo, backend)
    assert all(m.attn_backend == backend for m in routed)
    with torch.no_grad():
        a, b = ref(x), zoo(x)
    assert _max_diff(a.tokens, b.tokens) < 1e-5 and _max_diff(a.pooled, b.pooled) < 1e-5
    with force_backend(backend), torch.no_grad():
        assert _max_diff(zoo(x).tokens, a.tokens) < 1e-5


def test_auto_mode_decides_per_call(monkeypatch):
    calls = []
    original = routing.attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    monkeypatch.setattr(routing, "attention", spy)
    vit = TimmEncoder(**TINY_VIT).eval()  # attention="auto"
    assert {m.attn_route for m in routed_attention_modules(vit)} == {"auto"}
    with torch.no_grad():
        vit(_images())
        assert calls == []  # CPU float32: the op would pick sdpa, so timm's own fused forward runs
        with force_backend("math"):
            vit(_images())
        assert len(calls) == 2
        calls.clear()
        set_attention_backend(vit, "math")
        vit(_images())
        assert calls == ["math", "math"]
        calls.clear()
        swin = SwinEncoder(**TINY_SWIN).eval()  # timm's WindowAttention is not on fused SDPA: the op runs
        swin(_images())
        assert len(calls) == 4


def test_route_and_unroute_keep_state_dict():
    enc = BEiTv2Encoder(**TINY_BEIT, attention="timm")
    keys = list(enc.state_dict())
    names = route_timm_attention(enc)
    assert names == ["blocks.0.attn", "blocks.1.attn"]
    assert list(enc.state_dict()) == keys
    assert isinstance(enc.blocks[0].attn, timm.models.beit.Attention)
    route_timm_attention(enc, enable=False)
    assert type(enc.blocks[0].attn) is timm.models.beit.Attention and not hasattr(enc.blocks[0].attn, "attn_backend")


@pytest.mark.parametrize("kind", ["timm", "swin", "open_clip", "video"])
def test_grad_checkpointing_keeps_gradients(kind, tiny_clip_name):
    if kind == "timm":
        enc, x = TimmEncoder(**TINY_VIT), _images()
    elif kind == "swin":
        enc, x = SwinEncoder(**TINY_SWIN, drop_path_rate=0.0), _images()
    elif kind == "open_clip":
        enc, x = OpenCLIPVisionEncoder(tiny_clip_name), _images()
    else:
        enc, x = VideoEncoder(BEiTv2Encoder(**TINY_BEIT), num_frames=3), _frames()
    enc = _randomize(enc).eval()
    grads = []
    for flag in (False, True):
        enc.zero_grad()
        enc.set_grad_checkpointing(flag)
        out = enc(x)
        (out.tokens.square().sum() + out.pooled.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and _max_diff(*grads) < 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# registry and configs
# ---------------------------------------------------------------------------------------------------------------------
def test_registered_names_build_from_configs():
    for name, cls in (("timm", TimmEncoder), ("beit_v2", BEiTv2Encoder), ("swin", SwinEncoder),
                      ("open_clip", OpenCLIPVisionEncoder), ("video", VideoEncoder)):
        assert VISION_ENCODERS.get(name) is cls
    cfg = {"type": "video", "num_frames": 2, "combine": "avgpool",
           "image_encoder": {"type": "beit_v2", **TINY_BEIT, "attention": "zoo"}}
    video = build(cfg, "vision_encoder")
    assert isinstance(video.image_encoder, BEiTv2Encoder) and video.width == 32
    swin = build({"type": "swin", **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SWIN.items()}},
                 "vision_encoder")
    assert swin.width == 32
    with pytest.raises(ConfigError, match="attention"):
        build({"type": "beit_v2", "attention": "flash"}, "vision_encoder")
    with pytest.raises(ConfigError, match="combine"):
        build({"type": "video", "image_encoder": {"type": "beit_v2"}, "combine": "max"}, "vision_encoder")


def test_beit_absolute_position_embedding_option():
    """`use_abs_pos_emb`: a (1 + patches) table started from the 2-D sine-cosine formula, used in the forward pass
    and resampled with the resolution; off (the official layout) it adds no parameter."""
    from timm.layers import build_sincos2d_pos_embed

    from zoo.modules.vision.beit import BEiTv2Encoder

    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, drop_path_rate=0.0)
    enc = BEiTv2Encoder(**kw, use_abs_pos_emb=True).eval()
    plain = BEiTv2Encoder(**kw).eval()
    assert plain.pos_embed is None
    assert sum(p.numel() for p in enc.parameters()) - sum(p.numel() for p in plain.parameters()) == (1 + 16) * 16
    assert torch.equal(enc.pos_embed[0, 1:], build_sincos2d_pos_embed([4, 4], 16))
    assert torch.count_nonzero(enc.pos_embed[0, 0]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = enc(x).tokens
        enc.pos_embed.zero_()
        after = enc(x).tokens
    assert not torch.allclose(before, after, atol=1e-4)
    enc.set_input_size(img_size=48)
    assert enc.pos_embed.shape == (1, 1 + 36, 16) and enc(torch.randn(1, 3, 48, 48)).tokens.shape == (1, 37, 16)


def test_initializer_range_scales_bert_parts():
    """BERT-style parts draw their weights from normal(0, initializer_range): the empirical std matches."""
    from zoo.heads.vqa import GenerativeVQAHead
    from zoo.modules.text.split_bert import SplitBert

    torch.manual_seed(0)
    for std in (0.02, 0.07):
        text = SplitBert(num_layers=2, fusion_start=1, hidden_size=64, num_heads=4, intermediate_size=128,
                         vocab_size=500, encoder_width=64, max_position_embeddings=32, initializer_range=std)
        w = torch.cat([m.weight.detach().flatten() for m in text.modules() if isinstance(m, torch.nn.Linear)])
        assert float(w.std()) == pytest.approx(std, rel=0.03)
        head = GenerativeVQAHead(hidden_size=64, num_heads=4, intermediate_size=128, vocab_size=500, num_layers=1,
                                 encoder_width=64, max_position_embeddings=32, initializer_range=std)
        w = head.decoder.bert.embeddings.word_embeddings.weight.detach()
        assert float(w[1:].std()) == pytest.approx(std, rel=0.03)


def test_an_image_models_vision_weights_start_a_video_model(tmp_path):
    """``pretrained_parts: [vision]``: an image X²-VLM's vision encoder loads into a video X²-VLM's ``image_encoder``
    (how the official video models start from the image pre-training); the frame positions keep their initialisation
    (warned), the text side and heads are not loaded (another vocabulary), and the report says so. A part the file or
    the model lacks is a ConfigError naming ``pretrained_parts``. Catches the image keys left unmapped (a load that
    silently keeps random weights), the frame embedding overwritten, or parts beyond the named ones loaded."""
    import zoo

    shared = {"vision.image_encoder.patch_size": 8, "vision.image_encoder.use_abs_pos_emb": True}
    image = zoo.create_model("x2vlm-tiny", task="vqa_cls", **{"vision.patch_size": 8, "vision.use_abs_pos_emb": True})
    image.save_pretrained(tmp_path / "image")
    fresh = zoo.create_model("x2vlm-tiny-video", task="vqa_cls", **shared)
    torch.manual_seed(0)
    before = zoo.create_model("x2vlm-tiny-video", task="vqa_cls", **shared)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="vision: image encoder weights loaded into image_encoder; "
                                         "absolute_frame_pos_embed keep their initialisation"):
        video = zoo.create_model("x2vlm-tiny-video", task="vqa_cls", pretrained=tmp_path / "image",
                                 pretrained_parts=["vision"], **shared)
    own = image.vision.state_dict()
    got = video.vision.image_encoder.state_dict()
    assert set(got) == set(own) and all(torch.equal(got[k], own[k]) for k in own)
    assert not torch.equal(fresh.vision.image_encoder.patch_embed.proj.weight, got["patch_embed.proj.weight"])
    assert torch.equal(video.vision.absolute_frame_pos_embed, before.vision.absolute_frame_pos_embed)
    assert all(torch.equal(a, b) for a, b in zip(video.text.parameters(), before.text.parameters()))
    assert video.load_report == {"new": ["text", "vqa"], "left_out": ["text", "vqa"]}
    assert video.zoo_config["pretrained_parts"] == ["vision"]
    with pytest.raises(ConfigError, match="'fusion' is not a part of .*image") as info:
        zoo.create_model("x2vlm-tiny-video", task="vqa_cls", pretrained=tmp_path / "image",
                         pretrained_parts=["fusion"], **shared)
    assert info.value.path == "pretrained_parts"
    with pytest.raises(ConfigError, match="expected a list of part names"):
        zoo.create_model("x2vlm-tiny-video", task="vqa_cls", pretrained=tmp_path / "image", pretrained_parts="vision",
                         **shared)


def test_text_weights_load_by_token_into_another_vocabulary(tmp_path):
    """``pretrained_parts: [vision, text]`` from an export whose tokenizer differs from the model's: every token both
    vocabularies hold gets its row from the file (at its own id in the model's vocabulary, which differs), the tokens
    the file lacks keep the model's initialisation, and the other text weights load as they are; the generative head's
    token-indexed tensors (decoder word embeddings, prediction bias) are moved alike. Catches rows copied by id
    instead of by token, new tokens overwritten, or the head's vocabulary-sized tensors left in the file's order."""
    import zoo
    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer
    from zoo.hub import vocabulary_keys

    a = build_multilingual_tokenizer(["a red circle moves left"] * 3 + ["the blue square is small"], tmp_path / "a",
                                     vocab_size=None, model="words")
    b = build_multilingual_tokenizer(["the square turns red"] * 3 + ["a green circle appears"], tmp_path / "b",
                                     vocab_size=None, model="words")

    def make(folder, **kw):
        from zoo.train.data import tokenizer_facts

        facts = tokenizer_facts(folder)
        return zoo.create_model("x2vlm-tiny", task="vqa", **{
            "text.tokenizer": str(folder), "text.vocab_size": facts["rows"], "text.pad_token_id": facts["pad"],
            "vqa.vocab_size": facts["rows"], "vqa.pad_token_id": facts["pad"], "vqa.bos_token_id": facts["bos"],
            "vqa.eos_token_id": facts["eos"]}, **kw)

    source = make(a)
    source.save_pretrained(tmp_path / "export")
    torch.manual_seed(3)
    fresh = make(b)
    torch.manual_seed(3)
    model = make(b, pretrained=tmp_path / "export", pretrained_parts=["vision", "text", "vqa"])
    va, vb = source.text.get_tokenizer().get_vocab(), model.text.get_tokenizer().get_vocab()
    shared = sorted(set(va) & set(vb))
    moved = [t for t in shared if va[t] != vb[t]]
    new = sorted(set(vb) - set(va))
    assert "▁square" in moved and "▁red" in shared and "▁turns" in new and "▁green" in new  # the case is real
    keys = vocabulary_keys(model, 128)
    assert {"text.embeddings.word_embeddings.weight", "vqa.decoder.bert.embeddings.word_embeddings.weight",
            "vqa.cls.predictions.bias", "vqa.cls.predictions.decoder.weight"} <= set(keys)
    src, got, init = source.state_dict(), model.state_dict(), fresh.state_dict()
    for key in keys:
        for t in shared:
            assert torch.equal(got[key][vb[t]], src[key][va[t]]), (key, t)
        for t in new:
            assert torch.equal(got[key][vb[t]], init[key][vb[t]]), (key, t)
    assert torch.equal(got["text.encoder.layer.0.attention.self.query.weight"],
                       src["text.encoder.layer.0.attention.self.query.weight"])
    report = model.load_report["vocabulary"]
    assert report["copied"] == len(shared) and report["tokens"] == len(vb) and report["new"] == \
        sorted(new, key=vb.__getitem__)
