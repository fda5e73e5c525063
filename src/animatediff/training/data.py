"""Training data: captioned videos (or images) -> clips [F, 3, size, size] in [-1, 1].

Sources are map-style, so a sample is a pure function of its index:

- `VideoFolder`  videos under a folder, each with its caption beside it (`clip.mp4` + `clip.txt`);
- `WebVidCSV`    the original AnimateDiff/WebVid layout: `videoid,name,page_dir` rows, videos at
                 `{folder}/{videoid}.mp4`;
- `ImageFolder`  images with `.txt` captions, for the image stages;
- `ShardSet`     tar shards (`{key}.mp4` + `{key}.txt`), read by seeking into the tar (shards.py).

`ClipDataset` follows the original's clip choice: `frames` frames `stride` apart from a random start; a
video shorter than that span but with at least `frames` frames is spread evenly over its length;
shorter ones are skipped. Every random choice of a sample comes from a generator seeded by (seed, epoch,
index), so the data do not depend on worker count or access order, and a resumed run sees exactly what
it would have seen. Unreadable files never stop a run: the next index is tried, and the sample reports
how many were passed over.

The order is separate: `epoch_order` is a seeded permutation, `rank_batches` gives each process its
contiguous share of every global batch, `batches_from` starts an epoch at a given batch (resume), and
`run_loader` serves them epoch after epoch from one DataLoader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from .config import DataConfig

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_CONSECUTIVE_FAILURES = 50


class DataError(ValueError):
    """Data that cannot be trained on, said in one line."""


@dataclass(frozen=True)
class Item:
    """One sample of a source: its media (a file, or the bytes of a tar member) and its caption."""

    name: str  # where it comes from, for messages; its suffix says how to decode it
    caption: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.name)[1].lower()

    def open(self) -> str | io.BytesIO:
        """What PyAV and PIL open: the file's path, or its bytes in memory (a fresh stream each call)."""
        return str(self.path) if self.data is None else io.BytesIO(self.data)


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Item: ...


class PackedStrings:
    """Many strings in one buffer. A list of millions of `str` in a dataset is copied into every forked
    DataLoader worker page by page, as reading the strings touches their reference counts (pytorch#13246);
    one bytes object and one offsets array stay shared."""

    def __init__(self, strings: Sequence[str]):
        encoded = [s.encode("utf-8") for s in strings]
        self._data = b"".join(encoded)
        self._ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        start = int(self._ends[index - 1]) if index else 0
        return self._data[start : int(self._ends[index])].decode("utf-8")


def first_few(paths: Sequence, n: int = 3) -> str:
    return ", ".join(str(p) for p in paths[:n]) + (f" (and {len(paths) - n} more)" if len(paths) > n else "")


# -- sources ------------------------------------------------------------------------------------------


