"""Reasoning statements about the shapes scenes: SNLI-VE-style hypotheses and NLVR2-style two-image statements.

:func:`zoo.data.shapes.generate_shapes` writes them as ``ve_{split}.json`` and ``nlvr_{split}.json`` in the layouts the
official readers take, and their German / French translations as ``ve_{split}.{lang}.json`` /
``nlvr_{split}.{lang}.json`` (the same records in the same order, with the same labels, images and ids; only
``sentence`` is translated), for the CCLM zero-shot cross-lingual protocol of XVNLI and MaRVL (train on English,
evaluate every language):

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

Generation and wording are separate: the generators draw a language-independent :class:`Spec` (the template and its
slots: colour, shape, size, cell, count, quality) and :func:`render` words it in English (the strings of the first
version of this module, unchanged), German or French. The German and French wording reuses the word tables and
declension of :class:`zoo.data.shapes._German` / :class:`zoo.data.shapes._French` (the caption and question
translations): German declines the adjectives after the article and case ("es gibt" and "enthalten" take the
accusative; "hölzern", "schwer", "weich" are declined before the colour, "aus Plastik / Metall / Papier" follow the
noun); French puts the size before the noun and the colour and quality after it, in the masculine (every shape noun
is masculine), and "aucune des deux images ne contient de ..." (the negation turns "un" into "de").

All draws come from the ``random.Random`` passed in (the generator seeds one per image / pair from its own strings, so
the images and the other files do not change); rendering draws nothing, so the translations do not change the English
files; nothing here touches a global RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from zoo.data.shapes import _LANGS, _POSITION_PHRASES, COLOURS, SHAPES, SIZES, _Object

__all__ = [
    "NLVR_TEMPLATES",
    "QUALITIES",
    "RENDER_LANGUAGES",
    "VE_TEMPLATES",
    "Spec",
    "Statement",
    "nlvr_statements",
    "render",
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


class Spec(NamedTuple):
    """A sentence before wording: its template (:data:`VE_TEMPLATES`, "quality", or :data:`NLVR_TEMPLATES`) and the
    slots the template uses (``n``: a count, written as a digit when ``digits``, else as a word); :func:`render`
    words it in a language."""

    template: str
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    cell: int | None = None
    n: int | None = None
    digits: bool = False
    quality: str | None = None


class Statement(NamedTuple):
    """A generated sentence (English), its label (a :data:`zoo.data.datasets.VE_LABELS` name, or "True" / "False"),
    its template name (:data:`VE_TEMPLATES` or "quality"; :data:`NLVR_TEMPLATES`) and its :class:`Spec` (to render
    the sentence in another language)."""

    sentence: str
    label: str
    template: str
    spec: Spec


# ------------------------------------------------------------------------------------------------------- wording

# the slots each template needs
_SLOTS = {
    "exists": ("colour", "shape"), "quality": ("quality", "colour", "shape"), "size": ("colour", "shape", "size"),
    "position": ("colour", "shape", "cell"), "count": ("n",), "full": ("size", "colour", "shape", "cell"),
    "both": ("colour", "shape"), "only_left": ("colour", "shape"), "only_right": ("colour", "shape"),
    "neither": ("colour", "shape"), "more": (), "fewer": (), "same": (), "total": ("n",),
    "left_size": ("size", "shape"), "right_size": ("size", "shape"),
}


class _EnglishStatements:
    """The English sentences (the one place they are written; every other language mirrors this class)."""

    def number(self, s: Spec) -> str:
        return str(s.n) if s.digits else _COUNT_WORDS[s.n]

    # visual entailment
    def exists(self, s: Spec) -> str:
        return f"there is a {s.colour} {s.shape}"

    def quality(self, s: Spec) -> str:
        return f"there is a {s.quality} {s.colour} {s.shape}"

    def size(self, s: Spec) -> str:
        return f"the {s.colour} {s.shape} is {s.size}"

    def position(self, s: Spec) -> str:
        return f"the {s.colour} {s.shape} is {_POSITION_PHRASES[s.cell]}"

    def count(self, s: Spec) -> str:
        return f"there is {self.number(s)} shape" if s.n == 1 else f"there are {self.number(s)} shapes"

    def full(self, s: Spec) -> str:
        return f"a {s.size} {s.colour} {s.shape} is {_POSITION_PHRASES[s.cell]}"

    # NLVR
    def both(self, s: Spec) -> str:
        return f"both images contain a {s.colour} {s.shape}"

    def only_left(self, s: Spec) -> str:
        return f"only the left image contains a {s.colour} {s.shape}"

    def only_right(self, s: Spec) -> str:
        return f"only the right image contains a {s.colour} {s.shape}"

    def neither(self, s: Spec) -> str:
        return f"neither image contains a {s.colour} {s.shape}"

    def more(self, s: Spec) -> str:
        return "the left image has more shapes than the right image"

    def fewer(self, s: Spec) -> str:
        return "the left image has fewer shapes than the right image"

    def same(self, s: Spec) -> str:
        return "the two images have the same number of shapes"

    def total(self, s: Spec) -> str:
        # (the generator asks for 2..6; one shape in total cannot happen with two non-empty images)
        return f"there is {self.number(s)} shape in total" if s.n == 1 else \
            f"there are {self.number(s)} shapes in total"

    def left_size(self, s: Spec) -> str:
        return f"the left image contains a {s.size} {s.shape}"

    def right_size(self, s: Spec) -> str:
        return f"the right image contains a {s.size} {s.shape}"


class _GermanStatements(_EnglishStatements):
    """German, with the tables and the declension (:meth:`zoo.data.shapes._German._np`) of the caption translations:
    "es gibt" and "enthalten" take the accusative, the definite subject the nominative; "hölzern", "schwer", "weich"
    are declined before the colour, "aus Plastik / Metall / Papier" follow the noun; "orange", which takes no
    endings, is declined as "orangefarben"; counts agree with "Form" (feminine: "eine Form")."""

    words = _LANGS["de"]
    # "orange" does not take endings in standard German ("orangeer" is no word): its declinable synonym
    declinable = {"orange": "orangefarben"}
    # quality -> (declined adjective stem, None) or (None, phrase after the noun)
    qualities = {"wooden": ("hölzern", None), "heavy": ("schwer", None), "soft": ("weich", None),
                 "plastic": (None, "aus Plastik"), "metal": (None, "aus Metall"), "paper": (None, "aus Papier")}

    def number(self, s: Spec) -> str:
        return str(s.n) if s.digits else self.words.numbers[s.n]

    def _colour(self, s: Spec) -> str:
        return self.declinable.get(s.colour, self.words.colours[s.colour])

    def _np(self, s: Spec, case: str, article: str = "indef", size: bool = False, colour: bool = True) -> str:
        w = self.words
        adjectives = ([w.sizes[s.size]] if size else []) + ([self._colour(s)] if colour else [])
        return w._np(s.shape, adjectives, case, article)

    def _count(self, s: Spec) -> str:
        return f"{self.number(s)} Form" if s.n == 1 else f"{self.number(s)} Formen"

    def exists(self, s: Spec) -> str:
        return f"es gibt {self._np(s, 'acc')}"

    def quality(self, s: Spec) -> str:
        adjective, after = self.qualities[s.quality]
        adjectives = ([adjective] if adjective else []) + [self._colour(s)]
        return f"es gibt {self.words._np(s.shape, adjectives, 'acc')}" + (f" {after}" if after else "")

    def size(self, s: Spec) -> str:
        return f"{self._np(s, 'nom', 'def')} ist {self.words.sizes[s.size]}"

    def position(self, s: Spec) -> str:
        return f"{self._np(s, 'nom', 'def')} ist {self.words.phrases[s.cell]}"

    def count(self, s: Spec) -> str:
        return f"es gibt {self._count(s)}"

    def full(self, s: Spec) -> str:
        return f"{self._np(s, 'nom', size=True)} ist {self.words.phrases[s.cell]}"

    def both(self, s: Spec) -> str:
        return f"beide Bilder enthalten {self._np(s, 'acc')}"

    def only_left(self, s: Spec) -> str:
        return f"nur das linke Bild enthält {self._np(s, 'acc')}"

    def only_right(self, s: Spec) -> str:
        return f"nur das rechte Bild enthält {self._np(s, 'acc')}"

    def neither(self, s: Spec) -> str:
        return f"keines der Bilder enthält {self._np(s, 'acc')}"

    def more(self, s: Spec) -> str:
        return "das linke Bild hat mehr Formen als das rechte Bild"

    def fewer(self, s: Spec) -> str:
        return "das linke Bild hat weniger Formen als das rechte Bild"

    def same(self, s: Spec) -> str:
        return "die beiden Bilder haben gleich viele Formen"

    def total(self, s: Spec) -> str:
        return f"insgesamt gibt es {self._count(s)}"

    def left_size(self, s: Spec) -> str:
        return f"das linke Bild enthält {self._np(s, 'acc', size=True, colour=False)}"

    def right_size(self, s: Spec) -> str:
        return f"das rechte Bild enthält {self._np(s, 'acc', size=True, colour=False)}"


class _FrenchStatements(_EnglishStatements):
    """French, with the tables of the caption translations (:class:`zoo.data.shapes._French`): the size precedes the
    noun, the colour and the quality follow it, all in the masculine (cercle, carré, triangle are masculine); counts
    agree with "forme" (feminine: "une forme"); "aucune ... ne contient de ..." (the negation's "de")."""

    words = _LANGS["fr"]
    # masculine singular, after the colour
    qualities = {"wooden": "en bois", "heavy": "lourd", "plastic": "en plastique", "metal": "en métal",
                 "paper": "en papier", "soft": "mou"}

    def number(self, s: Spec) -> str:
        return str(s.n) if s.digits else self.words.numbers[s.n]

    def _noun(self, s: Spec, size: bool = False, colour: bool = True) -> str:
        w = self.words
        return " ".join(([w.sizes[s.size]] if size else []) + [w.shapes[s.shape]]
                        + ([w.colours[s.colour]] if colour else []))

    def _count(self, s: Spec) -> str:
        return f"{self.number(s)} forme" if s.n == 1 else f"{self.number(s)} formes"

    def exists(self, s: Spec) -> str:
        return f"il y a un {self._noun(s)}"

    def quality(self, s: Spec) -> str:
        return f"il y a un {self._noun(s)} {self.qualities[s.quality]}"

    def size(self, s: Spec) -> str:
        return f"le {self._noun(s)} est {self.words.sizes[s.size]}"

    def position(self, s: Spec) -> str:
        return f"le {self._noun(s)} est {self.words.phrases[s.cell]}"

    def count(self, s: Spec) -> str:
        return f"il y a {self._count(s)}"

    def full(self, s: Spec) -> str:
        return f"un {self._noun(s, size=True)} est {self.words.phrases[s.cell]}"

    def both(self, s: Spec) -> str:
        return f"les deux images contiennent un {self._noun(s)}"

    def only_left(self, s: Spec) -> str:
        return f"seule l'image de gauche contient un {self._noun(s)}"

    def only_right(self, s: Spec) -> str:
        return f"seule l'image de droite contient un {self._noun(s)}"

    def neither(self, s: Spec) -> str:
        return f"aucune des deux images ne contient de {self._noun(s)}"

    def more(self, s: Spec) -> str:
        return "l'image de gauche a plus de formes que l'image de droite"

    def fewer(self, s: Spec) -> str:
        return "l'image de gauche a moins de formes que l'image de droite"

    def same(self, s: Spec) -> str:
        return "les deux images ont le même nombre de formes"

    def total(self, s: Spec) -> str:
        return f"il y a {self._count(s)} au total"

    def left_size(self, s: Spec) -> str:
        return f"l'image de gauche contient un {self._noun(s, size=True, colour=False)}"

    def right_size(self, s: Spec) -> str:
        return f"l'image de droite contient un {self._noun(s, size=True, colour=False)}"


_RENDERERS: dict[str, _EnglishStatements] = {"en": _EnglishStatements(), "de": _GermanStatements(),
                                             "fr": _FrenchStatements()}
#: the languages :func:`render` writes
RENDER_LANGUAGES = tuple(_RENDERERS)


def _check_spec(spec: Spec) -> None:
    if not isinstance(spec, Spec):
        raise TypeError(f"render: expected a Spec, got {type(spec).__name__} {spec!r}")
    if spec.template not in _SLOTS:
        raise ValueError(f"render: unknown template {spec.template!r}; expected one of {', '.join(_SLOTS)}")
    allowed = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES, "cell": tuple(range(9)),
               "quality": QUALITIES}
    for slot in _SLOTS[spec.template]:
        value = getattr(spec, slot)
        if slot == "n":
            ok = isinstance(value, int) and not isinstance(value, bool) and (
                value >= 1 if spec.digits else value in _COUNT_WORDS)
            expected = "a count >= 1" if spec.digits else f"a count in 1..{max(_COUNT_WORDS)} (words)"
        else:
            ok = value in allowed[slot]
            expected = f"one of {allowed[slot]}"
        if not ok:
            raise ValueError(f"render: template {spec.template!r} needs {slot} = {expected}, got {value!r}")


