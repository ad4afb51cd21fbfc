"""The embedded "shapes-video" dataset (zoo/data/shapes_video.py): determinism, split sizes, the frames against the
stored per-frame states, answers derived here from those states and from the pixels, temporal questions that no single
frame answers, static ones that every frame answers, balanced answers, distinct captions, the readers, and the
"shapes" dataset left as it was.

The rules here are written out independently of the generator: answers come from the states with this file's own
functions, objects are found in decoded frames as the regions that differ from the background and named by their
palette colour, shapes are matched against templates drawn here, and what a valid clip is (the support of the
generator) is restated in :func:`_valid`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import load_json
from PIL import Image, ImageDraw

from zoo.data.shapes_video import (
    STATIC_QUESTION_TYPES,
    TEMPORAL_QUESTION_TYPES,
    generate_shapes_video,
    min_gap,
)
from zoo.data.video import read_video_frames

pytest.importorskip("av")  # the videos are written and read with PyAV

SPLITS = ("train", "val", "test")
# 12 clips of each kind in train: every answer value of each temporal type (and of the count question) comes out
# equally often (the generator balances per block of clips of a kind)
SMALL = {"num_train": 72, "num_val": 12, "num_test": 12}
FRAMES, SIZE = 8, 64
PALETTE = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220), "yellow": (240, 200, 20),
           "purple": (140, 60, 180), "orange": (250, 130, 20)}
SHAPE_WORDS = ("circle", "square", "triangle")
BACKGROUND = (242, 242, 238)
CHANGE_LO, CHANGE_HI = 3, 5  # frames a change may first show in (8 frames)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_shapes_video(tmp_path_factory.mktemp("shapes-video") / "small", seed=0, **SMALL)


@pytest.fixture(scope="module")
def clips(small) -> dict[str, dict]:
    return {c["video"]: c for c in load_json(small, "clips.json")}


def _majority(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


def _records(root: Path, splits=SPLITS):
    return [e for split in splits for e in load_json(root, f"video_qa_{split}.json")]


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------- answers from the frame states


def _changes(o: dict) -> set[str]:
    out = set()
    if len(set(zip(o["x"], o["y"]))) > 1:
        out.add("move")
    if len(set(o["colour"])) > 1:
        out.add("colour")
    if not o["visible"][0] and o["visible"][-1]:
        out.add("appear")
    if o["visible"][0] and not o["visible"][-1]:
        out.add("vanish")
    return out


def _one(objects: list[dict], **attrs) -> dict:
    found = [o for o in objects if all((o[k][0] if k == "colour" else o[k]) == v for k, v in attrs.items())]
    assert len(found) == 1, (attrs, found)
    return found[0]


def _direction(o: dict) -> str:
    dx, dy = o["x"][-1] - o["x"][0], o["y"][-1] - o["y"][0]
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _onset(o: dict) -> int:
    return next(t for t in range(1, len(o["x"])) if (o["x"][t], o["y"][t]) != (o["x"][0], o["y"][0]))


def _answer(objects: list[dict], qtype: str, question: str) -> str | None:
    """The answer of a question about a clip, from its per-frame states (None: the question has no answer there)."""
    words = question.rstrip("?").split()
    changed = [o for o in objects if _changes(o)]
    if qtype == "direction":  # "... the COLOUR SHAPE move(ing)"
        colour, shape = next((a, b) for a, b in itertools.pairwise(words) if a in PALETTE and b in SHAPE_WORDS)
        o = _one(objects, colour=colour, shape=shape)
        return _direction(o) if "move" in _changes(o) else None
    if qtype == "order":  # "... the SHAPE or the SHAPE"
        a, b = (_one(objects, shape=w) for w in words if w in SHAPE_WORDS)
        if not {"move"} == _changes(a) == _changes(b) or _onset(a) == _onset(b):
            return None
        return min((a, b), key=_onset)["shape"]
    if qtype in ("appear", "vanish"):
        found = [o for o in objects if qtype in _changes(o)]
        return found[0]["shape"] if len(found) == 1 else None
    if qtype == "colour_change":
        found = [o for o in objects if "colour" in _changes(o)]
        return found[0]["shape"] if len(found) == 1 else None
    if qtype == "colour_become":
        return _one(objects, shape=next(w for w in words if w in SHAPE_WORDS))["colour"][-1]
    if qtype == "event_count":
        return str(len(changed))
    if qtype == "colour":
        return _one(objects, shape=words[-1])["colour"][0]
    if qtype == "count":
        return str(len(objects))
    raise AssertionError(qtype)


def _frame(objects: list[dict], t: int) -> frozenset:
    """What frame ``t`` shows: the visible objects' shape, size, colour and centre."""
    return frozenset((o["shape"], o["size"], o["colour"][t], o["x"][t], o["y"][t]) for o in objects if o["visible"][t])


