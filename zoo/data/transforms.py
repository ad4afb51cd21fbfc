"""Image and video transforms of X²-VLM fine-tuning (official recipes of ``dataset/__init__.py``).

Official facts (zengyan-97/X2-VLM ``dataset/__init__.py``, ``dataset/randaugment.py``):

- training: ``RandomResizedCrop(image_res, scale=(0.5, 1.0), bicubic)`` → ``RandomHorizontalFlip()`` (retrieval and
  captioning; the VQA recipe ``train_transform_wohflip`` has none and flips inside the data set instead, skipping
  questions or answers that say "left" or "right") → ``RandomAugment(2, 7)`` over 10 operations → ``ToTensor`` →
  ``Normalize`` with CLIP's mean and standard deviation (pre-training uses ``scale=(0.2, 1.0)``);
- evaluation: ``Resize((image_res, image_res), bicubic)`` → ``ToTensor`` → ``Normalize``.

Here the flip is **off by default** (``hflip=False``): a flip turns "the circle left of the square" into a wrong
statement, and the official careful flip only catches the words "left" and "right". The data sets of
:mod:`zoo.data.datasets` apply the careful flip themselves when asked (``hflip=True``), so this transform's flip is
for callers that want the plain official one.

``RandomAugment`` (the official augmentation, written here on torchvision's functional ops): two operations drawn
uniformly with replacement from Identity, AutoContrast, Equalize, Brightness, Sharpness, ShearX, ShearY, TranslateX,
TranslateY, Rotate; each is applied with probability 0.5, at level 7 of 10: brightness and sharpness factor
``0.7·1.8 + 0.1 = 1.36`` (never below 1), shear ``±0.21`` about the top-left corner, translation ``±7`` pixels
(absolute, whatever the image size), rotation ``±21°`` about the centre, the uncovered area filled with grey 128.
Differences from the official (which runs OpenCV on arrays): torchvision's affine warps (bilinear, as OpenCV's
``INTER_LINEAR``) may differ from OpenCV's by a pixel's interpolation; sharpness uses PIL's ``SMOOTH`` kernel (the same
3×3 kernel; the official notes the results differ only on the border). ``randaugment_impl="torchvision"`` uses
torchvision's ``RandAugment(num_ops=2, magnitude=7)`` instead: 14 operations (adds Color, Contrast, Posterize,
Solarize), always applied, with magnitudes on 31 bins (shear 0.07, rotation 7°, translation ≈10 % of the side,
enhancement factors 1 ± 0.21), so weaker geometric and stronger photometric changes than the official.

Reading: :func:`to_rgb` turns an image of any PIL mode into the 8-bit RGB image it shows (16-bit and float grey
scaled, not clipped; transparency composited over white); the data sets read every image through it.

Video: :func:`transform_frames` applies one transform to every frame of a clip with the *same* random draws (it
replays the torch random state for each frame), so a clip is cropped, flipped and augmented consistently (the
official applies the transform to each frame independently). All randomness comes from torch's generator, which
``DataLoader`` seeds per worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor

#: CLIP's normalisation, used by the official X²-VLM recipes
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "OFFICIAL_AUGMENTATIONS",
    "TRAIN_CROP_SCALE",
    "RandomAugment",
    "build_image_transform",
    "to_rgb",
    "transform_frames",
]

#: RandomResizedCrop scale of the official fine-tuning recipes
TRAIN_CROP_SCALE = (0.5, 1.0)
#: the operations of the official fine-tuning ``RandomAugment``
OFFICIAL_AUGMENTATIONS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                          "TranslateX", "TranslateY", "Rotate")
_MAX_LEVEL = 10
_TRANSLATE_CONST = 10  # pixels at the maximum level
_FILL = (128, 128, 128)


_WHITE = (255, 255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image → an 8-bit RGB image with the same content, the one conversion every image read goes through.

    PIL's own ``convert("RGB")`` clips wide modes to 0..255 (a 16-bit grey PNG becomes all white, a float image all
    black or white) and drops alpha (transparent pixels show whatever colour they store). Here:

    - ``I;16`` / ``I;16L`` / ``I;16B`` (16-bit grey) and ``I`` (32-bit int, which is how PIL opens 16-bit PNG and TIFF
      files) are read as 0..65535 (``I`` clipped to that range) and scaled to 0..255 with rounding,
      ``round(v / 257)`` (65535 → 255, 32896 → 128);
    - ``F`` (32-bit float) is read as 0..1 (clipped), scaled ``round(v * 255)``;
    - modes with alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``) and palette images with a transparent colour
      (``P`` with ``info["transparency"]``) are composited over white (:func:`PIL.Image.alpha_composite`);
    - everything else (``RGB``, ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ...) through ``convert("RGB")``.

    The pixels are loaded here, so the result outlives the file it was opened from.
    """
    import numpy as np  # noqa: PLC0415

    mode = image.mode
    if mode == "RGB":
        image.load()
        return image.copy()
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(image).astype(np.int64)
        grey = (np.clip(arr, 0, 65535) * 2 + 257) // 514  # round(v / 257) in integers (no ties: 257 is odd)
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        grey = np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0)
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


