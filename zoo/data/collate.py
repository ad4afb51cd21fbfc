"""Collators: items of :mod:`zoo.data.datasets` → the batches the tasks' model methods read.

Texts are tokenised with the model's own tokenizer (``model.text.get_tokenizer()``, a transformers tokenizer), padded
to the longest in the batch, with ``attention_mask`` 1 on tokens. Official facts (zengyan-97/X2-VLM ``VQA.py``,
``Retrieval.py``, ``dataset/__init__.py`` ``vqa_collate_fn``, ``dataset/captioning_dataset.py``):

- questions and captions: ``tokenizer(texts, padding="longest", truncation=True, max_length=max_tokens)``
  (``max_tokens`` 40 in the official configs);
- VQA answers: all answers of all questions flattened in question order, tokenised as ``[CLS] answer [SEP]``
  (``tokenizer(answers, padding="longest")``, no truncation), weights flattened alike, and ``k`` = answers per
  question (:meth:`zoo.heads.vqa.GenerativeVQAHead.encode_answers` gives the same ids for a BERT tokenizer);
- VQA as classification (``mode="classifier"``): ``targets (B, len(answer_vocab))``. Default
  ``classifier_targets="vqa_score"``, the usual VQA soft score ``min(1, 0.3·count)`` of each in-vocabulary answer
  (1.0 for a record with a single answer, e.g. video QA), which the ``classifier`` head's binary cross-entropy expects.
  The official X²-VLM classifier (``vqa_classify_dataset`` + ``XVLMForVQAClassification``) instead uses the answer
  weights ``count / number of answers`` in a weighted cross-entropy; ``classifier_targets="weights"`` gives those
  weights as the target row (what a soft-target cross-entropy needs). Answers outside the vocabulary are dropped, as
  the official does;
- captioning: the s2s-ft inputs of :func:`zoo.heads.caption.caption_inputs_from_text` (defaults of the official COCO
  captioning config: prompt ``"a picture of "``, ``max_tokens`` 40, ``max_masks`` 18, ``mask_prob`` 0.6, whole-word
  masking, skip-grams 0.2 / 3, FG-free); the masking draws from a ``random.Random`` seeded from torch's generator,
  so it follows the DataLoader's per-worker seeds.

VQA batches also carry ``questions`` (the cleaned question strings the ids were made from) and ``answers`` (per
question, its distinct answers, aligned with its ``weights``); captioning training batches carry ``captions`` (one
string per image). With ``causal=True`` the captioning training collator builds no masked-LM inputs (a causal LM needs
no [MASK] token) — only ``input_ids`` / ``attention_mask`` of the caption and the raw ``captions``. Models that
tokenise text themselves take text batches from their own processor instead (:mod:`zoo.modules.lm.processing`).

Cross-lingual (CCLM, zengyan-97/CCLM ``dataset/``): retrieval training items with a translation (``caption_2``) add
``input_ids_2`` / ``attention_mask_2`` (ITC over both languages + TTC in
:meth:`zoo.models.cclm.CCLM.image_text_losses`); CCLM's parallel-sentence batches are its own
(:mod:`zoo.models.cclm.data`).

``None`` items (samples skipped by ``on_bad_sample="skip"``) are dropped; the batch says how many under
``num_skipped``. A batch whose every item was skipped raises :class:`EmptyBatchError` rather than yielding an empty
batch.

Reused: the tokenizer, :mod:`zoo.heads.caption`'s input builder. Hand-written: the rest.
"""

from __future__ import annotations

import random
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "CaptionEvalCollator",
    "CaptionTrainCollator",
    "EmptyBatchError",
    "ModelInputsCollator",
    "RetrievalCollator",
    "SentenceLabelCollator",
    "VQACollator",
    "decode_texts",
    "encode_answer_list",
    "tokenize_texts",
    "vqa_soft_scores",
]


class EmptyBatchError(ValueError):
    """Every sample of a batch was skipped as bad data."""


def _drop_none(items: Sequence[Any]) -> tuple[list[Mapping[str, Any]], int]:
    kept = [x for x in items if x is not None]
    skipped = len(items) - len(kept)
    if not kept:
        raise EmptyBatchError(f"all {skipped} samples of this batch were bad and skipped (on_bad_sample='skip'); "
                              "see the warnings above for the files and records")
    return kept, skipped


