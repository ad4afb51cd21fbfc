"""`mmzoo bench video`: the decoding benchmark counts the frames each reader really returns, and the training-step
benchmark times the task config's own data loader and model (loading share from the measured medians)."""

from __future__ import annotations

import pytest

from zoo.bench import _decode_all, bench_video, bench_video_step, format_video_table, video_backends
from zoo.data.video import count_frames, read_video_frames


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from zoo.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=4, num_val_images=2,
                           num_test_images=2, image_size=48, num_videos=5, languages=())


def test_rows_count_the_frames_each_reader_returns(shapes, tmp_path):
    clips = sorted((shapes / "videos").glob("**/*.mp4"))
    assert len(clips) == 5
    rows = bench_video(clips, num_frames=3, repeat=1, long_frames=12, long_size=64, workdir=tmp_path)
    backends = video_backends()
    assert backends and len(rows) == 4 * len(backends)  # (shapes clips, long clip) × (sampled, every frame)
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        total = sum(count_frames(c, backend) for c in clips)
        assert total == sum(_decode_all(str(c), backend) for c in clips)  # the decoded frames are the counted ones
        assert [r["frames"] for r in mine] == [5 * 3, total, 3, 12]
        assert all(r["fps"] == pytest.approx(r["frames"] / r["seconds"]) for r in mine)
        assert read_video_frames(clips[0], 3, backend=backend).shape[0] == 3
    table = format_video_table(rows, None, "h")
    assert table.count("\n| ") == 1 + len(rows)  # header row + one per measurement


def test_step_share_is_loading_over_loading_plus_step(shapes):
    step = bench_video_step("videoqa-shapes", batches=2, overrides=[f"data.root={shapes}", "data.batch_size=2"])
    assert (step["batch_size"], step["frames"], step["batches"]) == (2, 3, 2)
    assert step["load_s"] > 0 and step["step_s"] > 0
    assert step["load_share"] == pytest.approx(step["load_s"] / (step["load_s"] + step["step_s"]))
    assert "loading share" in format_video_table([], step, "h")
