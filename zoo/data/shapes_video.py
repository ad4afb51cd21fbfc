"""The embedded "shapes-video" dataset: short clips of flat shapes whose questions and captions need time.

The "shapes" dataset (:mod:`zoo.data.shapes`) holds a small video split of one shape crossing the frame; its questions
are mostly answerable from any one frame (the colour and shape of the moving object), and its direction questions from
where the object starts. This separate dataset is built so that time matters: each 8-frame clip (1-3 objects of the
shapes vocabulary: three shapes, six colours, two sizes; every object of a clip a colour of its own) shows events, and
the questions of the *temporal* family ask about them; those of the *static* family can be answered from any frame.

Clip kinds (cycled by index, so each split holds them in equal numbers):

- ``move``: one of 1-3 objects moves (right, left, up or down) over the whole clip, the others stay still;
- ``appear`` / ``vanish``: one of 2-3 objects is visible only from frame k (appear) or only before frame k (vanish);
- ``recolour``: one of 2-3 objects (all shapes different) changes colour at frame k;
- ``order``: two of 2-3 objects (all shapes different) move one after the other (the first over frames 0 to T/2-1,
  the second over frames T/2 to T-1);
- ``multi``: three objects, 1-3 of them with an event (a move or a colour change; in half of the clips, whatever the
  number of events, one of them an appearance or a vanishing instead).

k (the first frame of the new state) is drawn from ``[T/2 - 1, T/2 + 1]`` (3-5 of 8 frames), so that the first and
the last of 3 or 4 frames sampled by segments (:func:`zoo.data.video.sample_frame_indices`, training or evaluation)
fall on either side of every change, and a clip played backwards has its change in the same range. A moving object
travels 0.6 grid cells (13 px at 64 px) in a straight line; where it starts is uniform over the positions from which
the whole path fits, for either direction (the set of paths is the same for opposite directions: playing a clip
backwards gives another clip the generator draws as often). Every position an object takes is at least ``2`` px (plus
both objects' bounding radii, the same for every shape) away from every position another object takes in any frame, so
objects never touch, and an object held still at any of its positions, or drawn as another shape, stays clear of the
others.

Questions (``question_type``; :data:`TEMPORAL_QUESTION_TYPES`, :data:`STATIC_QUESTION_TYPES`):

- temporal: ``direction`` ("which way does the red circle move?"), ``order`` ("which moved first, the square or the
  circle?", answer a shape), ``appear`` ("what appeared?", a shape), ``vanish`` ("what disappeared?", a shape),
  ``colour_change`` ("what changed colour?", a shape), ``colour_become`` ("what colour did the square become?", a
  colour), ``event_count`` ("how many things changed?", 1-3);
- static: ``colour`` ("what colour is the circle?": an object visible in every frame, of a shape no other object of
  the clip has, whose colour never changes) and ``count`` ("how many shapes are there?", move clips only, where every
  object is visible throughout).

No single frame, taken alone, determines a temporal answer: played backwards, a clip shows the same frames with the
opposite direction, the other object first, or the colour it started with; for the what-questions another valid clip
shows the same frame with another answer (another object appears, vanishes or changes colour, or an object hidden in
that frame has another shape — hence every appear / vanish clip holds an object of another shape than the answer, and
recolour clips hold no two objects of the same shape); for counts, holding one event's object still at that frame's
state, or adding a colour change that frame does not show, changes the count by one. ``tests/test_shapes_video.py``
builds these clips from the stored frame states and checks them. (A model that knows which frame it is looking at can
do better than chance on some: the last frame shows the colour a shape became, and a moving object near the border in
the first frame can only go one way.) Answers are balanced per type: the attribute an answer names is drawn uniformly
(directions, shapes, new colours, event counts, object counts), and an ``order`` question names its two shapes in
random order.

Files under the root (paths in the JSON files are relative to the root):

- ``videos/{train,val,test}/NNNNN.mp4``: NNNNN the global clip id (unique across splits), ``frames`` frames at 8 fps,
  ``size`` px square, written as :func:`zoo.data.shapes._write_video` writes (mpeg4, or h264 when mpeg4 is missing,
  bit-exact) but with every frame a key frame (:func:`_write_clip`);
- ``video_qa_{split}.json``: ``[{question_id, question, answer: [10 strings], video, dataset, question_type}]`` (the
  VQA layout the video QA reader takes; 10 answers, mostly the true one with 0-2 deterministic "annotator"
  alternatives, as in the shapes data) and ``answer_list.json``;
- ``video_retrieval_train.json`` / ``video_caption_train.json``: ``[{video, caption, video_id}]``, one entry per
  caption (4 per clip); ``video_retrieval_{val,test}.json`` / ``video_caption_{val,test}.json``: ``[{video, caption:
  [4 strings]}]``; captions name the events in time order ("a small red circle moves left, then a large blue square
  moves up", "the small red circle turns blue while a green square appears"), with the objects that stay still in
  some; no caption of a val / test clip is also a caption of another
  clip of its split (a clip that would repeat one is redrawn);
- ``clips.json``: every clip's kind, objects (shape, size, and per frame: centre ``x``, ``y`` in pixels, ``colour``,
  ``visible``) and events (``move`` with ``direction``, ``start`` and ``end`` frames; ``appear`` / ``vanish`` /
  ``recolour`` with ``frame`` k, a recolour with ``from`` and ``to``); the frames are rendered from these states;
- ``tokenizer_xlmr/``: an XLM-R-format word tokenizer of every caption, question and answer (as
  :func:`zoo.data.shapes.build_shapes_tokenizer` writes for the image data), which ``text.tokenizer: data`` picks up;
- ``manifest.json``: version, parameters, the entry count of every file, clips per split, questions per type; written
  last.

Determinism and caching as :func:`zoo.data.shapes.generate_shapes`: every clip draws from its own ``random.Random``
seeded with a string of the seed, the split and the index, and the values its answers name from generators seeded with
the seed, the split, the kind and the block of clips (:func:`_balanced`), so one seed gives byte-identical files and
adding clips to a split changes no earlier clip; the dataset is
generated into a temporary sibling folder and renamed into place under a lock file; a folder whose manifest names the
same version and parameters is returned as is.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zoo.data.shapes import (
    _ALTERNATIVES,
    _DIRECTION_ALTERNATIVES,
    _POSITION_PHRASES,
    _RADIUS,
    _VIDEO_FPS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    TOKENIZER_DIR,
    _answer_list,
    _dump,
    _lock,
    _Object,
    _read_manifest,
    _render,
    _ten_answers,
    _video_codec,
    _write_video,
    mmzoo_home,
)

__all__ = [
    "CLIP_KINDS",
    "SHAPES_VIDEO_VERSION",
    "STATIC_QUESTION_TYPES",
    "TEMPORAL_QUESTION_TYPES",
    "VQA_DATASET_TAG",
    "bound_radius",
    "change_frames",
    "default_shapes_video_root",
    "generate_shapes_video",
    "min_gap",
]

SHAPES_VIDEO_VERSION = 1
VQA_DATASET_TAG = "shapes-video"
MANIFEST = "manifest.json"
CLIP_KINDS = ("move", "appear", "vanish", "recolour", "order", "multi")
TEMPORAL_QUESTION_TYPES = ("direction", "order", "appear", "vanish", "colour_change", "colour_become", "event_count")
STATIC_QUESTION_TYPES = ("colour", "count")

_SPLITS = ("train", "val", "test")
_CAPTIONS_PER_CLIP = 4
_MOVE_CELLS = 0.6  # how far a moving object travels, in grid cells
_GAP = 2.0  # px between the bounding circles of two objects, over all their positions
_ALTERNATIVE_ANSWERS = {**_ALTERNATIVES, **_DIRECTION_ALTERNATIVES}
_FILES = tuple(f"video_{kind}_{split}.json" for kind in ("qa", "retrieval", "caption") for split in _SPLITS) + (
    "answer_list.json", "clips.json")
_KNOWN_NAMES = frozenset(_FILES + (MANIFEST, "videos", TOKENIZER_DIR))
_STEP = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def default_shapes_video_root() -> Path:
    """``{mmzoo_home()}/datasets/shapes-video-v1``."""
    return mmzoo_home() / "datasets" / f"shapes-video-v{SHAPES_VIDEO_VERSION}"


# ------------------------------------------------------------------------------------------------------- geometry


def bound_radius(size: str, image_size: int) -> float:
    """Radius (px) of a circle around the centre that holds any shape of ``size`` drawn at ``image_size`` (a
    triangle's base corners are 1.25 times the shape radius away, a square's corners 1.21 times), plus half a pixel of
    rounding. The same for every shape, so a clip stays valid if an object's shape is swapped for another."""
    return 1.25 * _RADIUS[size] * image_size / 3 + 0.5


