"""Inference from Python in one line: ``zoo.pipeline(task, model)`` (transformers' pipelines in spirit).

    >>> vqa = zoo.pipeline("vqa", "runs/vqa-shapes/export")
    >>> vqa("scene.png", "what colour is the circle?")
    {'answer': 'red', 'prob': 0.93}

``model`` is a built model, an export folder, a run folder or checkpoint (what ``mmzoo eval`` takes), or a registered
name (random weights unless its file names weights). Images are PIL images, file paths, ``(3, H, W)`` tensors
(pixels in [0, 1], or uint8), video files, or a list of any of these; a list gives a list of results, in one batch
(``batch_size`` at a time). Each image goes through the model's own evaluation transform
(:meth:`zoo.models.base.ZooModel.processor`), each text through the cleaning and the tokenizer the model was trained
with; results are plain Python values.

Tasks: ``vqa`` (``{"answer", "prob"}``; a generative head ranks the answer list the export carries, or ``answers=``),
``captioning`` (``{"caption"}``), ``retrieval`` (``{"ranking": [(text, score), ...]}`` per image, best first: the
evaluation's scores), ``ve`` (``{"label", "probs"}``), ``nlvr`` (two images per statement: ``{"label", "prob"}``) and
``chat`` (an instruction-tuned model: ``{"answer"}``, with the conversation so far as ``history``).

:func:`create_model_and_transforms` (open_clip's name) returns the model with its training and evaluation transforms
and its tokenizer; :func:`load_processor` rebuilds the transforms and the tokenizer of an export from its
``preprocessor.json`` and ``tokenizer/``, without building the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PIPELINE_TASKS", "Pipeline", "Processor", "create_model_and_transforms", "load_processor", "pipeline"]

_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
PIPELINE_TASKS = ("vqa", "captioning", "retrieval", "ve", "nlvr", "chat")


def _load_model(model: Any, trust_imports: bool = False) -> Any:
    if not isinstance(model, (str, os.PathLike)):
        return model
    if os.path.exists(model):
        from zoo.train.run import model_from_checkpoint  # noqa: PLC0415

        return model_from_checkpoint(model, trust_imports=trust_imports)
    import zoo  # noqa: PLC0415

    return zoo.create_model(str(model))


@dataclass
class Processor:
    """A model's evaluation inputs: ``transform`` (PIL image → normalised tensor), ``train_transform`` and
    ``tokenizer``; :meth:`images` and :meth:`texts` turn user inputs into batches."""

    transform: Callable[[Any], Any]
    train_transform: Callable[[Any], Any]
    tokenizer: Any
    num_frames: int = 3

    def image(self, item: Any) -> Any:
        """One input → ``(3, S, S)`` (an image) or ``(T, 3, S, S)`` (a video file)."""
        import torch  # noqa: PLC0415
        from PIL import Image  # noqa: PLC0415

        from zoo.data.transforms import to_rgb, transform_frames  # noqa: PLC0415

        if isinstance(item, (str, os.PathLike)):
            path = str(item)
            video = path.lower().endswith(_VIDEO_SUFFIXES)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{'video' if video else 'image'} {path}: file not found")
            if video:
                from zoo.data.video import VideoReadError, read_video_frames  # noqa: PLC0415

                try:
                    return transform_frames(self.transform, read_video_frames(path, self.num_frames))
                except VideoReadError as exc:
                    raise ValueError(f"video {path}: cannot be read ({exc})") from None
            try:
                with Image.open(path) as img:
                    item = to_rgb(img)
            except (OSError, ValueError) as exc:
                raise ValueError(f"image {path}: cannot be read as an image ({exc})") from None
        if isinstance(item, torch.Tensor):
            if item.dim() != 3 or item.shape[0] not in (1, 3):
                raise ValueError(f"an image tensor is (3, H, W) (or (1, H, W)), got shape {tuple(item.shape)}")
            pixels = item if item.dtype == torch.uint8 else (item.clamp(0, 1) * 255).round().to(torch.uint8)
            item = Image.fromarray(pixels.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy())
        if isinstance(item, Image.Image):
            return self.transform(to_rgb(item))
        raise TypeError(f"an image is a PIL image, a file path or a (3, H, W) tensor, got {type(item).__name__}")

    def images(self, items: Sequence[Any]) -> Any:
        import torch  # noqa: PLC0415

        pixels = [self.image(x) for x in items]
        if len({tuple(p.shape) for p in pixels}) > 1:
            raise ValueError("images and videos cannot share a batch (shapes "
                             f"{sorted({tuple(p.shape) for p in pixels})})")
        return torch.stack(pixels)

    def texts(self, texts: Sequence[str], max_words: int, question: bool = False) -> tuple[Any, Any]:
        from zoo.data.collate import tokenize_texts  # noqa: PLC0415
        from zoo.data.datasets import pre_caption, pre_question  # noqa: PLC0415

        clean = pre_question if question else pre_caption
        return tokenize_texts(self.tokenizer, [clean(t, max_words) for t in texts])


def _processor_of(model: Any, num_frames: int = 3) -> Processor:
    from zoo.spec import ConfigError  # noqa: PLC0415

    try:
        proc = model.processor()
        transform, train = proc.image_transform(train=False), proc.image_transform(train=True)
    except ConfigError as exc:
        raise ValueError(exc.message) from None
    tokenizer = model.text.get_tokenizer() if hasattr(getattr(model, "text", None), "get_tokenizer") else None
    return Processor(transform, train, tokenizer, num_frames)


def create_model_and_transforms(name_or_path: str | os.PathLike, task: str | None = None,
                                trust_imports: bool = False, **kwargs: Any) -> tuple[Any, Any, Any, Any]:
    """``(model, train_transform, eval_transform, tokenizer)`` of a registered name (built for ``task``;
    ``kwargs`` go to :func:`zoo.create_model`) or of an export, run folder or checkpoint (its own task)."""
    if isinstance(name_or_path, (str, os.PathLike)) and os.path.exists(name_or_path):
        model = _load_model(name_or_path, trust_imports)
    else:
        import zoo  # noqa: PLC0415

        model = zoo.create_model(str(name_or_path), task=task, **kwargs)
    proc = _processor_of(model)
    return model, proc.train_transform, proc.transform, proc.tokenizer


def load_processor(export: str | os.PathLike) -> Processor:
    """The transforms and the tokenizer of an export (``save_pretrained`` folder) from its ``preprocessor.json`` and
    ``tokenizer/``, without building the model."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    from zoo.hub import PREPROCESSOR_NAME, TOKENIZER_DIR  # noqa: PLC0415
    from zoo.processing import PreprocessConfig  # noqa: PLC0415
    from zoo.processing import Processor as ModelProcessor  # noqa: PLC0415

    folder = Path(export)
    path = folder / PREPROCESSOR_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {PREPROCESSOR_NAME} (an export written by save_pretrained or mmzoo "
                                "train has one)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        config = PreprocessConfig(**{k: values[k] for k in ("image_size", "mean", "std")},
                                  **{k: values[k] for k in ("interpolation", "resize_mode") if k in values})
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a preprocessor file of this version ({exc})") from None
    proc = ModelProcessor(config)
    tokenizer = None
    if (folder / TOKENIZER_DIR).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR), local_files_only=True)
    return Processor(proc.image_transform(train=False), proc.image_transform(train=True), tokenizer)


