"""The shapes dataset's reasoning splits: SNLI-VE-style ``ve_{split}.json`` and NLVR2-style ``nlvr_{split}.json``, and
their German / French translations ``ve_{split}.{lang}.json`` / ``nlvr_{split}.{lang}.json``.

Every label is re-derived by this file's own reader: regular expressions written out here parse each sentence, and the
truth is computed from the objects in ``scenes.json`` (which tests/test_shapes.py checks against the pixels), never
from the generator's tables or functions. Each translated sentence is compared with this file's own German / French
wording of the English sentence's parse (word tables, declension and templates written out here), and a few hand-built
specs with exact sentences written out by hand.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import check_record_keys, load_json

from zoo.data.shapes import TOKENIZER_DIR, generate_shapes

SPLITS = ("train", "val", "test")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
QUALITIES = ("wooden", "heavy", "plastic", "metal", "paper", "soft")  # unobservable in a flat drawing
CELL_OF_POSITION = {"top left": 0, "top": 1, "top right": 2, "left": 3, "center": 4, "right": 5, "bottom left": 6,
                    "bottom": 7, "bottom right": 8}
CELL_OF_PHRASE = {"in the top left corner": 0, "at the top": 1, "in the top right corner": 2, "on the left": 3,
                  "in the center": 4, "on the right": 5, "in the bottom left corner": 6, "at the bottom": 7,
                  "in the bottom right corner": 8}
NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, **{str(k): k for k in range(1, 10)}}

_C, _S = "|".join(COLOURS), "|".join(SHAPES)
_P = "|".join(sorted(CELL_OF_PHRASE, key=len, reverse=True))
_Q = "|".join(QUALITIES)
VE_PATTERNS = {
    "quality": rf"there is a (?P<quality>{_Q}) (?P<colour>{_C}) (?P<shape>{_S})",
    "exists": rf"there is a (?P<colour>{_C}) (?P<shape>{_S})",
    "size": rf"the (?P<colour>{_C}) (?P<shape>{_S}) is (?P<size>small|large)",
    "position": rf"the (?P<colour>{_C}) (?P<shape>{_S}) is (?P<phrase>{_P})",
    "count": r"there (?:is|are) (?P<n>one|two|three) shapes?",
    "full": rf"a (?P<size>small|large) (?P<colour>{_C}) (?P<shape>{_S}) is (?P<phrase>{_P})",
}
NLVR_PATTERNS = {
    "both": rf"both images contain a (?P<colour>{_C}) (?P<shape>{_S})",
    "only_left": rf"only the left image contains a (?P<colour>{_C}) (?P<shape>{_S})",
    "only_right": rf"only the right image contains a (?P<colour>{_C}) (?P<shape>{_S})",
    "neither": rf"neither image contains a (?P<colour>{_C}) (?P<shape>{_S})",
    "more": r"the left image has more shapes than the right image",
    "fewer": r"the left image has fewer shapes than the right image",
    "same": r"the two images have the same number of shapes",
    "total": r"there are (?P<n>\d|two|three|four|five|six) shapes in total",
    "left_size": rf"the left image contains a (?P<size>small|large) (?P<shape>{_S})",
    "right_size": rf"the right image contains a (?P<size>small|large) (?P<shape>{_S})",
}
VE_KEYS = {"image": str, "sentence": str, "label": str, "pair_id": int}
NLVR_KEYS = {"images": list, "sentence": str, "label": str, "identifier": str}
SIZES = {"num_train_images": 400, "num_val_images": 80, "num_test_images": 80, "image_size": 48, "num_videos": 0}
TINY = {"num_train_images": 10, "num_val_images": 1, "num_test_images": 3, "image_size": 48, "num_videos": 0}
LANGS = ("de", "fr")
ENGLISH = tuple(f"{kind}_{split}.json" for kind in ("ve", "nlvr") for split in SPLITS)
TRANSLATED = tuple(f"{kind}_{split}.{lang}.json" for kind in ("ve", "nlvr") for split in SPLITS for lang in LANGS)
# sha256 of the English files of generate_shapes(seed=5, **TINY) computed with the generator before the translations
# of the reasoning files existed (commit 1cb1eec): the English files must stay byte-identical
BEFORE = {
    "nlvr_test.json": "1c59e2aa0858407b1c84e8e0a9390b35e05d720fcf3b7c1e1ae09135fd682df2",
    "nlvr_train.json": "9eb2b4658e7f1c15088058a45ecd881bb3c08ecd0e5a30fe4b06cb796d4bac6c",
    "nlvr_val.json": "a7c241a3f6200b78a287268d5489432d576014442af6d62ad12ae4d86133922e",
    "ve_test.json": "d5fefbe8ce6ebc8281efd0daef4ec76b8327c15e26c9c2a350def32324407aea",
    "ve_train.json": "e7ba1f4b719850f110680d4a352921c2129b4513914e4aacb333348b8561a226",
    "ve_val.json": "653ab3148b353fec46c4d3da082530e16578e9ceb8ec8ced18faa4d23bdaae7c",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("reasoning") / "shapes", seed=0, **SIZES)


def _scenes(root: Path) -> dict[str, list[dict]]:
    """image -> objects as ``{colour, shape, size, cell}`` (the cell from the position name, via this file's table)."""
    return {s["image"]: [{"colour": o["colour"], "shape": o["shape"], "size": o["size"],
                          "cell": CELL_OF_POSITION[o["position"]]} for o in s["objects"]]
            for s in load_json(root, "scenes.json")}


def _parse(sentence: str, patterns: dict[str, str]) -> tuple[str, dict[str, str]]:
    for kind, pattern in patterns.items():
        m = re.fullmatch(pattern, sentence)
        if m:
            return kind, m.groupdict()
    raise AssertionError(f"{sentence!r} matches none of the expected sentence patterns")


def _has(objects: list[dict], **attrs) -> bool:
    return any(all(o[k] == v for k, v in attrs.items()) for o in objects)


def ve_label(sentence: str, objects: list[dict]) -> tuple[str, str]:
    """``(kind, label)`` of a hypothesis about a scene, re-derived here."""
    kind, g = _parse(sentence, VE_PATTERNS)
    if kind == "quality":  # material / weight cannot be seen: unknowable if the thing is there, false if it is not
        return kind, "neutral" if _has(objects, colour=g["colour"], shape=g["shape"]) else "contradiction"
    if kind == "count":
        n = NUMBER[g["n"]]
        assert sentence == ("there is one shape" if n == 1 else f"there are {g['n']} shapes"), sentence  # grammar
        truth = n == len(objects)
    else:
        if kind in ("size", "position"):  # the definite article refers to an object of the scene
            assert _has(objects, colour=g["colour"], shape=g["shape"]), (sentence, objects)
        attrs = {"colour": g["colour"], "shape": g["shape"]}
        if "size" in g:
            attrs["size"] = g["size"]
        if "phrase" in g:
            attrs["cell"] = CELL_OF_PHRASE[g["phrase"]]
        truth = _has(objects, **attrs)
    return kind, "entailment" if truth else "contradiction"


def nlvr_label(sentence: str, left: list[dict], right: list[dict]) -> tuple[str, str]:
    """``(template, "True" | "False")`` of a statement about an image pair, re-derived here."""
    kind, g = _parse(sentence, NLVR_PATTERNS)
    pair = {"colour": g.get("colour"), "shape": g.get("shape")}
    in_left, in_right = (_has(left, **pair), _has(right, **pair)) if "colour" in g else (None, None)
    truth = {
        "both": lambda: in_left and in_right,
        "only_left": lambda: in_left and not in_right,
        "only_right": lambda: in_right and not in_left,
        "neither": lambda: not in_left and not in_right,
        "more": lambda: len(left) > len(right),
        "fewer": lambda: len(left) < len(right),
        "same": lambda: len(left) == len(right),
        "total": lambda: NUMBER[g["n"]] == len(left) + len(right),
        "left_size": lambda: _has(left, size=g["size"], shape=g["shape"]),
        "right_size": lambda: _has(right, size=g["size"], shape=g["shape"]),
    }[kind]()
    return kind, str(bool(truth))


# ------------------------------------------------------------------------------------------------ labels vs scenes


def test_ve_labels_match_the_scenes_and_are_balanced_per_image(data):
    scenes = _scenes(data)
    manifest = load_json(data, "manifest.json")
    pair_ids = []
    for split in SPLITS:
        records = load_json(data, f"ve_{split}.json")
        check_record_keys(records, VE_KEYS, f"ve_{split}")
        assert manifest["files"][f"ve_{split}.json"] == len(records) == 3 * SIZES[f"num_{split}_images"]
        per_image = defaultdict(list)
        for r in records:
            assert r["image"].startswith(f"images/{split}/") and (data / r["image"]).is_file()
            kind, label = ve_label(r["sentence"], scenes[r["image"]])
            assert r["label"] == label, (r, scenes[r["image"]])
            per_image[r["image"]].append(r)
        assert len(per_image) == SIZES[f"num_{split}_images"]
        for image, recs in per_image.items():
            assert sorted(r["label"] for r in recs) == ["contradiction", "entailment", "neutral"], image
            image_id = int(Path(image).stem)
            assert sorted(r["pair_id"] for r in recs) == [image_id * 10 + j for j in range(3)]
        # shuffled: each label takes each of the three places
        places = Counter((r["pair_id"] % 10, r["label"]) for r in records)
        assert len(places) == 9, places
        pair_ids += [r["pair_id"] for r in records]
    assert len(pair_ids) == len(set(pair_ids))


def test_nlvr_labels_match_the_scenes_and_each_pair_has_one_true_and_one_false(data):
    scenes = _scenes(data)
    manifest = load_json(data, "manifest.json")
    identifiers = []
    for split in SPLITS:
        records = load_json(data, f"nlvr_{split}.json")
        check_record_keys(records, NLVR_KEYS, f"nlvr_{split}")
        n_images = SIZES[f"num_{split}_images"]
        assert manifest["files"][f"nlvr_{split}.json"] == len(records) == 2 * n_images
        pairs = defaultdict(list)
        for k, r in enumerate(records):
            assert r["identifier"] == f"shapes-{split}-{k}"
            left, right = r["images"]
            assert left != right
            assert all(i.startswith(f"images/{split}/") and (data / i).is_file() for i in (left, right))
            kind, label = nlvr_label(r["sentence"], scenes[left], scenes[right])
            assert r["label"] == label, (r, scenes[left], scenes[right])
            pairs[left, right].append(r)
        # every image of the split is the left image of exactly one pair
        assert sorted(left for left, _ in pairs) == sorted(i for i in scenes if i.startswith(f"images/{split}/"))
        assert len({left for left, _ in pairs}) == n_images
        for recs in pairs.values():
            assert sorted(r["label"] for r in recs) == ["False", "True"]
        assert Counter(r["label"] for r in records[0::2]).keys() == {"True", "False"}  # shuffled order
        identifiers += [r["identifier"] for r in records]
    assert len(identifiers) == len(set(identifiers))


def test_every_template_appears(data):
    scenes = _scenes(data)
    ve = Counter()
    for split in SPLITS:
        for r in load_json(data, f"ve_{split}.json"):
            kind, label = ve_label(r["sentence"], scenes[r["image"]])
            ve[kind, label] += 1
            if kind == "count":
                ve["count", r["sentence"].split()[2]] += 1  # one / two / three
    expected = {(k, lab) for k in ("exists", "size", "position", "count", "full") for lab in ("entailment",
                                                                                               "contradiction")}
    expected |= {("quality", "neutral"), ("quality", "contradiction"), ("count", "one"), ("count", "two"),
                 ("count", "three")}
    assert expected <= set(ve), expected - set(ve)
    # half the contradictions use a quality (with an absent pair), half a factual template made false
    contradictions = sum(v for (k, lab), v in ve.items() if lab == "contradiction")
    assert 0.4 < ve["quality", "contradiction"] / contradictions < 0.6
    nlvr, total_forms = Counter(), set()
    for split in SPLITS:
        for r in load_json(data, f"nlvr_{split}.json"):
            kind, label = nlvr_label(r["sentence"], scenes[r["images"][0]], scenes[r["images"][1]])
            nlvr[kind, label] += 1
            if kind == "total":
                total_forms.add(r["sentence"].split()[2].isdigit())
    assert {(k, lab) for k in NLVR_PATTERNS for lab in ("True", "False")} <= set(nlvr), nlvr
    assert total_forms == {True, False}  # digits and words


def test_text_alone_cannot_tell_the_labels(data):
    # VE: the best text-only rule that knows the sentence kind (with a quality word or without) gets 2/3
    records = load_json(data, "ve_train.json")
    by_kind = defaultdict(Counter)
    for r in records:
        by_kind[any(q in r["sentence"].split() for q in QUALITIES)][r["label"]] += 1
    best = sum(c.most_common(1)[0][1] for c in by_kind.values()) / len(records)
    assert best <= 0.70, (best, by_kind)
    assert by_kind[True].most_common(1)[0][0] == "neutral" and by_kind[False].most_common(1)[0][0] == "entailment"
    # ... and the finer rule that knows the template is not much better
    scenes = _scenes(data)
    by_template = defaultdict(Counter)
    for r in records:
        by_template[ve_label(r["sentence"], scenes[r["image"]])[0]][r["label"]] += 1
    assert sum(c.most_common(1)[0][1] for c in by_template.values()) / len(records) <= 0.72, by_template
    # NLVR: every frequent template is true between 30 and 70 % of the time
    uses, true = Counter(), Counter()
    for split in SPLITS:
        for r in load_json(data, f"nlvr_{split}.json"):
            kind, _ = _parse(r["sentence"], NLVR_PATTERNS)
            uses[kind] += 1
            true[kind] += r["label"] == "True"
    frequent = {k for k, n in uses.items() if n >= 20}
    assert len(frequent) >= 8, uses
    for k in frequent:
        assert 0.3 <= true[k] / uses[k] <= 0.7, (k, true[k], uses[k])


# --------------------------------------------------------------------------------------------------- translations

# this file's own German / French wording (tables, declension and templates written out here, not the generator's)
DE_COLOUR = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "violett",
             "orange": "orangefarben"}  # "orange" takes no endings: its declinable synonym