def min_gap(size_a: str, size_b: str, image_size: int) -> float:
    """The least distance (px) between the centres of two objects of sizes ``size_a`` and ``size_b``, in any two
    frames of a clip."""
    return bound_radius(size_a, image_size) + bound_radius(size_b, image_size) + _GAP


def change_frames(frames: int) -> tuple[int, int]:
    """``(lo, hi)``: the frames k (first frame of the new state) an appearance, vanishing or colour change may take:
    3-5 of 8, a range that playing the clip backwards maps onto itself (k -> frames - k)."""
    lo = frames // 2 - 1
    return lo, frames - lo


def _move_span(kind: str, which: int, frames: int) -> tuple[int, int]:
    """``(start, end)`` frames of a move: the whole clip, or in order clips the first or the second half."""
    if kind != "order":
        return 0, frames - 1
    half = frames // 2
    return (0, half - 1) if which == 0 else (half, frames - 1)


# ---------------------------------------------------------------------------------------------------------- clips


Target = Callable[[str, Sequence[Any]], Any]


def _plan(kind: str, rng: random.Random, frames: int,
          target: Target) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """``(objects, events, asked)`` of a clip of ``kind`` without positions: objects ``{shape, size, colour}``, events
    ``{type, object, ...}``, and what the questions ask about (``asked``: the object of the direction and of the static
    colour question, whether the order question names the first mover first). The values the answers name come from
    ``target(name, values)`` (:func:`_balanced`), the rest from ``rng``."""
    lo, hi = change_frames(frames)
    asked: dict[str, Any] = {}
    if kind == "move":
        n = target("objects", (1, 2, 3))
        shapes = [rng.choice(SHAPES) for _ in range(n)]
    elif kind in ("appear", "vanish"):
        n = rng.choice((2, 3))
        shapes = [target("shape", SHAPES)]
        while True:  # another object of another shape: an end frame does not tell which one appeared
            others = [rng.choice(SHAPES) for _ in range(n - 1)]
            if any(s != shapes[0] for s in others):
                break
        shapes += others
    elif kind in ("recolour", "order"):
        n = rng.choice((2, 3))
        first = target("shape", SHAPES)
        shapes = [first, *rng.sample([s for s in SHAPES if s != first], n - 1)]
    else:  # multi
        n = 3
        shapes = [rng.choice(SHAPES) for _ in range(n)]
    kinds: list[str] = []
    if kind == "multi":
        # whether one of the events is an appearance or a vanishing does not depend on how many events there are: a
        # frame with an object missing says nothing about the count
        kinds = [rng.choice(("move", "recolour")) for _ in range(target("events", (1, 2, 3)))]
        if rng.random() < 0.5:
            kinds[rng.randrange(len(kinds))] = rng.choice(("appear", "vanish"))
    else:
        kinds = {"move": ["move"], "appear": ["appear"], "vanish": ["vanish"], "recolour": ["recolour"],
                 "order": ["move", "move"]}[kind]
    new = [target("to", tuple(COLOURS))] if kind == "recolour" else []
    colours = rng.sample([c for c in COLOURS if c not in new], n + kinds.count("recolour") - len(new)) + new
    changed = {i for i, k in enumerate(kinds) if k != "move"}  # a moving object keeps its colour
    eligible = [i for i in range(n) if i not in changed and sum(s == shapes[i] for s in shapes) == 1]
    if eligible and kind != "move":
        # the static colour question: the object it asks about gets the colour its answer is to be (swapped with the
        # object that had it; the new colour of a recolour clip stays where it is)
        asked["colour"] = i = rng.choice(eligible)
        want = target("colour", tuple(COLOURS))
        if want not in new:
            if want in colours:
                j = colours.index(want)
                colours[j] = colours[i]
            colours[i] = want
    objects = [{"shape": s, "size": rng.choice(SIZES), "colour": c} for s, c in zip(shapes, colours)]
    spare = colours[n:]
    events: list[dict[str, Any]] = []
    movers = [i for i, k in enumerate(kinds) if k == "move"]
    if kind in ("move", "order"):
        asked["direction"] = rng.choice(movers)
    if kind == "order":
        asked["first_named_first"] = target("named", (True, False))
    for i, event in enumerate(kinds):
        if event == "move":
            start, end = _move_span(kind, i, frames)
            direction = target("direction", DIRECTIONS) if asked.get("direction") == i else rng.choice(DIRECTIONS)
            events.append({"type": "move", "object": i, "direction": direction, "start": start, "end": end})
        elif event == "recolour":
            events.append({"type": "recolour", "object": i, "frame": rng.randint(lo, hi),
                           "from": objects[i]["colour"], "to": spare.pop(0)})
        else:
            events.append({"type": event, "object": i, "frame": rng.randint(lo, hi)})
    return objects, events, asked


