"""Training data: captioned videos (or images) -> clips [F, 3, size, size] in [-1, 1].

Sources are map-style (a sample is a pure function of its index): a folder of videos with a `.txt`
caption beside each, WebVid's CSV (`videoid,name,page_dir`, videos at `{folder}/{videoid}.mp4`),
tar shards (`{key}.mp4` + `{key}.txt`, read by seeking into the tar), or a folder of images.

Clips follow the original AnimateDiff: `frames` frames `stride` apart from a random start; a video
shorter than that but with at least `frames` frames is spread evenly over its length; shorter ones
are skipped. Every random choice of a sample comes from a generator seeded by (seed, epoch, index),
so the data do not depend on worker count or order, and a resumed run sees what it would have seen.
Unreadable videos never stop a run: the next index is tried, and the sample reports how many were
skipped on the way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_CONSECUTIVE_FAILURES = 50


class DataError(ValueError):
    """Data that cannot be trained on, said in one line."""


@dataclass(frozen=True)
class Item:
    """One entry of a source: where its media is, and its caption."""

    key: str
    caption: str
    path: Path | None = None  # a file on disk
    shard: Path | None = None  # or a member of a tar shard
    offset: int = 0
    size: int = 0

    @property
    def suffix(self) -> str:
        return Path(self.key).suffix.lower()


def _first(paths: list, n: int = 3) -> str:
    return ", ".join(str(p) for p in paths[:n]) + (f" (and {len(paths) - n} more)" if len(paths) > n else "")


class VideoFolder:
    """Videos under `root` (recursively), each with a caption file beside it (`clip.mp4` + `clip.txt`)."""

    suffixes, what = VIDEO_SUFFIXES, "video"

    def __init__(self, root: str | os.PathLike, allow_missing_captions: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in self.suffixes and p.is_file())
        if not files:
            raise DataError(f"no {self.what} files found under {root} (looked for {', '.join(self.suffixes)})")
        missing = [p for p in files if not p.with_suffix(".txt").exists()]
        if missing and not allow_missing_captions:
            raise DataError(f"{len(missing)} files under {root} have no caption (.txt beside them): {_first(missing)}")
        self.items = [Item(str(p.relative_to(root)), _read_caption(p.with_suffix(".txt")), path=p) for p in files]

    def __len__(self) -> int:
        return len(self.items)


class ImageFolder(VideoFolder):
    """Images with captions beside them (for the image stages)."""

    suffixes, what = IMAGE_SUFFIXES, "image"


def _read_caption(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").strip() if path.exists() else ""


class WebVidCSV:
    """WebVid's layout: a CSV with `videoid,name,...`; videos at `{video_folder}/{videoid}.mp4`."""

    def __init__(self, csv_path: str | os.PathLike, video_folder: str | os.PathLike):
        csv_path, folder = Path(csv_path), Path(video_folder)
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise DataError(f"{csv_path}: cannot read the CSV ({e.strerror})") from None
        if rows and not {"videoid", "name"} <= set(rows[0]):
            raise DataError(f"{csv_path}: expected columns videoid,name (WebVid's layout), got {list(rows[0])}")
        self.items, self.missing = [], 0
        for row in rows:
            path = folder / f"{row['videoid']}.mp4"
            if path.exists():
                self.items.append(Item(path.name, row["name"].strip(), path=path))
            else:
                self.missing += 1
        if not self.items:
            raise DataError(f"none of the {len(rows)} videos of {csv_path} is in {folder}")

    def __len__(self) -> int:
        return len(self.items)


class ShardSet:
    """Tar shards (webdataset layout): `{key}.mp4` (or another media suffix) and `{key}.txt` members.

    The index (member offsets) is read from the tar headers once; a sample is read by seeking, so
    shards are never unpacked and only a few file handles are open per process.
    """

    def __init__(self, pattern: str):
        import glob

        shards = sorted(Path(p) for p in glob.glob(str(pattern)))
        if not shards:
            raise DataError(f"no shards match {pattern}")
        self.items = []
        for shard in shards:
            media, captions = {}, {}
            try:
                with tarfile.open(shard) as tar:
                    for m in tar:
                        if not m.isfile():
                            continue
                        stem, suffix = os.path.splitext(m.name)
                        if suffix.lower() == ".txt":
                            captions[stem] = tar.extractfile(m).read().decode("utf-8", "replace").strip()
                        elif suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                            media[stem] = (m.name, m.offset_data, m.size)
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"{shard}: unreadable shard ({e})") from None
            for stem in sorted(media):
                name, offset, size = media[stem]
                self.items.append(Item(name, captions.get(stem, ""), shard=shard, offset=offset, size=size))
        self._handles: dict[Path, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.items)

    def read(self, item: Item) -> bytes:
        if self._pid != os.getpid():  # a forked DataLoader worker: never share file handles
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(item.shard)
        if f is None:
            if len(self._handles) >= 8:
                self._handles.pop(next(iter(self._handles))).close()
            f = self._handles[item.shard] = open(item.shard, "rb")  # noqa: SIM115 - cached handle
        f.seek(item.offset)
        return f.read(item.size)