DE_SHAPE = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n")}
DE_SIZE = {"small": "klein", "large": "groß"}
DE_PHRASE = {"in the top left corner": "in der oberen linken Ecke", "at the top": "oben",
             "in the top right corner": "in der oberen rechten Ecke", "on the left": "links",
             "in the center": "in der Mitte", "on the right": "rechts",
             "in the bottom left corner": "in der unteren linken Ecke", "at the bottom": "unten",
             "in the bottom right corner": "in der unteren rechten Ecke"}
DE_NUMBER = {1: "eine", 2: "zwei", 3: "drei", 4: "vier", 5: "fünf", 6: "sechs"}  # agreeing with "Form" (feminine)
DE_QUALITY_BEFORE = {"wooden": "hölzern", "heavy": "schwer", "soft": "weich"}  # declined, before the colour
DE_QUALITY_AFTER = {"plastic": "aus Plastik", "metal": "aus Metall", "paper": "aus Papier"}  # after the noun
# (article, adjective ending) by (article, case, gender): mixed declension after "ein", weak after "der"
DE_ARTICLE = {("ein", "nom", "m"): ("ein", "er"), ("ein", "nom", "n"): ("ein", "es"),
              ("ein", "acc", "m"): ("einen", "en"), ("ein", "acc", "n"): ("ein", "es"),
              ("der", "nom", "m"): ("der", "e"), ("der", "nom", "n"): ("das", "e")}
