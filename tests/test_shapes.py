"""The embedded "shapes" dataset: determinism, official formats, annotations re-derived from the pixels, caching.

The ground truth is recovered from the rendered pixels with this file's own rules (background = the most common
colour, objects = 4-connected components, colour name from the hue, shape from how much of its box it fills, size from
its box, position from its centre), never from the generator's tables, so a renderer/annotation disagreement fails.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import PACKAGE_DIR, check_record_keys, load_json
from PIL import Image

from zoo.data.shapes import default_shapes_root, describe_shapes, generate_shapes, mmzoo_home
from zoo.data.video import read_video_frames

TINY = {"num_train_images": 12, "num_val_images": 4, "num_test_images": 4, "image_size": 48, "num_videos": 6,
        "video_frames": 4}
SPLITS = ("train", "val", "test")
COLOUR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_WORDS = ("circle", "square", "triangle")
# the 3x3 grid, row-major: answer names and caption/question phrases (written out here, independently)
CELL_OF_POSITION = {"top left": 0, "top": 1, "top right": 2, "left": 3, "center": 4, "right": 5, "bottom left": 6,
                    "bottom": 7, "bottom right": 8}
CELL_OF_PHRASE = {"in the top left corner": 0, "at the top": 1, "in the top right corner": 2, "on the left": 3,
                  "in the center": 4, "on the right": 5, "in the bottom left corner": 6, "at the bottom": 7,
                  "in the bottom right corner": 8}
PHRASES = "|".join(sorted(CELL_OF_PHRASE, key=len, reverse=True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "tiny", seed=0, **TINY)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _majority(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


# ------------------------------------------------------------------------------------------- pixel ground truth


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components (scipy when installed, else a flood fill)."""
    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    if ndimage is not None:
        return ndimage.label(mask)
    labels = np.zeros(mask.shape, dtype=int)
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        stack = [(y0, x0)]
        labels[y0, x0] = n
        while stack:
            y, x = stack.pop()
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    stack.append((yy, xx))
    return labels, n


def _colour_name(rgb) -> str:
    hue, sat, _ = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    assert sat > 0.4, f"not a saturated colour: {rgb}"
    deg = hue * 360
    for limit, name in ((15, "red"), (40, "orange"), (75, "yellow"), (170, "green"), (255, "blue"), (330, "purple")):
        if deg < limit:
            return name
    return "red"


