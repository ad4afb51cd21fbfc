"""The embedded "shapes" dataset: synthetic scenes written in the official X²-VLM JSON formats.

Fine-tuning, evaluation and tests need a multimodal dataset on a machine that downloads nothing. This module draws
one: 1-3 flat shapes (circle, square, triangle) in six colours and two sizes, each in its own cell of a 3x3 grid, on a
plain light background (PIL, no anti-aliasing, so every shape pixel has exactly its palette colour), and short mp4
videos of one moving shape. Everything is hand-written here; the file layouts follow the official X²-VLM readers
(``dataset/vqa_dataset.py``, ``retrieval_dataset.py``, ``captioning_dataset.py``) and the BLIP/X²-VLM captioning
evaluation (``coco_caption_eval``: a COCO-format ground-truth file read by pycocotools + pycocoevalcap).

Files under the root (all paths inside the JSON are relative to the root):

- ``images/{train,val,test}/NNNNN.png``: NNNNN is the global image id (unique across splits);
- ``vqa_{train,val,test}.json``: ``[{question_id, question, answer: [10 strings], image, dataset}]`` and
  ``answer_list.json`` (every candidate answer);
- ``retrieval_train.json`` / ``caption_train.json``: ``[{image, caption, image_id}]``, one entry per caption;
  ``retrieval_{val,test}.json`` / ``caption_{val,test}.json``: ``[{image, caption: [...]}]``;
- ``caption_{val,test}_gt.json``: COCO-format ground truth (``images: [{id, file_name}]``,
  ``annotations: [{image_id, id, caption}]``) for the captioning evaluator; the ids are the image ids, which are also
  the file names' stems;
- ``scenes.json``: the drawn objects of every image (shape, colour, size, position, COCO ``[x, y, w, h]`` box);
- ``grounding_{train,val,test}.json``: one referring phrase per object with its box, ``[{image, image_w, image_h,
  caption: "the small red circle", bbox: [x, y, w, h], image_id}]`` (X²-VLM's region data, one record per object),
  for the box objective of pre-training;
- reasoning (:mod:`zoo.data.shapes_reasoning`): ``ve_{train,val,test}.json`` (SNLI-VE layout of ALBEF / DaVinci
  ``dataset/ve_dataset.py``: ``[{image, sentence, label: entailment | neutral | contradiction, pair_id}]``, three
  hypotheses per image, one per label) and ``nlvr_{train,val,test}.json`` (NLVR2 layout of X²-VLM / CCLM
  ``dataset/nlvr_dataset.py``: ``[{images: [left, right], sentence, label: "True" | "False", identifier}]``, each
  image the left one of a pair with another image of its split, one true and one false statement per pair); their
  translations are listed below; a folder whose manifest does not list them is regenerated (its other files stay
  byte-identical);
- ``videos/{train,val,test}/NNNNN.mp4`` (``video_frames`` frames, 8 fps, mpeg4, or h264 when mpeg4 is missing; the
  side is ``image_size`` rounded down to a multiple of 32, within 64-128, as decord mis-decodes e.g. 48 px widths);
  ``video_retrieval_train.json`` ``[{video, caption, video_id}]``, ``video_retrieval_{val,test}.json``
  ``[{video, caption: [...]}]``, ``video_qa_{train,val,test}.json`` ``[{question_id, question, answer, video,
  dataset}]`` and ``video_answer_list.json``;
- translations (``languages``, default German and French; templated: each chosen English caption / question template
  is rendered in every language from the same objects, drawing nothing more from the rng, so the English files are
  byte-identical with or without them; answers stay English, as in xGQA): ``retrieval_{train,val,test}.{lang}.json``,
  ``vqa_{train,val,test}.{lang}.json`` (same question ids and answers), ``ve_{train,val,test}.{lang}.json`` and
  ``nlvr_{train,val,test}.{lang}.json`` (the English records in the same order with the same labels, images,
  ``pair_id`` / ``identifier``, only ``sentence`` translated, rendered from the same
  :class:`zoo.data.shapes_reasoning.Spec`: the XVNLI / MaRVL-style zero-shot cross-lingual evaluation, train on
  English and test every language), ``retrieval_train_multilingual.json``
  (``{image, caption, caption_de, caption_fr, image_id}``), ``parallel_{train,val}.json`` (distinct
  ``{text, text_2, lang: "en", lang_2}`` pairs of the captions and questions) and ``tokenizer_xlmr/`` (an XLM-R-format
  tokenizer of every caption, question and answer, :func:`build_shapes_tokenizer`, which leaves out every ``ve_*`` /
  ``nlvr_*`` / ``grounding_*`` file, translated or not; ``cclm-tiny`` reads it); the manifest lists ``languages``
  (a folder written without them, or whose manifest lacks one of the translated files, is regenerated);
- ``manifest.json``: version, parameters and the entry count of every file; written last.

Determinism: every image, video and question draws from its own ``random.Random`` seeded with a string made of the
seed, the split and the index (no global RNG), so one seed gives byte-identical files, and adding images to one split
leaves the scenes of the others unchanged (only their global ids, and so file names, shift); in the evaluation splits a
scene that repeats an earlier one's objects and cells is redrawn from the same generator, so every evaluation image is
a distinct scene. The VE hypotheses and NLVR pairs draw from generators of their own (seeded with "ve" / "nlvr", the
split and the index), never from an image's, so the images and the other annotation files are the same with or without
them (only the manifest differs); their translations draw nothing. Captions name every object, with its position or
size (see :func:`retrieval_ceiling`). VQA answers are balanced per question type (attributes are drawn uniformly and
yes/no questions are half yes), so a question-only baseline stays near chance; each question has exactly 10 answers,
mostly the true one with 0-2 deterministic "annotator" alternatives (synonyms or near misses).

Caching: the dataset is generated into a temporary sibling folder and renamed into place under a lock file, so
concurrent first uses never see or produce a half-written folder; a folder whose ``manifest.json`` is missing or holds
other parameters is regenerated (only if it holds nothing but files this generator writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.hub import atomic_write, mmzoo_home

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "DIRECTIONS",
    "POSITIONS",
    "SHAPES",
    "SHAPES_VERSION",
    "LANGUAGES",
    "SIZES",
    "TOKENIZER_DIR",
    "VQA_DATASET_TAG",
    "build_shapes_tokenizer",
    "default_shapes_root",
    "describe_shapes",
    "generate_shapes",
    "mmzoo_home",
    "retrieval_ceiling",
    "shapes_tokenizer",
]

SHAPES_VERSION = 3
VQA_DATASET_TAG = "shapes"  # the ``dataset`` field of the VQA entries
MANIFEST = "manifest.json"

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 60, 180),
    "orange": (250, 130, 20),
}
SIZES = ("small", "large")
# 3x3 grid cells in reading order (row-major): the position answer of each cell ...
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
# ... and the phrase used in captions and questions
_POSITION_PHRASES = ("in the top left corner", "at the top", "in the top right corner", "on the left",
                     "in the center", "on the right", "in the bottom left corner", "at the bottom",
                     "in the bottom right corner")
DIRECTIONS = ("right", "left", "up", "down")
BACKGROUND = (242, 242, 238)

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
_RADIUS = {"small": 0.24, "large": 0.40}  # shape "radius" as a fraction of the grid cell
_CAPTIONS_PER_IMAGE = 5
_QUESTIONS_PER_IMAGE = 4  # of the 5 types other than position (asked for every object)
_CAPTIONS_PER_VIDEO = 4
_QUESTIONS_PER_VIDEO = 3
_VIDEO_FPS = 8
_NUM_ANSWERS = 10
_NOISE_WEIGHTS = (0.5, 0.35, 0.15)  # probability of 0, 1, 2 alternative answers among the 10

# deterministic annotator noise: alternatives an annotator might give instead of the true answer
_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "red": ("dark red", "orange"), "green": ("dark green", "lime"), "blue": ("dark blue", "purple"),
    "yellow": ("gold", "orange"), "purple": ("violet", "blue"), "orange": ("red", "yellow"),
    "circle": ("oval", "ball"), "square": ("rectangle", "box"), "triangle": ("pyramid", "arrow"),
    "small": ("tiny", "little"), "large": ("big", "huge"),
    "1": ("one", "2"), "2": ("two", "3"), "3": ("three", "2"),
    "yes": ("no",), "no": ("yes",),
    "top left": ("upper left", "left"), "top": ("top middle", "up"), "top right": ("upper right", "right"),
    "left": ("middle left", "on left"), "center": ("middle", "in middle"), "right": ("middle right", "on right"),
    "bottom left": ("lower left", "left"), "bottom": ("bottom middle", "down"),
    "bottom right": ("lower right", "right"),
    "up": ("upward", "top"), "down": ("downward", "bottom"),
}
_DIRECTION_ALTERNATIVES = {"right": ("to right", "left to right"), "left": ("to left", "right to left"),
                           "up": ("upward", "top"), "down": ("downward", "bottom")}

_SPLITS = ("train", "val", "test")
_IMAGE_FILES = tuple(f"{kind}_{split}.json" for kind in ("vqa", "retrieval", "caption") for split in _SPLITS)
_VIDEO_FILES = tuple(f"video_{kind}_{split}.json" for kind in ("retrieval", "qa") for split in _SPLITS)
_REASONING_FILES = tuple(f"{kind}_{split}.json" for kind in ("ve", "nlvr", "grounding") for split in _SPLITS)
_OTHER_FILES = ("answer_list.json", "video_answer_list.json", "caption_val_gt.json", "caption_test_gt.json",
                "scenes.json")
# every file written whatever the parameters: a complete folder's manifest lists them all
_ALWAYS_WRITTEN = _IMAGE_FILES + _REASONING_FILES + _VIDEO_FILES + _OTHER_FILES
TOKENIZER_DIR = "tokenizer_xlmr"
_KNOWN_NAMES = frozenset(_ALWAYS_WRITTEN + (MANIFEST, "images", "videos", TOKENIZER_DIR,
                                            "retrieval_train_multilingual.json", "parallel_train.json",
                                            "parallel_val.json"))
_TRANSLATED_NAME = re.compile(r"^(retrieval|vqa|ve|nlvr)_(train|val|test)\.[a-z]{2}\.json$")


# ----------------------------------------------------------------------------------------------------------- paths


def default_shapes_root() -> Path:
    """``{mmzoo_home()}/datasets/shapes-v3``."""
    return mmzoo_home() / "datasets" / f"shapes-v{SHAPES_VERSION}"


# ---------------------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major; for a moving video object, the cell it starts in
    dx: float = 0.0  # offset of the centre from the cell centre, in cells
    dy: float = 0.0

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def phrase(self) -> str:
        return _POSITION_PHRASES[self.cell]


def _geometry(obj: _Object, image_size: int, centre: tuple[float, float] | None = None):
    """``(kind, coordinates)`` of the object drawn at ``image_size`` (integer pixel coordinates)."""
    cell = image_size / 3
    if centre is None:
        row, col = divmod(obj.cell, 3)
        centre = ((col + 0.5 + obj.dx) * cell, (row + 0.5 + obj.dy) * cell)
    cx, cy = centre
    r = _RADIUS[obj.size] * cell
    if obj.shape == "circle":
        return "ellipse", [round(cx - r), round(cy - r), round(cx + r), round(cy + r)]
    if obj.shape == "square":
        s = 0.85 * r
        return "rectangle", [round(cx - s), round(cy - s), round(cx + s), round(cy + s)]
    return "polygon", [(round(cx), round(cy - r)), (round(cx - 0.95 * r), round(cy + 0.8 * r)),
                       (round(cx + 0.95 * r), round(cy + 0.8 * r))]


def _draw(draw, obj: _Object, image_size: int, fill, centre: tuple[float, float] | None = None) -> None:
    kind, coords = _geometry(obj, image_size, centre)
    getattr(draw, kind)(coords, fill=fill)


def _render(objects: list[tuple[_Object, tuple[float, float] | None]], image_size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj, centre in objects:
        _draw(draw, obj, image_size, COLOURS[obj.colour], centre)
    return image


def _box(obj: _Object, image_size: int) -> list[int]:
    """The COCO ``[x, y, w, h]`` box of the pixels the object covers (drawn alone on a mask)."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (image_size, image_size), 0)
    _draw(ImageDraw.Draw(mask), obj, image_size, 255)
    x0, y0, x1, y1 = mask.getbbox()
    return [x0, y0, x1 - x0, y1 - y0]


