"""The shapes dataset's reasoning splits: SNLI-VE-style ``ve_{split}.json`` and NLVR2-style ``nlvr_{split}.json``.

Every label is re-derived by this file's own reader: regular expressions written out here parse each sentence, and the
truth is computed from the objects in ``scenes.json`` (which tests/test_shapes.py checks against the pixels), never
from the generator's tables or functions.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import check_record_keys

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


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("reasoning") / "shapes", seed=0, **SIZES)


def _load(root: Path, name: str):
    with open(root / name, encoding="utf-8") as fh:
        return json.load(fh)


def _scenes(root: Path) -> dict[str, list[dict]]:
    """image -> objects as ``{colour, shape, size, cell}`` (the cell from the position name, via this file's table)."""
    return {s["image"]: [{"colour": o["colour"], "shape": o["shape"], "size": o["size"],
                          "cell": CELL_OF_POSITION[o["position"]]} for o in s["objects"]]
            for s in _load(root, "scenes.json")}


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
    manifest = _load(data, "manifest.json")
    pair_ids = []
    for split in SPLITS:
        records = _load(data, f"ve_{split}.json")
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
    manifest = _load(data, "manifest.json")
    identifiers = []
    for split in SPLITS:
        records = _load(data, f"nlvr_{split}.json")
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
        for r in _load(data, f"ve_{split}.json"):
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
        for r in _load(data, f"nlvr_{split}.json"):
            kind, label = nlvr_label(r["sentence"], scenes[r["images"][0]], scenes[r["images"][1]])
            nlvr[kind, label] += 1
            if kind == "total":
                total_forms.add(r["sentence"].split()[2].isdigit())
    assert {(k, lab) for k in NLVR_PATTERNS for lab in ("True", "False")} <= set(nlvr), nlvr
    assert total_forms == {True, False}  # digits and words


def test_text_alone_cannot_tell_the_labels(data):
    # VE: the best text-only rule that knows the sentence kind (with a quality word or without) gets 2/3
    records = _load(data, "ve_train.json")
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
        for r in _load(data, f"nlvr_{split}.json"):
            kind, _ = _parse(r["sentence"], NLVR_PATTERNS)
            uses[kind] += 1
            true[kind] += r["label"] == "True"
    frequent = {k for k, n in uses.items() if n >= 20}
    assert len(frequent) >= 8, uses
    for k in frequent:
        assert 0.3 <= true[k] / uses[k] <= 0.7, (k, true[k], uses[k])


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
    without = {n: v for n, v in files.items() if not n.startswith(("ve_", "nlvr_"))}
    a = build_shapes_tokenizer(data, files=without, out_dir=tmp_path / "without")
    assert (a / "tokenizer.json").read_bytes() == (data / TOKENIZER_DIR / "tokenizer.json").read_bytes()
    assert (build_shapes_tokenizer(data, out_dir=tmp_path / "again") / "tokenizer.json").read_bytes() == \
        (a / "tokenizer.json").read_bytes()
    sentences = [r["sentence"] for s in SPLITS for name in (f"ve_{s}.json", f"nlvr_{s}.json")
                 for r in _load(data, name)]
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
        used = sorted({w for r in _load(data, f"{name}_train.json") for w in r["sentence"].split()})
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
    assert len(a) == 6
    assert _digests(generate_shapes(tmp_path / "b", seed=5, **TINY)) == a
    assert _digests(generate_shapes(tmp_path / "en", seed=5, languages=(), **TINY)) == a
    other = _digests(generate_shapes(tmp_path / "c", seed=6, **TINY))
    assert other["ve_train.json"] != a["ve_train.json"] and other["nlvr_train.json"] != a["nlvr_train.json"]


def test_one_image_split_pairs_the_image_with_itself(tmp_path):
    root = generate_shapes(tmp_path / "one", seed=1, **TINY)
    scenes = _scenes(root)
    records = _load(root, "nlvr_val.json")
    assert len(records) == 2 and all(r["images"][0] == r["images"][1] for r in records)
    assert sorted(r["label"] for r in records) == ["False", "True"]
    for r in records:
        assert r["label"] == nlvr_label(r["sentence"], scenes[r["images"][0]], scenes[r["images"][1]])[1]


def test_folder_without_reasoning_files_is_regenerated(tmp_path):
    root = generate_shapes(tmp_path / "d", seed=0, **TINY)
    reference = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # a folder written by the generator before the reasoning files existed: no ve_* / nlvr_* in it or its manifest
    manifest = _load(root, "manifest.json")
    for name in list(manifest["files"]):
        if name.startswith(("ve_", "nlvr_")):
            del manifest["files"][name]
            (root / name).unlink()
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert generate_shapes(root, seed=0, **TINY) == root
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} == reference
    # the files there but the manifest silent about them: regenerated as well (the manifest is rewritten)
    manifest = _load(root, "manifest.json")
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("nlvr_")}
    (root / "manifest.json").write_text(json.dumps(manifest))
    generate_shapes(root, seed=0, **TINY)
    assert (root / "manifest.json").read_bytes() == reference["manifest.json"]


def test_generators_refuse_empty_scenes():
    import random

    from zoo.data.shapes_reasoning import nlvr_statements, ve_hypotheses

    with pytest.raises(ValueError, match="at least one object"):
        ve_hypotheses([], random.Random(0))
    with pytest.raises(ValueError, match="at least one object"):
        nlvr_statements([], [], random.Random(0))
