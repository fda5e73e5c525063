"""Packing captioned media into tar shards (the webdataset layout) for large corpora.

    animatediff shards data/clips data/shards --per-shard 1000

Each sample becomes `{key}{suffix}` + `{key}.txt` in `shard-000000.tar`, `shard-000001.tar`, ...;
files are copied as they are (no re-encoding). Each shard is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path


def write_shards(
    source, out_dir: str | os.PathLike, samples_per_shard: int = 1000, prefix: str = "shard"
) -> list[Path]:
    """Write every item of a VideoFolder / ImageFolder / WebVidCSV source into tar shards."""
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    items = source.items
    for start in range(0, len(items), samples_per_shard):
        path = out / f"{prefix}-{start // samples_per_shard:06d}.tar"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with tarfile.open(tmp, "w") as tar:
                for n, item in enumerate(items[start : start + samples_per_shard], start):
                    key = f"{n:09d}"
                    tar.add(str(item.path), arcname=key + item.suffix)
                    caption = item.caption.encode("utf-8")
                    info = tarfile.TarInfo(key + ".txt")
                    info.size = len(caption)
                    tar.addfile(info, io.BytesIO(caption))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .data import VideoFolder

    ap = argparse.ArgumentParser(prog="python -m animatediff.training.shards")
    ap.add_argument("source", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--per-shard", type=int, default=1000)
    args = ap.parse_args(argv)
    paths = write_shards(VideoFolder(args.source), args.out_dir, args.per_shard)
    print(f"wrote {len(paths)} shards to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
