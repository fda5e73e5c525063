"""The training data layer: sources, clip choice, resizing, determinism, broken files, order, shards.

The test videos count: frame i is a flat gray of level 6 * i, so the frames a sample holds can be read
back from its pixels.
"""

from __future__ import annotations

import gzip
import itertools
import os
import pickle
import random
import tarfile

import av
import numpy as np
import pytest
import torch
from PIL import Image

from animatediff import Video
from animatediff.training.data import (
    ClipDataset,
    DataError,
    ImageFolder,
    Item,
    PackedStrings,
    VideoFolder,
    WebVidCSV,
    batches_from,
    clip_indices,
    collate,
    epoch_order,
    rank_batches,
    resize_crop,
    run_loader,
)
from animatediff.training.shards import ShardSet, main, write_shards

LEVEL = 6  # gray level step per frame: 40 frames fit in 0..255


def counting(n: int, w: int = 40, h: int = 30) -> np.ndarray:
    return np.stack([np.full((h, w, 3), LEVEL * i, np.uint8) for i in range(n)])


def frame_numbers(pixels: torch.Tensor) -> list[int]:
    levels = ((pixels.mean(dim=(1, 2, 3)) + 1) * 127.5).tolist()
    return [round(v / LEVEL) for v in levels]


def add_video(root, name: str, frames: np.ndarray, caption: str | None = "") -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Video(frames, fps=8).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


def write_mkv(path, frames: np.ndarray) -> None:
    """Matroska records no frame count: the dataset has to count packets."""
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            c.mux(stream.encode(frame))
        c.mux(stream.encode())


@pytest.fixture
def clips(tmp_path):
    """a.mp4 (40 frames), b.mp4 (20), sub/c.mp4 (30), with padded captions."""
    root = tmp_path / "clips"
    for name, n in (("a.mp4", 40), ("b.mp4", 20), ("sub/c.mp4", 30)):
        add_video(root, name, counting(n), f"  caption {name[:-4]} \n")
    return root


def assert_sample(s: dict, frames: int, size: int) -> None:
    px = s["pixels"]
    assert px.shape == (frames, 3, size, size) and px.dtype == torch.float32
    assert px.min() >= -1 and px.max() <= 1


# -- sources ------------------------------------------------------------------------------------------


def test_video_folder_samples(clips):
    source = VideoFolder(clips)
    assert [source[i].name for i in range(len(source))] == ["a.mp4", "b.mp4", "sub/c.mp4"]
    data = ClipDataset(source, frames=4, stride=4, size=16, seed=1)
    for i, caption in enumerate(["caption a", "caption b", "caption sub/c"]):
        s = data[i]
        assert_sample(s, 4, 16)
        assert (s["caption"], s["index"], s["skipped"]) == (caption, i, 0)
    with pytest.raises(IndexError):
        data[3]


def test_missing_captions_are_listed_up_front(clips, tmp_path):
    (clips / "a.txt").unlink()
    (clips / "sub" / "c.txt").unlink()
    with pytest.raises(DataError, match=r"2 of 3 videos under .* no caption file .*a\.mp4, sub/c\.mp4"):
        VideoFolder(clips)
    source = VideoFolder(clips, allow_missing_captions=True)
    assert [source[i].caption for i in range(3)] == ["", "caption b", ""]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no video files found"):
        VideoFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder"):
        VideoFolder(tmp_path / "nowhere")


def test_hidden_files_are_not_samples(clips):
    (clips / "._a.mp4").write_bytes(b"\0" * 100)  # a macOS resource fork, without caption
    add_video(clips / ".cache", "x.mp4", counting(8), "x")
    assert len(VideoFolder(clips)) == 3


def test_webvid_csv(tmp_path):
    videos = tmp_path / "videos"
    for vid in ("111", "222"):
        add_video(videos, f"{vid}.mp4", counting(20), caption=None)
    rows = 'videoid,contentUrl,name,page_dir\n111,u,"A dog, running ",d\n222,u,cat,d\n333,u,gone,d\n'
    (tmp_path / "results.csv").write_text(rows)
    source = WebVidCSV(tmp_path / "results.csv", videos)
    assert len(source) == 2 and source.missing == 1
    data = ClipDataset(source, frames=4, stride=4, size=16)
    assert_sample(data[0], 4, 16)
    assert [data[i]["caption"] for i in range(2)] == ["A dog, running", "cat"]
    (tmp_path / "bad.csv").write_text("id,text\n111,dog\n")
    with pytest.raises(DataError, match="expected WebVid's columns"):
        WebVidCSV(tmp_path / "bad.csv", videos)


