"""Tar shards (the webdataset layout) for large corpora: writing them, and reading samples by seeking.

    animatediff shards data/clips data/shards --per-shard 1000
    python -m animatediff.training.shards data/clips data/shards --per-shard 1000

A shard `shard-000000.tar` holds, per sample, `{key}{suffix}` (the video or image, copied as it is: no
re-encoding) and `{key}.txt` (its caption); a key is the sample's number in the source, `000000123`.
Shards are plain uncompressed tars (videos do not compress further), so `ShardSet` reads a sample by
seeking to its member: the member offsets come from the tar headers once, nothing is unpacked, and each
process keeps only a few shards open.
"""

from __future__ import annotations

import argparse
import glob
import io
import math
import os
import sys
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from .data import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    DataError,
    ImageFolder,
    Item,
    PackedStrings,
    Source,
    VideoFolder,
    first_few,
)

# -- reading ------------------------------------------------------------------------------------------


class ShardSet:
    """The samples of the tar shards matching `pattern` (a glob such as `data/shards/shard-*.tar`, or a
    folder of .tar files), in shard order, then key order within a shard."""

    OPEN_SHARDS = 8  # file handles kept per process, least recently used closed first

    def __init__(self, pattern: str | os.PathLike, allow_missing_captions: bool = False):
        self.shards = _match(pattern)
        names, tables, missing = [], [], []
        for number, shard in enumerate(self.shards):
            rows = []
            for name, media, caption in _index(shard):
                if caption is None:
                    missing.append(f"{shard}/{name}")
                names.append(name)
                rows.append((number, *media, *(caption or (0, -1))))
            tables.append(np.array(rows, dtype=np.int64).reshape(-1, 5))
        if not names:
            raise DataError(f"the {len(self.shards)} shards matching {pattern} hold no video or image members")
        if missing and not allow_missing_captions:
            raise DataError(
                f"{len(missing)} of {len(names)} samples in the shards matching {pattern} have no .txt caption: "
                f"{first_few(missing)}; allow missing captions to train on empty ones"
            )
        self.names = PackedStrings(names)
        # a row per sample: shard number, media offset and size, caption offset and size (size -1: none).
        # Numbers in one array, not an object per sample: see PackedStrings.
        self.table = np.concatenate(tables)
        self._handles: OrderedDict[int, BinaryIO] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Item:
        shard, offset, size, caption_offset, caption_size = (int(v) for v in self.table[index])
        data = self._read(shard, offset, size)
        caption = ""
        if caption_size >= 0:
            caption = self._read(shard, caption_offset, caption_size).decode("utf-8", "replace").strip()
        return Item(f"{self.shards[shard]}/{self.names[index]}", caption, data=data)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        # What tar.extractfile does for a plain member, without a TarFile (whose member list a new
        # process would have to read again from the headers).
        if self._pid != os.getpid():
            # A forked DataLoader worker inherits the parent's handles, and with them file positions
            # shared with the parent and its other workers: it opens its own.
            self._handles, self._pid = OrderedDict(), os.getpid()
        f = self._handles.pop(shard, None)
        if f is None:
            if len(self._handles) >= self.OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
            f = open(self.shards[shard], "rb")  # noqa: SIM115 - kept open across samples, closed on eviction
        self._handles[shard] = f  # now the most recently used
        f.seek(offset)
        data = f.read(size)
        if len(data) < size:
            raise OSError(f"{self.shards[shard]} ends inside a member (a truncated shard?)")
        return data

    def __getstate__(self) -> dict:
        # open files do not pickle, and DataLoader workers started with "spawn" get a pickled copy
        return {**self.__dict__, "_handles": OrderedDict()}


def _match(pattern: str | os.PathLike) -> list[Path]:
    path = Path(pattern)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else sorted(Path(p) for p in glob.glob(str(pattern)))
    if not shards:
        raise DataError(f"no shards match {pattern}")
    return shards