class Pipeline:
    """A model and its processor for one task; call it with images (and texts)."""

    task = ""

    def __init__(self, model: Any, batch_size: int = 16, num_frames: int = 3, trust_imports: bool = False):
        from zoo.tasks import supported_tasks  # noqa: PLC0415

        self.model = _load_model(model, trust_imports).eval()
        self.processor = _processor_of(self.model, num_frames)
        self.batch_size = int(batch_size)
        if self.task != "chat" and self.task not in supported_tasks(self.model):
            raise ValueError(f"{type(self.model).__name__}, as built, cannot do {self.task} (it does: "
                             f"{', '.join(supported_tasks(self.model)) or 'nothing'}); build or fine-tune it with "
                             f"task {self.task}")

    def _batches(self, *columns: list) -> Any:
        for start in range(0, len(columns[0]), self.batch_size):
            yield tuple(c[start:start + self.batch_size] for c in columns)

    @staticmethod
    def _listed(value: Any) -> tuple[list, bool]:
        return (list(value), True) if isinstance(value, (list, tuple)) else ([value], False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch  # noqa: PLC0415

        with torch.inference_mode():
            return self._run(*args, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def _paired(images: Any, texts: Any, what: str) -> tuple[list, list, bool]:
    imgs, many_i = Pipeline._listed(images)
    txts, many_t = Pipeline._listed(texts)
    if many_i and many_t and len(imgs) != len(txts):
        raise ValueError(f"{len(imgs)} images and {len(txts)} {what}s: give one {what} per image, or one for all")
    n = max(len(imgs), len(txts))
    return (imgs * n if len(imgs) == 1 else imgs), (txts * n if len(txts) == 1 else txts), many_i or many_t


class VQAPipeline(Pipeline):
    task = "vqa"

    def _run(self, images: Any, questions: Any, answers: Sequence[str] | None = None) -> Any:
        from zoo.data.collate import encode_answer_list  # noqa: PLC0415

        model, proc = self.model, self.processor
        imgs, qs, many = _paired(images, questions, "question")
        answer_list = list(answers) if answers is not None else list(
            (getattr(model, "zoo_config", None) or {}).get("answers") or [])
        generative = getattr(model, "generative_vqa", False) and not getattr(model, "open_ended_vqa", False)
        if generative and not answer_list:
            raise ValueError("the generative VQA head ranks an answer list and the model carries none: pass answers=")
        out = []
        for bi, bq in self._batches(imgs, qs):
            pixels = proc.images(bi)
            ids, mask = proc.texts(bq, 50, question=True)
            if getattr(model, "open_ended_vqa", False):
                from zoo.data.datasets import pre_question  # noqa: PLC0415

                res = model.vqa_predict(pixels, ids, mask, questions=[pre_question(q, 50) for q in bq])
            elif generative:
                a_ids, a_mask = encode_answer_list(proc.tokenizer, answer_list)
                res = model.vqa_predict(pixels, ids, mask, a_ids, a_mask, k=min(len(answer_list), 128),
                                        answers=answer_list)
            else:
                res = model.vqa_predict(pixels, ids, mask)
            out += [{"answer": a, "prob": float(p)} for a, p in zip(res["answer"], res["prob"])]
        return out if many else out[0]


class CaptioningPipeline(Pipeline):
    task = "captioning"

    def _run(self, images: Any, **decoding: Any) -> Any:
        imgs, many = self._listed(images)
        out = []
        for (bi,) in self._batches(imgs):
            out += [{"caption": c} for c in self.model.generate_captions(self.processor.images(bi), **decoding)]
        return out if many else out[0]


class RetrievalPipeline(Pipeline):
    task = "retrieval"

    def _run(self, images: Any, texts: Sequence[str], top: int | None = None) -> Any:
        imgs, many = self._listed(images)
        texts = list(texts)
        if not texts:
            raise ValueError("retrieval ranks texts: give at least one")
        ids, mask = self.processor.texts(texts, 30)
        pixels = self.processor.images(imgs)
        i2t, _ = self.model.retrieval_scores(pixels, ids, mask, k=len(texts), batch_size=self.batch_size)
        out = []
        for row in i2t:
            order = row.argsort(descending=True)[: top or len(texts)].tolist()
            out.append({"ranking": [(texts[i], float(row[i])) for i in order]})
        return out if many else out[0]


class VEPipeline(Pipeline):
    task = "ve"

    def _run(self, images: Any, hypotheses: Any) -> Any:
        imgs, hyps, many = _paired(images, hypotheses, "hypothesis")
        names = list(self.model.ve_labels)
        out = []
        for bi, bh in self._batches(imgs, hyps):
            ids, mask = self.processor.texts(bh, 80)
            for probs in self.model.ve_logits(self.processor.images(bi), ids, mask).float().softmax(-1):
                out.append({"label": names[int(probs.argmax())], "probs": {n: float(p) for n, p in zip(names, probs)}})
        return out if many else out[0]


class NLVRPipeline(Pipeline):
    task = "nlvr"

    def _run(self, left: Any, right: Any, statements: Any) -> Any:
        lefts, many_l = self._listed(left)
        rights, _ = self._listed(right)
        if len(lefts) != len(rights):
            raise ValueError(f"{len(lefts)} left and {len(rights)} right images: NLVR reads them in pairs")
        _, sts, _ = _paired(lefts, statements, "statement")
        many_s = isinstance(statements, (list, tuple))
        out = []
        for bl, br, bs in self._batches(lefts, rights, sts):
            ids, mask = self.processor.texts(bs, 80)
            p_true = self.model.nlvr_logits(self.processor.images(bl), self.processor.images(br), ids, mask)
            out += [{"label": float(p) > 0.5, "prob": float(p)} for p in p_true.float().softmax(-1)[:, 1]]
        return out if many_l or many_s else out[0]


class ChatPipeline(Pipeline):
    task = "chat"

    def __init__(self, model: Any, **kwargs: Any):
        super().__init__(model, **kwargs)
        if not hasattr(self.model, "chat"):
            raise ValueError(f"{type(self.model).__name__} has no chat(): chat needs an instruction-tuned model with a "
                             "chat template")

    def _run(self, image: Any, question: str, history: Sequence[tuple[str, str]] = (), **generation: Any) -> dict:
        pixels = self.processor.image(image) if image is not None else None
        return {"answer": self.model.chat(pixels, list(history), question, **generation)}


_PIPELINES: dict[str, type[Pipeline]] = {"vqa": VQAPipeline, "captioning": CaptioningPipeline,
                                        "retrieval": RetrievalPipeline, "ve": VEPipeline, "nlvr": NLVRPipeline,
                                        "chat": ChatPipeline}


def pipeline(task: str, model: Any, **kwargs: Any) -> Pipeline:
    """The pipeline of ``task`` (one of :data:`PIPELINE_TASKS`) for ``model`` (see the module docstring);
    ``kwargs``: ``batch_size``, ``num_frames`` (video inputs), ``trust_imports``."""
    if task not in _PIPELINES:
        raise ValueError(f"unknown pipeline task {task!r}; expected one of {', '.join(PIPELINE_TASKS)}")
    return _PIPELINES[task](model, **kwargs)
