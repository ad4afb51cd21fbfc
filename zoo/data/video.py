"""Video frames: segment-based frame sampling (X²-VLM's rule) and readers (decord by default, PyAV as the fallback).

Sampling (official ``sample_frame_ids``): the video's ``n`` frames are split into ``k`` consecutive segments whose
lengths differ by at most one (the longer ones first in evaluation, in shuffled order in training); evaluation takes
each segment's first frame, training a uniformly random frame of each segment. A video with ``n <= k`` frames repeats
frames: cyclically in evaluation, all frames plus random extra ones in training (sorted).

Readers return ``(T, H, W, 3)`` uint8 tensors. decord seeks to the sampled frames; PyAV decodes the stream in order and
keeps the sampled ones. A missing or unreadable file raises :class:`VideoReadError` naming the file. Given ``data`` (the
file's bytes, e.g. read from a WebDataset shard), :func:`read_video_frames` and :func:`read_video_clip` decode those
and ``path`` only names the video in messages.

Feature extraction (``mmzoo features``, :mod:`zoo.data.features`) reads frames by time instead: one per ``1 / fps``
seconds (:func:`second_frame_indices`, :func:`read_frames_per_second`), as the official features hold one vector per
second.
"""

from __future__ import annotations

import io
import math
import os
import random
from typing import Literal

import torch
from torch import Tensor

__all__ = ["VideoReadError", "sample_frame_indices", "read_video_frames", "count_frames", "VIDEO_BACKENDS",
           "second_frame_indices", "read_frames_per_second"]

VIDEO_BACKENDS = ("decord", "av")


class VideoReadError(OSError):
    """A video that cannot be opened or decoded (the message names the file)."""


def sample_frame_indices(num_frames: int, num_segments: int, training: bool,
                         rng: random.Random | None = None) -> list[int]:
    """``num_segments`` frame indices out of ``num_frames`` (see the module docstring)."""
    if num_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if num_segments <= 0:
        raise ValueError(f"num_segments must be positive, got {num_segments}")
    rng = rng or random.Random()
    n, k = num_frames, num_segments
    if n <= k:
        if training:
            return sorted(list(range(n)) + [rng.randrange(n) for _ in range(k - n)])
        return sorted(i % n for i in range(k))
    base = n // k
    longer = n - k * base  # this many segments hold base + 1 frames
    extra = [1] * longer + [0] * (k - longer)
    if training:
        rng.shuffle(extra)
    out, start = [], 0
    for add in extra:
        length = base + add
        out.append(start + rng.randrange(length) if training else start)
        start += length
    return out


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such video file")
    return path


def count_frames(path: str | os.PathLike, backend: Literal["decord", "av"] = "decord") -> int:
    path = _check_file(path)
    if backend == "decord":
        return len(_decord_reader(path))
    with _av_open(path) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.decode(stream))


def _decord_reader(path: str, data: bytes | None = None):
    try:
        import decord  # noqa: PLC0415
    except ImportError:
        raise VideoReadError(f"{path}: decord is not installed (pip install 'mmzoo[video]') — or use backend='av'") \
            from None
    try:
        return decord.VideoReader(path if data is None else io.BytesIO(data), num_threads=1)
    except Exception as exc:  # noqa: BLE001 - decord raises its own DECORDError for corrupt files
        raise VideoReadError(f"{path}: decord cannot read this video ({exc})") from None


