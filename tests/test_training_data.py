"""The training data layer: sources, clip choice, determinism, broken files, order, shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from animatediff import Video
from animatediff.training.data import (
    ClipDataset,
    DataError,
    ImageFolder,
    ShardSet,
    VideoFolder,
    WebVidCSV,
    batches_from,
    clip_indices,
    collate,
    epoch_order,
)
from animatediff.training.shards import write_shards


def counting_video(n: int, w: int = 40, h: int = 30) -> np.ndarray:
    """Frame i is a flat gray of level 8 * i: its index can be read back from the pixels."""
    return np.stack([np.full((h, w, 3), 8 * i, np.uint8) for i in range(n)])


def frame_numbers(pixels: torch.Tensor) -> list[int]:
    levels = ((pixels.mean(dim=(1, 2, 3)) + 1) * 127.5).tolist()
    return [round(v / 8) for v in levels]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    for name, n in (("a", 30), ("b", 25), ("sub/c", 31)):
        Video(counting_video(n), fps=8).save(root / f"{name}.mp4")
        (root / f"{name}.txt").write_text(f"  caption {name}  \n")
    return root


def png_folder(path):
    frames = counting_video(30)
    path.mkdir()
    for i in range(3):
        Image.fromarray(frames[i * 8]).save(path / f"{i}.png")
        (path / f"{i}.txt").write_text(f"image {i}")
    return path


def test_video_folder_clips(folder):
    data = ClipDataset(VideoFolder(folder), frames=4, stride=4, size=16, seed=1)
    assert len(data) == 3
    s = data[0]
    assert s["pixels"].shape == (4, 3, 16, 16) and s["pixels"].dtype == torch.float32
    assert s["pixels"].min() >= -1 and s["pixels"].max() <= 1
    assert s["caption"] == "caption a" and s["skipped"] == 0 and s["index"] == 0
    numbers = frame_numbers(s["pixels"])
    assert numbers == list(range(numbers[0], numbers[0] + 16, 4))  # stride 4 from a random start


def test_clip_choice_follows_the_original(folder):
    import random

    rng = random.Random(0)
    assert clip_indices(10, 4, 4, rng) == [0, 3, 6, 9]  # shorter than 13: spread evenly
    starts = {clip_indices(30, 4, 4, random.Random(s))[0] for s in range(200)}
    assert starts == set(range(0, 30 - 13 + 1))  # every start from 0 to n - span


def test_determinism_per_epoch_and_index(folder):
    data = ClipDataset(VideoFolder(folder), frames=4, stride=2, size=16, seed=5)
    first = [data[i]["pixels"] for i in range(3)]
    assert all(torch.equal(data[i]["pixels"], first[i]) for i in (2, 0, 1))  # order does not matter
    loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=2, collate_fn=collate)
    assert torch.equal(next(iter(loader))["pixels"], torch.stack(first))  # nor do workers
    starts = set()
    for epoch in range(8):
        data.set_epoch(epoch)
        starts.add(frame_numbers(data[0]["pixels"])[0])
    assert len(starts) > 1  # a new clip start each epoch


def test_resize_and_center_crop_non_square(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    frames = np.zeros((8, 20, 60, 3), np.uint8)
    frames[:, :, 20:40] = 255  # a white middle third
    Video(frames, fps=8).save(root / "w.mp4")
    (root / "w.txt").write_text("wide")
    px = ClipDataset(VideoFolder(root), frames=2, stride=1, size=20)[0]["pixels"]
    assert px.shape == (2, 3, 20, 20)
    assert px[:, :, :, 4:16].mean() > 0.9  # the crop keeps the center


def test_broken_and_short_files_are_skipped_and_counted(folder):
    (folder / "broken.mp4").write_bytes((folder / "a.mp4").read_bytes()[:300])
    (folder / "broken.txt").write_text("broken")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "empty.txt").write_text("empty")
    Video(counting_video(3), fps=8).save(folder / "short.mp4")
    (folder / "short.txt").write_text("short")
    data = ClipDataset(VideoFolder(folder), frames=4, stride=4, size=16)
    samples = [data[i] for i in range(len(data))]
    assert sum(s["skipped"] for s in samples) >= 3
    assert all(s["pixels"].shape == (4, 3, 16, 16) for s in samples)
    assert {s["caption"] for s in samples} <= {"caption a", "caption b", "caption sub/c"}


def test_only_broken_files_is_a_clear_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.mp4").write_bytes(b"not a video")
        (root / f"{i}.txt").write_text("x")
    with pytest.raises(DataError, match="consecutive unreadable samples"):
        ClipDataset(VideoFolder(root), frames=2)[0]


def test_missing_captions_and_empty_folders(tmp_path, folder):
    (folder / "a.txt").unlink()
    with pytest.raises(DataError, match=r"1 files under .* have no caption .*a\.mp4"):
        VideoFolder(folder)
    assert VideoFolder(folder, allow_missing_captions=True).items[0].caption == ""
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no video files found"):
        VideoFolder(tmp_path / "none")


def test_webvid_csv(folder, tmp_path):
    flat = tmp_path / "videos"
    flat.mkdir()
    for vid in ("111", "222"):
        Video(counting_video(20), fps=8).save(flat / f"{vid}.mp4")
    (tmp_path / "results.csv").write_text(
        'videoid,name,page_dir\n111,"A dog, running",dir\n222,cat,dir\n333,missing,dir\n'
    )
    source = WebVidCSV(tmp_path / "results.csv", flat)
    assert len(source) == 2 and source.missing == 1
    assert ClipDataset(source, frames=2, size=16)[0]["caption"] == "A dog, running"


def test_image_folder_and_single_frames(folder, tmp_path):
    images = ClipDataset(ImageFolder(png_folder(tmp_path / "imgs")), size=16, image=True)
    assert images[1]["pixels"].shape == (1, 3, 16, 16) and images[1]["caption"] == "image 1"
    frames = ClipDataset(VideoFolder(folder), size=16, image=True)
    assert frames[0]["pixels"].shape == (1, 3, 16, 16)


def test_shards_round_trip(folder, tmp_path):
    source = VideoFolder(folder)
    paths = write_shards(source, tmp_path / "shards", samples_per_shard=2)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar"]
    shards = ShardSet(str(tmp_path / "shards" / "shard-*.tar"))
    assert [i.caption for i in shards.items] == [i.caption for i in source.items]
    a = ClipDataset(source, frames=4, stride=2, size=16, seed=3)
    b = ClipDataset(shards, frames=4, stride=2, size=16, seed=3)
    for i in range(len(a)):
        assert torch.equal(a[i]["pixels"], b[i]["pixels"])
    loader = torch.utils.data.DataLoader(b, batch_size=3, num_workers=2, collate_fn=collate)
    assert torch.equal(next(iter(loader))["pixels"], torch.stack([a[i]["pixels"] for i in range(3)]))


def test_order_partitions_and_resumes():
    order = epoch_order(10, seed=1, epoch=0)
    assert sorted(order) == list(range(10)) and order != epoch_order(10, 1, 1)
    full = list(batches_from(10, 1, 0, 0, global_batch=4))
    assert full == [order[0:4], order[4:8]]  # the incomplete last batch is dropped
    assert list(batches_from(10, 1, 0, 1, global_batch=4)) == full[1:]
    halves = [list(batches_from(10, 1, 0, 0, 4, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == full
    with pytest.raises(ValueError, match="cannot be split"):
        list(batches_from(10, 1, 0, 0, 3, rank=0, world=2))