FR_COLOUR = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet",
             "orange": "orange"}
FR_SHAPE = {"circle": "cercle", "square": "carré", "triangle": "triangle"}  # all masculine
FR_SIZE = {"small": "petit", "large": "grand"}
FR_PHRASE = {"in the top left corner": "dans le coin supérieur gauche", "at the top": "en haut",
             "in the top right corner": "dans le coin supérieur droit", "on the left": "à gauche",
             "in the center": "au centre", "on the right": "à droite",
             "in the bottom left corner": "dans le coin inférieur gauche", "at the bottom": "en bas",
             "in the bottom right corner": "dans le coin inférieur droit"}
FR_NUMBER = {1: "une", 2: "deux", 3: "trois", 4: "quatre", 5: "cinq", 6: "six"}  # agreeing with "forme" (feminine)
FR_QUALITY = {"wooden": "en bois", "heavy": "lourd", "plastic": "en plastique", "metal": "en métal",
              "paper": "en papier", "soft": "mou"}  # masculine, after the colour
# English template words no translation may keep (French shares "image", "total" and "a" with English)
STOP = {"there", "both", "image", "left", "right", "wooden", "heavy", "contains", "total", "shapes", "the", "is",
        "a", "neither", "only", "fewer", "more", "same", "contain", "has", "than"}