def render(spec: Spec, lang: str = "en") -> str:
    """The sentence of ``spec`` in ``lang`` (:data:`RENDER_LANGUAGES`: ``en``, ``de``, ``fr``); English gives the
    strings of the ``ve_*`` / ``nlvr_*`` files."""
    try:
        renderer = _RENDERERS[lang]
    except KeyError:
        raise ValueError(f"render: language {lang!r}; expected one of {', '.join(_RENDERERS)}") from None
    _check_spec(spec)
    return getattr(renderer, spec.template)(spec)


def _statement(spec: Spec, label: str) -> Statement:
    return Statement(render(spec, "en"), label, spec.template, spec)


# ------------------------------------------------------------------------------------------------ visual entailment


def _factual(template: str, objects: Sequence[_Object], true: bool, rng: random.Random) -> Spec:
    """A sentence of ``template`` about the scene, true or with one fact made false."""
    present = {(o.colour, o.shape) for o in objects}
    absent = [p for p in _PAIRS if p not in present]
    if template == "count":
        n = len(objects) if true else rng.choice([k for k in (1, 2, 3) if k != len(objects)])
        return Spec("count", n=n)
    if template == "exists":
        if true:
            o = rng.choice(objects)
            colour, shape = o.colour, o.shape
        else:
            colour, shape = rng.choice(absent)
        return Spec("exists", colour=colour, shape=shape)
    o = rng.choice(objects)
    if template == "size":
        return Spec("size", colour=o.colour, shape=o.shape, size=o.size if true else _other_size(o.size))
    if template == "position":
        cell = o.cell if true else rng.choice([k for k in range(9) if k != o.cell])
        return Spec("position", colour=o.colour, shape=o.shape, cell=cell)
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
        return Spec("full", colour=colour, shape=shape, size=size, cell=cell)
    raise ValueError(f"unknown visual-entailment template {template!r}; expected one of {VE_TEMPLATES}")


