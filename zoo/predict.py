"""``mmzoo predict``: answers for people, not metrics — one image (or video) and a question, a caption or a ranking.

:func:`predict` loads an export, a run folder or a training checkpoint (:func:`zoo.train.run.model_from_checkpoint`),
prepares the media with the evaluation transform of the model's own preprocessing
(:meth:`zoo.models.base.ZooModel.preprocess_config`, what an export's ``preprocessor.json`` records), tokenizes with
the model's own tokenizer and calls the same prediction methods evaluation scores:

- ``question``: ``vqa_predict``. A model whose language model generates answers (``open_ended_vqa`` true)
  answers freely; a generative head ranks an answer list: ``answers`` (a list, or a file: a JSON list
  or one answer per line), else the ``answers`` the model's config carries (``mmzoo train`` writes the training
  answer list there), else it is an error naming both; a classifier head answers from its own labels.
- ``caption``: ``generate_captions`` (beam search with the model's decoding defaults).
- ``texts``: ``retrieval_scores`` (ITC, then ITM re-ranking of every text) → texts ranked best first with scores.

:func:`generate_images` goes the other way (``mmzoo predict SOURCE --generate-image TEXT``): a text-to-image model
(one with an ``image_tokenizer``, built or fine-tuned with task ``text_to_image``) samples image codes
with ``generate_image`` (top-k / top-p / temperature, defaults from the model config) from a seeded
``torch.Generator``, and the decoded images are written as PNG files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["generate_images", "image_paths", "predict", "read_lines_or_json", "to_uint8"]


def read_lines_or_json(path: str | os.PathLike, what: str) -> list[str]:
    """A list of strings from a JSON list file or a text file (one per non-empty line)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {file}: file not found")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} {file}: invalid JSON ({exc})") from None
        if not (isinstance(items, list) and all(isinstance(x, str) for x in items)):
            raise ValueError(f"{what} {file}: expected a JSON list of strings")
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        raise ValueError(f"{what} {file}: no entries")
    return items


def _pixels(model: Any, media: str, num_frames: int):
    """``(1, 3, S, S)`` image or ``(1, T, 3, S, S)`` video tensor for ``model``, by its evaluation transform (the
    pipelines' reader, :class:`zoo.pipelines.Processor`)."""
    from zoo.pipelines import _processor_of  # noqa: PLC0415

    return _processor_of(model, num_frames).image(media).unsqueeze(0)


def predict(source: str | os.PathLike, media: str, *, question: str | None = None, caption: bool = False,
            texts: Sequence[str] | str | os.PathLike | None = None,
            answers: Sequence[str] | str | os.PathLike | None = None, top: int = 5, num_frames: int = 3,
            hypothesis: str | None = None, statement: str | None = None, media2: str | None = None,
            model: Any = None, trust_imports: bool = False) -> dict[str, Any]:
    """Run one prediction (exactly one of ``question``, ``caption``, ``texts``, ``hypothesis``, ``statement``) on
    ``media`` (an image or video file; ``statement`` also reads ``media2``, the right image).

    Returns ``{"answer", "prob"}`` (VQA), ``{"caption"}``, ``{"ranking": [(text, score), ...]}`` (best first, ``top``
    entries), ``{"label", "probs": {class: probability}}`` (visual entailment: is the hypothesis entailed by, neutral
    to or contradicted by the image) or ``{"label": true | false, "prob"}`` (NLVR: is the statement about the left
    and right image true; ``prob`` of true), plus ``"media"``. ``model`` skips loading ``source`` (an already built
    model). ``trust_imports``: import the modules the saved config names (see :func:`zoo.hub.from_pretrained`).
    The model calls are :func:`zoo.pipeline`'s; this adds the checks and messages of the command line.
    """
    wanted = [name for name, on in (("question", question is not None), ("caption", caption),
                                    ("texts", texts is not None), ("hypothesis", hypothesis is not None),
                                    ("statement", statement is not None)) if on]
    if len(wanted) != 1:
        raise ValueError("give exactly one of --question, --caption, --texts, --hypothesis, --statement"
                         + (f" (got {', '.join(wanted)})" if wanted else ""))
    if (statement is None) != (media2 is None):
        raise ValueError("--statement (NLVR) needs two images: --image LEFT --image2 RIGHT; --image2 is read only "
                         "with --statement")
    if model is None:
        from zoo.train.run import model_from_checkpoint  # noqa: PLC0415

        model = model_from_checkpoint(source, trust_imports=trust_imports)
    model.eval()
    from zoo.pipelines import pipeline  # noqa: PLC0415
    from zoo.tasks import supported_tasks  # noqa: PLC0415

    can = supported_tasks(model)  # what the model declares and has the heads for
    out: dict[str, Any] = {"media": str(media)}
    if question is not None:
        if "vqa" not in can:
            raise ValueError(f"{source}: the model has no VQA head (build or fine-tune it with task vqa)")
        generative = getattr(model, "generative_vqa", False) and not getattr(model, "open_ended_vqa", False)
        if isinstance(answers, (str, os.PathLike)):
            answers = read_lines_or_json(answers, "answers")
        if generative and answers is None and not (getattr(model, "zoo_config", None) or {}).get("answers"):
            raise ValueError(f"{source}: the generative VQA head ranks an answer list, and the model config "
                             "carries none: pass --answers FILE (a JSON list or one answer per line)")
        res = pipeline("vqa", model, num_frames=num_frames)(str(media), question, answers=answers)
        out.update(question=question, answer=res["answer"], prob=res["prob"])
    elif caption:
        if "captioning" not in can:
            raise ValueError(f"{source}: the model has no captioning head (task captioning)")
        out["caption"] = pipeline("captioning", model, num_frames=num_frames)(str(media))["caption"]
    elif hypothesis is not None:
        if "ve" not in can:
            raise ValueError(f"{source}: the model, as built, has no visual-entailment head (it does: "
                             f"{', '.join(can) or 'nothing'}); fine-tune it with task ve")
        res = pipeline("ve", model, num_frames=num_frames)(str(media), hypothesis)
        out.update(hypothesis=hypothesis, label=res["label"], probs=res["probs"])
    elif statement is not None:
        if "nlvr" not in can:
            raise ValueError(f"{source}: the model has no NLVR head (task nlvr)")
        res = pipeline("nlvr", model, num_frames=num_frames)(str(media), str(media2), statement)
        out.update(statement=statement, media2=str(media2), label=res["label"], prob=res["prob"])
    else:
        if isinstance(texts, (str, os.PathLike)):
            texts = read_lines_or_json(texts, "texts")
        texts = list(texts)
        if "retrieval" not in can:
            raise ValueError(f"{source}: ranking texts needs the ITC and ITM heads (task retrieval)")
        out["ranking"] = pipeline("retrieval", model, num_frames=num_frames)(str(media), texts, top=top)["ranking"]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# text → image