STOP_WORDS = {"de": STOP, "fr": STOP - {"image", "total", "a"}}


def de_np(article: str, case: str, adjectives: list[str], shape: str, after: str = "") -> str:
    noun, gender = DE_SHAPE[shape]
    art, ending = DE_ARTICLE[article, case, gender]
    return " ".join([art, *(a + ending for a in adjectives), noun, *([after] if after else [])])


def _count_words(n: str, numbers: dict[int, str], singular: str, plural: str) -> str:
    """``n`` (an English count word or a digit) things: a digit stays a digit, a word is translated."""
    k = NUMBER[n]
    return f"{n if n.isdigit() else numbers[k]} {singular if k == 1 else plural}"


def german(kind: str, g: dict[str, str]) -> str:
    """This file's German for an English sentence parsed as ``(kind, groups)``."""
    c = [DE_COLOUR[g["colour"]]] if g.get("colour") else []
    if kind == "quality":
        q = g["quality"]
        if q in DE_QUALITY_BEFORE:
            return f"es gibt {de_np('ein', 'acc', [DE_QUALITY_BEFORE[q], *c], g['shape'])}"
        return f"es gibt {de_np('ein', 'acc', c, g['shape'], DE_QUALITY_AFTER[q])}"
    if kind == "exists":
        return f"es gibt {de_np('ein', 'acc', c, g['shape'])}"
    if kind == "count":
        return f"es gibt {_count_words(g['n'], DE_NUMBER, 'Form', 'Formen')}"
    if kind in ("size", "position"):
        rest = DE_SIZE[g["size"]] if kind == "size" else DE_PHRASE[g["phrase"]]
        return f"{de_np('der', 'nom', c, g['shape'])} ist {rest}"
    if kind == "full":
        return f"{de_np('ein', 'nom', [DE_SIZE[g['size']], *c], g['shape'])} ist {DE_PHRASE[g['phrase']]}"
    if kind in ("left_size", "right_size"):
        side = "linke" if kind == "left_size" else "rechte"
        return f"das {side} Bild enthält {de_np('ein', 'acc', [DE_SIZE[g['size']]], g['shape'])}"
    fixed = {"more": "das linke Bild hat mehr Formen als das rechte Bild",
             "fewer": "das linke Bild hat weniger Formen als das rechte Bild",
             "same": "die beiden Bilder haben gleich viele Formen"}
    if kind in fixed:
        return fixed[kind]
    if kind == "total":
        return f"insgesamt gibt es {_count_words(g['n'], DE_NUMBER, 'Form', 'Formen')}"
    start = {"both": "beide Bilder enthalten", "only_left": "nur das linke Bild enthält",
             "only_right": "nur das rechte Bild enthält", "neither": "keines der Bilder enthält"}[kind]
    return f"{start} {de_np('ein', 'acc', c, g['shape'])}"