def test_image_folder_gives_one_frame(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i, suffix in enumerate([".png", ".jpg", ".webp"]):
        Image.fromarray(counting(3 * i + 1, w=50, h=20)[-1]).save(root / f"{i}{suffix}")
        (root / f"{i}.txt").write_text(f"image {i}")
    for image in (True, False):  # images are one frame even where a stage asks for clips
        data = ClipDataset(ImageFolder(root), frames=16, size=16, image=image)
        for i in range(3):
            s = data[i]
            assert_sample(s, 1, 16)
            assert s["caption"] == f"image {i}" and frame_numbers(s["pixels"]) == [3 * i]


def test_image_mode_takes_one_random_frame_of_a_video(clips):
    data = ClipDataset(VideoFolder(clips), frames=16, size=16, image=True)
    picks = set()
    for epoch in range(10):
        data.set_epoch(epoch)
        s = data[0]
        assert_sample(s, 1, 16)
        picks.add(frame_numbers(s["pixels"])[0])
    assert len(picks) > 1 and picks <= set(range(40))


# -- clips and pixels ---------------------------------------------------------------------------------


def test_clip_frames_are_stride_apart(clips):
    data = ClipDataset(VideoFolder(clips), frames=4, stride=4, size=16, seed=3)
    starts = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        numbers = frame_numbers(data[0]["pixels"])  # a.mp4, 40 frames
        start = numbers[0]
        assert numbers == [start, start + 4, start + 8, start + 12] and 0 <= start <= 40 - 13
        starts.add(start)
    assert len(starts) > 3  # a new start each epoch


@pytest.mark.parametrize(("n", "expected"), [(10, [0, 3, 6, 9]), (8, [0, 2, 4, 7]), (4, [0, 1, 2, 3])])
def test_short_videos_are_spread_like_the_original(tmp_path, n, expected):
    # shorter than the span of 13 frames: linspace over the whole video, truncated to ints as the original does
    add_video(tmp_path, "short.mp4", counting(n), "short")
    data = ClipDataset(VideoFolder(tmp_path), frames=4, stride=4, size=8)
    assert frame_numbers(data[0]["pixels"]) == expected
    assert clip_indices(n, 4, 4, random.Random(0)) == expected


def test_clip_starts_cover_every_position():
    starts = {clip_indices(30, 4, 4, random.Random(s))[0] for s in range(300)}
    assert starts == set(range(30 - 13 + 1))
    assert clip_indices(13, 4, 4, random.Random(0)) == [0, 4, 8, 12]


def test_videos_without_a_frame_count_are_counted(tmp_path):
    write_mkv(tmp_path / "m.mkv", counting(20))
    (tmp_path / "m.txt").write_text("matroska")
    data = ClipDataset(VideoFolder(tmp_path), frames=4, stride=5, size=8)
    for epoch in range(4):
        data.set_epoch(epoch)
        numbers = frame_numbers(data[0]["pixels"])
        assert numbers == [numbers[0] + 5 * k for k in range(4)] and numbers[0] <= 20 - 16


def test_resize_matches_pil_and_crops_the_center():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 30, 60, 3), dtype=np.uint8)  # landscape
    out = resize_crop(frames, 10)
    assert out.shape == (2, 3, 10, 10) and out.dtype == torch.float32
    for frame, got in zip(frames, out):
        # PIL's bilinear filter widens with the scale, like torch's antialias: the reference
        ref = np.array(Image.fromarray(frame).resize((20, 10), Image.BILINEAR))[:, 5:15]
        ref = torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1
        assert (got - ref).abs().max() < 2.5 / 127.5
    tall = resize_crop(np.ascontiguousarray(frames.transpose(0, 2, 1, 3)), 10)  # portrait: the middle rows
    assert torch.allclose(tall, out.transpose(2, 3), atol=1e-5)


