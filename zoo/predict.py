"""``mmzoo predict``: answers for people, not metrics — one image (or video) and a question, a caption or a ranking.

:func:`predict` loads an export, a run folder or a training checkpoint (:func:`zoo.train.run.model_from_checkpoint`),
prepares the media with the evaluation transform at the model's resolution (the values an export's
``preprocessor.json`` records), tokenizes with the model's own tokenizer and calls the same prediction methods evaluation scores:

- ``question``: ``vqa_predict``. A model whose language model generates answers (``open_ended_vqa``: eP-ALM,
  MultiModal-GPT) answers freely; a generative head ranks an answer list: ``answers`` (a list, or a file: a JSON list
  or one answer per line), else the ``answers`` the model's config carries (``mmzoo train`` writes the training
  answer list there), else it is an error naming both; a classifier head answers from its own labels.
- ``caption``: ``generate_captions`` (beam search with the model's decoding defaults).
- ``texts``: ``retrieval_scores`` (ITC, then ITM re-ranking of every text) → texts ranked best first with scores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["predict", "read_lines_or_json"]

_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


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
    """``(1, 3, S, S)`` image or ``(1, T, 3, S, S)`` video tensor for ``model``, by the evaluation transform."""
    from zoo.data.transforms import build_image_transform, transform_frames  # noqa: PLC0415
    from zoo.models.base import input_resolution  # noqa: PLC0415

    size = input_resolution(model)
    if not size:
        raise ValueError("the model names no input resolution (vision part image_size or default_resolution)")
    transform = build_image_transform(int(size), train=False)
    if str(media).lower().endswith(_VIDEO_SUFFIXES):
        from zoo.data.video import VideoReadError, read_video_frames  # noqa: PLC0415

        if not os.path.isfile(media):
            raise FileNotFoundError(f"video {media}: file not found")
        try:
            frames = read_video_frames(media, num_frames, training=False)
        except VideoReadError as exc:
            raise ValueError(f"video {media}: cannot be read ({exc})") from None
        return transform_frames(transform, frames).unsqueeze(0)
    from PIL import Image  # noqa: PLC0415

    if not os.path.isfile(media):
        raise FileNotFoundError(f"image {media}: file not found")
    try:
        with Image.open(media) as img:
            pil = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"image {media}: cannot be read as an image ({exc})") from None
    return transform(pil).unsqueeze(0)


def predict(source: str | os.PathLike, media: str, *, question: str | None = None, caption: bool = False,
            texts: Sequence[str] | str | os.PathLike | None = None,
            answers: Sequence[str] | str | os.PathLike | None = None, top: int = 5, num_frames: int = 3,
            model: Any = None) -> dict[str, Any]:
    """Run one prediction (exactly one of ``question``, ``caption``, ``texts``) on ``media`` (an image or video file).

    Returns ``{"answer", "prob"}`` (VQA), ``{"caption"}`` or ``{"ranking": [(text, score), ...]}`` (best first,
    ``top`` entries) plus ``"media"``. ``model`` skips loading ``source`` (an already built model).
    """
    import torch  # noqa: PLC0415

    wanted = [name for name, on in (("question", question is not None), ("caption", caption),
                                    ("texts", texts is not None)) if on]
    if len(wanted) != 1:
        raise ValueError("give exactly one of --question, --caption, --texts"
                         + (f" (got {', '.join(wanted)})" if wanted else ""))
    if model is None:
        from zoo.train.run import model_from_checkpoint  # noqa: PLC0415

        model = model_from_checkpoint(source)
    model.eval()
    pixels = _pixels(model, str(media), num_frames)
    tokenizer = model.text.get_tokenizer()
    out: dict[str, Any] = {"media": str(media)}
    with torch.inference_mode():
        if question is not None:
            open_ended = getattr(model, "open_ended_vqa", False)
            if not hasattr(model, "vqa_predict") or (getattr(model, "vqa", None) is None and not open_ended):
                raise ValueError(f"{source}: the model has no VQA head (build or fine-tune it with task vqa)")
            from zoo.data.collate import encode_answer_list, tokenize_texts  # noqa: PLC0415
            from zoo.data.datasets import pre_question  # noqa: PLC0415

            text = pre_question(question, 50)
            q_ids, q_mask = tokenize_texts(tokenizer, [text])
            if open_ended:  # a language model generates the answer: no list to rank
                res = model.vqa_predict(pixels, q_ids, q_mask, questions=[text])
            elif getattr(model, "generative_vqa", False):
                if isinstance(answers, (str, os.PathLike)):
                    answers = read_lines_or_json(answers, "answers")
                answer_list = list(answers) if answers is not None else list(
                    (getattr(model, "zoo_config", None) or {}).get("answers") or [])
                if not answer_list:
                    raise ValueError(f"{source}: the generative VQA head ranks an answer list, and the model config "
                                     "carries none: pass --answers FILE (a JSON list or one answer per line)")
                a_ids, a_mask = encode_answer_list(tokenizer, answer_list)
                res = model.vqa_predict(pixels, q_ids, q_mask, a_ids, a_mask, k=min(len(answer_list), 128),
                                        answers=answer_list)
            else:
                res = model.vqa_predict(pixels, q_ids, q_mask)
            out.update(question=question, answer=res["answer"][0], prob=float(res["prob"][0]))
        elif caption:
            # X²-VLM-style models hold an optional caption head; language-model families caption with the LM itself
            if not hasattr(model, "generate_captions") or getattr(model, "caption", False) is None:
                raise ValueError(f"{source}: the model has no captioning head (task captioning)")
            out["caption"] = model.generate_captions(pixels)[0]
        else:
            if isinstance(texts, (str, os.PathLike)):
                texts = read_lines_or_json(texts, "texts")
            texts = list(texts)
            if getattr(model, "itc", None) is None or getattr(model, "itm", None) is None:
                raise ValueError(f"{source}: ranking texts needs the ITC and ITM heads (task retrieval)")
            from zoo.data.collate import tokenize_texts  # noqa: PLC0415
            from zoo.data.datasets import pre_caption  # noqa: PLC0415

            t_ids, t_mask = tokenize_texts(tokenizer, [pre_caption(t, 30) for t in texts])
            i2t, _ = model.retrieval_scores(pixels, t_ids, t_mask, k=len(texts))
            order = i2t[0].argsort(descending=True)[:top].tolist()
            out["ranking"] = [(texts[i], float(i2t[0, i])) for i in order]
    return out