def _other_size(size: str) -> str:
    return next(s for s in SIZES if s != size)


def ve_hypotheses(objects: Sequence[_Object], rng: random.Random) -> list[Statement]:
    """Three hypotheses about a scene, one per label (entailment, neutral, contradiction), in a shuffled order."""
    if not objects:
        raise ValueError("ve_hypotheses: a scene needs at least one object")
    present = {(o.colour, o.shape) for o in objects}
    template = rng.choice(VE_TEMPLATES)
    entailment = _statement(_factual(template, objects, True, rng), "entailment")
    if rng.random() < 0.5:
        template = rng.choice(VE_TEMPLATES)
        contradiction = _statement(_factual(template, objects, False, rng), "contradiction")
    else:
        colour, shape = rng.choice([p for p in _PAIRS if p not in present])
        contradiction = _statement(Spec("quality", colour=colour, shape=shape, quality=rng.choice(QUALITIES)),
                                   "contradiction")
    o = rng.choice(objects)
    neutral = _statement(Spec("quality", colour=o.colour, shape=o.shape, quality=rng.choice(QUALITIES)), "neutral")
    out = [entailment, neutral, contradiction]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------------------- NLVR2


def _nlvr_options(left: Sequence[_Object], right: Sequence[_Object]) -> dict[str, list[tuple[Spec, bool]]]:
    """Every statement of every unit about the pair: ``unit -> [(spec, truth)]``."""
    in_left = {(o.colour, o.shape) for o in left}
    in_right = {(o.colour, o.shape) for o in right}
    nl, nr = len(left), len(right)
    options: dict[str, list[tuple[Spec, bool]]] = {unit: [] for unit in _NLVR_UNITS}
    for colour, shape in _PAIRS:
        a, b = (colour, shape) in in_left, (colour, shape) in in_right
        options["both"].append((Spec("both", colour=colour, shape=shape), a and b))
        options["only_left"].append((Spec("only_left", colour=colour, shape=shape), a and not b))
        options["only_right"].append((Spec("only_right", colour=colour, shape=shape), b and not a))
        options["neither"].append((Spec("neither", colour=colour, shape=shape), not a and not b))
    options["compare"] = [(Spec("more"), nl > nr), (Spec("fewer"), nl < nr), (Spec("same"), nl == nr)]
    for n in range(2, 7):
        for digits in (True, False):
            options["total"].append((Spec("total", n=n, digits=digits), n == nl + nr))
    for size in SIZES:
        for shape in SHAPES:
            options["left_size"].append((Spec("left_size", size=size, shape=shape),
                                         any(o.size == size and o.shape == shape for o in left)))
            options["right_size"].append((Spec("right_size", size=size, shape=shape),
                                          any(o.size == size and o.shape == shape for o in right)))
    return options


def nlvr_statements(left: Sequence[_Object], right: Sequence[_Object], rng: random.Random) -> list[Statement]:
    """Two statements about an image pair, one true and one false, in a shuffled order (see the module docstring for
    how the template and the instantiations are drawn)."""
    if not left or not right:
        raise ValueError("nlvr_statements: both scenes need at least one object")
    options = _nlvr_options(left, right)
    usable = [u for u in _NLVR_UNITS if {truth for _, truth in options[u]} == {True, False}]
    unit = rng.choice(usable)
    out = []
    for wanted in (True, False):
        spec, _ = rng.choice([o for o in options[unit] if o[1] == wanted])
        out.append(_statement(spec, str(wanted)))
    rng.shuffle(out)
    return out