def _random_scene(rng: random.Random) -> list[_Object]:
    """1-3 objects in distinct cells, with distinct (colour, shape) pairs, in reading order."""
    n = rng.choice((1, 2, 3))
    cells = sorted(rng.sample(range(9), n))
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        pair = (rng.choice(tuple(COLOURS)), rng.choice(SHAPES))
        if pair not in pairs:
            pairs.append(pair)
    objects = []
    for cell, (colour, shape) in zip(cells, pairs):
        size = rng.choice(SIZES)
        slack = max(0.0, 0.5 - _RADIUS[size] - 0.08)  # neighbours stay >= 0.16 cell apart (2+ px at 48 px)
        objects.append(_Object(shape, colour, size, cell, round(rng.uniform(-slack, slack), 3),
                               round(rng.uniform(-slack, slack), 3)))
    return objects


# -------------------------------------------------------------------------------------------------------- language


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _full(obj: _Object) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def _short(obj: _Object) -> str:
    return f"a {obj.colour} {obj.shape}"


def _relation(a: _Object, b: _Object) -> str:
    (ra, ca), (rb, cb) = divmod(a.cell, 3), divmod(b.cell, 3)
    if ca != cb:
        return "to the left of" if ca < cb else "to the right of"
    return "above" if ra < rb else "below"