def test_non_square_video_is_cropped_to_its_center(tmp_path):
    frames = np.zeros((6, 20, 60, 3), np.uint8)
    frames[:, :, 25:35] = 255  # a white bar in the middle of the center square (columns 20 to 40)
    add_video(tmp_path, "wide.mp4", frames, "wide")
    px = ClipDataset(VideoFolder(tmp_path), frames=2, stride=1, size=20)[0]["pixels"]
    assert px.shape == (2, 3, 20, 20)
    assert px[..., 6:14].min() > 0.9 and px[..., :4].max() < -0.9 and px[..., 16:].max() < -0.9


# -- determinism --------------------------------------------------------------------------------------


def test_a_sample_depends_only_on_seed_epoch_and_index(clips):
    def sample(seed=5, epoch=0, index=0):
        data = ClipDataset(VideoFolder(clips), frames=4, stride=2, size=16, seed=seed)
        data.set_epoch(epoch)
        return data[index]["pixels"]

    data = ClipDataset(VideoFolder(clips), frames=4, stride=2, size=16, seed=5)
    forward = [data[i]["pixels"] for i in range(3)]
    backward = {i: data[i]["pixels"] for i in (2, 1, 0)}
    assert all(torch.equal(forward[i], backward[i]) for i in range(3))
    assert torch.equal(sample(), forward[0])  # a new dataset, same sample
    assert not torch.equal(sample(epoch=1), forward[0]) or not torch.equal(sample(epoch=2), forward[0])
    assert not torch.equal(sample(seed=6), forward[0]) or not torch.equal(sample(seed=7), forward[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_data_loader_workers_do_not_change_samples(clips, workers):
    data = ClipDataset(VideoFolder(clips), frames=4, stride=2, size=16, seed=9)
    data.set_epoch(3)
    expected = {i: data[i]["pixels"] for i in range(3)}
    order = [[2, 0], [1, 2], [0, 1]]
    loader = torch.utils.data.DataLoader(data, batch_sampler=order, num_workers=workers, collate_fn=collate)
    for indices, batch in zip(order, loader):
        assert batch["index"].tolist() == indices
        assert torch.equal(batch["pixels"], torch.stack([expected[i] for i in indices]))


# -- broken files -------------------------------------------------------------------------------------


def truncate(src, dst) -> None:
    """Cut a file inside its first frame: the header survives, no frame decodes."""
    with av.open(str(src)) as c:
        first = next(p for p in c.demux(c.streams.video[0]) if p.size)
    dst.write_bytes(src.read_bytes()[: first.pos + first.size // 2])


def test_broken_and_short_files_are_skipped_and_counted(clips):
    truncate(clips / "a.mp4", clips / "broken.mp4")
    (clips / "empty.mp4").write_bytes(b"")
    add_video(clips, "short.mp4", counting(3))
    (clips / "text.mp4").write_text("not a video")
    for name in ("broken", "empty", "text"):
        (clips / f"{name}.txt").write_text(name)
    add_video(clips, "zz_empty.mp4", counting(1))  # too short, and last: its stand-in wraps to index 0
    source = VideoFolder(clips)
    names = [source[i].name for i in range(len(source))]
    assert names == ["a.mp4", "b.mp4", "broken.mp4", "empty.mp4", "short.mp4", "sub/c.mp4", "text.mp4", "zz_empty.mp4"]
    data = ClipDataset(source, frames=4, stride=4, size=16, seed=2)
    samples = [data[i] for i in range(len(data))]
    assert [s["skipped"] for s in samples] == [0, 0, 3, 2, 1, 0, 2, 1]
    assert [s["index"] for s in samples] == list(range(8))
    # a stand-in is exactly the next good sample, whatever index asked for it
    for asked, used in [(2, 5), (3, 5), (4, 5), (6, 0), (7, 0)]:
        assert torch.equal(samples[asked]["pixels"], samples[used]["pixels"])
        assert samples[asked]["caption"] == samples[used]["caption"]
    assert collate(samples)["skipped"] == 9


def test_a_folder_of_broken_files_is_a_clear_error(tmp_path):
    for i in range(60):
        (tmp_path / f"{i:02d}.mp4").write_bytes(b"")
        (tmp_path / f"{i:02d}.txt").write_text("x")
    data = ClipDataset(VideoFolder(tmp_path), frames=2)
    with pytest.raises(DataError, match=r"^50 consecutive unreadable samples around index 7: is the data folder right"):
        data[7]
    few = tmp_path / "few"
    few.mkdir()
    add_video(few, "short.mp4", counting(3), "short")
    with pytest.raises(DataError, match=r"1 consecutive .* short\.mp4: Unusable: 3 frames, fewer than the 4"):
        ClipDataset(VideoFolder(few), frames=4)[0]


# -- shards -------------------------------------------------------------------------------------------


def test_shards_round_trip(clips, tmp_path):
    source = VideoFolder(clips)
    paths = write_shards(source, tmp_path / "shards", samples_per_shard=2)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar"]
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames() == ["000000000.mp4", "000000000.txt", "000000001.mp4", "000000001.txt"]
    for shards in (ShardSet(str(tmp_path / "shards" / "shard-*.tar")), ShardSet(tmp_path / "shards")):
        assert len(shards) == len(source)
        for i in range(len(source)):
            assert shards[i].caption == source[i].caption and shards[i].data == (clips / source[i].name).read_bytes()
    a = ClipDataset(source, frames=4, stride=2, size=16, seed=3)
    b = ClipDataset(shards, frames=4, stride=2, size=16, seed=3)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["pixels"], sb["pixels"]) and sa["caption"] == sb["caption"]
    loader = torch.utils.data.DataLoader(b, batch_sampler=[[2, 0], [1]], num_workers=2, collate_fn=collate)
    for batch in loader:
        assert torch.equal(batch["pixels"], torch.stack([a[i]["pixels"] for i in batch["index"].tolist()]))


def test_shards_are_deterministic_and_never_mix_with_old_ones(clips, tmp_path):
    source = VideoFolder(clips)
    one = write_shards(source, tmp_path / "one", samples_per_shard=10)
    again = write_shards(ShardSet(tmp_path / "one"), tmp_path / "two", samples_per_shard=10)  # re-shard
    assert one[0].read_bytes() == again[0].read_bytes()  # no time stamps or owners inside
    with pytest.raises(DataError, match="already holds 1 shards"):
        write_shards(source, tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["shard-000000.tar"]  # no temporaries left


def test_shard_handles_are_few_and_per_process(clips, tmp_path):
    write_shards(VideoFolder(clips), tmp_path / "shards", samples_per_shard=1)
    shards = ShardSet(tmp_path / "shards")
    shards.OPEN_SHARDS = 2
    expected = [shards[i].data for i in range(3)]
    for i in [0, 1, 2, 0, 2, 1]:
        assert shards[i].data == expected[i] and len(shards._handles) <= 2
    copy = pickle.loads(pickle.dumps(shards))  # what a spawned worker gets: no open files
    assert not copy._handles and copy[1].data == expected[1]
    inherited = list(shards._handles.values())
    shards._pid = -1  # as in a forked worker: the parent's handles are left alone
    assert shards[0].data == expected[0] and all(f not in shards._handles.values() for f in inherited)


def test_shard_errors(clips, tmp_path):
    with pytest.raises(DataError, match="no shards match"):
        ShardSet(str(tmp_path / "none-*.tar"))
    write_shards(VideoFolder(clips), tmp_path / "shards")
    tar = tmp_path / "shards" / "shard-000000.tar"
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    (zipped / "shard-000000.tar").write_bytes(gzip.compress(tar.read_bytes()))
    with pytest.raises(DataError, match="not an uncompressed tar"):
        ShardSet(zipped)
    bare = tmp_path / "bare"
    bare.mkdir()
    with tarfile.open(tar) as src, tarfile.open(bare / "s.tar", "w") as dst:
        for m in src.getmembers():
            if m.name != "000000001.txt":
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(DataError, match=r"1 of 3 samples .* no \.txt caption: .*000000001\.mp4"):
        ShardSet(bare)
    assert ShardSet(bare, allow_missing_captions=True)[1].caption == ""


def test_shards_command(clips, tmp_path, capsys):
    assert main([str(clips), str(tmp_path / "out"), "--per-shard", "2"]) == 0
    assert "wrote 3 samples in 2 shards" in capsys.readouterr().out
    assert len(ShardSet(tmp_path / "out")) == 3
    (clips / "b.txt").unlink()
    assert main([str(clips), str(tmp_path / "out2")]) == 1
    assert "no caption file" in capsys.readouterr().err


# -- order and batches --------------------------------------------------------------------------------


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(100, seed=1, epoch=0)
    assert sorted(order) == list(range(100)) and order == epoch_order(100, 1, 0)
    assert order != epoch_order(100, 1, 1) and order != epoch_order(100, 2, 0)
    assert all(type(i) is int for i in order)


def test_rank_batches_split_each_global_batch():
    order = epoch_order(23, seed=0, epoch=0)
    full = list(rank_batches(order, 6))
    assert full == [order[0:6], order[6:12], order[12:18]]  # the incomplete last batch is dropped
    shares = [list(rank_batches(order, 6, rank=r, world=3)) for r in range(3)]
    for k, batch in enumerate(full):
        assert [shares[r][k] for r in range(3)] == [batch[0:2], batch[2:4], batch[4:6]]
    with pytest.raises(ValueError, match="cannot be split evenly"):
        rank_batches(order, 6, rank=0, world=4)
    with pytest.raises(ValueError, match="rank < world"):
        rank_batches(order, 6, rank=2, world=2)


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2), (3, 4)])
def test_resuming_skips_to_the_same_batches(rank, world):
    full = list(batches_from(50, seed=4, epoch=2, start_batch=0, global_batch=8, rank=rank, world=world))
    assert len(full) == 50 // 8 and all(len(b) == 8 // world for b in full)
    assert full == list(rank_batches(epoch_order(50, 4, 2), 8, rank, world))
    for start in range(len(full) + 1):
        assert list(batches_from(50, 4, 2, start, 8, rank, world)) == full[start:]


class _Probe(torch.utils.data.Dataset):
    """Each sample says the epoch it was read in, its index and the process that read it."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        return self.epoch, index, os.getpid()


@pytest.mark.parametrize("workers", [0, 2])
def test_run_loader_goes_on_across_epochs_from_workers_started_once(workers):
    # 7 samples, 3 a batch: 2 batches an epoch. From epoch 1's second batch on, six batches reach epoch 4.
    loader = run_loader(_Probe(7), list, seed=3, epoch=1, start_batch=1, global_batch=3, workers=workers)
    got = list(itertools.islice(loader, 6))
    starts = {1: 1, 2: 0, 3: 0, 4: 0}
    expected = [[(e, i) for i in b] for e, s in starts.items() for b in batches_from(7, 3, e, s, 3)][:6]
    assert [[(e, i) for e, i, _ in batch] for batch in got] == expected  # each sample read in its own epoch
    pids = {pid for batch in got for _, _, pid in batch}
    # a loader per epoch would start 2 new workers an epoch: up to 8 processes over these four epochs
    assert pids == {os.getpid()} if workers == 0 else len(pids) == 2 and os.getpid() not in pids


# -- pieces -------------------------------------------------------------------------------------------


def test_collate_stacks_samples():
    samples = [
        {"pixels": torch.full((2, 3, 4, 4), float(i)), "caption": f"c{i}", "index": 10 + i, "skipped": i}
        for i in range(3)
    ]
    batch = collate(samples)
    assert batch["pixels"].shape == (3, 2, 3, 4, 4) and batch["pixels"][2].eq(2).all()
    assert batch["caption"] == ["c0", "c1", "c2"] and batch["index"].tolist() == [10, 11, 12]
    assert batch["skipped"] == 3
    samples[1]["pixels"] = torch.zeros(1, 3, 4, 4)
    with pytest.raises(DataError, match="different shapes"):
        collate(samples)


def test_packed_strings():
    words = ["clip", "", "ünïcødé ✓", "a/b.mp4"]
    packed = PackedStrings(words)
    assert len(packed) == 4 and [packed[i] for i in range(4)] == words and packed[-1] == "a/b.mp4"
    with pytest.raises(IndexError):
        packed[4]
    assert list(PackedStrings([])) == []


def test_item_opens_a_file_or_bytes(tmp_path):
    (tmp_path / "x.MP4").write_bytes(b"abc")
    on_disk, in_memory = Item("x.MP4", "c", path=tmp_path / "x.MP4"), Item("s.tar/1.mp4", "c", data=b"abc")
    assert on_disk.suffix == in_memory.suffix == ".mp4"
    assert on_disk.open() == str(tmp_path / "x.MP4") and in_memory.open().read() == b"abc"
    assert "abc" not in repr(in_memory)
