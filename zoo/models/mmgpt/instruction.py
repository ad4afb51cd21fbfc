"""MultiModal-GPT instruction data: the prompt template, tokenisation with label masking, a collator, and the mixing of
visual and language-only instruction data.

Follows the official code (open-mmlab/Multimodal-GPT @9c73e47, ``mmgpt/datasets/vqa_dataset.py``,
``dolly_dataset.py``, ``dial_dataset.py``, ``app.py``):

- visual prompt (``TEMPLATE["prompt_qa"]``): ``PREAMBLE + "### Image:\\n<image>\\n\\n### Instruction:\\n{q}\\n\\n###
  Response:\\n"``; language-only prompt (``prompt_no_input_format``): the same without the image section, with an
  optional ``### Input:`` section (Dolly ``context``, Alpaca ``input``);
- a sequence is ``bos + prompt + response + eos`` (LLaMA's tokenizer adds the BOS, the dataset appends the EOS; the
  official ``<|endofchunk|>`` is not used by the instruction data), truncated to 512 tokens;
- labels: -100 on the prompt (``ignore_instruction``), on padding, on the first token and on ``<image>``;
- multi-turn dialogue (``DialDataset``): turn 1 is ``PREAMBLE + "### Image:\\n<image>" + "\\n\\n### Instruction:\\n{q}
  \\n\\n### Response:\\n" + answer``, later turns ``"\\n\\n### Instruction:\\n{q}\\n\\n### Response:\\n" + answer``; each
  turn is tokenised on its own (its own BOS and EOS) and the turns are concatenated, every answer labelled;
- chat (``app.py`` ``PromptGenerator``, history buffer -1: the whole history): ``PREAMBLE`` (without its trailing
  blank line) ``+ "\\n\\n### Image:\\n<image>" + "\\n\\n### Instruction:\\n" + q1 + "\\n\\n### Response:\\n" + a1 +
  ... + "\\n\\n### Response:\\n"``;
- mixing: the official loop takes one language-only batch after every visual batch (the loss is their sum). ``mmzoo
  train`` does that with ``data.language`` (the side stream :class:`LanguageInstructions`, read by
  :func:`read_instructions`, see :mod:`zoo.data.side`); for a loop of one's own, :class:`MixedInstructionDataset`
  draws each example from the language-only data with probability ``language_ratio`` (0.5 is the official 1 : 1),
  seeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from zoo.data.side import SideStream, Skipped, read_side_records, side_record_problem
from zoo.registry import SIDE_STREAMS

__all__ = [
    "IMAGE_TOKEN",
    "END_OF_CHUNK",
    "PAD_TOKEN",
    "PREAMBLE",
    "InstructionCollator",
    "LanguageInstructions",
    "MixedInstructionDataset",
    "chat_prompt",
    "encode_instruction",
    "instruction_prompt",
    "read_instructions",
]

IMAGE_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
PAD_TOKEN = "<PAD>"
PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n")
RESPONSE_SPLIT = "### Response:"


def instruction_prompt(instruction: str, image: bool = True, input: str | None = None, preamble: bool = True,
                       options: Sequence[str] | None = None) -> str:
    """The official prompt for one instruction: with the ``### Image:`` section (visual data) or without it
    (language-only data); ``input`` / ``options`` add the ``### Input:`` section (Dolly context, multiple choice)."""
    head = PREAMBLE if preamble else ""
    if image:
        head += f"### Image:\n{IMAGE_TOKEN}\n\n"
    extra = input if input else (", ".join(options) if options else None)
    body = f"### Instruction:\n{instruction}\n\n"
    if extra:
        body += f"### Input:\n{extra}\n\n"
    return head + body + "### Response:\n"


def _turn_prompt(question: str, first: bool, image: bool) -> str:
    """``DialDataset``: the first turn carries the preamble (and the image section), later turns only the
    ``\\n\\n### Instruction:`` part."""
    begin = PREAMBLE + f"### Image:\n{IMAGE_TOKEN}" if image else PREAMBLE.rstrip("\n")
    return (begin if first else "") + f"\n\n### Instruction:\n{question}\n\n### Response:\n"