#: per tokenizer (and its length: a token added later starts a new table), the ids of each text seen: the questions,
#: captions and answers of a data set come back every epoch, and the tokenizer's call costs more than the step's
#: data otherwise (about 100 µs a text through transformers' wrapper against a dictionary lookup)
_TOKEN_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKEN_IDS_LIMIT = 1 << 21  # texts kept per tokenizer; beyond it new texts are tokenised every time


def _cached_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int | None) -> list[list[int]] | None:
    """Each text's ids as ``tokenizer(text, truncation=..., max_length=max_tokens)`` gives them, from the cache (the
    texts not in it tokenised in one call); None when the tokenizer cannot be cached (not weak-referenceable, no pad
    id or padding side: the caller then calls it as it is)."""
    if getattr(tokenizer, "pad_token_id", None) is None or getattr(tokenizer, "padding_side", None) not in (
            "left", "right"):
        return None
    try:
        tables = _TOKEN_IDS.setdefault(tokenizer, {})
    except TypeError:
        return None
    table = tables.setdefault((len(tokenizer), max_tokens), {})
    missing = [t for t in dict.fromkeys(texts) if t not in table]
    if missing:
        enc = tokenizer(missing, padding=False, truncation=max_tokens is not None, max_length=max_tokens)
        fresh = dict(zip(missing, enc["input_ids"]))
        if len(table) < _TOKEN_IDS_LIMIT:
            table.update(fresh)
        return [table[t] if t in table else fresh[t] for t in texts]
    return [table[t] for t in texts]


def _padded(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Ids padded to the longest with the tokenizer's pad id on its padding side, and the attention mask."""
    longest = max(len(s) for s in seqs)
    pad = int(tokenizer.pad_token_id)
    if tokenizer.padding_side == "left":
        ids = [[pad] * (longest - len(s)) + list(s) for s in seqs]
        mask = [[0] * (longest - len(s)) + [1] * len(s) for s in seqs]
    else:
        ids = [list(s) + [pad] * (longest - len(s)) for s in seqs]
        mask = [[1] * len(s) + [0] * (longest - len(s)) for s in seqs]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = 40) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``: padded to the longest, cut to ``max_tokens`` (None: no cut). The same tensors
    as ``tokenizer(texts, padding="longest", truncation=..., max_length=max_tokens, return_tensors="pt")``, each
    text tokenised once per tokenizer (a cache of ids; padding per batch)."""
    seqs = _cached_ids(tokenizer, texts, max_tokens) if texts else None
    if seqs is None:
        enc = tokenizer(list(texts), padding="longest", truncation=max_tokens is not None, max_length=max_tokens,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]
    return _padded(tokenizer, seqs)


def decode_texts(tokenizer: Any, ids: Tensor, mask: Tensor | None, pad_token_id: int) -> list[str]:
    """Token ids (padding where ``mask`` is 0) back to stripped texts, special tokens dropped."""
    if mask is not None:
        ids = ids.masked_fill(mask == 0, pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]


def encode_answer_list(tokenizer: Any, answers: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``(answer_ids, answer_mask)`` of ``[CLS] answer [SEP]`` padded to the longest (official, no truncation): the
    training answers of a batch or the answer list ranked at evaluation."""
    if not answers:
        raise ValueError("no answers to encode")
    return tokenize_texts(tokenizer, answers, None)


def vqa_soft_scores(all_answers: Sequence[str]) -> dict[str, float]:
    """The standard VQA soft score ``min(1, 0.3·count)`` per distinct answer; 1.0 for a single answer."""
    counts = Counter(all_answers)
    if len(all_answers) == 1:
        return {a: 1.0 for a in counts}
    return {a: min(1.0, 0.3 * c) for a, c in counts.items()}


def _stack_images(items: Sequence[Mapping[str, Any]]) -> Tensor:
    return torch.stack([x["image"] for x in items])