def _switch(values: list) -> int | None:
    """The frame a two-valued sequence switches at (None when constant); fails on more than one switch."""
    switches = [t for t in range(1, len(values)) if values[t] != values[t - 1]]
    assert len(switches) <= 1, values
    return switches[0] if switches else None


def _valid(kind: str, objects: list[dict]) -> bool:
    """The support of the generator, restated: a clip of ``kind`` it may draw."""
    n, T = len(objects), len(objects[0]["x"])
    colours = [set(o["colour"]) for o in objects]
    if sum(len(c) for c in colours) != len(set().union(*colours)):
        return False  # each object a colour (or two) of its own
    for i in range(n):
        for j in range(i):
            gap = min_gap(objects[i]["size"], objects[j]["size"], SIZE)
            if any((xa - xb) ** 2 + (ya - yb) ** 2 < gap * gap for xa, ya in zip(objects[i]["x"], objects[i]["y"])
                   for xb, yb in zip(objects[j]["x"], objects[j]["y"])):
                return False
    kinds = [_changes(o) for o in objects]
    if any(len(k) > 1 for k in kinds):
        return False  # one event an object
    for o, k in zip(objects, kinds):
        for key in ("visible", "colour"):
            t = _switch(o[key])
            if t is not None and not CHANGE_LO <= t <= CHANGE_HI:
                return False
        if "move" in k:
            if (len(set(o["x"])) > 1) == (len(set(o["y"])) > 1):
                return False  # along one axis
            steps = [t for t in range(1, T) if (o["x"][t], o["y"][t]) != (o["x"][t - 1], o["y"][t - 1])]
            spans = [range(1, T)] if kind != "order" else [range(1, T // 2), range(T // 2 + 1, T)]
            if not any(steps == list(span) for span in spans):
                return False  # the whole clip, or in order clips the first or the second half
    events = [next(iter(k)) for k in kinds if k]
    shapes = [o["shape"] for o in objects]
    if kind == "move":
        return 1 <= n <= 3 and events == ["move"]
    if kind == "order":
        movers = [o for o, k in zip(objects, kinds) if k]
        return (2 <= n <= 3 and len(set(shapes)) == n and events == ["move", "move"]
                and _onset(movers[0]) != _onset(movers[1]))
    if kind in ("appear", "vanish"):
        (who,) = [o for o, k in zip(objects, kinds) if k] or [None]
        return 2 <= n <= 3 and events == [kind] and any(o["shape"] != who["shape"] for o in objects)
    if kind == "recolour":
        return 2 <= n <= 3 and len(set(shapes)) == n and events == ["colour"]
    if kind == "multi":
        return n == 3 and 1 <= len(events) <= 3 and sum(e in ("appear", "vanish") for e in events) <= 1
    raise AssertionError(kind)


# ----------------------------------------------------------------------------------------- other clips, same frame


def _reverse(objects: list[dict]) -> list[dict]:
    return [{**o, **{k: o[k][::-1] for k in ("x", "y", "colour", "visible")}} for o in objects]


def _unused_colour(objects: list[dict]) -> str:
    used = {c for o in objects for c in o["colour"]}
    return next(c for c in PALETTE if c not in used)


def _counterfactual(kind: str, objects: list[dict], qtype: str, t: int) -> tuple[list[dict], int]:
    """Another clip and a frame of it that shows what frame ``t`` of ``objects`` shows, built so its answer to the
    question differs (checked by the caller)."""
    T = len(objects[0]["x"])
    if qtype in ("direction", "order", "colour_become"):
        return _reverse(objects), T - 1 - t
    out = copy.deepcopy(objects)
    if qtype in ("appear", "vanish", "colour_change"):
        key = {"appear": "appear", "vanish": "vanish", "colour_change": "colour"}[qtype]
        (i,) = [i for i, o in enumerate(objects) if key in _changes(o)]
        a = out[i]
        if qtype == "colour_change" or a["visible"][t]:
            # another object, of another shape, has the event instead; ``a`` keeps its frame-t state all along
            j = next(j for j, o in enumerate(objects) if j != i and o["shape"] != a["shape"] and o["visible"][t])
            b = out[j]
            switch = _switch(a["visible"] if qtype != "colour_change" else a["colour"])
            for key2 in ("visible", "colour"):
                a[key2] = [a[key2][t]] * T
            if qtype == "colour_change":
                new = _unused_colour(objects)
                b["colour"] = [b["colour"][t] if (s >= switch) == (t >= switch) else new for s in range(T)]
            else:  # b appears (vanishes) where a did: it is visible at t as a was
                b["visible"] = [s >= switch if qtype == "appear" else s < switch for s in range(T)]
            return out, t
        # ``a`` is not in frame t: it could have been another shape (one that leaves another object of another shape)
        a["shape"] = next(s for s in SHAPE_WORDS if s != a["shape"]
                          and any(o["shape"] != s for j, o in enumerate(objects) if j != i))
        return out, t
    if qtype == "event_count":
        changed = [i for i, o in enumerate(objects) if _changes(o)]
        if len(changed) >= 2:  # hold a moving / recolouring object still at its frame-t state
            i = next(i for i in changed if _changes(objects[i]) & {"move", "colour"})
            for key in ("x", "y", "colour", "visible"):
                out[i][key] = [out[i][key][t]] * T
            return out, t
        # one event: another object also changes colour, on the side of the change frame t does not show
        i = next(i for i, o in enumerate(objects) if not _changes(o))
        new, k = _unused_colour(objects), (CHANGE_LO if t >= CHANGE_LO else CHANGE_HI)
        out[i]["colour"] = [out[i]["colour"][0] if (s >= k) == (t >= k) else new for s in range(T)]
        return out, t
    raise AssertionError(qtype)


# ------------------------------------------------------------------------------------------------------- pixels


LUMA = np.array([0.299, 0.587, 0.114])


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected regions of a mask (a flood fill)."""
    seen = np.zeros(mask.shape, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        region = np.zeros(mask.shape, dtype=bool)
        stack = [(y0, x0)]
        seen[y0, x0] = region[y0, x0] = True
        while stack:
            y, x = stack.pop()
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = region[yy, xx] = True
                    stack.append((yy, xx))
        out.append(region)
    return out


def _blobs(frame: np.ndarray) -> dict[str, dict]:
    """Objects of a decoded frame: the 4-connected regions whose brightness differs from the background (brightness
    is at full resolution, colour at half), named by the palette colour nearest the median colour of their interior
    (each object of a clip has a colour of its own) → ``{mask, centre}`` (the centre of the region's box)."""
    pix = frame.astype(np.float64)
    names, palette = list(PALETTE), np.array(list(PALETTE.values()), dtype=np.float64)
    out = {}
    for mask in _regions(np.abs(pix @ LUMA - np.array(BACKGROUND) @ LUMA) > 25):
        if mask.sum() < 12:  # a speck of compression noise
            continue
        padded = np.pad(mask, 1)
        inner = mask & padded[2:, 1:-1] & padded[:-2, 1:-1] & padded[1:-1, 2:] & padded[1:-1, :-2]
        median = np.median(pix[inner if inner.sum() >= 4 else mask], axis=0)
        name = names[int(((palette - median) ** 2).sum(1).argmin())]
        assert name not in out, f"two objects of colour {name}"
        ys, xs = np.nonzero(mask)
        out[name] = {"mask": mask, "centre": ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)}
    return out


def _radius(size: str) -> float:
    return {"small": 0.24, "large": 0.40}[size] * SIZE / 3  # of a grid cell


def _template(shape: str, size: str, x: float, y: float) -> np.ndarray:
    """The pixels a shape covers (its geometry written out here: a square's half side 0.85 of the radius, a
    triangle's corners at (0, -1), (+-0.95, 0.8) of it)."""
    image = Image.new("L", (SIZE, SIZE), 0)
    draw, r = ImageDraw.Draw(image), _radius(size)
    if shape == "circle":
        draw.ellipse([round(x - r), round(y - r), round(x + r), round(y + r)], fill=1)
    elif shape == "square":
        h = 0.85 * r
        draw.rectangle([round(x - h), round(y - h), round(x + h), round(y + h)], fill=1)
    else:
        draw.polygon([(round(x), round(y - r)), (round(x - 0.95 * r), round(y + 0.8 * r)),
                      (round(x + 0.95 * r), round(y + 0.8 * r))], fill=1)
    return np.asarray(image, dtype=bool)


def _shape_of(mask: np.ndarray, size: str, x: float, y: float) -> str:
    """The shape whose pixels, drawn at ``(x, y)``, best match (IoU) an object's region."""
    def iou(shape: str) -> float:
        t = _template(shape, size, x, y)
        return (mask & t).sum() / (mask | t).sum()

    return max(SHAPE_WORDS, key=iou)


def _decoded(root: Path, rel: str) -> np.ndarray:
    return read_video_frames(root / rel, FRAMES, backend="av").numpy()  # 8 of 8 frames: every frame, in order


# ---------------------------------------------------------------------------------------------------------- tests


def test_same_seed_same_bytes_and_a_complete_folder_is_kept(tmp_path):
    """Catches a draw from the global ``random`` (or any unseeded / order-dependent source) and a completeness check
    that always fails (every use would regenerate)."""
    a = generate_shapes_video(tmp_path / "a", num_train=6, num_val=6, num_test=6)
    b = generate_shapes_video(tmp_path / "b", num_train=6, num_val=6, num_test=6)
    assert _hashes(a) == _hashes(b)
    assert (a / "video_qa_train.json").read_bytes() == (b / "video_qa_train.json").read_bytes()
    c = generate_shapes_video(tmp_path / "c", seed=1, num_train=6, num_val=6, num_test=6)
    assert (c / "clips.json").read_bytes() != (a / "clips.json").read_bytes()
    stamp = (a / "manifest.json").stat().st_mtime_ns
    assert generate_shapes_video(tmp_path / "a", num_train=6, num_val=6, num_test=6) == a
    assert (a / "manifest.json").stat().st_mtime_ns == stamp


def test_split_sizes_and_files(small):
    """Catches a split size off by one or swapped (``num_val`` clips written to test), a clip without its video, and
    question ids that repeat."""
    manifest = load_json(small, "manifest.json")
    assert manifest["version"] == 1 and manifest["videos"] == {"train": 72, "val": 12, "test": 12}
    clips = load_json(small, "clips.json")
    for split, n in zip(SPLITS, (72, 12, 12)):
        mine = [c for c in clips if c["split"] == split]
        assert len(mine) == n == len(list((small / "videos" / split).glob("*.mp4")))
        assert Counter(c["kind"] for c in mine) == {k: n // 6 for k in
                                                    ("move", "appear", "vanish", "recolour", "order", "multi")}
        assert len(load_json(small, f"video_retrieval_{split}.json")) == (4 * n if split == "train" else n)
        assert {e["video"] for e in load_json(small, f"video_qa_{split}.json")} == {c["video"] for c in mine}
    records = _records(small)
    assert len({e["question_id"] for e in records}) == len(records)
    assert {e["question_type"] for e in records} == set(TEMPORAL_QUESTION_TYPES + STATIC_QUESTION_TYPES)
    assert all(len(e["answer"]) == 10 and e["dataset"] == "shapes-video" for e in records)
    assert Counter(e["question_type"] for e in records) == manifest["question_types"]
    for name, count in manifest["files"].items():
        assert len(load_json(small, name)) == count


def test_frames_show_the_stored_states(small, clips):
    """Catches a renderer that draws every frame from the first frame's state (or one frame late), states stored
    after the rendering changed them, and predicted frames (``g`` > 1 in the writer), which carried a small shape's
    colour change only halfway."""
    for rel, clip in clips.items():
        frames = _decoded(small, rel)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        shapes: dict[int, Counter] = {id(o): Counter() for o in clip["objects"]}
        for t in range(FRAMES):
            blobs = _blobs(frames[t])
            shown = {o["colour"][t]: o for o in clip["objects"] if o["visible"][t]}
            assert set(blobs) == set(shown), (rel, t, sorted(blobs), sorted(shown))
            for colour, o in shown.items():
                cx, cy = blobs[colour]["centre"]
                assert abs(cx - o["x"][t]) < 2.5 and abs(cy - o["y"][t]) < 2.5, (rel, t, o, blobs[colour])
                shapes[id(o)][_shape_of(blobs[colour]["mask"], o["size"], o["x"][t], o["y"][t])] += 1
        for o in clip["objects"]:  # small shapes are a few pixels across: a majority over the frames
            assert shapes[id(o)].most_common(1)[0][0] == o["shape"], (rel, o, shapes[id(o)])


def test_answers_follow_from_the_states(small, clips):
    """Catches an answer taken from the wrong object or frame (the first colour for "what colour did it become?",
    the second mover for "which moved first?", events counted per event record instead of per changed object)."""
    for e in _records(small):
        assert _answer(clips[e["video"]]["objects"], e["question_type"], e["question"]) == _majority(e["answer"]), e


def test_answers_match_the_pixels(small, clips):
    """Catches directions named the wrong way round (a move "left" drawn to the right: image y grows downwards) and a
    new colour that is not the colour drawn in the last frame, read from the decoded video alone."""
    checked = Counter()
    for e in _records(small):
        frames = _decoded(small, e["video"])
        first, last = _blobs(frames[0]), _blobs(frames[-1])
        answer, q = _majority(e["answer"]), e["question"]
        if e["question_type"] == "direction":
            colour = next(w for w in q.split() if w in PALETTE)
            (x0, y0), (x1, y1) = first[colour]["centre"], last[colour]["centre"]
            dx, dy = x1 - x0, y1 - y0
            assert max(abs(dx), abs(dy)) > 8, e
            got = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert got == answer, (e, first[colour], last[colour])
        elif e["question_type"] == "colour_become":
            # the last frame shows the answer's colour where the named shape is, the first frame does not show it
            o = _one(clips[e["video"]]["objects"], shape=next(w for w in q.split() if w.rstrip("?") in SHAPE_WORDS))
            assert answer in last and answer not in first, e
            (x, y) = last[answer]["centre"]
            assert abs(x - o["x"][-1]) < 2.5 and abs(y - o["y"][-1]) < 2.5, e
        elif e["question_type"] in ("appear", "vanish"):
            # one colour more (less) in the last frame than in the first: that of the object of the answer's shape
            new = set(last) - set(first) if e["question_type"] == "appear" else set(first) - set(last)
            assert len(new) == 1 and set(first) ^ set(last) == new, e
            (o,) = [o for o in clips[e["video"]]["objects"] if new & set(o["colour"])]
            assert o["shape"] == answer, e
        elif e["question_type"] == "count":
            assert str(len(first)) == answer == str(len(last)), e
        else:
            continue
        checked[e["question_type"]] += 1
    assert set(checked) == {"direction", "colour_become", "appear", "vanish", "count"}


def test_no_single_frame_answers_a_temporal_question(small, clips):
    """For every temporal question and every frame of its clip, builds another clip the generator may draw
    (:func:`_valid`) that shows the same frame and answers the same question differently. Catches a one-object
    appear / vanish clip or one whose objects all share a shape (a frame then names the answer), two objects of one
    shape in a recolour clip, a change range that playing backwards leaves (then the reversed clip is not one the
    generator draws, and the frame could tell), movers that start from a fixed side, and temporal questions asked of a
    clip that does not hold their event."""
    checked = Counter()
    for e in _records(small):
        qtype = e["question_type"]
        if qtype not in TEMPORAL_QUESTION_TYPES:
            continue
        clip = clips[e["video"]]
        objects, answer = clip["objects"], _majority(e["answer"])
        assert _valid(clip["kind"], objects), clip
        for t in range(FRAMES):
            other, t2 = _counterfactual(clip["kind"], objects, qtype, t)
            assert _valid(clip["kind"], other), (e, t, other)
            assert _frame(other, t2) == _frame(objects, t), (e, t)
            assert _answer(other, qtype, e["question"]) != answer, (e, t)
        checked[qtype] += 1
    assert set(checked) == set(TEMPORAL_QUESTION_TYPES)


def test_static_questions_are_answered_by_every_frame(small, clips):
    """Catches a static colour question about an object that changes colour, appears or vanishes, or whose shape
    another object shares, and a count question in a clip whose number of visible objects changes."""
    checked = Counter()
    for e in _records(small):
        if e["question_type"] not in STATIC_QUESTION_TYPES:
            continue
        objects, answer = clips[e["video"]]["objects"], _majority(e["answer"])
        for t in range(FRAMES):
            shown = [o for o in objects if o["visible"][t]]
            if e["question_type"] == "count":
                assert str(len(shown)) == answer, e
            else:
                shape = e["question"].rstrip("?").split()[-1]
                (o,) = [o for o in shown if o["shape"] == shape]
                assert o["colour"][t] == answer and len([p for p in objects if p["shape"] == shape]) == 1, e
        checked[e["question_type"]] += 1
    assert set(checked) == set(STATIC_QUESTION_TYPES)


def test_answers_are_balanced_per_type(small):
    """Catches an answer drawn from a skewed distribution (a direction picked from the path's start, a first mover
    always named first, event counts tied to the number of objects): with 12 clips of each kind in train, every value
    of each temporal type and of the count comes out equally often, and the majority-answer baseline is chance."""
    by_type: dict[str, Counter] = {}
    first_named = Counter()
    for e in load_json(small, "video_qa_train.json"):
        answer = _majority(e["answer"])
        by_type.setdefault(e["question_type"], Counter())[answer] += 1
        if e["question_type"] == "order":
            first_named[next(w for w in e["question"].split(",")[1].split() if w in SHAPE_WORDS) == answer] += 1
    values = {"direction": 4, "order": 3, "appear": 3, "vanish": 3, "colour_change": 3, "colour_become": 6,
              "event_count": 3, "count": 3}
    for qtype, k in values.items():
        counts = by_type[qtype]
        assert len(counts) == k and len(set(counts.values())) == 1, (qtype, counts)
    assert first_named[True] == first_named[False]
    colours = by_type["colour"]
    assert max(colours.values()) / sum(colours.values()) < 0.3, colours  # chance 1/6, 40-odd questions


def test_captions_describe_the_events_and_tell_clips_apart(small, clips):
    """Catches a caption naming a colour the clip does not show, an event verb for an event the clip does not have
    (or none for one it has), a direction that is not a mover's, repeated captions of one clip, and evaluation clips
    sharing a caption (which would make text-to-video retrieval ambiguous)."""
    verbs = {"move": ("moves", "slides"), "appear": ("appears", "shows up"), "vanish": ("disappears", "vanishes"),
             "recolour": ("turns", "becomes", "changes from")}
    for split in SPLITS:
        entries = load_json(small, f"video_retrieval_{split}.json")
        assert load_json(small, f"video_caption_{split}.json") == entries
        grouped: dict[str, list[str]] = {}
        for e in entries:
            grouped.setdefault(e["video"], []).extend([e["caption"]] if split == "train" else e["caption"])
        if split != "train":
            owners = Counter(c for captions in grouped.values() for c in captions)
            assert max(owners.values()) == 1, [c for c, n in owners.items() if n > 1]
        for rel, captions in grouped.items():
            clip = clips[rel]
            assert len(captions) == 4 == len(set(captions)), captions
            colours = {c for o in clip["objects"] for c in o["colour"]}
            types = {ev["type"] for ev in clip["events"]}
            directions = {ev["direction"] for ev in clip["events"] if ev["type"] == "move"}
            for caption in captions:
                assert {w for w in caption.split() if w in PALETTE} <= colours, (caption, clip)
                for kind, forms in verbs.items():
                    assert any(re.search(rf"\b{form}\b", caption) for form in forms) == (kind in types), \
                        (caption, types)
                told = re.findall(r" (?:moves|slides) (?:to the )?(left|right|up|down)", caption)
                assert told and set(told) <= directions if directions else not told, (caption, directions)


def test_the_readers_load_the_records(small):
    """Catches records the repository's readers refuse or misread: a video path not relative to the root, an answer
    missing from the answer list, frames that decord and PyAV decode differently."""
    from zoo.data.datasets import (
        CaptionEvalDataset,
        CaptionTrainDataset,
        RetrievalEvalDataset,
        RetrievalTrainDataset,
        VQADataset,
        answer_vocabulary,
    )

    answers = set(answer_vocabulary(small / "answer_list.json"))
    assert {a for e in _records(small) for a in e["answer"]} <= answers
    for backend in ("av", "decord"):
        if backend == "decord":
            pytest.importorskip("decord")
        qa = VQADataset([str(small / "video_qa_test.json")], media_root=str(small), image_size=64, train=False,
                        num_frames=4, video_backend=backend)
        assert qa.video and len(qa) == len(load_json(small, "video_qa_test.json"))
        assert qa.check_media() == 12
        item = qa[0]
        assert item["image"].shape == (4, 3, 64, 64) and item["answers"]
    for cls, name in ((RetrievalTrainDataset, "video_retrieval_train.json"),
                      (CaptionTrainDataset, "video_caption_train.json")):
        ds = cls([str(small / name)], media_root=str(small), image_size=64, train=True, num_frames=4,
                 randaugment=False)
        assert ds.video and len(ds) == 4 * 72 and ds.num_images == 72
    for cls, name in ((RetrievalEvalDataset, "video_retrieval_test.json"),
                      (CaptionEvalDataset, "video_caption_test.json")):
        ds = cls([str(small / name)], media_root=str(small), image_size=64, train=False, num_frames=4)
        assert ds.video and len(ds) == 12
        assert ds[0]["image"].shape == (4, 3, 64, 64)
    pytest.importorskip("decord")
    for rel in sorted(small.glob("videos/test/*.mp4"))[:4]:
        by_decord = read_video_frames(rel, FRAMES, backend="decord")
        by_av = read_video_frames(rel, FRAMES, backend="av")
        assert by_decord.shape == by_av.shape and (by_decord.float() - by_av.float()).abs().mean() < 2


def test_the_tokenizer_knows_every_word(small):
    """Catches a tokenizer built from some of the files only (a word of the questions or captions spelt letter by
    letter, or unknown)."""
    from transformers import AutoTokenizer

    from zoo.data.datasets import pre_caption

    tok = AutoTokenizer.from_pretrained(str(small / "tokenizer_xlmr"))
    texts = [e["question"] for e in _records(small)] + [c for e in load_json(small, "video_retrieval_test.json")
                                                        for c in e["caption"]]
    for text in {pre_caption(t, 100) for t in texts}:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text.split()) and tok.unk_token_id not in ids, (text, tok.tokenize(text))


def test_bad_parameters_and_foreign_folders_are_refused(tmp_path):
    """Catches a size decord mis-decodes (48 px) or a frame count too short for a before and an after, accepted
    silently, and a mistyped root whose files would be deleted."""
    with pytest.raises(ValueError, match="size"):
        generate_shapes_video(tmp_path / "x", size=48)
    with pytest.raises(ValueError, match="frames"):
        generate_shapes_video(tmp_path / "x", frames=4)
    with pytest.raises(TypeError):
        generate_shapes_video(tmp_path / "x", num_train=2.5)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_shapes_video(mine, num_train=1, num_val=1, num_test=1)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_root_shapes_video_resolves_and_the_shapes_dataset_is_unchanged(tmp_path, monkeypatch):
    """Catches ``root: shapes-video`` not resolved (or resolved to the image dataset), and a change to what
    ``generate_shapes`` writes: its version, and the bytes of a tiny dataset written before and after generating
    shapes-video (the video generator shares the shapes module's tables and must not modify them)."""
    from zoo.data import shapes, shapes_video
    from zoo.train.run import resolve_data

    assert shapes.SHAPES_VERSION == 3
    tiny = {"num_train_images": 6, "num_val_images": 2, "num_test_images": 2, "image_size": 48, "num_videos": 3,
            "video_frames": 4, "languages": ()}
    before = _hashes(shapes.generate_shapes(tmp_path / "before", **tiny))
    generate_shapes_video(tmp_path / "video", num_train=6, num_val=1, num_test=1)
    after = _hashes(shapes.generate_shapes(tmp_path / "after", **tiny))
    assert before == after
    assert load_json(tmp_path / "after", "manifest.json")["version"] == 3
    monkeypatch.setattr(shapes_video, "generate_shapes_video", lambda: tmp_path / "video")
    monkeypatch.setattr(shapes, "generate_shapes", lambda: tmp_path / "after")
    assert resolve_data({"root": "shapes-video", "train": ["x.json"]}) == {"root": str(tmp_path / "video"),
                                                                           "train": ["x.json"]}
    assert resolve_data({"root": "shapes"})["root"] == str(tmp_path / "after")
    assert json.loads((tmp_path / "video" / "manifest.json").read_text())["name"] == "shapes-video"