class RandomAugment:
    """The official X²-VLM ``RandomAugment(N, M)`` on PIL images (see the module docstring)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 7, ops: Sequence[str] = OFFICIAL_AUGMENTATIONS,
                 prob: float = 0.5):
        unknown = [op for op in ops if op not in OFFICIAL_AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; expected some of {', '.join(OFFICIAL_AUGMENTATIONS)}")
        if not 0 <= magnitude <= _MAX_LEVEL:
            raise ValueError(f"magnitude must lie in [0, {_MAX_LEVEL}], got {magnitude}")
        self.num_ops, self.magnitude, self.ops, self.prob = int(num_ops), int(magnitude), tuple(ops), float(prob)

    def __call__(self, img: Image.Image) -> Image.Image:
        for _ in range(self.num_ops):
            op = self.ops[int(torch.randint(len(self.ops), ()))]
            if float(torch.rand(())) > self.prob:  # official: skipped when random() > 0.5
                continue
            img = self._apply(img, op)
        return img

    def _sign(self) -> float:
        return -1.0 if float(torch.rand(())) > 0.5 else 1.0

    def _apply(self, img: Image.Image, op: str) -> Image.Image:
        import torchvision.transforms.functional as TF  # noqa: PLC0415

        level = self.magnitude / _MAX_LEVEL
        bilinear = TF.InterpolationMode.BILINEAR
        if op == "Identity":
            return img
        if op == "AutoContrast":
            return TF.autocontrast(img)
        if op == "Equalize":
            return TF.equalize(img)
        if op == "Brightness":
            return TF.adjust_brightness(img, level * 1.8 + 0.1)
        if op == "Sharpness":
            return TF.adjust_sharpness(img, level * 1.8 + 0.1)
        if op in ("ShearX", "ShearY"):
            shear = math.degrees(math.atan(self._sign() * level * 0.3))
            return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                             shear=[shear, 0.0] if op == "ShearX" else [0.0, shear],
                             interpolation=bilinear, fill=list(_FILL), center=[0, 0])
        if op in ("TranslateX", "TranslateY"):
            shift = round(self._sign() * level * _TRANSLATE_CONST)
            return TF.affine(img, angle=0.0, translate=[shift, 0] if op == "TranslateX" else [0, shift], scale=1.0,
                             shear=[0.0, 0.0], interpolation=bilinear, fill=list(_FILL))
        if op == "Rotate":
            return TF.rotate(img, self._sign() * level * 30.0, interpolation=bilinear, fill=list(_FILL))
        raise AssertionError(op)

    def __repr__(self) -> str:
        return f"RandomAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, prob={self.prob}, ops={self.ops})"


def build_image_transform(
    image_size: int,
    train: bool,
    *,
    randaugment: bool = True,
    hflip: bool = False,
    randaugment_impl: Literal["official", "torchvision"] = "official",
    crop_scale: tuple[float, float] = TRAIN_CROP_SCALE,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bicubic",
    resize_mode: Literal["squash", "shortest"] = "squash",
) -> Callable[[Image.Image], Tensor]:
    """PIL image → normalised ``(3, image_size, image_size)`` float tensor, by the official recipe.

    Args:
        image_size: output side.
        train: the training recipe (random resized crop, augmentation) or the deterministic evaluation resize.
        randaugment: add the augmentation after the crop (training only).
        hflip: add ``RandomHorizontalFlip`` (training only; off by default, see the module docstring).
        randaugment_impl: ``"official"`` (:class:`RandomAugment`) or ``"torchvision"`` (``RandAugment(2, 7)``).
        crop_scale: ``RandomResizedCrop`` scale (official fine-tuning ``(0.5, 1.0)``; pre-training ``(0.2, 1.0)``).
        mean, std: normalisation. A model's own come from its preprocessing (:mod:`zoo.processing`), which every
            caller in the framework passes; called bare, the function uses CLIP's (:data:`CLIP_MEAN` /
            :data:`CLIP_STD`), the official recipes' value.
        interpolation: ``bicubic`` (official), ``bilinear``, ``nearest`` or ``lanczos``.
        resize_mode: the evaluation resize: ``squash`` (``Resize((size, size))``, official) or ``shortest`` (the
            shorter side to ``size``, then ``CenterCrop(size)``: open_clip's).
    """
    from torchvision import transforms as T  # noqa: PLC0415


    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if randaugment_impl not in ("official", "torchvision"):
        raise ValueError(f"randaugment_impl={randaugment_impl!r}: expected 'official' or 'torchvision'")
    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
             "nearest": T.InterpolationMode.NEAREST, "lanczos": T.InterpolationMode.LANCZOS}
    if interpolation not in modes:
        raise ValueError(f"interpolation={interpolation!r}: expected one of {', '.join(modes)}")
    if resize_mode not in ("squash", "shortest"):
        raise ValueError(f"resize_mode={resize_mode!r}: expected 'squash' or 'shortest'")
    interp = modes[interpolation]
    steps: list[Any]
    # RandomResizedCrop with scale (1, 1) always keeps the whole image (an aspect ratio other than the image's does not
    # fit, and after ten rejected draws it falls back to the whole image): the evaluation resize, without the draws
    whole = tuple(float(v) for v in crop_scale) == (1.0, 1.0)
    if train and not whole:
        steps = [T.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=interp)]
    elif resize_mode == "shortest":
        steps = [T.Resize(image_size, interpolation=interp), T.CenterCrop(image_size)]
    else:
        steps = [T.Resize((image_size, image_size), interpolation=interp)]
    if train and hflip:
        steps.append(T.RandomHorizontalFlip())
    if train and randaugment:
        steps.append(RandomAugment(2, 7) if randaugment_impl == "official"
                     else T.RandAugment(num_ops=2, magnitude=7, fill=list(_FILL)))
    steps += [T.ToTensor(), T.Normalize(mean or CLIP_MEAN, std or CLIP_STD)]
    transform = T.Compose(steps)
    # the same image always gives the same tensor: data sets may cache the result (``cache_images``)
    transform.deterministic = not train or (whole and not hflip and not randaugment)
    return transform


def transform_frames(transform: Callable[[Image.Image], Tensor],
                     frames: Tensor | Sequence[Image.Image]) -> Tensor:
    """Apply ``transform`` to every frame with the same random parameters → ``(T, 3, H, W)``.

    ``frames`` is a ``(T, H, W, 3)`` uint8 tensor (what :func:`zoo.data.video.read_video_frames` returns) or a list
    of PIL images. The torch random state is saved before the first frame and restored before each later one, so every
    frame sees the same draws (crop box, flip, augmentation operations and signs); afterwards the generator stands
    where one frame's transform left it.
    """
    if isinstance(frames, Tensor):
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) frames, got shape {tuple(frames.shape)}")
        images = [Image.fromarray(f.numpy()) for f in frames.to(torch.uint8)]
    else:
        images = list(frames)
    if not images:
        raise ValueError("no frames to transform")
    state = torch.get_rng_state()
    out = []
    for img in images:
        torch.set_rng_state(state)
        out.append(transform(img))
    return torch.stack(out)