def french(kind: str, g: dict[str, str]) -> str:
    """This file's French for an English sentence parsed as ``(kind, groups)``."""
    noun = f"{FR_SHAPE[g['shape']]} {FR_COLOUR[g['colour']]}" if g.get("colour") else ""
    if kind == "quality":
        return f"il y a un {noun} {FR_QUALITY[g['quality']]}"
    if kind == "exists":
        return f"il y a un {noun}"
    if kind in ("size", "position"):
        return f"le {noun} est {FR_SIZE[g['size']] if kind == 'size' else FR_PHRASE[g['phrase']]}"
    if kind == "count":
        return f"il y a {_count_words(g['n'], FR_NUMBER, 'forme', 'formes')}"
    if kind == "full":
        return f"un {FR_SIZE[g['size']]} {noun} est {FR_PHRASE[g['phrase']]}"
    if kind in ("left_size", "right_size"):
        side = "gauche" if kind == "left_size" else "droite"
        return f"l'image de {side} contient un {FR_SIZE[g['size']]} {FR_SHAPE[g['shape']]}"
    fixed = {"more": "l'image de gauche a plus de formes que l'image de droite",
             "fewer": "l'image de gauche a moins de formes que l'image de droite",
             "same": "les deux images ont le même nombre de formes"}
    if kind in fixed:
        return fixed[kind]
    if kind == "total":
        return f"il y a {_count_words(g['n'], FR_NUMBER, 'forme', 'formes')} au total"
    return {"both": f"les deux images contiennent un {noun}",
            "only_left": f"seule l'image de gauche contient un {noun}",
            "only_right": f"seule l'image de droite contient un {noun}",
            "neither": f"aucune des deux images ne contient de {noun}"}[kind]


TRANSLATE = {"de": german, "fr": french}


@pytest.mark.parametrize("lang", LANGS)
def test_translations_have_the_english_records_with_the_sentence_translated(data, lang):
    manifest = load_json(data, "manifest.json")
    seen = Counter()
    for kind, keys, patterns in (("ve", VE_KEYS, VE_PATTERNS), ("nlvr", NLVR_KEYS, NLVR_PATTERNS)):
        for split in SPLITS:
            english = load_json(data, f"{kind}_{split}.json")
            name = f"{kind}_{split}.{lang}.json"
            translated = load_json(data, name)
            check_record_keys(translated, keys, name)
            assert manifest["files"][name] == len(translated) == len(english)
            for en, tr in zip(english, translated):
                # the same record (keys in the same order, same labels, images, ids), only the sentence translated
                assert list(tr) == list(en)
                assert {k: v for k, v in tr.items() if k != "sentence"} == {k: v for k, v in en.items()
                                                                           if k != "sentence"}
                assert tr["sentence"] != en["sentence"]
                leftover = STOP_WORDS[lang] & set(re.findall(r"\w+", tr["sentence"].lower()))
                assert not leftover, (tr["sentence"], leftover)
                template, groups = _parse(en["sentence"], patterns)
                assert tr["sentence"] == TRANSLATE[lang](template, groups), (en["sentence"], tr["sentence"])
                seen[kind, template] += 1
    # every template (and every quality) was checked in this language
    assert {("ve", k) for k in VE_PATTERNS} | {("nlvr", k) for k in NLVR_PATTERNS} <= set(seen), seen


