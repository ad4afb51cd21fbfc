"""Frame sampling (X²-VLM's segment rule) and the decord / PyAV readers on a video written here."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from zoo.data.video import VideoReadError, count_frames, read_video_frames, sample_frame_indices


def test_evaluation_takes_segment_starts():
    # 10 frames, 3 segments: lengths 4, 3, 3 (the longer first) -> starts 0, 4, 7
    assert sample_frame_indices(10, 3, training=False) == [0, 4, 7]
    assert sample_frame_indices(9, 3, training=False) == [0, 3, 6]
    assert sample_frame_indices(3, 3, training=False) == [0, 1, 2]


def test_short_videos_repeat_frames():
    assert sample_frame_indices(2, 5, training=False) == [0, 0, 0, 1, 1]
    rng = random.Random(0)
    for _ in range(50):
        ids = sample_frame_indices(2, 5, training=True, rng=rng)
        assert ids == sorted(ids) and set(ids) == {0, 1} and len(ids) == 5


def test_training_draws_one_frame_per_segment():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        ids = sample_frame_indices(10, 3, training=True, rng=rng)
        assert ids == sorted(ids) and len(ids) == 3
        # segments of lengths {4, 3, 3} in some order: consecutive picks lie in consecutive segments
        assert 0 <= ids[0] <= 3 and ids[2] >= 6 and ids[2] <= 9
        seen.update(ids)
    assert seen == set(range(10))  # every frame can be drawn


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 3, training=False)
    with pytest.raises(ValueError, match="num_segments"):
        sample_frame_indices(5, 0, training=False)


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128),
          (255, 255, 255), (0, 0, 0), (255, 128, 0), (0, 128, 255), (128, 0, 255)]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "colors.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"qscale": "1"}
        for color in COLORS:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), color, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_readers_return_the_sampled_frames(video, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    assert count_frames(video, backend) == len(COLORS)
    frames = read_video_frames(video, 3, training=False, backend=backend)
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == torch.uint8
    expected = [COLORS[i] for i in sample_frame_indices(len(COLORS), 3, training=False)]  # frames 0, 4, 8
    got = frames.float().mean((1, 2))
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float32), atol=12), got


def test_backends_agree(video):
    pytest.importorskip("decord")
    a = read_video_frames(video, 4, backend="decord").float()
    b = read_video_frames(video, 4, backend="av").float()
    assert (a - b).abs().mean() < 4


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(VideoReadError, match="missing.mp4: no such video file"):
        read_video_frames(tmp_path / "missing.mp4", 3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x01 not a video")
    for backend in ("decord", "av"):
        with pytest.raises(VideoReadError, match="broken.mp4"):
            read_video_frames(broken, 3, backend=backend)