class _CaptionedFolder:
    suffixes: tuple[str, ...] = ()
    what = ""

    def __init__(self, root: str | os.PathLike, allow_missing_captions: bool = False):
        self.root = Path(root)
        self.allow_missing_captions = allow_missing_captions
        self.names = PackedStrings(self._find())

    def _find(self) -> list[str]:
        """Paths (relative to root, sorted: every process numbers the samples alike) of the media files."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder")
        found, missing = [], []
        # followlinks: data sets are often assembled from symlinked folders
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            present = set(files)
            for name in files:
                stem, suffix = os.path.splitext(name)
                # hidden files are not samples: macOS leaves `._clip.mp4` resource forks beside copies
                if name.startswith(".") or suffix.lower() not in self.suffixes:
                    continue
                rel = os.path.relpath(os.path.join(folder, name), self.root)
                found.append(rel)
                if stem + ".txt" not in present:
                    missing.append(rel)
        if not found:
            raise DataError(f"no {self.what} files found under {self.root} (looked for {', '.join(self.suffixes)})")
        if missing and not self.allow_missing_captions:
            raise DataError(
                f"{len(missing)} of {len(found)} {self.what}s under {self.root} have no caption file beside them "
                f"(clip.mp4 needs clip.txt): {first_few(sorted(missing))}; add them, or allow missing captions "
                "to train on empty ones"
            )
        return sorted(found)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Item:
        name = self.names[index]
        path = self.root / name
        caption = path.with_suffix(".txt")
        if self.allow_missing_captions and not caption.exists():
            return Item(name, "", path=path)
        # read here, not at construction: a folder of millions of clips then lists in one directory walk
        return Item(name, caption.read_text(encoding="utf-8", errors="replace").strip(), path=path)


class VideoFolder(_CaptionedFolder):
    """Videos under `root` (recursively), each with a caption file beside it (`clip.mp4` + `clip.txt`)."""

    suffixes, what = VIDEO_SUFFIXES, "video"


class ImageFolder(_CaptionedFolder):
    """Images under `root` (recursively) with captions beside them; each is a one-frame clip."""

    suffixes, what = IMAGE_SUFFIXES, "image"


class WebVidCSV:
    """WebVid's layout, as the original AnimateDiff reads it: a CSV with columns `videoid,name,page_dir`
    (more are fine), the video of a row at `{video_folder}/{videoid}.mp4`, its caption in `name`.

    Rows whose video is not in the folder (WebVid downloads always miss some) are left out and counted
    in `missing`.
    """

    def __init__(self, csv_path: str | os.PathLike, video_folder: str | os.PathLike):
        self.csv_path = csv_path = Path(csv_path)
        self.folder = Path(video_folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: no such folder (the videos of {csv_path})")
        present = {e.name for e in os.scandir(self.folder)}  # one listing, not a stat per row of millions
        ids, captions, self.missing = [], [], 0
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = csv.DictReader(f)
                if not {"videoid", "name"} <= set(rows.fieldnames or ()):
                    raise DataError(
                        f"{csv_path}: expected WebVid's columns videoid,name,page_dir, got {rows.fieldnames}"
                    )
                for row in rows:
                    if f"{row['videoid']}.mp4" in present:
                        ids.append(row["videoid"])
                        captions.append((row["name"] or "").strip())
                    else:
                        self.missing += 1
        except OSError as e:
            raise DataError(f"{csv_path}: cannot read the CSV ({e.strerror})") from None
        if not ids:
            raise DataError(f"none of the {self.missing} videos listed in {csv_path} is in {self.folder}")
        self.ids, self.captions = PackedStrings(ids), PackedStrings(captions)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Item:
        name = f"{self.ids[index]}.mp4"
        return Item(name, self.captions[index], path=self.folder / name)


def make_source(d: DataConfig) -> Source:
    """The source a training config's `data` section names."""
    if d.shards:
        from .shards import ShardSet  # shards.py builds on this module

        return ShardSet(d.shards, allow_missing_captions=d.allow_missing_captions)
    if d.csv:
        return WebVidCSV(d.csv, d.videos)
    if d.images:
        return ImageFolder(d.images, allow_missing_captions=d.allow_missing_captions)
    return VideoFolder(d.videos, allow_missing_captions=d.allow_missing_captions)


# -- decoding -----------------------------------------------------------------------------------------


class Unusable(Exception):
    """A file that decodes but cannot make a sample (too short, no video stream, ends early)."""


def count_frames(item: Item) -> int:
    with av.open(item.open()) as c:
        if not c.streams.video:
            raise Unusable("no video stream")
        stream = c.streams.video[0]
        if stream.frames > 0:  # mp4, mov and avi index their frames
            return stream.frames
        # webm and mkv often do not: count packets, which needs demuxing only, not decoding
        return sum(1 for packet in c.demux(stream) if packet.size)