def _balanced(seed: int, split: str, kind: str, j: int) -> Target:
    """``target(name, values)`` for the ``j``-th clip of ``kind`` in ``split``: each block of ``len(values)``
    consecutive clips of the kind takes every value once, in an order drawn for the block (its own generator, so a
    clip's values depend on the seed, split, kind and block only). Answers are therefore balanced per question type
    in every split, to within one block."""
    def target(name: str, values: Sequence[Any]) -> Any:
        block, pos = divmod(j, len(values))
        order = list(values)
        _rng(seed, split, kind, name, block).shuffle(order)
        return order[pos]

    return target


def _place(objects: list[dict[str, Any]], events: list[dict[str, Any]], rng: random.Random, frames: int,
           size: int) -> None:
    """Per-frame states (``x``, ``y``, ``colour``, ``visible`` lists) of every object. Positions are drawn object by
    object until each keeps :func:`min_gap` from the objects placed before over all their positions (starting again
    after 100 misses); where that fails 50 times (three large objects, two or three of them moving, may not fit) the
    objects' sizes are drawn again (no question asks about sizes)."""
    moves = {e["object"]: e for e in events if e["type"] == "move"}
    travel = _MOVE_CELLS * size / 3

    def path(i: int, obj: dict[str, Any]) -> list[tuple[float, float]]:
        r = bound_radius(obj["size"], size)
        lo, hi = r + 1, size - 1 - r
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if i not in moves:
            return [(round(x, 2), round(y, 2))] * frames
        e = moves[i]
        dx, dy = _STEP[e["direction"]]
        # the path [a, a + travel] along the axis is uniform over the positions that fit, for either direction
        a = rng.uniform(lo, hi - travel)
        start = a if dx + dy > 0 else a + travel
        along = [start + (dx + dy) * travel * min(max((t - e["start"]) / (e["end"] - e["start"]), 0.0), 1.0)
                 for t in range(frames)]
        return [(round(p, 2), round(y, 2)) if dx else (round(x, 2), round(p, 2)) for p in along]

    paths: list[list[tuple[float, float]]] = []
    for _ in range(20):
        for _ in range(50):
            paths = []
            for i, obj in enumerate(objects):
                for _ in range(100):
                    candidate = path(i, obj)
                    if all(_apart(candidate, paths[j], min_gap(objects[j]["size"], obj["size"], size)) for j in range(i)):
                        paths.append(candidate)
                        break
                else:
                    break
            if len(paths) == len(objects):
                break
        if len(paths) == len(objects):
            break
        for obj in objects:
            obj["size"] = rng.choice(SIZES)
    else:  # pragma: no cover - small objects always fit
        raise RuntimeError("generate_shapes_video: could not place the objects of a clip")
    for i, obj in enumerate(objects):
        obj["x"] = [p[0] for p in paths[i]]
        obj["y"] = [p[1] for p in paths[i]]
        obj["colour"] = [obj["colour"]] * frames
        obj["visible"] = [True] * frames
    for e in events:
        obj, k = objects[e["object"]], e.get("frame")
        if e["type"] == "appear":
            obj["visible"] = [t >= k for t in range(frames)]
        elif e["type"] == "vanish":
            obj["visible"] = [t < k for t in range(frames)]
        elif e["type"] == "recolour":
            obj["colour"] = [e["from"] if t < k else e["to"] for t in range(frames)]


