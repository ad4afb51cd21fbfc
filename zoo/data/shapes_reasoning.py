"""Reasoning statements about the shapes scenes: SNLI-VE-style hypotheses and NLVR2-style two-image statements.

:func:`zoo.data.shapes.generate_shapes` writes them as ``ve_{split}.json`` and ``nlvr_{split}.json`` in the layouts the
official readers take:

- visual entailment (SNLI-VE as read by ALBEF / DaVinci ``dataset/ve_dataset.py``: keys ``image``, ``sentence``,
  ``label``; here also ``pair_id``): three hypotheses per image, exactly one per label, in a shuffled order —

  * entailment: a true statement, one of :data:`VE_TEMPLATES` drawn uniformly ("there is a {colour} {shape}", "the
    {colour} {shape} is {size}", "the {colour} {shape} is {position phrase}", "there are {n} shapes" / "there is one
    shape", "a {size} {colour} {shape} is {position phrase}");
  * contradiction: half the time one of the same templates with one fact made false (a (colour, shape) pair absent
    from the scene, the other size, the phrase of a cell the object is not in, a wrong count in 1..3), half the time
    "there is a {quality} {colour} {shape}" with an ABSENT (colour, shape) pair;
  * neutral: "there is a {quality} {colour} {shape}" with a PRESENT pair — a :data:`QUALITIES` adjective (material,
    weight, softness) cannot be seen in a flat drawing, so the picture neither confirms nor refutes it.

  The picture decides entailment-vs-contradiction (sentences without a quality) and neutral-vs-contradiction (with a
  quality); the text alone can tell only which of the two pairs a sentence belongs to, and within each pair the
  labels are 2:1 (entailment:contradiction, neutral:contradiction) whatever the words, so a text-only classifier
  reaches at most 2/3 (every template, colour, shape, size, cell and count has the same distribution under both
  labels of a pair).

- NLVR2 (as read by X²-VLM / CCLM ``dataset/nlvr_dataset.py``: keys ``images`` ``[left, right]``, ``sentence``,
  ``label`` "True" / "False"; here also ``identifier``): every image of a split is the left image of one pair, the
  right image another image of the same split drawn at random (the image itself when the split holds one image). Each
  pair gets two statements from :data:`NLVR_TEMPLATES`, one true and one false, in a shuffled order. The template is
  drawn uniformly among the templates that can yield BOTH a true and a false statement for this pair, and each
  statement uniformly among the template's instantiations with that truth value; the three count comparisons (more /
  fewer / same) form one such template (exactly one of them holds; the false one is one of the other two). So every
  template is true about half the time and no template gives the label away. (Drawing the template separately for
  each truth value, among those that can yield that value, makes "both images contain ..." — true only when the
  scenes share a (colour, shape) pair, about one pair in five — false four times in five.)

All draws come from the ``random.Random`` passed in (the generator seeds one per image / pair from its own strings, so
the images and the other files do not change); nothing here touches a global RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from zoo.data.shapes import _POSITION_PHRASES, COLOURS, SHAPES, SIZES, _Object

__all__ = [
    "NLVR_TEMPLATES",
    "QUALITIES",
    "VE_TEMPLATES",
    "Statement",
    "nlvr_statements",
    "ve_hypotheses",
]

#: adjectives nobody can check in a flat drawing (material, weight, softness): the neutral hypotheses' words
QUALITIES = ("wooden", "heavy", "plastic", "metal", "paper", "soft")
#: the factual hypothesis templates (true for entailment, one fact made false for half the contradictions)
VE_TEMPLATES = ("exists", "size", "position", "count", "full")
#: the two-image statement templates
NLVR_TEMPLATES = ("both", "only_left", "only_right", "neither", "more", "fewer", "same", "total", "left_size",
                  "right_size")
# the units a pair's template is drawn from: the count comparisons share one
_NLVR_UNITS = ("both", "only_left", "only_right", "neither", "compare", "total", "left_size", "right_size")
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)


class Statement(NamedTuple):
    """A generated sentence, its label (a :data:`zoo.data.datasets.VE_LABELS` name, or "True" / "False") and its
    template name (:data:`VE_TEMPLATES` or "quality"; :data:`NLVR_TEMPLATES`)."""

    sentence: str
    label: str
    template: str


# ------------------------------------------------------------------------------------------------ visual entailment


def _count_sentence(n: int) -> str:
    return "there is one shape" if n == 1 else f"there are {_COUNT_WORDS[n]} shapes"


def _factual(template: str, objects: Sequence[_Object], true: bool, rng: random.Random) -> str:
    """A sentence of ``template`` about the scene, true or with one fact made false."""
    present = {(o.colour, o.shape) for o in objects}
    absent = [p for p in _PAIRS if p not in present]
    if template == "count":
        n = len(objects) if true else rng.choice([k for k in (1, 2, 3) if k != len(objects)])
        return _count_sentence(n)
    if template == "exists":
        if true:
            o = rng.choice(objects)
            colour, shape = o.colour, o.shape
        else:
            colour, shape = rng.choice(absent)
        return f"there is a {colour} {shape}"
    o = rng.choice(objects)
    if template == "size":
        size = o.size if true else _other_size(o.size)
        return f"the {o.colour} {o.shape} is {size}"
    if template == "position":
        cell = o.cell if true else rng.choice([k for k in range(9) if k != o.cell])
        return f"the {o.colour} {o.shape} is {_POSITION_PHRASES[cell]}"
    if template == "full":
        colour, shape, size, cell = o.colour, o.shape, o.size, o.cell
        if not true:
            fact = rng.choice(("pair", "size", "position"))
            if fact == "pair":
                (colour, shape), size, cell = rng.choice(absent), rng.choice(SIZES), rng.randrange(9)
            elif fact == "size":
                size = _other_size(size)
            else:
                cell = rng.choice([k for k in range(9) if k != cell])
        return f"a {size} {colour} {shape} is {_POSITION_PHRASES[cell]}"
    raise ValueError(f"unknown visual-entailment template {template!r}; expected one of {VE_TEMPLATES}")


def _other_size(size: str) -> str:
    return next(s for s in SIZES if s != size)


def ve_hypotheses(objects: Sequence[_Object], rng: random.Random) -> list[Statement]:
    """Three hypotheses about a scene, one per label (entailment, neutral, contradiction), in a shuffled order."""
    if not objects:
        raise ValueError("ve_hypotheses: a scene needs at least one object")
    present = {(o.colour, o.shape) for o in objects}
    template = rng.choice(VE_TEMPLATES)
    entailment = Statement(_factual(template, objects, True, rng), "entailment", template)
    if rng.random() < 0.5:
        template = rng.choice(VE_TEMPLATES)
        contradiction = Statement(_factual(template, objects, False, rng), "contradiction", template)
    else:
        colour, shape = rng.choice([p for p in _PAIRS if p not in present])
        contradiction = Statement(f"there is a {rng.choice(QUALITIES)} {colour} {shape}", "contradiction", "quality")
    o = rng.choice(objects)
    neutral = Statement(f"there is a {rng.choice(QUALITIES)} {o.colour} {o.shape}", "neutral", "quality")
    out = [entailment, neutral, contradiction]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------------------- NLVR2


def _nlvr_options(left: Sequence[_Object], right: Sequence[_Object]) -> dict[str, list[tuple[str, bool, str]]]:
    """Every statement of every unit about the pair: ``unit -> [(sentence, truth, template)]``."""
    in_left = {(o.colour, o.shape) for o in left}
    in_right = {(o.colour, o.shape) for o in right}
    nl, nr = len(left), len(right)
    options: dict[str, list[tuple[str, bool, str]]] = {unit: [] for unit in _NLVR_UNITS}
    for colour, shape in _PAIRS:
        a, b = (colour, shape) in in_left, (colour, shape) in in_right
        options["both"].append((f"both images contain a {colour} {shape}", a and b, "both"))
        options["only_left"].append((f"only the left image contains a {colour} {shape}", a and not b, "only_left"))
        options["only_right"].append((f"only the right image contains a {colour} {shape}", b and not a,
                                      "only_right"))
        options["neither"].append((f"neither image contains a {colour} {shape}", not a and not b, "neither"))
    options["compare"] = [("the left image has more shapes than the right image", nl > nr, "more"),
                          ("the left image has fewer shapes than the right image", nl < nr, "fewer"),
                          ("the two images have the same number of shapes", nl == nr, "same")]
    for n in range(2, 7):
        for word in (str(n), _COUNT_WORDS[n]):
            options["total"].append((f"there are {word} shapes in total", n == nl + nr, "total"))
    for size in SIZES:
        for shape in SHAPES:
            options["left_size"].append((f"the left image contains a {size} {shape}",
                                         any(o.size == size and o.shape == shape for o in left), "left_size"))
            options["right_size"].append((f"the right image contains a {size} {shape}",
                                          any(o.size == size and o.shape == shape for o in right), "right_size"))
    return options


def nlvr_statements(left: Sequence[_Object], right: Sequence[_Object], rng: random.Random) -> list[Statement]:
    """Two statements about an image pair, one true and one false, in a shuffled order (see the module docstring for
    how the template and the instantiations are drawn)."""
    if not left or not right:
        raise ValueError("nlvr_statements: both scenes need at least one object")
    options = _nlvr_options(left, right)
    usable = [u for u in _NLVR_UNITS if {truth for _, truth, _ in options[u]} == {True, False}]
    unit = rng.choice(usable)
    out = []
    for wanted in (True, False):
        sentence, _, template = rng.choice([o for o in options[unit] if o[1] == wanted])
        out.append(Statement(sentence, str(wanted), template))
    rng.shuffle(out)
    return out