def _index(shard: Path) -> list[tuple[str, tuple[int, int], tuple[int, int] | None]]:
    """(media member name, its (offset, size) in the file, its caption's (offset, size) or None) for
    each sample of a shard, by key."""
    media: dict[str, tuple[str, int, int]] = {}
    captions: dict[str, tuple[int, int]] = {}
    try:
        # "r:": uncompressed only; in a gzipped tar, member offsets are not positions in the file
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                # webdataset's rule: the key is the name up to the first dot of its last part
                folder, base = os.path.split(member.name)
                stem, _, extension = base.partition(".")
                key, extension = os.path.join(folder, stem), extension.lower()
                if extension == "txt":
                    captions[key] = (member.offset_data, member.size)
                elif "." + extension.rpartition(".")[2] in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                    media.setdefault(key, (member.name, member.offset_data, member.size))
    except tarfile.ReadError as e:
        raise DataError(f"{shard}: not an uncompressed tar file ({e}); shards are read by seeking into them") from None
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{shard}: unreadable shard ({e})") from None
    return [(name, (offset, size), captions.get(key)) for key, (name, offset, size) in sorted(media.items())]


# -- writing ------------------------------------------------------------------------------------------


def write_shards(
    source: Source,
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    on_shard: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Copy every sample of `source` (a folder, WebVid's CSV, other shards) into `{prefix}-000000.tar`,
    ... in `out_dir`, and return their paths. Each shard is written under a temporary name and renamed
    when complete, so an interrupted run leaves only whole shards; `on_shard(path)` follows each."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar"))
    if old:  # a glob over the folder would read old and new shards as one data set
        raise DataError(
            f"{out} already holds {len(old)} shards ({first_few(old)}): choose an empty folder or delete them"
        )
    paths = []
    for number, first in enumerate(range(0, len(source), samples_per_shard)):
        path = out / f"{prefix}-{number:06d}.tar"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            _write_tar(tmp, source, range(first, min(first + samples_per_shard, len(source))))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
        if on_shard is not None:
            on_shard(path)
    return paths


def _write_tar(path: Path, source: Source, indices: Sequence[int]) -> None:
    with tarfile.open(path, "w") as tar:
        for i in indices:
            item = source[i]
            key = f"{i:09d}"  # zero-padded, so name order is sample order
            if item.path is not None:
                with open(item.path, "rb") as f:
                    _add(tar, key + item.suffix, f, os.fstat(f.fileno()).st_size)
            else:
                _add(tar, key + item.suffix, io.BytesIO(item.data), len(item.data))
            caption = item.caption.encode("utf-8")
            _add(tar, f"{key}.txt", io.BytesIO(caption), len(caption))


def _add(tar: tarfile.TarFile, name: str, f: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644  # no time stamp or owner: the same samples give byte-identical shards
    tar.addfile(info, f)


# -- command line -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="animatediff shards",
        description="Pack a folder of captioned videos (clip.mp4 + clip.txt) into tar shards.",
    )
    ap.add_argument("source", type=Path, help="folder of videos, each with a .txt caption beside it")
    ap.add_argument("out_dir", type=Path, help="where the shards go (a new or empty folder)")
    ap.add_argument("--per-shard", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    ap.add_argument("--prefix", default="shard", help="shard names: PREFIX-000000.tar, ... (default shard)")
    ap.add_argument("--images", action="store_true", help="pack images (.png .jpg .jpeg .webp) instead of videos")
    ap.add_argument("--allow-missing-captions", action="store_true", help="pack files without a caption as ''")
    args = ap.parse_args(argv)
    try:
        kind = ImageFolder if args.images else VideoFolder
        source = kind(args.source, allow_missing_captions=args.allow_missing_captions)
        with tqdm(total=math.ceil(len(source) / max(args.per_shard, 1)), unit="shard") as bar:
            paths = write_shards(source, args.out_dir, args.per_shard, args.prefix, on_shard=lambda _: bar.update())
    except ValueError as e:  # DataError, or a bad --per-shard
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(source)} samples in {len(paths)} shards to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