class _English:
    """The English phrases (the original generator's strings; every other language mirrors this class)."""

    code = "en"

    def full(self, o: _Object, case: str = "nom") -> str:
        return _full(o)

    def short(self, o: _Object, case: str = "nom") -> str:
        return _short(o)

    def phrase(self, o: _Object) -> str:
        return o.phrase

    def join(self, items: list[str]) -> str:
        return _join(items)

    def single_captions(self, o: _Object) -> list[str]:
        return [f"{_full(o)} {o.phrase}", f"a single {o.size} {o.colour} {o.shape} {o.phrase}",
                f"one {o.size} {o.shape} that is {o.colour}, {o.phrase}", f"a picture with {_full(o)} {o.phrase}",
                f"{o.phrase}: {_full(o)} on a light background", f"{_full(o)} alone {o.phrase}"]

    def shapes_list(self, n: int, items: list[str]) -> str:
        return f"{_NUMBER_WORDS[n]} shapes: {_join(items)}"

    def shapes_background(self, n: int, items: list[str]) -> str:
        return f"{_NUMBER_WORDS[n]} shapes on a light background: {_join(items)}"

    def relation(self, a: _Object, b: _Object, rest: list[_Object]) -> str:
        return f"{_short(a)} {_relation(a, b)} {_short(b)}" + "".join(f" and {_short(c)} {c.phrase}" for c in rest)

    def beside(self, a: _Object, others: list[_Object]) -> str:
        return f"{_full(a)} {a.phrase} beside {_join([_full(o) for o in others])}"

    def question(self, kind: str, variant: int, o: _Object | None, extra: Any = None) -> str:
        if kind == "colour":  # variant: 0 by shape, 1 by size and shape, 2 by position
            ref = (f"the {o.shape}", f"the {o.size} {o.shape}", f"the shape {o.phrase}")[variant]
            return f"what colour is {ref}?"
        if kind == "shape":  # 0 by colour, 1 by position
            return f"what shape is {o.colour}?" if variant == 0 else f"what shape is {o.phrase}?"
        if kind == "position":
            return (f"where is the {o.colour} {o.shape}?",
                    f"which part of the image is the {o.colour} {o.shape} in?")[variant]
        if kind == "size":
            return (f"what size is the {o.colour} {o.shape}?", f"is the {o.colour} {o.shape} small or large?")[variant]
        if kind == "count":
            return ("how many shapes are there?", "how many shapes are in the image?")[variant]
        if kind == "yesno":  # extra: (colour, shape) asked about
            return f"is there a {extra[0]} {extra[1]}?"
        raise ValueError(kind)