def _apart(a: list[tuple[float, float]], b: list[tuple[float, float]], gap: float) -> bool:
    return all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= gap * gap for p in set(a) for q in set(b))


def _write_clip(path: Path, frames: list, size: int, codec: str) -> None:
    """As the shapes videos, with every frame a key frame: predicted frames carried a colour change of a small shape
    only halfway (a purple circle turning blue decoded as a colour halfway between the two)."""
    _write_video(path, frames, size, codec, key_frames_only=True)


def _frames(objects: list[dict[str, Any]], frames: int, size: int) -> list:
    return [_render([(_Object(o["shape"], o["colour"][t], o["size"], 0), (o["x"][t], o["y"][t]))
                     for o in objects if o["visible"][t]], size) for t in range(frames)]


# -------------------------------------------------------------------------------------------------------- language


def _cell(x: float, y: float, size: int) -> int:
    return min(int(y * 3 / size), 2) * 3 + min(int(x * 3 / size), 2)


def _lane(o: dict[str, Any], e: dict[str, Any], size: int) -> str:
    """Where a move runs: the row (horizontal) or column (vertical) of its path."""
    if e["direction"] in ("left", "right"):
        return ("along the top", "through the middle", "along the bottom")[min(int(o["y"][0] * 3 / size), 2)]
    return ("on the left", "in the middle", "on the right")[min(int(o["x"][0] * 3 / size), 2)]


