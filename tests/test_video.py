"""Video: exact tensor conversion, every format written and read back, metadata, errors, atomic saves."""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from animatediff import video as video_module
from animatediff.video import Video, writable

SEED = {"seed": "42", "prompt": "a café at dusk, ✓", "model": "mm_sd_v15_v2"}


def moving_square(frames: int = 16, width: int = 64, height: int = 48, fps: float = 8.0) -> Video:
    """A smooth gradient with a red square sliding right: smooth areas plus hard edges that move."""
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 96)], axis=-1)
    out = np.repeat(background[None].astype(np.uint8), frames, axis=0)
    for i in range(frames):
        out[i, 10:26, 2 + 2 * i : 18 + 2 * i] = (220, 30, 40)
    return Video(out, fps, dict(SEED))


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- in memory ---------------------------------------------------------------------------------------


def test_from_tensor_rounds_half_to_even_and_clamps():
    values = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 1 / 127.5 - 1])
    expected = [0, 0, 64, 128, 191, 255, 255, 1]  # -0.5 -> 63.75; 0 -> 127.5 (to even); 0.5 -> 191.25
    x = torch.stack([values, -values, torch.zeros(8)])  # channels [3, 8]
    v = Video.from_tensor(x.reshape(1, 3, 2, 4), fps=12, metadata={"seed": 7})
    assert v.frames.shape == (1, 2, 4, 3) and v.frames.dtype == np.uint8
    assert v.frames[0, :, :, 0].ravel().tolist() == expected
    assert v.frames[0, :, :, 1].ravel().tolist() == [255, 255, 191, 128, 64, 0, 0, 254]
    assert (v.frames[..., 2] == 128).all()
    assert v.fps == 12.0 and v.metadata == {"seed": "7"}


def test_to_tensor_inverts_from_tensor_on_every_byte():
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = Video(levels).to_tensor()
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(Video.from_tensor(x).frames, levels)