class _German(_English):
    """German: adjectives declined after the indefinite / definite article (Kreis masculine; Quadrat, Dreieck
    neuter), relations and "neben" with the dative, "gibt es" with the accusative."""

    code = "de"
    colours = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "violett",
               "orange": "orange"}
    shapes = {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck"}
    sizes = {"small": "klein", "large": "groß"}
    genders = {"circle": "m", "square": "n", "triangle": "n"}
    phrases = ("in der oberen linken Ecke", "oben", "in der oberen rechten Ecke", "links", "in der Mitte", "rechts",
               "in der unteren linken Ecke", "unten", "in der unteren rechten Ecke")
    numbers = {1: "eine", 2: "zwei", 3: "drei", 4: "vier", 5: "fünf", 6: "sechs"}
    # (article, adjective ending) by (article kind, case, gender)
    _ENDINGS = {("indef", "nom", "m"): ("ein", "er"), ("indef", "nom", "n"): ("ein", "es"),
                ("indef", "acc", "m"): ("einen", "en"), ("indef", "acc", "n"): ("ein", "es"),
                ("indef", "dat", "m"): ("einem", "en"), ("indef", "dat", "n"): ("einem", "en"),
                ("def", "nom", "m"): ("der", "e"), ("def", "nom", "n"): ("das", "e")}

    def _np(self, shape: str, adjectives: list[str], case: str = "nom", article: str = "indef") -> str:
        art, ending = self._ENDINGS[(article, case, self.genders[shape])]
        return " ".join([art, *(a + ending for a in adjectives), self.shapes[shape]])

    def full(self, o: _Object, case: str = "nom") -> str:
        return self._np(o.shape, [self.sizes[o.size], self.colours[o.colour]], case)

    def short(self, o: _Object, case: str = "nom") -> str:
        return self._np(o.shape, [self.colours[o.colour]], case)

    def phrase(self, o: _Object) -> str:
        return self.phrases[o.cell]

    def join(self, items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " und " + items[-1]

    def single_captions(self, o: _Object) -> list[str]:
        size, colour, shape, p = self.sizes[o.size], self.colours[o.colour], self.shapes[o.shape], self.phrase(o)
        single = self._np(o.shape, ["einzeln", size, colour])
        pronoun = {"m": "der", "n": "das"}[self.genders[o.shape]]
        return [f"{self.full(o)} {p}", f"{single} {p}", f"{self._np(o.shape, [size])}, {pronoun} {colour} ist, {p}",
                f"ein Bild mit {self.full(o, 'dat')} {p}", f"{p}: {self.full(o)} auf hellem Hintergrund",
                f"{self.full(o)} allein {p}"]

    def shapes_list(self, n: int, items: list[str]) -> str:
        return f"{self.numbers[n]} Formen: {self.join(items)}"

    def shapes_background(self, n: int, items: list[str]) -> str:
        return f"{self.numbers[n]} Formen auf hellem Hintergrund: {self.join(items)}"

    def relation(self, a: _Object, b: _Object, rest: list[_Object]) -> str:
        word = {"to the left of": "links von", "to the right of": "rechts von", "above": "über",
                "below": "unter"}[_relation(a, b)]
        return f"{self.short(a)} {word} {self.short(b, 'dat')}" + "".join(
            f" und {self.short(c)} {self.phrase(c)}" for c in rest)

    def beside(self, a: _Object, others: list[_Object]) -> str:
        return f"{self.full(a)} {self.phrase(a)} neben {self.join([self.full(o, 'dat') for o in others])}"

    def question(self, kind: str, variant: int, o: _Object | None, extra: Any = None) -> str:
        if kind == "colour":
            ref = (self._np(o.shape, [], article="def"), self._np(o.shape, [self.sizes[o.size]], article="def"),
                   f"die Form {self.phrase(o)}")[variant]
            return f"welche Farbe hat {ref}?"
        if kind == "shape":
            return f"welche Form ist {self.colours[o.colour]}?" if variant == 0 else \
                f"welche Form ist {self.phrase(o)}?"
        the = self._np(o.shape, [self.colours[o.colour]], article="def") if o is not None else ""
        if kind == "position":
            return (f"wo ist {the}?", f"in welchem Teil des Bildes ist {the}?")[variant]
        if kind == "size":
            return (f"welche Größe hat {the}?", f"ist {the} klein oder groß?")[variant]
        if kind == "count":
            return ("wie viele Formen gibt es?", "wie viele Formen sind im Bild?")[variant]
        if kind == "yesno":
            return f"gibt es {self._np(extra[1], [self.colours[extra[0]]], 'acc')}?"
        raise ValueError(kind)


class _French(_English):
    """French: every shape noun is masculine (cercle, carré, triangle); the size adjective precedes the noun, the
    colour follows it; relations and "à côté" take "d'un"."""

    code = "fr"
    colours = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet",
               "orange": "orange"}
    shapes = {"circle": "cercle", "square": "carré", "triangle": "triangle"}
    sizes = {"small": "petit", "large": "grand"}
    phrases = ("dans le coin supérieur gauche", "en haut", "dans le coin supérieur droit", "à gauche", "au centre",
               "à droite", "dans le coin inférieur gauche", "en bas", "dans le coin inférieur droit")
    numbers = {1: "une", 2: "deux", 3: "trois", 4: "quatre", 5: "cinq", 6: "six"}

    def full(self, o: _Object, case: str = "nom") -> str:
        return f"un {self.sizes[o.size]} {self.shapes[o.shape]} {self.colours[o.colour]}"

    def short(self, o: _Object, case: str = "nom") -> str:
        return f"un {self.shapes[o.shape]} {self.colours[o.colour]}"

    def phrase(self, o: _Object) -> str:
        return self.phrases[o.cell]

    def join(self, items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " et " + items[-1]

    def single_captions(self, o: _Object) -> list[str]:
        size, colour, shape, p = self.sizes[o.size], self.colours[o.colour], self.shapes[o.shape], self.phrase(o)
        return [f"{self.full(o)} {p}", f"un seul {size} {shape} {colour} {p}",
                f"un {size} {shape} qui est {colour}, {p}",
                f"une image avec {self.full(o)} {p}", f"{p}: {self.full(o)} sur un fond clair",
                f"{self.full(o)} seul {p}"]

    def shapes_list(self, n: int, items: list[str]) -> str:
        return f"{self.numbers[n]} formes: {self.join(items)}"

    def shapes_background(self, n: int, items: list[str]) -> str:
        return f"{self.numbers[n]} formes sur un fond clair: {self.join(items)}"

    def relation(self, a: _Object, b: _Object, rest: list[_Object]) -> str:
        word = {"to the left of": "à gauche", "to the right of": "à droite", "above": "au-dessus",
                "below": "au-dessous"}[_relation(a, b)]
        return f"{self.short(a)} {word} d'{self.short(b)}" + "".join(
            f" et {self.short(c)} {self.phrase(c)}" for c in rest)

    def beside(self, a: _Object, others: list[_Object]) -> str:
        return f"{self.full(a)} {self.phrase(a)} à côté {self.join([f'd{chr(39)}{self.full(o)}' for o in others])}"

    def question(self, kind: str, variant: int, o: _Object | None, extra: Any = None) -> str:
        if kind == "colour":
            ref = (f"le {self.shapes[o.shape]}", f"le {self.sizes[o.size]} {self.shapes[o.shape]}",
                   f"la forme {self.phrase(o)}")[variant]
            return f"de quelle couleur est {ref}?"
        if kind == "shape":
            return f"quelle forme est {self.colours[o.colour]}?" if variant == 0 else \
                f"quelle forme est {self.phrase(o)}?"
        the = f"le {self.shapes[o.shape]} {self.colours[o.colour]}" if o is not None else ""
        if kind == "position":
            return (f"où est {the}?", f"dans quelle partie de l'image est {the}?")[variant]
        if kind == "size":
            return (f"quelle taille a {the}?", f"{the} est-il petit ou grand?")[variant]
        if kind == "count":
            return ("combien de formes y a-t-il?", "combien de formes sont dans l'image?")[variant]
        if kind == "yesno":
            return f"y a-t-il un {self.shapes[extra[1]]} {self.colours[extra[0]]}?"
        raise ValueError(kind)


_LANGS: dict[str, _English] = {"en": _English(), "de": _German(), "fr": _French()}
#: the languages the captions and questions are translated into (templated translations of the English ones)
LANGUAGES: tuple[str, ...] = ("de", "fr")


def _lang(code: str) -> _English:
    try:
        return _LANGS[code]
    except KeyError:
        raise ValueError(f"language {code!r}: the shapes generator writes {', '.join(_LANGS)}") from None


def _caption_options(objects: list[_Object], lang: str = "en") -> list[list[str]]:
    """Every caption the generator may write for a scene, one group per template (a template that picks objects has
    one entry per choice). Each template names every object's colour and shape, and its position (or, for two or more
    objects, their sizes or their arrangement), so a caption describes few other scenes: retrieval is scored against
    one paired image, and a caption that fits many images caps recall@1 whatever the model (see
    :func:`caption_ambiguity`). Every language has the same groups in the same order (``lang``: ``en``, ``de``,
    ``fr``), so a (group, choice) drawn once renders the same caption in each language."""
    L = _lang(lang)
    n = len(objects)
    if n == 1:
        return [[c] for c in L.single_captions(objects[0])]
    pairs = [(a, b) for a in objects for b in objects if a is not b]
    others = {id(a): [o for o in objects if o is not a] for a in objects}
    return [
        [L.shapes_list(n, [L.full(o) for o in objects])],
        [L.join([f"{L.short(o)} {L.phrase(o)}" for o in objects])],
        [L.join([f"{L.full(o)} {L.phrase(o)}" for o in objects])],
        [L.shapes_background(n, [f"{L.short(o)} {L.phrase(o)}" for o in objects])],
        [L.relation(a, b, [c for c in others[id(a)] if c is not b]) for a, b in pairs],
        [L.beside(a, others[id(a)]) for a in objects],
    ]


def _caption_choices(objects: list[_Object], rng: random.Random) -> list[tuple[int, int]]:
    """``(group, entry)`` of each caption drawn: the same rng calls as ``rng.sample(groups, k)`` and
    ``rng.choice(group)`` (both draw indices from the lengths only)."""
    groups = _caption_options(objects)
    chosen = rng.sample(range(len(groups)), _CAPTIONS_PER_IMAGE)
    return [(g, rng.choice(range(len(groups[g])))) for g in chosen]


def _render_captions(objects: list[_Object], choices: list[tuple[int, int]], lang: str) -> list[str]:
    groups = _caption_options(objects, lang)
    return [groups[g][j] for g, j in choices]


def _image_captions(objects: list[_Object], rng: random.Random) -> list[str]:
    return _render_captions(objects, _caption_choices(objects, rng), "en")


def retrieval_ceiling(root: str | os.PathLike, split: str = "test") -> float:
    """Text-to-image recall@1 (%) that a perfect reader of the captions of a generated split would expect: each
    caption counts 1 / (number of the split's images it describes exactly), the chance of picking its own image among
    equally good ones. 100 means every caption fits only its own image."""
    root = Path(root)
    scenes = [s for s in json.loads((root / "scenes.json").read_text()) if s["split"] == split]
    possible = {s["image"]: {c for group in _caption_options([_scene_object(o) for o in s["objects"]]) for c in group}
                for s in scenes}
    scores = []
    for e in json.loads((root / f"retrieval_{split}.json").read_text()):
        for c in e["caption"]:
            fits = sum(c in options for options in possible.values())
            if c not in possible.get(e["image"], ()):
                raise ValueError(f"{root / f'retrieval_{split}.json'}: {c!r} is not a caption the generator writes "
                                 f"for {e['image']}")
            scores.append(1.0 / fits)
    return 100.0 * sum(scores) / max(len(scores), 1)


def _signature(objects: list[_Object]) -> tuple:
    return tuple((o.shape, o.colour, o.size, o.cell) for o in objects)


def _scene_object(o: Mapping[str, Any]) -> _Object:
    return _Object(o["shape"], o["colour"], o["size"], POSITIONS.index(o["position"]))


def _unique(objects: list[_Object], **attrs) -> bool:
    return sum(all(getattr(o, k) == v for k, v in attrs.items()) for o in objects) == 1


def _question_specs(objects: list[_Object], rng: random.Random) -> list[tuple[tuple, str]]:
    """Where each object is (one question per object), then ``_QUESTIONS_PER_IMAGE`` questions of distinct other
    types: ``((kind, variant, object, extra), answer)``; answers are balanced per type. (Position questions make up
    about a third of the set: with one position question among five or six per image, x2vlm-tiny trained from scratch
    answered the other types from pooled image features and never learned to ground words in image regions within a
    10-minute run.) :meth:`_English.question` renders a spec in a language."""
    target = rng.choice(objects)
    makers = {}
    # colour: refer to the target by shape, else by size and shape, else by position
    if _unique(objects, shape=target.shape):
        variant = 0
    elif _unique(objects, shape=target.shape, size=target.size):
        variant = 1
    else:
        variant = 2
    makers["colour"] = (("colour", variant, target, None), target.colour)
    # shape: refer by colour when it is unique, else by position
    makers["shape"] = (("shape", 0 if _unique(objects, colour=target.colour) else 1, target, None), target.shape)
    # (colour, shape) pairs are unique within a scene
    positions = [(("position", rng.choice((0, 1)), o, None), o.position) for o in objects]
    makers["size"] = (("size", rng.choice((0, 1)), target, None), target.size)
    makers["count"] = (("count", rng.choice((0, 1)), None, None), str(len(objects)))
    if rng.random() < 0.5:
        makers["yesno"] = (("yesno", 0, None, (target.colour, target.shape)), "yes")
    else:
        present = {(o.colour, o.shape) for o in objects}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        makers["yesno"] = (("yesno", 0, None, rng.choice(absent)), "no")
    kinds = rng.sample(sorted(makers), _QUESTIONS_PER_IMAGE)
    return positions + [makers[k] for k in kinds]


def _render_question(spec: tuple, lang: str) -> str:
    kind, variant, obj, extra = spec
    return _lang(lang).question(kind, variant, obj, extra)


def _image_questions(objects: list[_Object], rng: random.Random) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs in English (see :func:`_question_specs`)."""
    return [(_render_question(spec, "en"), answer) for spec, answer in _question_specs(objects, rng)]


def _ten_answers(answer: str, rng: random.Random, alternatives: dict[str, tuple[str, ...]]) -> list[str]:
    """10 answers: the true one, with 0-2 alternatives at random places (the true answer keeps >= 8 votes)."""
    answers = [answer] * _NUM_ANSWERS
    k = rng.choices(range(len(_NOISE_WEIGHTS)), weights=_NOISE_WEIGHTS)[0]
    for place in rng.sample(range(_NUM_ANSWERS), k):
        answers[place] = rng.choice(alternatives[answer])
    return answers


def _answer_list(canonical: list[str], alternatives: dict[str, tuple[str, ...]]) -> list[str]:
    out = list(dict.fromkeys(canonical))
    out += sorted({alt for a in canonical for alt in alternatives[a]} - set(out))
    return out


# ---------------------------------------------------------------------------------------------------------- videos


def _video_track(direction: str, lane: int, frames: int, size: int) -> list[tuple[float, float]]:
    """Centres of a shape crossing the frame from the first to the last cell of a row/column ``lane``."""
    cell = size / 3
    lo, hi = 0.5 * cell, 2.5 * cell
    across = (lane + 0.5) * cell
    out = []
    for t in range(frames):
        f = t / (frames - 1)
        along = {"right": lo + (hi - lo) * f, "left": hi - (hi - lo) * f,
                 "down": lo + (hi - lo) * f, "up": hi - (hi - lo) * f}[direction]
        out.append((along, across) if direction in ("right", "left") else (across, along))
    return out


def _random_video(rng: random.Random):
    """``(moving, direction, lane, static_or_None)``: one moving shape, maybe one still shape outside its lane."""
    direction = rng.choice(DIRECTIONS)
    lane = rng.randrange(3)
    moving = _Object(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(SIZES), 0)
    static = None
    if rng.random() < 0.5:
        other_lane = rng.choice([x for x in range(3) if x != lane])
        along = rng.randrange(3)
        cell = other_lane * 3 + along if direction in ("right", "left") else along * 3 + other_lane
        static = _Object(rng.choice([s for s in SHAPES if s != moving.shape]),
                         rng.choice([c for c in COLOURS if c != moving.colour]), rng.choice(SIZES), cell)
    return moving, direction, lane, static


_DIRECTION_PHRASES = {"right": "to the right", "left": "to the left", "up": "up", "down": "down"}
_DIRECTION_ENDS = {"right": ("left", "right"), "left": ("right", "left"), "up": ("bottom", "top"),
                   "down": ("top", "bottom")}


def _video_captions(moving: _Object, direction: str, static: _Object | None, rng: random.Random) -> list[str]:
    phrase = _DIRECTION_PHRASES[direction]
    start, end = _DIRECTION_ENDS[direction]
    candidates = [f"{_short(moving)} moves {phrase}",
                  f"{_full(moving)} moving from {start} to {end}",
                  f"{_short(moving)} slides {phrase}",
                  f"a {moving.size} {moving.shape} moving {direction}"]
    if static is not None:
        candidates.append(f"{_short(moving)} moves {phrase} while {_short(static)} stays still")
        candidates.append(f"{_full(moving)} passes {_short(static)} moving {direction}")
    rng.shuffle(candidates)
    return candidates[:_CAPTIONS_PER_VIDEO]


def _video_questions(moving: _Object, direction: str, static: _Object | None,
                     rng: random.Random) -> list[tuple[str, str]]:
    direction_q = rng.choice((f"which direction does the {moving.shape} move?",
                              f"in which direction is the {moving.colour} {moving.shape} moving?"))
    others = {"colour": ("what colour is the moving shape?", moving.colour),
              "shape": (rng.choice(("what shape is moving?", "what is the shape of the moving object?")),
                        moving.shape)}
    if static is not None:
        obj, answer = (moving, "yes") if rng.random() < 0.5 else (static, "no")
        others["moves"] = (f"does the {obj.colour} {obj.shape} move?", answer)
    kinds = rng.sample(sorted(others), _QUESTIONS_PER_VIDEO - 1)
    return [(direction_q, direction)] + [others[k] for k in kinds]


def _video_codec() -> str:
    import av

    for name in ("mpeg4", "libx264", "h264"):
        if name in av.codecs_available:
            return name
    raise RuntimeError("PyAV has neither the mpeg4 nor an h264 encoder; the shapes videos cannot be written")


def _write_video(path: Path, frames, size: int, codec: str, key_frames_only: bool = False) -> None:
    """Frames → a bit-exact mp4 (one thread, fixed quality). ``key_frames_only``: every frame a key frame (predicted
    frames carry a colour change of a small shape only halfway, as the encoder's motion search looks at brightness
    only)."""
    import av
    import numpy as np

    # bitexact: no library version strings in the container or the stream, so the bytes depend only on the pixels
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=_VIDEO_FPS)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: the same bytes on every machine
        quality = {"qscale": "2"} if codec == "mpeg4" else {"crf": "12", "preset": "medium"}
        stream.options = {**quality, "flags": "+bitexact", **({"g": "1"} if key_frames_only else {})}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ------------------------------------------------------------------------------------------------------ generation


def _check_languages(languages: Any) -> tuple[str, ...]:
    if isinstance(languages, str) or not isinstance(languages, (list, tuple)):
        raise TypeError(f"generate_shapes: languages must be a list of language codes, got {languages!r}")
    for lang in languages:
        if lang == "en" or lang not in _LANGS:
            raise ValueError(f"generate_shapes: languages: {lang!r} is not a translation the generator writes; "
                             f"expected some of {', '.join(LANGUAGES)}")
    if len(set(languages)) != len(languages):
        raise ValueError(f"generate_shapes: languages {list(languages)} names a language twice")
    return tuple(languages)


# files whose texts the shapes tokenizer leaves out (build_shapes_tokenizer): its vocabulary predates them
_REASONING_PREFIXES = ("ve_", "nlvr_", "grounding_")


def _tokenizer_corpus(files: Mapping[str, Any]) -> list[str]:
    """Every caption, question, parallel sentence, answer and reasoning sentence (VE hypothesis, NLVR statement) of
    the image files, raw and as the readers clean them (lower case, no punctuation), distinct, in file order."""
    from zoo.data.datasets import pre_caption  # noqa: PLC0415

    texts: list[str] = []
    for name, obj in sorted(files.items()):
        if not isinstance(obj, list) or name.startswith("video_") or name == "scenes.json":
            continue
        for e in obj:
            if isinstance(e, str):  # answer list
                texts.append(e)
                continue
            for key, value in e.items():
                if key in ("question", "text", "text_2", "sentence") or key == "caption" or key.startswith("caption_"):
                    texts.extend([value] if isinstance(value, str) else value)
                elif key == "answer":
                    texts.extend(value)
    out = []
    for t in texts:
        out += [t, pre_caption(t, 10_000)]
    return list(dict.fromkeys(out))


def build_shapes_tokenizer(root: str | os.PathLike, vocab_size: int = 511, files: Mapping[str, Any] | None = None,
                           out_dir: str | os.PathLike | None = None) -> Path:
    """The tiny XLM-R-format tokenizer of the shapes data (:func:`zoo.data.multilingual_tokenizer.
    build_multilingual_tokenizer`, a Unigram vocabulary of whole words, ``model="words"``) from every caption,
    question, parallel sentence and answer in every language, written to ``{root}/tokenizer_xlmr`` (or ``out_dir``).
    The VE and NLVR sentences and the region phrases (``ve_*`` / ``nlvr_*`` / ``grounding_*``) are left out: the
    vocabulary, and so the token ids every earlier run on this data trained with, stay what they were before those
    files existed; a task whose texts hold words it lacks gets a tokenizer built from its own files
    (:func:`zoo.train.data.resolve_data_tokenizer`). ``vocab_size`` 511 fits ``cclm-tiny``'s 512 ids (``<mask>``
    comes on top). ``files`` (name → records) saves re-reading the JSON files. Every character of the corpus is in
    the vocabulary, so none of the data's texts has an ``<unk>``."""
    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer  # noqa: PLC0415

    root = Path(root)
    if files is None:
        files = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.glob("*.json"))
                 if p.name != MANIFEST}
    files = {name: obj for name, obj in files.items() if not name.startswith(_REASONING_PREFIXES)}
    return build_multilingual_tokenizer(_tokenizer_corpus(files), out_dir or root / TOKENIZER_DIR,
                                        vocab_size=vocab_size, model="words")