# exact sentences written out by hand, one or more per template and language
EXPECTED = [
    (("exists", {"colour": "red", "shape": "circle"}),
     "there is a red circle", "es gibt einen roten Kreis", "il y a un cercle rouge"),
    (("exists", {"colour": "blue", "shape": "square"}),
     "there is a blue square", "es gibt ein blaues Quadrat", "il y a un carré bleu"),
    (("exists", {"colour": "orange", "shape": "triangle"}),
     "there is a orange triangle", "es gibt ein orangefarbenes Dreieck", "il y a un triangle orange"),
    (("quality", {"quality": "wooden", "colour": "red", "shape": "circle"}),
     "there is a wooden red circle", "es gibt einen hölzernen roten Kreis", "il y a un cercle rouge en bois"),
    (("quality", {"quality": "heavy", "colour": "green", "shape": "triangle"}),
     "there is a heavy green triangle", "es gibt ein schweres grünes Dreieck", "il y a un triangle vert lourd"),
    (("quality", {"quality": "plastic", "colour": "yellow", "shape": "circle"}),
     "there is a plastic yellow circle", "es gibt einen gelben Kreis aus Plastik",
     "il y a un cercle jaune en plastique"),
    (("quality", {"quality": "metal", "colour": "purple", "shape": "square"}),
     "there is a metal purple square", "es gibt ein violettes Quadrat aus Metall", "il y a un carré violet en métal"),
    (("quality", {"quality": "paper", "colour": "blue", "shape": "triangle"}),
     "there is a paper blue triangle", "es gibt ein blaues Dreieck aus Papier", "il y a un triangle bleu en papier"),
    (("quality", {"quality": "soft", "colour": "red", "shape": "circle"}),
     "there is a soft red circle", "es gibt einen weichen roten Kreis", "il y a un cercle rouge mou"),
    (("size", {"colour": "red", "shape": "circle", "size": "large"}),
     "the red circle is large", "der rote Kreis ist groß", "le cercle rouge est grand"),
    (("size", {"colour": "green", "shape": "square", "size": "small"}),
     "the green square is small", "das grüne Quadrat ist klein", "le carré vert est petit"),
    (("position", {"colour": "blue", "shape": "triangle", "cell": 0}),
     "the blue triangle is in the top left corner", "das blaue Dreieck ist in der oberen linken Ecke",
     "le triangle bleu est dans le coin supérieur gauche"),
    (("position", {"colour": "yellow", "shape": "circle", "cell": 5}),
     "the yellow circle is on the right", "der gelbe Kreis ist rechts", "le cercle jaune est à droite"),
    (("count", {"n": 1}), "there is one shape", "es gibt eine Form", "il y a une forme"),
    (("count", {"n": 3}), "there are three shapes", "es gibt drei Formen", "il y a trois formes"),
    (("count", {"n": 5, "digits": True}), "there are 5 shapes", "es gibt 5 Formen", "il y a 5 formes"),
    (("full", {"size": "large", "colour": "red", "shape": "circle", "cell": 7}),
     "a large red circle is at the bottom", "ein großer roter Kreis ist unten", "un grand cercle rouge est en bas"),
    (("full", {"size": "small", "colour": "purple", "shape": "triangle", "cell": 4}),
     "a small purple triangle is in the center", "ein kleines violettes Dreieck ist in der Mitte",
     "un petit triangle violet est au centre"),
    (("both", {"colour": "green", "shape": "triangle"}),
     "both images contain a green triangle", "beide Bilder enthalten ein grünes Dreieck",
     "les deux images contiennent un triangle vert"),
    (("only_left", {"colour": "red", "shape": "circle"}),
     "only the left image contains a red circle", "nur das linke Bild enthält einen roten Kreis",
     "seule l'image de gauche contient un cercle rouge"),
    (("only_right", {"colour": "blue", "shape": "square"}),
     "only the right image contains a blue square", "nur das rechte Bild enthält ein blaues Quadrat",
     "seule l'image de droite contient un carré bleu"),
    (("neither", {"colour": "yellow", "shape": "circle"}),
     "neither image contains a yellow circle", "keines der Bilder enthält einen gelben Kreis",
     "aucune des deux images ne contient de cercle jaune"),
    (("more", {}), "the left image has more shapes than the right image",
     "das linke Bild hat mehr Formen als das rechte Bild",
     "l'image de gauche a plus de formes que l'image de droite"),
    (("fewer", {}), "the left image has fewer shapes than the right image",
     "das linke Bild hat weniger Formen als das rechte Bild",
     "l'image de gauche a moins de formes que l'image de droite"),
    (("same", {}), "the two images have the same number of shapes", "die beiden Bilder haben gleich viele Formen",
     "les deux images ont le même nombre de formes"),
    (("total", {"n": 4}), "there are four shapes in total", "insgesamt gibt es vier Formen",
     "il y a quatre formes au total"),
    (("total", {"n": 6, "digits": True}), "there are 6 shapes in total", "insgesamt gibt es 6 Formen",
     "il y a 6 formes au total"),
    (("total", {"n": 2}), "there are two shapes in total", "insgesamt gibt es zwei Formen",
     "il y a deux formes au total"),
    (("left_size", {"size": "large", "shape": "circle"}),
     "the left image contains a large circle", "das linke Bild enthält einen großen Kreis",
     "l'image de gauche contient un grand cercle"),
    (("right_size", {"size": "small", "shape": "triangle"}),
     "the right image contains a small triangle", "das rechte Bild enthält ein kleines Dreieck",
     "l'image de droite contient un petit triangle"),
]


@pytest.mark.parametrize("spec, en, de, fr", EXPECTED, ids=[f"{e[0][0]}-{i}" for i, e in enumerate(EXPECTED)])
def test_render_hand_built_specs(spec, en, de, fr):
    from zoo.data.shapes_reasoning import Spec, render

    s = Spec(spec[0], **spec[1])
    assert (render(s, "en"), render(s, "de"), render(s, "fr")) == (en, de, fr)
    assert render(s) == en