class VQACollator:
    """VQA items → ``images, question_ids, question_mask, question_id, all_answers, questions, answers, num_skipped``
    (``questions``: the question strings; ``answers``: per question its distinct answers, ``[]`` without), with
    ``question_type`` (one string or None per item) when some item has a type, plus

    - ``mode="generative"``: ``answer_ids, answer_mask`` (all answers flattened), ``weights`` (float, flattened),
      ``answers_per_question`` (long, one count per question);
    - ``mode="classifier"``: ``targets`` ``(B, len(answer_vocab))`` float (see the module docstring).

    The answer keys are left out with ``answers=False`` (evaluation batches, which rank or classify without them) and
    when some item has no answers (evaluation without ground truth).
    """

    def __init__(self, tokenizer: Any, max_tokens: int | None = 40,
                 mode: Literal["generative", "classifier"] = "generative", answer_vocab: Sequence[str] | None = None,
                 classifier_targets: Literal["vqa_score", "weights"] = "vqa_score", answers: bool = True):
        if mode not in ("generative", "classifier"):
            raise ValueError(f"mode={mode!r}: expected 'generative' or 'classifier'")
        if classifier_targets not in ("vqa_score", "weights"):
            raise ValueError(f"classifier_targets={classifier_targets!r}: expected 'vqa_score' or 'weights'")
        if mode == "classifier" and answers and not answer_vocab:
            raise ValueError("mode='classifier' needs answer_vocab (the classifier's answers, in label order)")
        self.tokenizer, self.max_tokens, self.mode = tokenizer, max_tokens, mode
        self.answer_vocab = list(answer_vocab) if answer_vocab is not None else None
        self.label = {a: i for i, a in enumerate(self.answer_vocab or [])}
        self.classifier_targets, self.answers = classifier_targets, answers

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        items, skipped = _drop_none(items)
        q_ids, q_mask = tokenize_texts(self.tokenizer, [x["question"] for x in items], self.max_tokens)
        batch: dict[str, Any] = {
            "images": _stack_images(items), "question_ids": q_ids, "question_mask": q_mask,
            "question_id": [x["question_id"] for x in items], "all_answers": [list(x["all_answers"]) for x in items],
            "questions": [x["question"] for x in items], "answers": [list(x.get("answers") or []) for x in items],
            "num_skipped": skipped,
        }
        if any(x.get("question_type") is not None for x in items):
            batch["question_type"] = [x.get("question_type") for x in items]
        if not self.answers or not all(x["answers"] for x in items):
            return batch
        if self.mode == "generative":
            flat = [a for x in items for a in x["answers"]]
            batch["answer_ids"], batch["answer_mask"] = encode_answer_list(self.tokenizer, flat)
            batch["weights"] = torch.tensor([float(w) for x in items for w in x["weights"]], dtype=torch.float32)
            batch["answers_per_question"] = torch.tensor([len(x["answers"]) for x in items], dtype=torch.long)
        else:
            targets = torch.zeros(len(items), len(self.label), dtype=torch.float32)
            for row, x in enumerate(items):
                scores = (vqa_soft_scores(x["all_answers"]) if self.classifier_targets == "vqa_score"
                          else dict(zip(x["answers"], x["weights"])))
                for answer, score in scores.items():
                    if answer in self.label:
                        targets[row, self.label[answer]] = score
            batch["targets"] = targets
        return batch


_WHOLE_IMAGE = (0.5, 0.5, 1.0, 1.0)  # the (cx, cy, w, h) target of a caption about the whole image