def shapes_tokenizer(root: str | os.PathLike | None = None) -> Path:
    """The ``tokenizer_xlmr`` folder of a generated shapes dataset (default: the default dataset, generated on first
    use) — what ``cclm-tiny``'s ``text.tokenizer`` points at for the shapes data."""
    root = Path(root) if root is not None else generate_shapes()
    folder = root / TOKENIZER_DIR
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: no shapes tokenizer (a dataset generated with languages; regenerate it "
                                "with generate_shapes(root, ...) )")
    return folder



def _check_params(seed, num_train_images, num_val_images, num_test_images, image_size, num_videos,
                  video_frames) -> dict[str, int]:
    params = {"seed": seed, "num_train_images": num_train_images, "num_val_images": num_val_images,
              "num_test_images": num_test_images, "image_size": image_size, "num_videos": num_videos,
              "video_frames": video_frames}
    low = {"seed": None, "num_train_images": 1, "num_val_images": 1, "num_test_images": 1, "image_size": 48,
           "num_videos": 0, "video_frames": 2}
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"generate_shapes: {key} must be an int, got {type(value).__name__} {value!r}")
        if low[key] is not None and value < low[key]:
            raise ValueError(f"generate_shapes: {key} must be >= {low[key]}, got {value}")
    if image_size > 1024:
        raise ValueError(f"generate_shapes: image_size must be <= 1024, got {image_size}")
    if num_videos and video_frames > 256:
        raise ValueError(f"generate_shapes: video_frames must be <= 256, got {video_frames}")
    return params