def test_render_every_count_in_words_and_digits():
    from zoo.data.shapes_reasoning import Spec, render

    de_words = ("eine Form", "zwei Formen", "drei Formen", "vier Formen", "fünf Formen", "sechs Formen")
    fr_words = ("une forme", "deux formes", "trois formes", "quatre formes", "cinq formes", "six formes")
    for n in range(1, 7):
        for digits in (False, True):
            de = f"{n} Form{'en' if n > 1 else ''}" if digits else de_words[n - 1]
            fr = f"{n} forme{'s' if n > 1 else ''}" if digits else fr_words[n - 1]
            count, total = Spec("count", n=n, digits=digits), Spec("total", n=n, digits=digits)
            assert render(count, "de") == f"es gibt {de}" and render(total, "de") == f"insgesamt gibt es {de}"
            assert render(count, "fr") == f"il y a {fr}" and render(total, "fr") == f"il y a {fr} au total"
            if n > 1:  # the English strings the generator writes (NLVR totals 2..6 in both forms)
                word = str(n) if digits else ("two", "three", "four", "five", "six")[n - 2]
                assert render(count) == f"there are {word} shapes"
                assert render(total) == f"there are {word} shapes in total"


def test_render_refuses_bad_specs():
    from zoo.data.shapes_reasoning import Spec, render

    with pytest.raises(ValueError, match="language 'es'"):
        render(Spec("exists", colour="red", shape="circle"), "es")
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        render(Spec("nope"), "de")
    with pytest.raises(ValueError, match="'exists' needs colour"):
        render(Spec("exists", shape="circle"), "fr")
    with pytest.raises(ValueError, match="needs n"):
        render(Spec("total", n=7), "de")
    with pytest.raises(ValueError, match="needs quality"):
        render(Spec("quality", colour="red", shape="circle", quality="shiny"))


# ------------------------------------------------------------------------------------------------------ tokenizer


def _data_text_part():
    """A 512-row word-level text part asking for the data tokenizer (x2vlm-tiny's, as nlvr-shapes.yaml sets it)."""
    import zoo

    return zoo.create_model("x2vlm-tiny", task="nlvr", **{"text.tokenizer": "data", "text.vocab_size": 512,
                                                          "text.pad_token_id": 1}).text


def test_shapes_tokenizer_leaves_the_reasoning_words_to_the_data_tokenizer(data, tmp_path):
    """The shapes tokenizer is built without the VE / NLVR files (earlier runs keep their token ids); a task on those
    files gets a word-level tokenizer built from them, which has every word whole."""
    from transformers import AutoTokenizer

    from zoo.data.shapes import build_shapes_tokenizer
    from zoo.train.data import resolve_data_tokenizer

    files = {p.name: json.loads(p.read_text()) for p in sorted(data.glob("*.json")) if p.name != "manifest.json"}
    assert set(ENGLISH + TRANSLATED) <= set(files)  # the translations are left out as well (same "ve_" / "nlvr_")
    without = {n: v for n, v in files.items() if not n.startswith(("ve_", "nlvr_"))}
    a = build_shapes_tokenizer(data, files=without, out_dir=tmp_path / "without")
    assert (a / "tokenizer.json").read_bytes() == (data / TOKENIZER_DIR / "tokenizer.json").read_bytes()
    assert (build_shapes_tokenizer(data, out_dir=tmp_path / "again") / "tokenizer.json").read_bytes() == \
        (a / "tokenizer.json").read_bytes()
    sentences = [r["sentence"] for s in SPLITS for name in (f"ve_{s}.json", f"nlvr_{s}.json")
                 for r in load_json(data, name)]
    words = sorted({w for t in sentences for w in t.split()})
    assert {"wooden", "neither", "fewer", "total", "six", "6"} <= set(words)
    shapes_tok = AutoTokenizer.from_pretrained(str(data / TOKENIZER_DIR), local_files_only=True)
    assert any(len(shapes_tok.tokenize(w)) > 1 for w in words)  # "wooden" is not one of its words
    for task, name in (("ve", "ve"), ("nlvr", "nlvr")):
        text = _data_text_part()
        model = SimpleNamespace(text=text)
        resolve_data_tokenizer(model, {"root": str(data), "train": [f"{name}_train.json"], "val": f"{name}_val.json"},
                               tmp_path / task, task)
        assert text.tokenizer == str(tmp_path / task / "tokenizer_data")
        tok = AutoTokenizer.from_pretrained(text.tokenizer, local_files_only=True)
        assert len(tok) <= 512
        used = sorted({w for r in load_json(data, f"{name}_train.json") for w in r["sentence"].split()})
        for w in used:
            assert tok.tokenize(w) == [f"▁{w}"], (w, tok.tokenize(w))
    # data whose words the shapes tokenizer knows keeps it
    text = _data_text_part()
    resolve_data_tokenizer(SimpleNamespace(text=text), {"root": str(data), "train": ["vqa_train.json"]},
                           tmp_path / "vqa", "vqa")
    assert text.tokenizer == str(data / TOKENIZER_DIR)