class RetrievalCollator:
    """Retrieval items → training ``images, input_ids, attention_mask, image_ids, captions`` (items with ``caption``;
    with ``input_ids_2, attention_mask_2`` when the items carry a translation ``caption_2``) or evaluation
    ``images, index`` (items of ``retrieval_eval``); both with ``num_skipped``.

    ``mlm`` (pre-training: ``{"mask_prob": 0.5, "max_masks": 12}``, the official pre-training values, or other
    :class:`zoo.data.masking.WholeWordMasker` settings) adds the MLM inputs of the captions: ``input_ids_masked,
    masked_pos, masked_ids, masked_weight`` (special tokens never chosen; drawn from a ``random.Random`` seeded from
    torch's generator). A batch holding region phrases (items with ``bbox``) adds ``target_bbox`` (B, 4) and
    ``is_image`` (1 for whole-image captions, which the box losses leave out, as the official ``is_image``)."""

    def __init__(self, tokenizer: Any, max_tokens: int | None = 40, mlm: Mapping[str, Any] | None = None):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.masker = None
        if mlm is not None:
            from zoo.data.masking import WholeWordMasker  # noqa: PLC0415

            if getattr(tokenizer, "mask_token_id", None) is None:
                raise ValueError("RetrievalCollator: the tokenizer has no mask token; the MLM inputs need one")
            self.masker = WholeWordMasker.from_tokenizer(tokenizer, protect_special=True, **dict(mlm))

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        items, skipped = _drop_none(items)
        batch: dict[str, Any] = {"images": _stack_images(items), "num_skipped": skipped}
        if "caption" in items[0]:
            batch["input_ids"], batch["attention_mask"] = tokenize_texts(
                self.tokenizer, [x["caption"] for x in items], self.max_tokens)
            batch["image_ids"] = torch.tensor([int(x["image_id"]) for x in items], dtype=torch.long)
            batch["captions"] = [x["caption"] for x in items]
            with_translation = ["caption_2" in x for x in items]
            if any(with_translation):
                if not all(with_translation):
                    raise ValueError("some retrieval items have a translation (caption_2) and others not: a batch "
                                     "with translations needs one for every caption")
                batch["input_ids_2"], batch["attention_mask_2"] = tokenize_texts(
                    self.tokenizer, [x["caption_2"] for x in items], self.max_tokens)
            if self.masker is not None:
                rng = random.Random(int(torch.randint(2**62, ())))
                batch.update(self.masker(batch["input_ids"], batch["attention_mask"], rng=rng))
            if any("bbox" in x for x in items):  # region phrases: their boxes; whole-image captions are left out
                batch["target_bbox"] = torch.tensor([x.get("bbox", _WHOLE_IMAGE) for x in items], dtype=torch.float32)
                batch["is_image"] = torch.tensor([0 if "bbox" in x else 1 for x in items], dtype=torch.long)
        else:
            batch["index"] = torch.tensor([int(x["index"]) for x in items], dtype=torch.long)
        return batch


class ModelInputsCollator:
    """A collator whose batches the model completes: ``base(items)``, then ``inputs(tokenizer, captions, images,
    rng=..., max_tokens=...)`` (a model's ``pretrain_inputs``, e.g. DaVinci's caption splits and code images) adds its
    keys; ``rng`` is a ``random.Random`` seeded from torch's generator, as the masking collators."""

    def __init__(self, base: Any, inputs: Any, tokenizer: Any, max_tokens: int | None = 30):
        self.base, self.inputs, self.tokenizer, self.max_tokens = base, inputs, tokenizer, max_tokens

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        batch = self.base(items)
        rng = random.Random(int(torch.randint(2**62, ())))
        batch.update(self.inputs(self.tokenizer, batch["captions"], batch["images"], rng=rng,
                                 max_tokens=self.max_tokens))
        return batch


class SentenceLabelCollator:
    """Visual entailment and NLVR items (:class:`zoo.data.datasets.VEDataset` / ``NLVRDataset``) →
    ``images`` (VE) or ``images_a, images_b`` (NLVR), ``input_ids, attention_mask`` of the sentences (as questions:
    padded to the longest, cut to ``max_tokens``), ``labels`` (long class indices), ``sentences``, ``index`` and
    ``num_skipped``. ``class_names``: the model's class order, which maps VE label names to indices (DaVinci's official
    order is contradiction, neutral, entailment; CCLM's XVNLI contradiction, entailment, neutral); NLVR items carry
    their index (1 = true) already."""

    def __init__(self, tokenizer: Any, max_tokens: int | None = 40, class_names: Sequence[str] | None = None):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.class_index = {name: i for i, name in enumerate(class_names or ())}

    def _label(self, label: Any) -> int:
        if isinstance(label, str):
            if label not in self.class_index:
                raise ValueError(f"label {label!r} is not one of the model's classes "
                                 f"({', '.join(self.class_index) or 'none given'})")
            return self.class_index[label]
        return int(label)

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        items, skipped = _drop_none(items)
        batch: dict[str, Any] = {"num_skipped": skipped}
        if "image_a" in items[0]:
            batch["images_a"] = torch.stack([x["image_a"] for x in items])
            batch["images_b"] = torch.stack([x["image_b"] for x in items])
        else:
            batch["images"] = _stack_images(items)
        batch["input_ids"], batch["attention_mask"] = tokenize_texts(
            self.tokenizer, [x["sentence"] for x in items], self.max_tokens)
        batch["labels"] = torch.tensor([self._label(x["label"]) for x in items], dtype=torch.long)
        batch["sentences"] = [x["sentence"] for x in items]
        batch["index"] = torch.tensor([int(x["index"]) for x in items], dtype=torch.long)
        return batch