def make_source(d) -> VideoFolder | WebVidCSV | ShardSet:
    """The source a training config's `data` section names."""
    if d.shards:
        return ShardSet(d.shards)
    if d.csv:
        return WebVidCSV(d.csv, d.videos)
    if d.images:
        return ImageFolder(d.images)
    return VideoFolder(d.videos, allow_missing_captions=d.allow_missing_captions)


# -- decoding -------------------------------------------------------------------------------------------


def _open(source, item: Item):
    if item.shard is not None:
        return io.BytesIO(source.read(item))
    return str(item.path)


def frame_count(source, item: Item) -> int:
    with av.open(_open(source, item)) as c:
        stream = c.streams.video[0]
        if stream.frames:
            return stream.frames
        return sum(1 for _ in c.decode(stream))


def decode_frames(source, item: Item, indices: list[int]) -> np.ndarray:
    """RGB frames [len(indices), H, W, 3] at the given frame indices (decoding stops at the last one)."""
    wanted = set(indices)
    got: dict[int, np.ndarray] = {}
    with av.open(_open(source, item)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    if len(got) < len(wanted):
        raise ValueError(f"the video ended after {len(got)} of the needed frames")
    return np.stack([got[i] for i in indices])


def clip_indices(n: int, frames: int, stride: int, rng: random.Random) -> list[int]:
    """The original's choice: `frames` frames `stride` apart from a random start, or spread evenly."""
    span = (frames - 1) * stride + 1
    if n >= span:
        start = rng.randint(0, n - span)
        return list(range(start, start + span, stride))
    return np.linspace(0, n - 1, frames).round().astype(int).tolist()


def resize_crop(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [F, 3, size, size] in [-1, 1]: short side to `size`, center crop."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x / 127.5 - 1).clamp(-1, 1)


def _seed(*values: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(values).encode(), digest_size=8).digest(), "little")


class ClipDataset(torch.utils.data.Dataset):
    """Clips [F, 3, size, size] (one frame for image stages) with captions, deterministic per (epoch, index)."""

    def __init__(self, source, frames: int = 16, stride: int = 4, size: int = 256, seed: int = 0,
                 image: bool = False):  # fmt: skip
        self.source, self.frames, self.stride, self.size = source, frames, stride, size
        self.seed, self.image, self.epoch = seed, image, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> torch.Tensor:
        item = self.source.items[index]
        rng = random.Random(_seed(self.seed, self.epoch, index))
        if item.suffix in IMAGE_SUFFIXES:
            data = _open(self.source, item)
            frames = np.asarray(Image.open(data).convert("RGB"))[None]
        else:
            n = frame_count(self.source, item)
            if self.image:
                if n < 1:
                    raise ValueError("no frames")
                frames = decode_frames(self.source, item, [rng.randrange(n)])
            else:
                if n < self.frames:
                    raise ValueError(f"too short: {n} frames for clips of {self.frames}")
                frames = decode_frames(self.source, item, clip_indices(n, self.frames, self.stride, rng))
        return resize_crop(frames, self.size)

    def __getitem__(self, index: int) -> dict:
        for skipped in range(MAX_CONSECUTIVE_FAILURES):
            i = (index + skipped) % len(self)
            try:
                pixels = self.load(i)
            except Exception:  # any unreadable, truncated or too-short file: try the next one
                continue
            return {"pixels": pixels, "caption": self.source.items[i].caption, "index": index, "skipped": skipped}
        raise DataError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable samples from index {index}: "
                        "is the data folder right?")  # fmt: skip


def collate(samples: list[dict]) -> dict:
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
        "skipped": sum(s["skipped"] for s in samples),
    }


# -- order -------------------------------------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A seeded permutation of the dataset for one epoch."""
    g = torch.Generator().manual_seed(_seed(seed, epoch, -1) & (2**62 - 1))
    return torch.randperm(n, generator=g).tolist()


def batches_from(
    n: int, seed: int, epoch: int, start_batch: int, global_batch: int, rank: int = 0, world: int = 1
) -> Iterator[list[int]]:
    """This process's share of each global batch of the epoch, from batch `start_batch` on.

    Global batch k is items [k * B, (k + 1) * B) of the epoch's order; process r takes the r-th
    contiguous slice of it. The incomplete last batch is dropped.
    """
    if global_batch % world:
        raise ValueError(f"a global batch of {global_batch} cannot be split over {world} processes")
    order = epoch_order(n, seed, epoch)
    per_rank = global_batch // world
    for k in range(start_batch, n // global_batch):
        batch = order[k * global_batch : (k + 1) * global_batch]
        yield batch[rank * per_rank : (rank + 1) * per_rank]