# ---------------------------------------------------------------------------------------------------- determinism


def _digests(root: Path, prefixes: tuple[str, ...] = ("ve_", "nlvr_")) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.json"))
            if p.name.startswith(prefixes)}


def test_same_seed_gives_identical_files_and_translations_do_not_change_them(tmp_path):
    a = _digests(generate_shapes(tmp_path / "a", seed=5, **TINY))
    assert sorted(a) == sorted(ENGLISH + TRANSLATED)
    assert {name: a[name] for name in ENGLISH} == BEFORE  # the English files of the generator before the translations
    assert _digests(generate_shapes(tmp_path / "b", seed=5, **TINY)) == a
    # without translations: no translated file, the same English bytes
    english_only = generate_shapes(tmp_path / "en", seed=5, languages=(), **TINY)
    assert _digests(english_only) == BEFORE
    assert not list(english_only.glob("*.de.json")) and not list(english_only.glob("*.fr.json"))
    assert not any(k.endswith((".de.json", ".fr.json")) for k in load_json(english_only, "manifest.json")["files"])
    # one language: the same bytes as that language's files with both
    assert _digests(generate_shapes(tmp_path / "fr", seed=5, languages=("fr",), **TINY)) == \
        {k: v for k, v in a.items() if not k.endswith(".de.json")}
    other = _digests(generate_shapes(tmp_path / "c", seed=6, **TINY))
    assert other["ve_train.json"] != a["ve_train.json"] and other["nlvr_train.json"] != a["nlvr_train.json"]


def test_one_image_split_pairs_the_image_with_itself(tmp_path):
    root = generate_shapes(tmp_path / "one", seed=1, **TINY)
    scenes = _scenes(root)
    records = load_json(root, "nlvr_val.json")
    assert len(records) == 2 and all(r["images"][0] == r["images"][1] for r in records)
    assert sorted(r["label"] for r in records) == ["False", "True"]
    for r in records:
        assert r["label"] == nlvr_label(r["sentence"], scenes[r["images"][0]], scenes[r["images"][1]])[1]


def test_folder_without_reasoning_files_is_regenerated(tmp_path):
    root = generate_shapes(tmp_path / "d", seed=0, **TINY)
    reference = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # a folder written by the generator before the reasoning files existed: no ve_* / nlvr_* in it or its manifest
    manifest = load_json(root, "manifest.json")
    for name in list(manifest["files"]):
        if name.startswith(("ve_", "nlvr_")):
            del manifest["files"][name]
            (root / name).unlink()
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert generate_shapes(root, seed=0, **TINY) == root
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} == reference
    # the files there but the manifest silent about them: regenerated as well (the manifest is rewritten)
    manifest = load_json(root, "manifest.json")
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("nlvr_")}
    (root / "manifest.json").write_text(json.dumps(manifest))
    generate_shapes(root, seed=0, **TINY)
    assert (root / "manifest.json").read_bytes() == reference["manifest.json"]


def test_folder_without_the_reasoning_translations_is_regenerated(tmp_path):
    root = generate_shapes(tmp_path / "t", seed=0, **TINY)
    reference = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert set(TRANSLATED) <= set(load_json(root, "manifest.json")["files"]) and set(TRANSLATED) <= set(reference)
    # a folder written before the VE / NLVR translations existed: same languages, no ve_*.{lang} / nlvr_*.{lang}
    manifest = load_json(root, "manifest.json")
    for name in TRANSLATED:
        del manifest["files"][name]
        (root / name).unlink()
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert generate_shapes(root, seed=0, **TINY) == root
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} == reference
    # one translation missing from the manifest only: regenerated (the folder holds nothing the generator does not
    # write, so it may be replaced)
    manifest = load_json(root, "manifest.json")
    del manifest["files"]["nlvr_val.fr.json"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    generate_shapes(root, seed=0, **TINY)
    assert (root / "manifest.json").read_bytes() == reference["manifest.json"]
    # a complete folder is left alone (nothing rewritten)
    stamp = (root / "ve_train.de.json").stat().st_mtime_ns
    generate_shapes(root, seed=0, **TINY)
    assert (root / "ve_train.de.json").stat().st_mtime_ns == stamp


def test_generators_refuse_empty_scenes():
    import random

    from zoo.data.shapes_reasoning import nlvr_statements, ve_hypotheses

    with pytest.raises(ValueError, match="at least one object"):
        ve_hypotheses([], random.Random(0))
    with pytest.raises(ValueError, match="at least one object"):
        nlvr_statements([], [], random.Random(0))