def _with_transcripts(batch: dict[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``transcripts`` (one string per item, ``""`` for an item without one) when any item has a ``transcript``."""
    if any("transcript" in x for x in items):
        batch["transcripts"] = [x.get("transcript", "") for x in items]
    return batch


class CaptionTrainCollator:
    """Captioning training items → ``images, image_ids, captions`` + the caption inputs of
    :func:`zoo.heads.caption.build_caption_inputs` (``input_ids_masked, attention_mask, position_ids, masked_pos,
    masked_ids, masked_weight``) + ``num_skipped``. Defaults: the official COCO captioning config.

    ``causal=True`` (models with ``causal_captioning``, e.g. eP-ALM, whose tokenizer may have no [MASK]): no
    masked-LM inputs; ``input_ids`` / ``attention_mask`` of the captions (``max_tokens``) and the raw ``captions``.
    Items with a ``transcript`` add ``transcripts`` (raw strings; the model that reads them tokenizes them)."""

    def __init__(self, tokenizer: Any, prompt: str = "a picture of ", max_tokens: int = 40, max_masks: int = 18,
                 mask_prob: float = 0.6, skipgram_prb: float = 0.2, skipgram_size: int = 3,
                 mask_whole_word: bool = True, fg_free: bool = True, causal: bool = False):
        self.tokenizer, self.prompt, self.causal = tokenizer, prompt, causal
        self.options = {"max_tokens": max_tokens, "max_masks": max_masks, "mask_prob": mask_prob,
                        "skipgram_prb": skipgram_prb, "skipgram_size": skipgram_size, "fg_free": fg_free}
        self.mask_whole_word = mask_whole_word

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        from zoo.heads.caption import caption_inputs_from_text, collate_caption_inputs  # noqa: PLC0415

        items, skipped = _drop_none(items)
        if self.causal:
            ids, mask = tokenize_texts(self.tokenizer, [x["caption"] for x in items], self.options["max_tokens"])
            return _with_transcripts({
                "images": _stack_images(items), "input_ids": ids, "attention_mask": mask,
                "image_ids": torch.tensor([int(x["image_id"]) for x in items], dtype=torch.long),
                "captions": [x["caption"] for x in items], "num_skipped": skipped}, items)
        rng = random.Random(int(torch.randint(2**62, ())))
        examples = [caption_inputs_from_text(self.tokenizer, x["caption"], self.prompt,
                                             mask_whole_word=self.mask_whole_word, rng=rng, **self.options)
                    for x in items]
        batch: dict[str, Any] = collate_caption_inputs(examples)
        batch["images"] = _stack_images(items)
        batch["image_ids"] = torch.tensor([int(x["image_id"]) for x in items], dtype=torch.long)
        batch["captions"] = [x["caption"] for x in items]
        batch["num_skipped"] = skipped
        return _with_transcripts(batch, items)


class CaptionEvalCollator:
    """Captioning evaluation items → ``images, image_id`` (list), ``captions`` (list of reference lists),
    ``num_skipped``, and ``transcripts`` as :class:`CaptionTrainCollator` gives them."""

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        items, skipped = _drop_none(items)
        return _with_transcripts({"images": _stack_images(items), "image_id": [x["image_id"] for x in items],
                                  "captions": [list(x["captions"]) for x in items], "num_skipped": skipped}, items)


def __getattr__(name: str):
    if name == "ParallelTextCollator":  # moved into the family that reads parallel sentences (zoo.data.side)
        import importlib  # noqa: PLC0415

        from zoo.data.side import side_stream  # noqa: PLC0415

        return importlib.import_module(side_stream("parallel").__module__).ParallelTextCollator
    raise AttributeError(f"module 'zoo.data.collate' has no attribute {name!r}")