def _video_split_sizes(num_videos: int) -> dict[str, int]:
    held_out = max(1, num_videos // 5) if num_videos >= 3 else 0
    return {"train": num_videos - 2 * held_out, "val": held_out, "test": held_out}


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random(":".join(["shapes", str(SHAPES_VERSION), str(seed), *map(str, parts)]))


def _dump(path: Path, obj: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, ensure_ascii=False)
        fh.write("\n")


def _language_files(split: str, languages: tuple[str, ...]) -> list[str]:
    """The translated files of a split (``parallel_{split}.json`` aside)."""
    names = [f"{kind}_{split}.{lang}.json" for kind in ("retrieval", "vqa", "ve", "nlvr") for lang in languages]
    return names + (["retrieval_train_multilingual.json"] if split == "train" and languages else [])


def _written_files(languages: tuple[str, ...]) -> set[str]:
    """Every JSON file the generator writes with ``languages`` (the manifest aside): a complete folder's manifest
    lists them all."""
    names = set(_ALWAYS_WRITTEN)
    for split in _SPLITS:
        names.update(_language_files(split, languages))
    if languages:
        names.update(f"parallel_{split}.json" for split in ("train", "val"))
    return names


def _parallel_records(pairs: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """Distinct (English, translation) sentence pairs in first-seen order:
    ``{text, text_2, lang, lang_2}`` with ``text`` English and ``text_2`` in ``lang_2``."""
    seen: set[tuple[str, str]] = set()
    out = []
    for en, other, lang in pairs:
        if (en, other) not in seen:
            seen.add((en, other))
            out.append({"text": en, "text_2": other, "lang": "en", "lang_2": lang})
    return out


def _generate_into(folder: Path, params: dict[str, int], languages: tuple[str, ...] = LANGUAGES) -> dict[str, Any]:
    from zoo.data.shapes_reasoning import render, ve_hypotheses  # noqa: PLC0415 (it imports this module)

    seed, size = params["seed"], params["image_size"]
    counts = {"train": params["num_train_images"], "val": params["num_val_images"], "test": params["num_test_images"]}
    files: dict[str, Any] = {}
    multilingual: dict[str, Any] = {}  # the translated files (written after the English ones, same order)
    scenes, image_id = [], 0
    for split in _SPLITS:
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        vqa, retrieval_train, captions_eval, gt_images, gt_annotations = [], [], [], [], []
        extra: dict[str, list] = {name: [] for name in _language_files(split, languages)}
        pairs: list[tuple[str, str, str]] = []
        seen: set[tuple] = set()
        ve: list[dict[str, Any]] = []
        drawn: list[tuple[str, list[_Object]]] = []  # (image, objects) of the split, for the NLVR pairs
        for index in range(counts[split]):
            rng = _rng(seed, "image", split, index)
            objects = _random_scene(rng)
            # evaluation splits hold no two scenes with the same objects in the same cells: such scenes differ only by
            # a few pixels of offset, and retrieval scored against one paired image could not tell them apart
            while split != "train" and _signature(objects) in seen:
                objects = _random_scene(rng)
            seen.add(_signature(objects))
            rel = f"images/{split}/{image_id:05d}.png"
            _render([(o, None) for o in objects], size).save(folder / rel, format="PNG")
            scenes.append({"image": rel, "image_id": image_id, "split": split,
                           "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position,
                                        "bbox": _box(o, size)} for o in objects]})
            choices = _caption_choices(objects, rng)
            captions = _render_captions(objects, choices, "en")
            translated = {lang: _render_captions(objects, choices, lang) for lang in languages}
            if split == "train":
                retrieval_train += [{"image": rel, "caption": c, "image_id": image_id} for c in captions]
                for lang in languages:
                    extra[f"retrieval_train.{lang}.json"] += [{"image": rel, "caption": c, "image_id": image_id}
                                                              for c in translated[lang]]
                if languages:
                    extra["retrieval_train_multilingual.json"] += [
                        {"image": rel, "caption": c, **{f"caption_{lang}": translated[lang][j] for lang in languages},
                         "image_id": image_id} for j, c in enumerate(captions)]
            else:
                captions_eval.append({"image": rel, "caption": captions})
                for lang in languages:
                    extra[f"retrieval_{split}.{lang}.json"].append({"image": rel, "caption": translated[lang]})
                gt_images.append({"id": image_id, "file_name": rel})
                gt_annotations += [{"image_id": image_id, "id": image_id * 10 + j, "caption": c}
                                   for j, c in enumerate(captions)]
            for j, (spec, answer) in enumerate(_question_specs(objects, rng)):
                entry = {"question_id": image_id * 10 + j, "question": _render_question(spec, "en"),
                         "answer": _ten_answers(answer, rng, _ALTERNATIVES), "image": rel,
                         "dataset": VQA_DATASET_TAG}
                vqa.append(entry)
                for lang in languages:
                    extra[f"vqa_{split}.{lang}.json"].append({**entry, "question": _render_question(spec, lang)})
                    pairs += [(entry["question"], _render_question(spec, lang), lang)]
            for lang in languages:
                pairs += [(c, t, lang) for c, t in zip(captions, translated[lang])]
            # the reasoning files draw from their own generators: the files above do not change with them; their
            # translations render the same specs (same records, labels and ids), drawing nothing more
            for j, h in enumerate(ve_hypotheses(objects, _rng(seed, "ve", split, index))):
                entry = {"image": rel, "sentence": h.sentence, "label": h.label, "pair_id": image_id * 10 + j}
                ve.append(entry)
                for lang in languages:
                    extra[f"ve_{split}.{lang}.json"].append({**entry, "sentence": render(h.spec, lang)})
            drawn.append((rel, objects))
            image_id += 1
        files[f"vqa_{split}.json"] = vqa
        files[f"ve_{split}.json"] = ve
        nlvr = _nlvr_records(split, drawn, seed)
        files[f"nlvr_{split}.json"] = [entry for entry, _ in nlvr]
        for lang in languages:
            extra[f"nlvr_{split}.{lang}.json"] = [{**entry, "sentence": render(spec, lang)} for entry, spec in nlvr]
        multilingual.update(extra)
        if languages and split != "test":
            multilingual[f"parallel_{split}.json"] = _parallel_records(pairs)
        if split == "train":
            files["retrieval_train.json"] = retrieval_train
            files["caption_train.json"] = [dict(e) for e in retrieval_train]
        else:
            files[f"retrieval_{split}.json"] = captions_eval
            files[f"caption_{split}.json"] = [dict(e) for e in captions_eval]
            files[f"caption_{split}_gt.json"] = {"info": {"description": f"shapes-v{SHAPES_VERSION} {split} captions"},
                                                 "licenses": [], "type": "captions", "images": gt_images,
                                                 "annotations": gt_annotations}
    files["answer_list.json"] = _answer_list([*COLOURS, *SHAPES, *SIZES, "1", "2", "3", "yes", "no", *POSITIONS],
                                             _ALTERNATIVES)
    files["scenes.json"] = scenes
    for split in _SPLITS:
        files[f"grounding_{split}.json"] = _grounding_records(scenes, split, size)

    video_counts = _video_split_sizes(params["num_videos"])
    # a multiple of 32: decord mis-decodes some other widths (48 px, for one)
    video_size = max(64, min(size, 128) // 32 * 32)
    codec = _video_codec() if params["num_videos"] else None
    video_alternatives = {**_ALTERNATIVES, **_DIRECTION_ALTERNATIVES}
    video_id = 0
    for split in _SPLITS:
        (folder / "videos" / split).mkdir(parents=True, exist_ok=True)
        qa, retrieval = [], []
        for index in range(video_counts[split]):
            rng = _rng(seed, "video", split, index)
            moving, direction, lane, static = _random_video(rng)
            track = _video_track(direction, lane, params["video_frames"], video_size)
            frames = [_render(([(static, None)] if static else []) + [(moving, centre)], video_size)
                      for centre in track]
            rel = f"videos/{split}/{video_id:05d}.mp4"
            _write_video(folder / rel, frames, video_size, codec)
            captions = _video_captions(moving, direction, static, rng)
            if split == "train":
                retrieval += [{"video": rel, "caption": c, "video_id": video_id} for c in captions]
            else:
                retrieval.append({"video": rel, "caption": captions})
            for j, (question, answer) in enumerate(_video_questions(moving, direction, static, rng)):
                qa.append({"question_id": video_id * 10 + j, "question": question,
                           "answer": _ten_answers(answer, rng, video_alternatives), "video": rel,
                           "dataset": VQA_DATASET_TAG})
            video_id += 1
        files[f"video_retrieval_{split}.json"] = retrieval
        files[f"video_qa_{split}.json"] = qa
    files["video_answer_list.json"] = _answer_list([*DIRECTIONS, *COLOURS, *SHAPES, "yes", "no"], video_alternatives)

    files.update(multilingual)
    for name, obj in files.items():
        _dump(folder / name, obj)
    if languages:
        build_shapes_tokenizer(folder, files=files)
    manifest = {
        "name": "shapes", "version": SHAPES_VERSION, "params": params,
        "files": {name: _count(obj) for name, obj in sorted(files.items())},
        "images": counts, "videos": video_counts, "video_size": video_size, "video_codec": codec,
        "video_fps": _VIDEO_FPS, "languages": list(languages),
    }
    _dump(folder / MANIFEST, manifest)  # last: its presence means "complete"
    return manifest


def _nlvr_records(split: str, drawn: list[tuple[str, list[_Object]]], seed: int) -> list[tuple[dict[str, Any], Any]]:
    """Each image of the split is the left image of one pair; the right one is another image of the split drawn at
    random (the image itself in a one-image split); two statements per pair, one true and one false:
    ``[(record, spec)]`` (the :class:`zoo.data.shapes_reasoning.Spec` renders the sentence in another language)."""
    from zoo.data.shapes_reasoning import nlvr_statements  # noqa: PLC0415 (it imports this module)

    records = []
    for index, (left, left_objects) in enumerate(drawn):
        rng = _rng(seed, "nlvr", split, index)
        other = index
        if len(drawn) > 1:
            other = rng.randrange(len(drawn) - 1)
            other += other >= index  # any image but the left one
        right, right_objects = drawn[other]
        for s in nlvr_statements(left_objects, right_objects, rng):
            records.append(({"images": [left, right], "sentence": s.sentence, "label": s.label,
                             "identifier": f"shapes-{split}-{len(records)}"}, s.spec))
    return records


def _grounding_records(scenes: list[dict], split: str, size: int) -> list[dict]:
    """One referring phrase per drawn object with its box, in the layout of X²-VLM's region data (``image``,
    ``image_w``, ``image_h``, a phrase and its ``[x, y, w, h]`` pixel box; here flat, one record per object, with the
    scene's ``image_id``). The phrase names size, colour and shape ("the small red circle"), which (colour, shape)
    pairs being unique in a scene, points at exactly one object. Drawn from the scenes only (no random draws)."""
    return [{"image": scene["image"], "image_w": size, "image_h": size,
             "caption": f"the {o['size']} {o['colour']} {o['shape']}", "bbox": list(o["bbox"]),
             "image_id": scene["image_id"]}
            for scene in scenes if scene["split"] == split for o in scene["objects"]]


def _count(obj: Any) -> int:
    return len(obj["annotations"]) if isinstance(obj, dict) else len(obj)


def _read_manifest(root: Path) -> dict | None:
    try:
        with open(root / MANIFEST, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(root: Path, params: dict[str, int], languages: tuple[str, ...] = LANGUAGES) -> bool:
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("version") != SHAPES_VERSION or manifest.get("params") != params:
        return False
    # a folder written before the translations (no "languages" in its manifest) is regenerated: same English files
    if manifest.get("languages") != list(languages):
        return False
    if languages and not (root / TOKENIZER_DIR / "tokenizer.json").is_file():
        return False
    # a folder written before a kind of file existed (ve_* / nlvr_*, or their translations, say) is regenerated: its
    # other files are the same
    listed = manifest.get("files", {})
    if not isinstance(listed, dict) or not _written_files(languages) <= set(listed):
        return False
    return all((root / name).is_file() for name in listed)


def _check_replaceable(root: Path) -> None:
    """Refuse to delete a folder that holds files this generator does not write (a mistyped root)."""
    if not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder; expected a shapes dataset folder")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _KNOWN_NAMES and not p.name.startswith(".")
                     and not _TRANSLATED_NAME.match(p.name))
    if foreign:
        raise FileExistsError(f"{root}: holds files the shapes generator did not write ({', '.join(foreign[:5])}); "
                              "refusing to replace it — pass another root or remove the folder")


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """An exclusive lock file beside ``root`` (POSIX ``flock``; elsewhere the rename into place is the only guard)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root.parent / f".{root.name}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _swap_in(tmp: Path, root: Path, params: dict[str, int], languages: tuple[str, ...] = LANGUAGES) -> None:
    old = None
    if root.exists() or root.is_symlink():
        _check_replaceable(root)
        old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(root, old)
    try:
        os.replace(tmp, root)
    except OSError:
        # someone else (without the lock) put a complete copy there: keep it
        if not _is_complete(root, params, languages):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_shapes(root: str | os.PathLike | None = None, *, seed: int = 0, num_train_images: int = 5000,
                    num_val_images: int = 300, num_test_images: int = 300, image_size: int = 96, num_videos: int = 40,
                    video_frames: int = 8, force: bool = False,
                    languages: tuple[str, ...] | list[str] = LANGUAGES) -> Path:
    """Generate the shapes dataset under ``root`` (default :func:`default_shapes_root`) unless it is already there.

    A folder whose ``manifest.json`` names the same version and parameters is returned as is (nothing is rewritten);
    otherwise (or with ``force``) the dataset is generated into a temporary sibling folder and renamed into place.
    ``languages`` (default ``("de", "fr")``; ``()`` writes the English files only — byte-identical either way): the
    translated files and the XLM-R-format tokenizer folder (see the module docstring). Returns the root.
    """
    params = _check_params(seed, num_train_images, num_val_images, num_test_images, image_size, num_videos,
                           video_frames)
    languages = _check_languages(languages)
    root = Path(os.path.expanduser(os.fspath(root))) if root is not None else default_shapes_root()
    root = root.absolute()
    if not force and _is_complete(root, params, languages):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        if not force and _is_complete(root, params, languages):  # another process finished it while we waited
            return root
        if root.exists():
            _check_replaceable(root)  # fail before the work, not after
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary cache folder
            _generate_into(tmp, params, languages)
            _swap_in(tmp, root, params, languages)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def describe_shapes(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """What is on disk under ``root``: entries per JSON file, images and videos per split, and the manifest's
    version and parameters (``None`` when there is no manifest)."""
    root = Path(os.path.expanduser(os.fspath(root))) if root is not None else default_shapes_root()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such shapes dataset folder (generate it with generate_shapes)")
    files = {}
    for path in sorted(root.glob("*.json")):
        if path.name == MANIFEST:
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                files[path.name] = _count(json.load(fh))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: expected a JSON list (or a COCO-format object), could not read it ({exc})") \
                from None
    manifest = _read_manifest(root)
    return {
        "root": str(root),
        "version": manifest.get("version") if manifest else None,
        "params": manifest.get("params") if manifest else None,
        "files": files,
        "images": {s: len(list((root / "images" / s).glob("*.png"))) for s in _SPLITS},
        "videos": {s: len(list((root / "videos" / s).glob("*.mp4"))) for s in _SPLITS},
    }