def decode_frames(item: Item, indices: Sequence[int]) -> np.ndarray:
    """RGB frames uint8 [len(indices), H, W, 3]; decoding stops at the last index, and only the frames
    asked for are converted and kept."""
    wanted, last = set(indices), max(indices)
    got: dict[int, np.ndarray] = {}
    with av.open(item.open()) as c:
        for i, frame in enumerate(c.decode(c.streams.video[0])):
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i == last:
                break
    if len(got) < len(wanted):
        raise Unusable(f"the video ends before frame {last} (truncated?)")
    return np.stack([got[i] for i in indices])


def read_image(item: Item) -> np.ndarray:
    """RGB uint8 [1, H, W, 3], upright (phone photos store their rotation in EXIF)."""
    with Image.open(item.open()) as im:
        return np.array(ImageOps.exif_transpose(im).convert("RGB"))[None]


def clip_indices(n: int, frames: int, stride: int, rng: random.Random) -> list[int]:
    """The original's choice of frames from a video of `n` (at least `frames`): `frames` frames `stride`
    apart from a random start, or, if the video is shorter than that span, spread over all of it."""
    span = min(n, (frames - 1) * stride + 1)
    start = rng.randint(0, n - span)
    # truncating linspace as the original does; on a full span it gives exactly start, start + stride, ...
    return np.linspace(start, start + span - 1, frames, dtype=int).tolist()