def _av_open(path: str, data: bytes | None = None):
    try:
        import av  # noqa: PLC0415
    except ImportError:
        raise VideoReadError(f"{path}: PyAV is not installed (pip install 'mmzoo[video]')") from None
    try:
        return av.open(path if data is None else io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - PyAV raises several error types for bad input
        raise VideoReadError(f"{path}: PyAV cannot open this video ({exc})") from None


def _av_frames(path: str, data: bytes | None = None) -> list:
    """Every frame of the video at ``path`` (or of its bytes ``data``) decoded by PyAV, as RGB arrays (at least one)."""
    with _av_open(path, data) as container:
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except Exception as exc:  # noqa: BLE001
            raise VideoReadError(f"{path}: PyAV failed while decoding ({exc})") from None
    if not frames:
        raise VideoReadError(f"{path}: the video has no frames")
    return frames


def read_video_frames(path: str | os.PathLike, num_frames: int, training: bool = False,
                      backend: Literal["decord", "av"] = "decord", rng: random.Random | None = None,
                      clip: Tensor | None = None, data: bytes | None = None) -> Tensor:
    """``num_frames`` frames sampled with :func:`sample_frame_indices`, as a ``(T, H, W, 3)`` uint8 tensor.

    ``clip``: the video's every frame already decoded (:func:`read_video_clip`, e.g. kept in memory between epochs):
    the same frames are taken from it for the same ``rng`` state, and the file is not opened. ``data``: the video
    file's bytes, decoded instead of opening ``path`` (the same frames as from the file)."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(VIDEO_BACKENDS)}")
    if clip is not None:
        if len(clip) == 0:
            raise VideoReadError(f"{os.fspath(path)}: the video has no frames")
        return clip[sample_frame_indices(len(clip), num_frames, training, rng)]
    path = _check_file(path) if data is None else os.fspath(path)
    if backend == "decord":
        reader = _decord_reader(path, data)
        if len(reader) == 0:
            raise VideoReadError(f"{path}: the video has no frames")
        ids = sample_frame_indices(len(reader), num_frames, training, rng)
        try:
            return torch.from_numpy(reader.get_batch(ids).asnumpy())
        except Exception as exc:  # noqa: BLE001
            raise VideoReadError(f"{path}: decoding frames {ids} failed ({exc})") from None
    frames = _av_frames(path, data)
    ids = sample_frame_indices(len(frames), num_frames, training, rng)
    return torch.stack([torch.from_numpy(frames[i]) for i in ids])


def read_video_clip(path: str | os.PathLike, backend: Literal["decord", "av"] = "decord",
                    data: bytes | None = None) -> Tensor:
    """Every frame of a video as a ``(N, H, W, 3)`` uint8 tensor (for short clips read many times: the frames
    :func:`read_video_frames` samples are then indexed from it). ``data``: the file's bytes, decoded instead."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(VIDEO_BACKENDS)}")
    path = _check_file(path) if data is None else os.fspath(path)
    if backend == "decord":
        reader = _decord_reader(path, data)
        if len(reader) == 0:
            raise VideoReadError(f"{path}: the video has no frames")
        try:
            return torch.from_numpy(reader.get_batch(list(range(len(reader)))).asnumpy())
        except Exception as exc:  # noqa: BLE001
            raise VideoReadError(f"{path}: decoding its {len(reader)} frames failed ({exc})") from None
    return torch.stack([torch.from_numpy(f) for f in _av_frames(path, data)])


def second_frame_indices(num_frames: int, native_fps: float, fps: float = 1.0) -> list[int]:
    """One frame per window of ``1 / fps`` seconds of a video of ``num_frames`` frames at ``native_fps``: the windows
    ``[k / fps, (k + 1) / fps)`` that start before the video ends (``ceil(num_frames * fps / native_fps)``, at least
    one), each giving the frame at its middle, ``int((k + 0.5) * native_fps / fps)`` (the last frame for a last,
    partial window whose middle lies past the end)."""
    if num_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if not (native_fps > 0 and fps > 0):
        raise ValueError(f"frame rates must be positive, got native_fps={native_fps!r}, fps={fps!r}")
    step = native_fps / fps  # frames per window
    count = max(1, math.ceil(num_frames / step - 1e-9))
    return [min(int((k + 0.5) * step), num_frames - 1) for k in range(count)]


def read_frames_per_second(path: str | os.PathLike, fps: float = 1.0,
                           backend: Literal["decord", "av"] = "decord") -> Tensor:
    """The frames :func:`second_frame_indices` picks (``fps`` per second of the video's own frame rate), as a
    ``(T, H, W, 3)`` uint8 tensor. A video without a frame rate raises :class:`VideoReadError`."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(VIDEO_BACKENDS)}")
    path = _check_file(path)
    if backend == "decord":
        reader = _decord_reader(path)
        native = float(reader.get_avg_fps() or 0)
        if len(reader) == 0:
            raise VideoReadError(f"{path}: the video has no frames")
        if native <= 0:
            raise VideoReadError(f"{path}: the video names no frame rate")
        ids = second_frame_indices(len(reader), native, fps)
        try:
            return torch.from_numpy(reader.get_batch(ids).asnumpy())
        except Exception as exc:  # noqa: BLE001
            raise VideoReadError(f"{path}: decoding frames {ids} failed ({exc})") from None
    kept, last, n = [], None, 0
    with _av_open(path) as container:
        if not container.streams.video:
            raise VideoReadError(f"{path}: the file holds no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        native = float(rate) if rate else 0.0
        if native <= 0:
            raise VideoReadError(f"{path}: the video names no frame rate")
        step = native / fps
        try:
            for n, frame in enumerate(container.decode(stream), start=1):
                last, array = frame, None
                while int((len(kept) + 0.5) * step) == n - 1:  # the middle of the next window (twice when fps > native)
                    array = frame.to_ndarray(format="rgb24") if array is None else array
                    kept.append(array)
        except Exception as exc:  # noqa: BLE001
            raise VideoReadError(f"{path}: PyAV failed while decoding ({exc})") from None
    if last is None:
        raise VideoReadError(f"{path}: the video has no frames")
    while len(kept) < len(second_frame_indices(n, native, fps)):  # a last, partial window: the last frame
        kept.append(last.to_ndarray(format="rgb24"))
    return torch.stack([torch.from_numpy(f) for f in kept])