def _name(o: dict[str, Any], colour: str, full: bool, article: str = "a") -> str:
    words = [o["size"], colour, o["shape"]] if full else [colour, o["shape"]]
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    return " ".join([article, *words])


def _event_phrase(e: dict[str, Any], o: dict[str, Any], size: int, full: bool, style: int, place: bool) -> str:
    colour = e.get("from", o["colour"][0])
    kind = e["type"]
    if kind == "move":
        verb = ("moves", "slides", "moves")[style]
        direction = {"right": "to the right", "left": "to the left"}.get(e["direction"], e["direction"]) \
            if style == 2 else e["direction"]
        return f"{_name(o, colour, full)} {verb} {direction}" + (f" {_lane(o, e, size)}" if place else "")
    if kind == "appear":
        where = f" {_POSITION_PHRASES[_cell(o['x'][-1], o['y'][-1], size)]}" if place else ""
        return f"{_name(o, colour, full)} {('appears', 'shows up', 'appears')[style]}{where}"
    if kind == "vanish":
        where = f" {_POSITION_PHRASES[_cell(o['x'][0], o['y'][0], size)]}" if place else ""
        return f"{_name(o, colour, full, 'the')}{where} {('disappears', 'vanishes', 'disappears')[style]}"
    if style == 1:
        return f"{_name(o, colour, full, 'the')} changes from {e['from']} to {e['to']}"
    return f"{_name(o, colour, full, 'the')} {('turns', '', 'becomes')[style]} {e['to']}"


