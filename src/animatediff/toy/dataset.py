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
    watermark: bool = True,
) -> tuple[np.ndarray, str]:  # fmt: skip
    rng = _rng(seed, i)
    scene = world.sample_scene(rng, style)
    motion = world.sample_motion(rng, kinds, scene.shape)
    return world.render_video(scene, motion, frames, watermark), world.caption(scene, motion, bool(rng.random() < 0.7))


def _done(folder: Path, n: int, suffix: str) -> bool:
    marker = folder / ".complete"
    return marker.exists() and marker.read_text() == f"{n}{suffix}"


def write_images(folder: str | os.PathLike, n: int, seed: int, style: str = "filled") -> Path:
    """n captioned still images (skipped if the folder already holds exactly this set)."""
    folder = Path(folder)
    if _done(folder, n, ".png"):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        frame, text = image_sample(seed, i, style)
        Image.fromarray(frame).save(folder / f"{i:06d}.png")
        (folder / f"{i:06d}.txt").write_text(text)
    (folder / ".complete").write_text(f"{n}.png")
    return folder


def write_videos(
    folder: str | os.PathLike, n: int, seed: int, kinds: tuple[str, ...] = world.MOTIONS, frames: int = 16,
    style: str = "filled", watermark: bool = True,
) -> Path:  # fmt: skip
    """n captioned clips, lossless mp4 (skipped if the folder already holds exactly this set)."""
    folder = Path(folder)
    if _done(folder, n, ".mp4"):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        clip, text = video_sample(seed, i, kinds, frames, style, watermark)
        Video(clip, fps=8).save(folder / f"{i:06d}.mp4", lossless=True)
        (folder / f"{i:06d}.txt").write_text(text)
    (folder / ".complete").write_text(f"{n}.mp4")
    return folder
