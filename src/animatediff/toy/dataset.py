"""Writing the toy world to disk in the layouts the trainer reads (so training runs the real data path).

Images become `NNNNNN.png` + `NNNNNN.txt`; videos become exact-RGB `NNNNNN.mp4` + `NNNNNN.txt`
(lossless, so colours and edges are not blurred by chroma subsampling). Sample i of a dataset is a
pure function of (seed, i).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..video import Video
from . import world


def _rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


def image_sample(seed: int, i: int, style: str = "filled") -> tuple[np.ndarray, str]:
    rng = _rng(seed, i)
    scene = world.sample_scene(rng, style)
    return world.render(scene), world.caption(scene, with_size=bool(rng.random() < 0.7))


def video_sample(
    seed: int, i: int, kinds: tuple[str, ...] = world.MOTIONS, frames: int = 16, style: str = "filled",
    watermark: bool = True, motion_words: bool = True,
) -> tuple[np.ndarray, str]:  # fmt: skip
    """A clip and its caption; without `motion_words` the caption is its frames' as stills ("a red
    square on a blue background", not "a red square moving left on a blue background")."""
    _, scene, motion, with_size = _clip(seed, i, kinds, style)
    text = world.caption(scene, motion if motion_words else None, with_size)
    return world.render_video(scene, motion, frames, watermark), text


def _clip(seed: int, i: int, kinds: tuple[str, ...], style: str = "filled"):
    """The random draws of clip i: (rng, scene, motion, whether its caption names the size)."""
    rng = _rng(seed, i)
    scene = world.sample_scene(rng, style)
    motion = world.sample_motion(rng, kinds, scene.shape)
    return rng, scene, motion, bool(rng.random() < 0.7)


def frame_sample(seed: int, i: int, kinds: tuple[str, ...] = world.MOTIONS, frames: int = 16) -> tuple[np.ndarray, str]:
    """The middle frame of `video_sample(seed, i)`'s clip, watermarked, captioned as a still (no motion words).

    The domain adapter's data: a single frame shows no motion, and the base's text encoder never saw
    the motion words. An adapter trained on them learnt to undo those unknown words, and that changed
    how it read every caption (on stills: backgrounds right 47% of frames, against 100% with these).
    The middle frame is the clip's scene as sampled (half a frame of motion away), so the frames differ
    from stills by the watermark alone; a random frame also shows where motion takes objects (off the
    centre, over the edge, turned, grown), the adapter learnt that too, and the motion module trained
    on it moved large objects and kept shapes less without it (docs/toy_world.md)."""
    _, scene, motion, with_size = _clip(seed, i, kinds)
    args = world.trajectory(scene, motion, frames)[frames // 2]
    return world.render(**args, watermark=True), world.caption(scene, with_size=with_size)


def _write(folder: str | os.PathLike, n: int, suffix: str, settings: tuple, write_one) -> Path:
    """Samples 0..n-1 by `write_one(i, stem)`, unless the folder already holds exactly this set (same
    count, settings and world version); an earlier set's numbered files go first."""
    folder = Path(folder)
    marker, wanted = folder / ".complete", f"{n}{suffix} {settings} world {world.VERSION}"
    if marker.exists() and marker.read_text() == wanted:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in folder.glob("[0-9][0-9][0-9][0-9][0-9][0-9].*"):
        old.unlink()
    for i in range(n):
        write_one(i, folder / f"{i:06d}")
    marker.write_text(wanted)
    return folder


def write_images(folder: str | os.PathLike, n: int, seed: int, style: str = "filled") -> Path:
    """n captioned still images (skipped if the folder already holds exactly this set)."""

    def one(i: int, stem: Path) -> None:
        frame, text = image_sample(seed, i, style)
        Image.fromarray(frame).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(text)

    return _write(folder, n, ".png", (seed, style), one)


def write_frames(folder: str | os.PathLike, n: int, seed: int, kinds: tuple[str, ...] = world.MOTIONS) -> Path:
    """n captioned video frames (`frame_sample`), as images (skipped if the folder already holds this set)."""

    def one(i: int, stem: Path) -> None:
        frame, text = frame_sample(seed, i, kinds)
        Image.fromarray(frame).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(text)

    return _write(folder, n, ".png", ("middle frames", seed, kinds), one)


def write_videos(
    folder: str | os.PathLike, n: int, seed: int, kinds: tuple[str, ...] = world.MOTIONS, frames: int = 16,
    style: str = "filled", watermark: bool = True, motion_words: bool = True,
) -> Path:  # fmt: skip
    """n captioned clips, lossless mp4 (skipped if the folder already holds exactly this set)."""

    def one(i: int, stem: Path) -> None:
        clip, text = video_sample(seed, i, kinds, frames, style, watermark, motion_words)
        Video(clip, fps=8).save(stem.with_suffix(".mp4"), lossless=True)
        stem.with_suffix(".txt").write_text(text)

    settings = (seed, kinds, frames, style, watermark) + (() if motion_words else ("still captions",))
    return _write(folder, n, ".mp4", settings, one)