def _sequence(events: list[dict[str, Any]], phrases: list[str]) -> str:
    """The event phrases in time order: "then" after an event that has ended, "while" during one, "and" at once."""
    order = sorted(range(len(events)), key=lambda i: (_onset(events[i]), events[i]["object"]))
    out = phrases[order[0]]
    for prev, cur in itertools.pairwise(order):
        a, b = events[prev], events[cur]
        if _onset(b) == _onset(a):
            joint = " and "
        elif _onset(b) > _ending(a):
            joint = ", then "
        else:
            joint = " while "
        out += joint + phrases[cur]
    return out


def _onset(e: dict[str, Any]) -> int:
    return e["start"] if e["type"] == "move" else e["frame"]


def _ending(e: dict[str, Any]) -> int:
    return e["end"] if e["type"] == "move" else e["frame"]


def _captions(objects: list[dict[str, Any]], events: list[dict[str, Any]], size: int,
              rng: random.Random) -> list[str]:
    """:data:`_CAPTIONS_PER_CLIP` distinct captions: the events in time order, in several wordings, some naming the
    objects that stay still."""
    moved = {e["object"] for e in events}
    still = [o for i, o in enumerate(objects) if i not in moved]

    def told(full: bool, style: int, place: bool) -> str:
        return _sequence(events, [_event_phrase(e, objects[e["object"]], size, full, style, place) for e in events])

    def still_names(full: bool) -> str:
        names = [_name(o, o["colour"][0], full) for o in still]
        return names[0] if len(names) == 1 else f"{names[0]} and {names[1]}"

    candidates = [told(True, 0, False), told(False, 1, True), told(True, 2, True), f"a video where {told(False, 0, False)}"]
    if still:
        stay = "stays" if len(still) == 1 else "stay"
        candidates += [f"{told(True, 0, False)} while {still_names(False)} {stay} still",
                       f"{told(False, 2, False)} next to {still_names(True)}"]
    else:
        candidates += [f"{told(False, 2, True)}", f"{len(objects)} shapes: {told(True, 1, False)}"]
    candidates = list(dict.fromkeys(candidates))
    rng.shuffle(candidates)
    return candidates[:_CAPTIONS_PER_CLIP]


def _questions(kind: str, objects: list[dict[str, Any]], events: list[dict[str, Any]], asked: dict[str, Any],
               rng: random.Random) -> list[tuple[str, str, str]]:
    """``(question_type, question, answer)`` of a clip: its temporal question(s), then one static question when the
    clip has an object (or a count) one frame shows."""
    out: list[tuple[str, str, str]] = []
    by_type = {e["type"]: e for e in events}
    if kind == "order":
        first, second = (objects[e["object"]]["shape"] for e in sorted(events, key=_onset))
        named = (first, second) if asked["first_named_first"] else (second, first)
        text = rng.choice(("which moved first, the {} or the {}?", "which shape moved first, the {} or the {}?"))
        out.append(("order", text.format(*named), first))
    if kind in ("move", "order"):
        e = next(e for e in events if e["object"] == asked["direction"])
        o = objects[e["object"]]
        text = rng.choice(("which way does the {} {} move?", "in which direction is the {} {} moving?"))
        out.append(("direction", text.format(o["colour"][0], o["shape"]), e["direction"]))
    if kind in ("appear", "vanish"):
        o = objects[by_type[kind]["object"]]
        text = rng.choice(("what appeared?", "which shape appeared?") if kind == "appear" else
                          ("what disappeared?", "which shape vanished?"))
        out.append((kind, text, o["shape"]))
    if kind == "recolour":
        e = by_type["recolour"]
        o = objects[e["object"]]
        out.append(("colour_change", rng.choice(("what changed colour?", "which shape changed colour?")), o["shape"]))
        text = rng.choice(("what colour did the {} become?", "what colour does the {} turn?"))
        out.append(("colour_become", text.format(o["shape"]), e["to"]))
    if kind == "multi":
        text = rng.choice(("how many things changed?", "how many things happen in the video?"))
        out.append(("event_count", text, str(len(events))))
    if kind == "move":
        text = rng.choice(("how many shapes are there?", "how many shapes are in the video?"))
        out.append(("count", text, str(len(objects))))
    elif "colour" in asked:
        o = objects[asked["colour"]]
        text = rng.choice((f"what colour is the {o['shape']}?", f"what colour is the {o['size']} {o['shape']}?"))
        out.append(("colour", text, o["colour"][0]))
    return out