def resize_crop(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3, size, size] in [-1, 1]: the shorter side to `size` (bilinear,
    antialiased, as torchvision's Resize in the original), then the center square."""
    h, w = frames.shape[1:3]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty(len(frames), 3, size, size)
    for i, frame in enumerate(frames):  # a frame at a time: a 1080p clip of 16 frames in float32 is 400 MB
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out[i] = x[0, :, top : top + size, left : left + size]
    return out.div_(127.5).sub_(1).clamp_(-1, 1)


def _stable_seed(*parts: object) -> int:
    """A seed from values, equal in every process and Python run (unlike `hash`, which is salted)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


# -- the dataset --------------------------------------------------------------------------------------


class ClipDataset(torch.utils.data.Dataset):
    """Clips of `frames` frames `stride` apart, `size` x `size`, from any source; one random frame per
    video with `image=True` (image stages); images are always one frame.

    `dataset[i]` is `{"pixels": float32 [F, 3, size, size] in [-1, 1], "caption": str, "index": i,
    "skipped": how many unreadable or too short items were passed over to make it}`.
    """

    def __init__(self, source: Source, frames: int = 16, stride: int = 4, size: int = 256, seed: int = 0,
                 image: bool = False):  # fmt: skip
        if frames < 1 or stride < 1 or size < 1:
            raise ValueError(f"frames, stride and size must be at least 1, got {frames}, {stride}, {size}")
        self.source, self.frames, self.stride, self.size = source, frames, stride, size
        self.seed, self.image, self.epoch = seed, image, 0

    def set_epoch(self, epoch: int) -> None:
        """New clip starts and frame choices for every sample (call it in each process, before loading)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def rng(self, index: int) -> random.Random:
        return random.Random(_stable_seed("clip", self.seed, self.epoch, index))

    def load(self, item: Item, rng: random.Random) -> torch.Tensor:
        """The pixels of one item; raises on a file that cannot make a sample."""
        if item.suffix in IMAGE_SUFFIXES:
            return resize_crop(read_image(item), self.size)
        n, need = count_frames(item), 1 if self.image else self.frames
        if n < need:
            raise Unusable(f"{n} frames, fewer than the {need} a sample needs")
        indices = [rng.randrange(n)] if self.image else clip_indices(n, self.frames, self.stride, rng)
        return resize_crop(decode_frames(item, indices), self.size)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        tries, error = min(MAX_CONSECUTIVE_FAILURES, n), None
        for skipped in range(tries):
            # the next indices, not random ones: which sample stands in for a broken one stays deterministic
            candidate = (index + skipped) % n
            where = f"sample {candidate}"
            try:
                item = self.source[candidate]
                where = item.name
                pixels = self.load(item, self.rng(candidate))  # the candidate's own randomness
            # Any error: a damaged file can fail anywhere in FFmpeg, PIL or a tar read, and one bad file
            # in millions must not end a run. A bug fails every sample, so it still ends in the error below.
            except Exception as e:
                error = e
                continue
            return {"pixels": pixels, "caption": item.caption, "index": int(index), "skipped": skipped}
        raise DataError(
            f"{tries} consecutive unreadable samples around index {index}: is the data folder right? "
            f"(the last, {where}: {type(error).__name__}: {error})"
        ) from error


def collate(samples: list[dict]) -> dict:
    """Samples -> {"pixels": [B, F, 3, H, W], "caption": [B strings], "index": [B], "skipped": total}."""
    shapes = {tuple(s["pixels"].shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(f"samples of different shapes in one batch: {sorted(shapes)} (images mixed with videos?)")
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "skipped": sum(s["skipped"] for s in samples),
    }


# -- order --------------------------------------------------------------------------------------------


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    # PCG64 from numpy: fast for WebVid's 10M, and the same permutation on every process and platform
    return np.random.Generator(np.random.PCG64(_stable_seed("order", seed, epoch))).permutation(n)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the `n` samples in one epoch: a permutation seeded by (seed, epoch)."""
    return _permutation(n, seed, epoch).tolist()


def rank_batches(order: Sequence[int], global_batch: int, rank: int = 0, world: int = 1) -> Iterator[list[int]]:
    """For each global batch (`global_batch` consecutive items of `order`; an incomplete last one is
    dropped), the contiguous slice that process `rank` of `world` handles."""
    if global_batch < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need global_batch >= 1 and 0 <= rank < world, got {global_batch}, {rank}, {world}")
    if global_batch % world:
        raise ValueError(f"a global batch of {global_batch} cannot be split evenly over {world} processes")
    per_rank = global_batch // world
    starts = range(rank * per_rank, len(order) - global_batch + 1 + rank * per_rank, global_batch)
    return ([int(i) for i in order[s : s + per_rank]] for s in starts)


def batches_from(
    n: int, seed: int, epoch: int, start_batch: int, global_batch: int, rank: int = 0, world: int = 1
) -> Iterator[list[int]]:
    """This process's share of each global batch of the epoch, from batch `start_batch` on: what a run
    resumed at (epoch, start_batch) handles, without going through the batches before it."""
    if start_batch < 0:
        raise ValueError(f"start_batch must be at least 0, got {start_batch}")
    order = _permutation(n, seed, epoch)
    return rank_batches(order[start_batch * global_batch :], global_batch, rank, world)


# -- one loader for the whole run ---------------------------------------------------------------------


class _ByEpoch(torch.utils.data.Dataset):
    """`samples[index]` as it is in `epoch`, for a key (epoch, index): the epoch travels with the key,
    so workers started once serve every epoch."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if hasattr(self.samples, "set_epoch"):  # (cached samples are the same every epoch)
            self.samples.set_epoch(epoch)
        return self.samples[index]


def run_loader(
    samples, collate_fn, seed: int, epoch: int, start_batch: int, global_batch: int, rank: int = 0,
    world: int = 1, workers: int = 0,
) -> torch.utils.data.DataLoader:  # fmt: skip
    """This process's share of every global batch from (epoch, start_batch) on, epoch after epoch, with
    no end. One DataLoader for the run rather than one per epoch, which started its workers again every
    epoch: in a 5 GB trainer with 3 steps an epoch (a MotionLoRA on 50 clips) every third step took 14 s
    instead of 4.5, likely the copy-on-write faults that follow each fork (bench/loader.py)."""

    def keys() -> Iterator[list[tuple[int, int]]]:
        e, start = epoch, start_batch
        while True:
            for batch in batches_from(len(samples), seed, e, start, global_batch, rank, world):
                yield [(e, i) for i in batch]
            e, start = e + 1, 0

    return torch.utils.data.DataLoader(_ByEpoch(samples), batch_sampler=keys(), num_workers=workers,
                                       collate_fn=collate_fn)  # fmt: skip