def chat_prompt(history: Sequence[tuple[str, str | None]], image: bool = True) -> str:
    """The official chat prompt (``app.py`` ``PromptGenerator`` with the whole history): ``history`` is
    ``[(question, answer), ...]`` with ``answer`` None for the turn being asked; the image section goes before the
    first question."""
    sep = "\n\n### "
    out = PREAMBLE.rstrip("\n")
    for i, (question, answer) in enumerate(history):
        out += (sep + f"Image:\n{IMAGE_TOKEN}" if image and i == 0 else "") + sep + "Instruction:\n" + question
        out += sep + "Response:\n" + (answer if answer else "")
    return out


def response_of(text: str) -> str:
    """The official ``get_response``: the text after the last ``### Response:``."""
    return text.split(RESPONSE_SPLIT)[-1].strip()


def encode_instruction(tokenizer: Any, turns: Sequence[tuple[str, str]], *, image: bool = True,
                       bos_id: int | None = None, eos_id: int | None = None, max_length: int = 512,
                       ignore_instruction: bool = True, input: str | None = None) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one example of ``turns`` = ``[(question, answer), ...]`` (one turn: VQA /
    instruction data; several: a dialogue). Each turn is ``[bos] prompt answer [eos]``, truncated to ``max_length``;
    labels are -100 on ``[bos] prompt`` (``ignore_instruction``) and on ``<image>``. ``input``: the ``### Input:``
    section of a one-turn example (Alpaca ``input``, Dolly ``context``)."""
    if input and len(turns) != 1:
        raise ValueError("encode_instruction: an input section belongs to one-turn examples")
    media_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    labels: list[int] = []
    for i, (question, answer) in enumerate(turns):
        prompt = instruction_prompt(question, image=image, input=input or None) if len(turns) == 1 else \
            _turn_prompt(question, i == 0, image)
        head = ([bos_id] if bos_id is not None else []) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        seq = (head + tail)[:max_length]
        if eos_id is not None and len(seq) < max_length:
            seq.append(eos_id)
        lab = list(seq)
        if ignore_instruction:
            lab[:len(head)] = [-100] * min(len(head), len(lab))
        ids += seq
        labels += lab
    labels = [-100 if t == media_id else lab for t, lab in zip(ids, labels)]
    return ids, labels


@dataclass
class InstructionCollator:
    """Pads ``encode_instruction`` examples on the right: ``input_ids``, ``attention_mask``, ``labels`` (-100 on
    padding and on the first token, as official), and ``images`` (stacked; language-only batches have none).

    Each example is a dict with ``turns`` (``[(q, a), ...]``) and optionally ``image`` (a tensor)."""

    tokenizer: Any
    pad_id: int
    bos_id: int | None = None
    eos_id: int | None = None
    max_length: int = 512

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        with_image = [ex.get("image") is not None for ex in examples]
        if any(with_image) and not all(with_image):
            raise ValueError("InstructionCollator: a batch mixes examples with and without images; batch visual and "
                             "language-only data separately (the official loop alternates batches)")
        encoded = [encode_instruction(self.tokenizer, ex["turns"], image=with_image[0], bos_id=self.bos_id,
                                      eos_id=self.eos_id, max_length=self.max_length) for ex in examples]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), -100, dtype=torch.long)
        for i, (row, lab) in enumerate(encoded):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
            labels[i, :len(lab)] = torch.tensor(lab)
        labels[:, 0] = -100
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if with_image[0]:
            out["images"] = torch.stack([ex["image"] for ex in examples])
        return out


class MixedInstructionDataset(Dataset):
    """Visual and language-only instruction data mixed by ratio: item ``i`` of an epoch of ``length`` items comes
    from ``language`` with probability ``language_ratio`` (a seeded draw per item, fixed at construction), else from
    ``visual``; each source is walked through in a seeded random order, wrapping around. ``source(i)`` says which."""

    def __init__(self, visual: Dataset, language: Dataset, language_ratio: float = 0.5, length: int | None = None,
                 seed: int = 0):
        if not 0.0 <= language_ratio <= 1.0:
            raise ValueError(f"language_ratio={language_ratio}: must be within [0, 1]")
        if len(visual) == 0 and language_ratio < 1 or len(language) == 0 and language_ratio > 0:
            raise ValueError("MixedInstructionDataset: a source drawn from is empty")
        self.visual, self.language, self.language_ratio = visual, language, language_ratio
        n = length if length is not None else len(visual) + len(language)
        rng = random.Random(seed)
        self._sources = [rng.random() < language_ratio for _ in range(n)]
        self._orders = [rng.sample(range(len(d)), len(d)) if len(d) else [] for d in (visual, language)]
        self._index: list[int] = []
        seen = [0, 0]
        for lang in self._sources:
            src = int(lang)
            order = self._orders[src]
            self._index.append(order[seen[src] % len(order)])
            seen[src] += 1

    def __len__(self) -> int:
        return len(self._sources)

    def source(self, i: int) -> str:
        return "language" if self._sources[i] else "visual"

    def __getitem__(self, i: int) -> Any:
        data = self.language if self._sources[i] else self.visual
        return data[self._index[i]]


def language_ratio_of(dataset: MixedInstructionDataset) -> float:
    """The fraction of items drawn from the language-only data."""
    return sum(dataset._sources) / max(len(dataset), 1)


def masked_positions(labels: Tensor) -> Tensor:
    """Boolean (B, L): positions without a label."""
    return labels == -100


def read_instructions(files: str | Sequence[str], skipped: Skipped | None = None) -> list[dict[str, str]]:
    """Language-only instruction records of JSON list files in the Alpaca (``instruction``, ``input``, ``output``) or
    Dolly (``instruction``, ``context``, ``response``) layout → ``{instruction, input, output}``; a record without an
    instruction and an answer string (or with text that is not valid Unicode) is an error naming the file and record,
    or, given a ``skipped`` list, left out and appended to it as ``(file, index, problem)``."""
    expected = ("expected an object with strings 'instruction' and 'output' (Alpaca) or 'response' (Dolly), and "
                "optionally 'input' / 'context'")

    def fields(rec: Mapping) -> tuple[Any, Any]:
        return rec.get("output", rec.get("response")), rec.get("input", rec.get("context"))

    def problem(rec: Any) -> str | None:
        if isinstance(rec, Mapping):
            answer, extra = fields(rec)
            view = {"instruction": rec.get("instruction"), "output": answer, "input": "" if extra is None else extra}
        else:
            view = rec
        return side_record_problem(view, ("instruction", "output", "input"), expected)

    out = []
    for _, _, rec in read_side_records(files, problem, skipped):
        answer, extra = fields(rec)
        out.append({"instruction": rec["instruction"], "input": extra or "", "output": answer})
    return out


@SIDE_STREAMS.register("language")
class LanguageInstructions(SideStream):
    """``data.language``: language-only instruction data (Alpaca / Dolly) for models with a language-only loss; the
    official loop takes one language batch per visual batch and sums the losses (``data.language_batch_size`` sets
    the ratio of language-only to visual examples, default 1 : 1 as official)."""

    loss_method = "language_losses"
    what = "language-only instruction data (models with a language-only loss)"

    @staticmethod
    def read(files: str | Sequence[str], skipped: Skipped | None = None) -> list[dict[str, Any]]:
        return read_instructions(files, skipped)

    @staticmethod
    def collator(model: Any, tokenizer: Any, cfg: Mapping[str, Any]) -> Callable[[list], Any]:
        """The model's own template and tokenizer (``encode_language``)."""
        return model.encode_language