# ------------------------------------------------------------------------------------------------------ generation


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random(":".join(["shapes-video", str(SHAPES_VIDEO_VERSION), str(seed), *map(str, parts)]))


def _check_params(seed, num_train, num_val, num_test, frames, size) -> dict[str, int]:
    params = {"seed": seed, "num_train": num_train, "num_val": num_val, "num_test": num_test, "frames": frames,
              "size": size}
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"generate_shapes_video: {key} must be an int, got {type(value).__name__} {value!r}")
    for key in ("num_train", "num_val", "num_test"):
        if params[key] < 1:
            raise ValueError(f"generate_shapes_video: {key} must be >= 1, got {params[key]}")
    if not 6 <= frames <= 64:
        raise ValueError(f"generate_shapes_video: frames must be within 6-64 (events need a before and an after "
                         f"around frames {frames // 2 - 1}-{frames - frames // 2 + 1}), got {frames}")
    if size % 32 or not 64 <= size <= 128:
        # decord mis-decodes some other widths (48 px, for one)
        raise ValueError(f"generate_shapes_video: size must be 64, 96 or 128 (a multiple of 32), got {size}")
    return params


def _corpus(files: dict[str, Any]) -> list[str]:
    """Every question, caption and answer, raw and as the readers clean them, distinct, in file order."""
    from zoo.data.datasets import pre_caption

    texts: list[str] = list(files["answer_list.json"])
    for name in sorted(files):
        if name.startswith(("video_qa_", "video_retrieval_")):
            for e in files[name]:
                if "question" in e:
                    texts += [e["question"], *e["answer"]]
                else:
                    texts += [e["caption"]] if isinstance(e["caption"], str) else e["caption"]
    return list(dict.fromkeys(t for text in texts for t in (text, pre_caption(text, 10_000))))