def _objects(pixels: np.ndarray, threshold: int = 30, min_pixels: int = 1) -> list[dict]:
    """The objects seen in an (H, W, 3) image: colour, shape, size, cell, box and centre."""
    flat = pixels.reshape(-1, 3)
    values, counts = np.unique(flat, axis=0, return_counts=True)
    background = values[counts.argmax()].astype(int)
    labels, n = _label(np.abs(pixels.astype(int) - background).max(-1) > threshold)
    side = pixels.shape[1]
    cell = side / 3
    out = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        if len(ys) < min_pixels:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        fill = len(ys) / ((x1 - x0) * (y1 - y0))
        shape = "square" if fill > 0.92 else "triangle" if fill < 0.66 else "circle"
        cx, cy = xs.mean(), ys.mean()
        out.append({"colour": _colour_name(np.median(pixels[ys, xs], axis=0)), "shape": shape,
                    "size": "large" if max(x1 - x0, y1 - y0) > 0.62 * cell else "small",
                    "cell": int(cy // cell) * 3 + int(cx // cell), "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                    "centre": (cx, cy)})
    return out


def _image_objects(root: Path, rel: str) -> list[dict]:
    with Image.open(root / rel) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return _objects(np.asarray(im))


def _one(objects: list[dict], question: str, **attrs) -> dict:
    found = [o for o in objects if all(o[k] == v for k, v in attrs.items())]
    assert len(found) == 1, f"{question!r}: {len(found)} objects match {attrs} in {objects}"
    return found[0]


def _truth(question: str, objs: list[dict]) -> str:
    """The answer to a question about an image, from the pixel objects (every question form must parse)."""
    if re.fullmatch(r"how many shapes (are there|are in the image)\?", question):
        return str(len(objs))
    if m := re.fullmatch(r"what colour is the (?:(small|large) )?(circle|square|triangle)\?", question):
        attrs = {"shape": m[2], **({"size": m[1]} if m[1] else {})}
        return _one(objs, question, **attrs)["colour"]
    if m := re.fullmatch(rf"what colour is the shape ({PHRASES})\?", question):
        return _one(objs, question, cell=CELL_OF_PHRASE[m[1]])["colour"]
    if m := re.fullmatch(rf"what shape is ({'|'.join(COLOUR_WORDS)})\?", question):
        return _one(objs, question, colour=m[1])["shape"]
    if m := re.fullmatch(rf"what shape is ({PHRASES})\?", question):
        return _one(objs, question, cell=CELL_OF_PHRASE[m[1]])["shape"]
    if m := re.fullmatch(r"(?:where is the (\w+) (\w+)\?|which part of the image is the (\w+) (\w+) in\?)", question):
        colour, shape = (m[1], m[2]) if m[1] else (m[3], m[4])
        cell = _one(objs, question, colour=colour, shape=shape)["cell"]
        return next(name for name, c in CELL_OF_POSITION.items() if c == cell)
    if m := re.fullmatch(r"(?:what size is the (\w+) (\w+)\?|is the (\w+) (\w+) small or large\?)", question):
        colour, shape = (m[1], m[2]) if m[1] else (m[3], m[4])
        return _one(objs, question, colour=colour, shape=shape)["size"]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        assert m[1] in COLOUR_WORDS and m[2] in SHAPE_WORDS, question
        return "yes" if any(o["colour"] == m[1] and o["shape"] == m[2] for o in objs) else "no"
    raise AssertionError(f"unparsed question {question!r}")


def _question_type(question: str) -> str:
    for start, kind in (("what colour", "colour"), ("what shape", "shape"), ("where", "position"),
                        ("which part", "position"), ("what size", "size"), ("how many", "count"),
                        ("is there", "yesno")):
        if question.startswith(start):
            return kind
    return "size" if question.endswith("small or large?") else "other"


# -------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, tiny):
    again = generate_shapes(tmp_path / "again", seed=0, **TINY)
    first, second = _hashes(tiny), _hashes(again)
    assert len(first) > 40 and first == second
    other = _hashes(generate_shapes(tmp_path / "other", seed=1, **TINY))
    assert set(other) == set(first)
    changed = {k for k in first if first[k] != other[k]}
    assert sum(k.startswith("images/") for k in changed) >= 15  # nearly every image differs
    assert sum(k.startswith("videos/") for k in changed) >= 4
    assert "vqa_train.json" in changed and "retrieval_train.json" in changed


# ------------------------------------------------------------------------------------------------------- formats


def test_files_have_the_official_formats(tiny):
    answer_list = load_json(tiny, "answer_list.json")
    video_answer_list = load_json(tiny, "video_answer_list.json")
    for lst in (answer_list, video_answer_list):
        assert all(isinstance(a, str) and a for a in lst) and len(set(lst)) == len(lst)
    question_ids = []
    for split in SPLITS:
        vqa = load_json(tiny, f"vqa_{split}.json")
        check_record_keys(vqa, {"question_id": int, "question": str, "answer": list, "image": str, "dataset": str},
                    f"vqa_{split}")
        for e in vqa:
            assert e["dataset"] == "shapes" and len(e["answer"]) == 10 and all(isinstance(a, str) for a in e["answer"])
            assert Counter(e["answer"]).most_common(1)[0][1] >= 8  # annotator noise never outvotes the answer
            assert _majority(e["answer"]) in answer_list
            assert e["image"] == f"images/{split}/{Path(e['image']).name}"
        question_ids += [e["question_id"] for e in vqa]
        video_qa = load_json(tiny, f"video_qa_{split}.json")
        check_record_keys(video_qa, {"question_id": int, "question": str, "answer": list, "video": str, "dataset": str},
                    f"video_qa_{split}")
        for e in video_qa:
            assert len(e["answer"]) == 10 and _majority(e["answer"]) in video_answer_list
        if split == "train":
            for name, key, index in (("retrieval_train", "image", "image_id"), ("caption_train", "image", "image_id"),
                                     ("video_retrieval_train", "video", "video_id")):
                entries = load_json(tiny, f"{name}.json")
                check_record_keys(entries, {key: str, "caption": str, index: int}, name)
                per_item = Counter(e[key] for e in entries)
                assert min(per_item.values()) >= 4  # several captions per image / video
                assert len({e[index] for e in entries}) == len(per_item)  # one id per image / video
        else:
            for name, key in ((f"retrieval_{split}", "image"), (f"caption_{split}", "image"),
                              (f"video_retrieval_{split}", "video")):
                entries = load_json(tiny, f"{name}.json")
                check_record_keys(entries, {key: str, "caption": list}, name)
                assert all(len(e["caption"]) >= 4 and all(isinstance(c, str) for c in e["caption"]) for e in entries)
    assert len(question_ids) == len(set(question_ids))
    assert load_json(tiny, "retrieval_train.json") == load_json(tiny, "caption_train.json")
    images = {e["image"] for s in SPLITS for e in load_json(tiny, f"vqa_{s}.json")}
    assert len(images) == 20


def test_caption_ground_truth_loads_in_pycocotools(tiny):
    coco_module = pytest.importorskip("pycocotools.coco")
    for split in ("val", "test"):
        entries = load_json(tiny, f"caption_{split}.json")
        coco = coco_module.COCO(str(tiny / f"caption_{split}_gt.json"))
        # the official eval derives the image id from the file name; here the stem is the id
        ids = [int(Path(e["image"]).stem) for e in entries]
        assert sorted(coco.getImgIds()) == sorted(ids)
        for e, image_id in zip(entries, ids):
            assert sorted(a["caption"] for a in coco.imgToAnns[image_id]) == sorted(e["caption"])
        results = coco.loadRes([{"image_id": i, "caption": "a red circle"} for i in ids])  # what the evaluator does
        assert sorted(results.getImgIds()) == sorted(ids)


def test_describe_counts_match_the_files(tiny):
    info = describe_shapes(tiny)
    manifest = load_json(tiny, "manifest.json")
    assert info["files"] == manifest["files"]
    assert info["images"] == {"train": 12, "val": 4, "test": 4} == manifest["images"]
    assert sum(info["videos"].values()) == 6
    assert info["params"] == {"seed": 0, **TINY}
    assert info["files"]["vqa_train.json"] == len(load_json(tiny, "vqa_train.json"))
    with pytest.raises(FileNotFoundError, match="no such shapes dataset"):
        describe_shapes(tiny / "missing")


def test_every_referenced_file_opens(tiny):
    referenced = set()
    for path in tiny.glob("*.json"):
        data = load_json(tiny, path.name)
        if isinstance(data, list):
            referenced |= {e.get("image") or e.get("video") for e in data if isinstance(e, dict)}
    referenced.discard(None)
    assert {p.relative_to(tiny).as_posix() for p in tiny.rglob("*.png")} == {r for r in referenced if r.endswith("png")}
    videos = sorted(r for r in referenced if r.endswith(".mp4"))
    assert len(videos) == 6
    for rel in sorted(referenced - set(videos)):
        with Image.open(tiny / rel) as im:
            assert im.size == (48, 48)
    pytest.importorskip("av")
    for rel in videos:
        frames = read_video_frames(tiny / rel, 4, backend="av")
        assert frames.shape == (4, 64, 64, 3)
    pytest.importorskip("decord")
    for rel in videos:
        by_decord = read_video_frames(tiny / rel, 4, backend="decord")
        by_av = read_video_frames(tiny / rel, 4, backend="av")
        assert by_decord.shape == by_av.shape and (by_decord.float() - by_av.float()).abs().mean() < 2


# --------------------------------------------------------------------------------------------------- correctness


def test_vqa_answers_match_the_pixels(tiny):
    scenes = {s["image"]: s for s in load_json(tiny, "scenes.json")}
    kinds = Counter()
    for split in SPLITS:
        for e in load_json(tiny, f"vqa_{split}.json"):
            objs = _image_objects(tiny, e["image"])
            assert _majority(e["answer"]) == _truth(e["question"], objs), (e, objs)
            kinds[_question_type(e["question"])] += 1
    assert set(kinds) == {"colour", "shape", "position", "size", "count", "yesno"}
    for rel, scene in scenes.items():  # scenes.json boxes are the drawn pixels' boxes
        objs = _image_objects(tiny, rel)
        assert sorted(o["bbox"] for o in objs) == sorted(o["bbox"] for o in scene["objects"])


def _check_caption(caption: str, objs: list[dict]) -> None:
    colours = {o["colour"] for o in objs}
    shapes = {o["shape"] for o in objs}
    words = re.findall(r"\w+", caption)
    assert {w for w in words if w in COLOUR_WORDS} <= colours, (caption, objs)
    assert {w for w in words if w in SHAPE_WORDS} <= shapes, (caption, objs)
    if m := re.match(r"(two|three) shapes", caption):
        assert len(objs) == {"two": 2, "three": 3}[m[1]], (caption, objs)
    if len(objs) == 1:
        assert objs[0]["colour"] in words and objs[0]["shape"] in words, (caption, objs)
        for m in re.finditer(PHRASES, caption):  # any position phrase is the object's
            assert objs[0]["cell"] == CELL_OF_PHRASE[m[0]], caption
    for m in re.finditer(r"(small|large) (\w+) (circle|square|triangle)", caption):
        assert _one(objs, caption, colour=m[2], shape=m[3])["size"] == m[1]
    for m in re.finditer(rf"(\w+) (circle|square|triangle) ({PHRASES})", caption):
        assert _one(objs, caption, colour=m[1], shape=m[2])["cell"] == CELL_OF_PHRASE[m[3]], caption


def test_captions_match_the_pixels(tiny):
    checked = 0
    for e in load_json(tiny, "retrieval_train.json"):
        _check_caption(e["caption"], _image_objects(tiny, e["image"]))
        checked += 1
    for split in ("val", "test"):
        for e in load_json(tiny, f"caption_{split}.json"):
            objs = _image_objects(tiny, e["image"])
            assert len(set(e["caption"])) == len(e["caption"])
            for caption in e["caption"]:
                _check_caption(caption, objs)
                checked += 1
    assert checked == 20 * 5


def _video_truth(path: Path) -> tuple[dict, str, dict | None]:
    """(moving object, direction, still object or None) from the first and last decoded frames."""
    frames = read_video_frames(path, 4, backend="av").numpy()
    first, last = (_objects(frames[i], threshold=60, min_pixels=6) for i in (0, -1))
    assert len(first) == len(last) and 1 <= len(first) <= 2, (path, first, last)
    moved, still = [], []
    for a in first:
        (b,) = [b for b in last if b["colour"] == a["colour"]]
        dx, dy = b["centre"][0] - a["centre"][0], b["centre"][1] - a["centre"][1]
        (moved if max(abs(dx), abs(dy)) > frames.shape[2] / 4 else still).append((a, dx, dy))
    assert len(moved) == 1, (path, first, last)
    obj, dx, dy = moved[0]
    direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    return obj, direction, (still[0][0] if still else None)


def test_video_annotations_match_the_pixels(tiny):
    pytest.importorskip("av")
    truth = {rel.relative_to(tiny).as_posix(): _video_truth(rel) for rel in sorted(tiny.glob("videos/*/*.mp4"))}
    directions = Counter()
    for split in SPLITS:
        for e in load_json(tiny, f"video_qa_{split}.json"):
            moving, direction, still = truth[e["video"]]
            q, answer = e["question"], _majority(e["answer"])
            if m := re.fullmatch(r"which direction does the (\w+) move\?", q):
                assert (m[1], answer) == (moving["shape"], direction), (e, moving)
                directions[answer] += 1
            elif m := re.fullmatch(r"in which direction is the (\w+) (\w+) moving\?", q):
                assert (m[1], m[2], answer) == (moving["colour"], moving["shape"], direction), (e, moving)
                directions[answer] += 1
            elif q == "what colour is the moving shape?":
                assert answer == moving["colour"], (e, moving)
            elif q in ("what shape is moving?", "what is the shape of the moving object?"):
                assert answer == moving["shape"], (e, moving)
            elif m := re.fullmatch(r"does the (\w+) (\w+) move\?", q):
                assert still is not None and m[1] in (moving["colour"], still["colour"])
                assert answer == ("yes" if m[1] == moving["colour"] else "no"), (e, moving, still)
            else:
                raise AssertionError(f"unparsed video question {q!r}")
    assert sum(directions.values()) == 6
    entries = load_json(tiny, "video_retrieval_train.json") + [
        {"video": e["video"], "caption": c} for s in ("val", "test") for e in load_json(tiny, f"video_retrieval_{s}.json")
        for c in e["caption"]]
    for e in entries:
        moving, direction, still = truth[e["video"]]
        words = e["caption"].split()
        assert moving["colour"] in words or moving["shape"] in words, e
        assert {w for w in words if w in COLOUR_WORDS} <= {moving["colour"], still and still["colour"]}, e
        said = re.search(r"(?:moves|slides|moving) (?:to the )?(right|left|up|down)\b|from \w+ to (\w+)", e["caption"])
        assert said, e
        end = {"right": "right", "left": "left", "top": "up", "bottom": "down"}
        assert (said[1] or end[said[2]]) == direction, (e, direction)


# ---------------------------------------------------------------------------------------------- balanced answers


def test_question_only_baseline_is_near_chance(tmp_path):
    root = generate_shapes(tmp_path / "b", seed=3, num_train_images=240, num_val_images=60, num_test_images=60,
                           image_size=48, num_videos=0)
    train = load_json(root, "vqa_train.json")
    held_out = load_json(root, "vqa_val.json") + load_json(root, "vqa_test.json")
    per_type = defaultdict(Counter)
    per_text = defaultdict(Counter)
    for e in train:
        per_type[_question_type(e["question"])][_majority(e["answer"])] += 1
        per_text[e["question"]][_majority(e["answer"])] += 1
    best = {kind: c.most_common(1)[0][0] for kind, c in per_type.items()}
    hits = defaultdict(list)
    text_hits = []
    for e in held_out:
        kind, answer = _question_type(e["question"]), _majority(e["answer"])
        hits[kind].append(best[kind] == answer)
        guess = per_text[e["question"]].most_common(1)[0][0] if e["question"] in per_text else best[kind]
        text_hits.append(guess == answer)
    rate = {kind: float(np.mean(v)) for kind, v in hits.items()}
    overall = float(np.mean([h for v in hits.values() for h in v]))
    scenes = [s for s in load_json(root, "scenes.json") if s["split"] in ("val", "test")]
    # four questions of distinct types per image, plus where each of its objects is
    assert len(held_out) == sum(4 + len(s["objects"]) for s in scenes)
    assert set(rate) == {"colour", "shape", "position", "size", "count", "yesno"}
    assert overall < 0.45 and float(np.mean(text_hits)) < 0.45, (overall, rate)
    assert rate["yesno"] < 0.65 and rate["size"] < 0.65 and rate["position"] < 0.3 and rate["colour"] < 0.35, rate
    assert rate["count"] < 0.5 and rate["shape"] < 0.5, rate
    # and the answers seen in training cover every class (balanced, not degenerate)
    assert len(per_type["colour"]) == 6 and len(per_type["count"]) == 3 and len(per_type["position"]) == 9


# ------------------------------------------------------------------------------------------------------- caching


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_second_call_reuses_the_folder(tmp_path):
    root = generate_shapes(tmp_path / "c", **TINY)
    before = _mtimes(root)
    assert generate_shapes(tmp_path / "c", **TINY) == root
    assert _mtimes(root) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["c"]  # no leftovers
    generate_shapes(tmp_path / "c", force=True, **TINY)
    assert _mtimes(root)["manifest.json"] != before["manifest.json"]


def test_incomplete_or_other_folders_are_regenerated(tmp_path):
    root = generate_shapes(tmp_path / "d", **TINY)
    reference = _hashes(root)
    (root / "manifest.json").unlink()  # half-written: no manifest
    (root / "vqa_train.json").write_text("[")
    (root / "images" / "train" / "00000.png").unlink()
    generate_shapes(root, **TINY)
    assert _hashes(root) == reference
    manifest = load_json(root, "manifest.json")  # a manifest with other parameters
    manifest["params"]["seed"] = 7
    (root / "manifest.json").write_text(json.dumps(manifest))
    generate_shapes(root, **TINY)
    assert _hashes(root) == reference
    bigger = generate_shapes(root, **{**TINY, "num_test_images": 5})  # other parameters asked for
    assert describe_shapes(bigger)["images"]["test"] == 5


def test_foreign_folder_is_not_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_shapes(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="image_size must be >= 48"):
        generate_shapes(tmp_path / "x", image_size=16)
    with pytest.raises(TypeError, match="num_videos must be an int"):
        generate_shapes(tmp_path / "x", num_videos=2.5)


def test_concurrent_first_uses_agree(tmp_path, tiny):
    code = ("import sys; from zoo.data.shapes import generate_shapes; "
            f"generate_shapes(sys.argv[1], **{TINY!r})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_DIR.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "e")], env=env, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert _hashes(tmp_path / "e") == _hashes(tiny)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["e"]


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MMZOO_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mmzoo_home() == tmp_path / "xdg" / "mmzoo"
    monkeypatch.setenv("MMZOO_HOME", str(tmp_path / "home"))
    assert default_shapes_root() == tmp_path / "home" / "datasets" / "shapes-v3"
    assert generate_shapes(**TINY) == tmp_path / "home" / "datasets" / "shapes-v3"


def test_retrieval_ceiling_counts_the_images_a_caption_fits(tmp_path):
    """1 / (images the caption describes), averaged: two identical scenes share every caption (1/2 each)."""
    from zoo.data.shapes import retrieval_ceiling

    red = {"shape": "circle", "colour": "red", "size": "small", "position": "top left"}
    blue = {"shape": "square", "colour": "blue", "size": "large", "position": "center"}
    scenes = [{"image": f"{i}.png", "split": "test", "objects": [obj]} for i, obj in enumerate((red, red, blue))]
    (tmp_path / "scenes.json").write_text(json.dumps(scenes))
    captions = [{"image": "0.png", "caption": ["a small red circle in the top left corner"]},
                {"image": "1.png", "caption": ["a single small red circle in the top left corner"]},
                {"image": "2.png", "caption": ["a large blue square in the center",
                                               "a single large blue square in the center"]}]
    (tmp_path / "retrieval_test.json").write_text(json.dumps(captions))
    assert retrieval_ceiling(tmp_path, "test") == pytest.approx(100 * (0.5 + 0.5 + 1 + 1) / 4)
    captions[2]["caption"].append("a red circle in the top left corner")  # true of another image, not of image 2
    (tmp_path / "retrieval_test.json").write_text(json.dumps(captions))
    with pytest.raises(ValueError, match="not a caption the generator writes for 2.png"):
        retrieval_ceiling(tmp_path, "test")


def test_generated_captions_single_out_their_image(tiny):
    """Retrieval is scored against one paired image: captions that fit many scenes would cap recall@1."""
    from zoo.data.shapes import retrieval_ceiling

    for split in ("val", "test"):
        assert retrieval_ceiling(tiny, split) >= 95.0