# ---------------------------------------------------------------------------------------------------------------------
def to_uint8(images: Any) -> Any:
    """Images ``(B, 3, H, W)`` in [0, 1] → ``(B, H, W, 3)`` uint8 arrays: ``round(clamp(x, 0, 1) · 255)``."""
    import torch  # noqa: PLC0415

    return (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_paths(out: str | os.PathLike, num_images: int) -> list[Path]:
    """Where :func:`generate_images` writes: ``out`` itself for one image, else ``<stem>_0.png``, ``<stem>_1.png``, ...
    beside it. ``out`` without a suffix gets ``.png``; another suffix is an error (the files are PNG)."""
    path = Path(out)
    if not path.suffix:
        path = path.with_suffix(".png")
    elif path.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: images are written as PNG, give a .png file name")
    if num_images == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(num_images)]


def _write_png_atomic(array: Any, path: Path) -> None:
    """Write one ``(H, W, 3)`` uint8 image as PNG, atomically (:func:`zoo.hub.atomic_path`)."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from zoo.hub import atomic_path  # noqa: PLC0415

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


def generate_images(source: str | os.PathLike, text: str, *, out: str | os.PathLike, num_images: int = 1,
                    seed: int = 0, top_k: int | None = None, top_p: float | None = None,
                    temperature: float | None = None, model: Any = None, trust_imports: bool = False) -> list[Path]:
    """Sample ``num_images`` images for ``text`` with a text-to-image model and write them as PNG files.

    The images are drawn as one batch by ``model.generate_image`` from a ``torch.Generator`` seeded with ``seed`` (the
    same seed and settings give the same files); ``top_k`` / ``top_p`` / ``temperature`` default to the model config's
    ``image_top_k`` / ``image_top_p`` / ``image_temperature`` (``top_k=1`` is greedy decoding). Pixels are written as
    :func:`to_uint8` converts them, to the paths :func:`image_paths` names, each atomically. ``model`` skips loading
    ``source`` (an already built model). Returns the written paths.
    """
    import torch  # noqa: PLC0415

    if not isinstance(text, str) or not text.strip():
        raise ValueError("--generate-image: give a non-empty text")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"--num-images {num_images}: expected a positive integer")
    if top_k is not None and top_k < 0:
        raise ValueError(f"--top-k {top_k}: expected 0 (off) or a positive integer")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"--top-p {top_p}: expected a value in (0, 1]")
    if temperature is not None and not temperature > 0.0:
        raise ValueError(f"--temperature {temperature}: expected a positive value")
    paths = image_paths(out, num_images)
    if model is None:
        from zoo.train.run import model_from_checkpoint  # noqa: PLC0415

        model = model_from_checkpoint(source, trust_imports=trust_imports)
    if not callable(getattr(model, "generate_image", None)) or getattr(model, "image_tokenizer", None) is None:
        raise ValueError(f"{source}: {type(model).__name__} cannot generate images (no image tokenizer): build or "
                         "fine-tune a model that has one (mmzoo list shows them) with task text_to_image")
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - every text-to-image model has parameters
        device = torch.device("cpu")
    generator = torch.Generator(device=device).manual_seed(int(seed))
    with torch.inference_mode():
        images = model.generate_image([text] * num_images, top_k=top_k, top_p=top_p, temperature=temperature,
                                      generator=generator)
    arrays = to_uint8(images)
    for array, path in zip(arrays, paths):
        _write_png_atomic(array, path)
    return paths