def _generate_into(folder: Path, params: dict[str, int]) -> dict[str, Any]:
    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer

    seed, frames, size = params["seed"], params["frames"], params["size"]
    counts = {"train": params["num_train"], "val": params["num_val"], "test": params["num_test"]}
    codec = _video_codec()
    files: dict[str, Any] = {}
    clips: list[dict[str, Any]] = []
    types: Counter[str] = Counter()
    video_id = 0
    for split in _SPLITS:
        (folder / "videos" / split).mkdir(parents=True, exist_ok=True)
        qa, retrieval = [], []
        seen: set[str] = set()  # the captions of the split so far (evaluation splits repeat none)
        for index in range(counts[split]):
            rng = _rng(seed, split, index)
            kind = CLIP_KINDS[index % len(CLIP_KINDS)]
            target = _balanced(seed, split, kind, index // len(CLIP_KINDS))
            for _ in range(100):
                objects, events, asked = _plan(kind, rng, frames, target)
                _place(objects, events, rng, frames, size)
                captions = _captions(objects, events, size, rng)
                if split == "train" or not seen & set(captions):
                    break
            else:  # pragma: no cover - thousands of distinct captions per kind
                raise RuntimeError(f"generate_shapes_video: no clip of {split} {index} with new captions")
            seen.update(captions)
            rel = f"videos/{split}/{video_id:05d}.mp4"
            _write_clip(folder / rel, _frames(objects, frames, size), size, codec)
            clips.append({"video": rel, "video_id": video_id, "split": split, "kind": kind, "objects": objects,
                          "events": events})
            if split == "train":
                retrieval += [{"video": rel, "caption": c, "video_id": video_id} for c in captions]
            else:
                retrieval.append({"video": rel, "caption": captions})
            for j, (qtype, question, answer) in enumerate(_questions(kind, objects, events, asked, rng)):
                qa.append({"question_id": video_id * 10 + j, "question": question,
                           "answer": _ten_answers(answer, rng, _ALTERNATIVE_ANSWERS), "video": rel,
                           "dataset": VQA_DATASET_TAG, "question_type": qtype})
                types[qtype] += 1
            video_id += 1
        files[f"video_qa_{split}.json"] = qa
        files[f"video_retrieval_{split}.json"] = retrieval
        files[f"video_caption_{split}.json"] = [dict(e) for e in retrieval]
    files["answer_list.json"] = _answer_list([*DIRECTIONS, *COLOURS, *SHAPES, "1", "2", "3"], _ALTERNATIVE_ANSWERS)
    files["clips.json"] = clips
    for name, obj in files.items():
        _dump(folder / name, obj)
    build_multilingual_tokenizer(_corpus(files), folder / TOKENIZER_DIR, vocab_size=511, model="words")
    manifest = {"name": "shapes-video", "version": SHAPES_VIDEO_VERSION, "params": params,
                "files": {name: len(obj) for name, obj in sorted(files.items())}, "videos": counts,
                "video_codec": codec, "video_fps": _VIDEO_FPS,
                "question_types": {t: types[t] for t in TEMPORAL_QUESTION_TYPES + STATIC_QUESTION_TYPES}}
    _dump(folder / MANIFEST, manifest)  # last: its presence means "complete"
    return manifest


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("version") != SHAPES_VIDEO_VERSION or manifest.get("params") != params:
        return False
    listed = manifest.get("files")
    if not isinstance(listed, dict) or set(listed) != set(_FILES):
        return False
    return all((root / name).is_file() for name in listed) and (root / TOKENIZER_DIR / "tokenizer.json").is_file()


def _check_replaceable(root: Path) -> None:
    """Refuse to delete a folder that holds files this generator does not write (a mistyped root)."""
    if not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder; expected a shapes-video dataset folder")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _KNOWN_NAMES and not p.name.startswith("."))
    if foreign:
        raise FileExistsError(f"{root}: holds files the shapes-video generator did not write "
                              f"({', '.join(foreign[:5])}); refusing to replace it — pass another root or remove the "
                              "folder")


def generate_shapes_video(root: str | os.PathLike | None = None, *, seed: int = 0, num_train: int = 3000,
                          num_val: int = 300, num_test: int = 300, frames: int = 8, size: int = 64,
                          force: bool = False) -> Path:
    """Generate the shapes-video dataset under ``root`` (default :func:`default_shapes_video_root`) unless it is
    already there (a folder whose ``manifest.json`` names the same version and parameters is returned as is); otherwise
    (or with ``force``) it is generated into a temporary sibling folder and renamed into place. Returns the root."""
    params = _check_params(seed, num_train, num_val, num_test, frames, size)
    root = Path(os.path.expanduser(os.fspath(root))) if root is not None else default_shapes_video_root()
    root = root.absolute()
    if not force and _is_complete(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        if not force and _is_complete(root, params):  # another process finished it while we waited
            return root
        if root.exists() or root.is_symlink():
            _check_replaceable(root)  # fail before the work, not after
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary cache folder
            _generate_into(tmp, params)
            old = None
            if root.exists() or root.is_symlink():
                old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.replace(root, old)
            os.replace(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root