def test_from_tensor_rejects_nan_and_wrong_layout():
    with pytest.raises(ValueError, match="NaN"):
        Video.from_tensor(torch.full((2, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\[frames, 3, height, width\]"):
        Video.from_tensor(torch.zeros(1, 3, 2, 4, 4))


def test_validation_messages():
    with pytest.raises(ValueError, match="uint8"):
        Video(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[frames, height, width, 3\]"):
        Video(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="fps"):
        Video(np.zeros((2, 4, 4, 3), np.uint8), fps=0)
    with pytest.raises(ValueError, match="reserved"):
        Video(np.zeros((2, 4, 4, 3), np.uint8), metadata={"fps": "8"})
    with pytest.raises(ValueError, match="same size"):
        Video.from_pil([Image.new("RGB", (4, 4)), Image.new("RGB", (4, 5))])


def test_views():
    v = moving_square(frames=16, width=64, height=48, fps=8)
    assert len(v) == 16 and v.size == (64, 48) and v.duration == 2.0
    assert v.to_numpy() is v.frames
    pil = v.to_pil()
    assert len(pil) == 16 and pil[3].size == (64, 48) and pil[3].mode == "RGB"
    assert np.array_equal(Video.from_pil(pil).frames, v.frames)
    assert repr(v).startswith("Video(16 frames, 64x48, 8 fps")


# -- each format, written and read back -------------------------------------------------------------


def test_mp4(tmp_path):
    v = moving_square()
    path = v.save(tmp_path / "out.mp4", crf=18)
    assert path == tmp_path / "out.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(8)
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first
    back = Video.load(path)
    assert len(back) == 16 and back.size == (64, 48) and back.fps == 8.0
    assert back.metadata == SEED
    assert mean_abs_error(back.frames, v.frames) < 6


def test_mp4_odd_size_is_padded_by_one_pixel(tmp_path):
    v = moving_square(width=65, height=47)
    back = Video.load(v.save(tmp_path / "odd.mp4"))
    assert back.size == (66, 48)
    assert mean_abs_error(back.frames[:, :47, :65], v.frames) < 6
    assert mean_abs_error(back.frames[:, :47, 65], v.frames[:, :, 64]) < 6  # the repeated column


def test_mp4_fractional_rate(tmp_path):
    back = Video.load(moving_square(frames=4, fps=23.976).save(tmp_path / "film.mp4"))
    assert back.fps == pytest.approx(23.976, abs=1e-9) and len(back) == 4


def test_gif(tmp_path):
    v = moving_square()
    path = v.save(tmp_path / "out.gif")
    with Image.open(path) as im:
        assert im.info["loop"] == 0
        durations = []
        for frame in ImageSequence.Iterator(im):
            durations.append(frame.info["duration"])
    assert len(durations) == 16 and sum(durations) == 2000  # 8 fps on average...
    assert set(durations) <= {120, 130}  # ...in the whole centiseconds GIF allows
    back = Video.load(path)
    assert len(back) == 16 and back.size == (64, 48) and back.fps == 8.0
    assert back.metadata == SEED
    assert mean_abs_error(back.frames, v.frames) < 6


@pytest.mark.parametrize("lossless", [False, True])
def test_webp(tmp_path, lossless):
    v = moving_square()
    path = v.save(tmp_path / "out.webp", lossless=lossless)
    with Image.open(path) as im:
        assert im.n_frames == 16
        durations = []
        for frame in ImageSequence.Iterator(im):
            frame.load()  # WebP sets a frame's duration when it decodes it
            durations.append(frame.info["duration"])
    assert durations == [125] * 16
    back = Video.load(path)
    assert len(back) == 16 and back.size == (64, 48) and back.fps == 8.0
    assert back.metadata == SEED
    if lossless:
        assert np.array_equal(back.frames, v.frames)
    else:
        assert mean_abs_error(back.frames, v.frames) < 4


def test_png_folder(tmp_path):
    v = moving_square()
    folder = v.save(tmp_path / "out.png")
    assert folder == tmp_path / "out" and folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:04d}.png" for i in range(16)]
    with Image.open(folder / "0003.png") as im:
        assert im.text["seed"] == "42"  # each frame carries the metadata
    for path in (folder, tmp_path / "out.png"):  # the folder, or the name it was saved under
        back = Video.load(path)
        assert np.array_equal(back.frames, v.frames)
        assert back.fps == 8.0 and back.metadata == SEED


def test_png_folder_without_suffix_and_existing_empty_folder(tmp_path):
    v = moving_square(frames=3)
    assert v.save(tmp_path / "frames") == tmp_path / "frames"
    (tmp_path / "empty.d").mkdir()
    assert v.save(tmp_path / "empty.d") == tmp_path / "empty.d"
    assert len(list((tmp_path / "empty.d").iterdir())) == 3
    with pytest.raises(FileExistsError, match="not empty"):
        v.save(tmp_path / "frames.png")


def test_foreign_png_folder_in_natural_order(tmp_path):
    for i in (1, 2, 10):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"frame_{i}.png")
    back = Video.load(tmp_path)
    assert back.frames[:, 0, 0, 0].tolist() == [1, 2, 10]
    assert back.fps == 8.0 and back.metadata == {}


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_held_frames_come_back(tmp_path, suffix):
    """GIF and WebP writers merge identical frames into one longer one; load repeats them again."""
    frames = moving_square(frames=6).frames[[0, 0, 0, 1, 2, 2]]
    back = Video.load(Video(frames, fps=12).save(tmp_path / f"held{suffix}"))
    assert len(back) == 6 and back.fps == 12.0
    assert mean_abs_error(back.frames, frames) < 6


def test_foreign_gif_gets_its_mean_rate(tmp_path):
    images = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(4)]
    images[0].save(tmp_path / "x.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    back = Video.load(tmp_path / "x.gif")
    assert len(back) == 4 and back.fps == 10.0 and back.metadata == {}


def test_frame_durations_keep_the_clock():
    d = video_module._frame_durations(24, 12.0, 10)
    assert sum(d) == 2000 and set(d) <= {80, 90}
    assert all(abs(sum(d[: i + 1]) - (i + 1) * 1000 / 12) <= 5 for i in range(24))


# -- errors ------------------------------------------------------------------------------------------


def test_unsupported_suffix(tmp_path):
    message = "unsupported output format '.xyz': use .mp4, .gif, .webp or .png (a folder of frames)"
    with pytest.raises(ValueError) as info:
        moving_square().save(tmp_path / "out.xyz")
    assert str(info.value) == message
    with pytest.raises(ValueError, match=r"unsupported output format '\.jpg'"):
        writable(tmp_path / "out.jpg")


def test_writable_accepts_good_paths(tmp_path):
    for name in ("a.mp4", "a.GIF", "a.webp", "a.png", "frames"):
        writable(tmp_path / name)


def test_writable_missing_folder(tmp_path):
    target = tmp_path / "nope" / "out.mp4"
    with pytest.raises(FileNotFoundError) as info:
        writable(target)
    assert str(info.value) == f"cannot write to {target}: folder {tmp_path / 'nope'} does not exist"
    with pytest.raises(FileNotFoundError):
        moving_square().save(target)


def test_writable_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        writable(tmp_path / "file" / "out.gif")


def test_writable_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores permission bits: make the check see them
            monkeypatch.setattr(os, "access", lambda path, mode: False)
        with pytest.raises(PermissionError, match=re.escape(f"folder {folder} is not writable")):
            writable(folder / "out.mp4")
    finally:
        folder.chmod(0o755)


def test_writable_refuses_folder_for_file_and_nonempty_frames_folder(tmp_path):
    (tmp_path / "a.mp4").mkdir()
    with pytest.raises(IsADirectoryError):
        writable(tmp_path / "a.mp4")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "0000.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        writable(tmp_path / "frames.png")


# -- atomic saves ------------------------------------------------------------------------------------


def fail_in_pil_save(monkeypatch, after: int) -> None:
    """PIL's save writes `after` files normally, then half a file and raises as Ctrl-C would."""
    real_save, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) <= after:
            return real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save)


def fail_in_mp4_encode(monkeypatch) -> None:
    """The sixth frame fails to convert, after five went into the encoder."""
    real, calls = video_module._to_yuv, []

    def to_yuv(rgb):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(rgb)

    monkeypatch.setattr(video_module, "_to_yuv", to_yuv)


@pytest.mark.parametrize(
    ("name", "inject"),
    [
        ("out.mp4", fail_in_mp4_encode),
        ("out.gif", lambda mp: fail_in_pil_save(mp, after=0)),
        ("out.webp", lambda mp: fail_in_pil_save(mp, after=0)),
        ("out.png", lambda mp: fail_in_pil_save(mp, after=3)),
    ],
)
def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch, name, inject):
    inject(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        moving_square().save(tmp_path / name)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous video")
    fail_in_mp4_encode(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        moving_square().save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"] and target.read_bytes() == b"previous video"


def test_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    def replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk vanished"):
        moving_square().save(tmp_path / "out.gif")
    assert list(tmp_path.iterdir()) == []


def test_lossless_mp4_is_exact(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (6, 24, 32, 3), dtype=np.uint8)
    Video(frames, fps=8, metadata={"seed": "1"}).save(tmp_path / "x.mp4", lossless=True)
    back = Video.load(tmp_path / "x.mp4")
    assert np.array_equal(back.frames, frames) and back.metadata["seed"] == "1"
