"""Videos in memory and on disk.

`Video` holds uint8 frames `[F, H, W, 3]`, a frame rate and a few metadata strings (seed, prompt,
model). `Video.save(path)` picks the format from the suffix:

- `.mp4`  H.264 (libx264, yuv420p, BT.709, crf 18); metadata as JSON in the `comment` tag.
- `.gif`  one global palette with Floyd–Steinberg dithering, loops forever; metadata as JSON in a
          comment extension.
- `.webp` animated, lossy (quality 90) or lossless; metadata as JSON in XMP `dc:description`.
- `.png`  a folder of frames `0000.png, 0001.png, ...`: `out.png` writes the folder `out/` (a path
          with no suffix is taken as the folder itself); metadata as PNG text chunks in every frame.

The frame rate is recorded with the metadata under the reserved key "fps", so a PNG folder (which has
no timing of its own) and a GIF (whose delays are whole centiseconds) load back at the rate they were
saved with. Saves are atomic: frames go to a hidden temporary file or folder beside the target, which
is renamed into place only once complete, so an interrupted save never leaves a half-written video.
`writable(path)` checks an output path before a long generation; `Video.load(path)` reads all of the
above back, and any other video that PyAV can decode.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from xml.sax.saxutils import escape

import av
import numpy as np
import torch
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image, ImageSequence
from PIL.PngImagePlugin import PngInfo

FORMATS = (".mp4", ".gif", ".webp", ".png")
FPS_KEY = "fps"  # reserved metadata key: the frame rate travels with the metadata


@dataclass(eq=False)  # no generated __eq__: comparing arrays elementwise has no single truth value
class Video:
    """Frames `[F, H, W, 3]` uint8 RGB, shown at `fps` frames per second."""

    frames: np.ndarray
    fps: float = 8.0
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.frames
        if not isinstance(f, np.ndarray) or f.ndim != 4 or f.shape[-1] != 3 or 0 in f.shape:
            shape = getattr(f, "shape", type(f).__name__)
            raise ValueError(f"Video frames must be a numpy array [frames, height, width, 3], got {shape}")
        if f.dtype != np.uint8:
            raise ValueError(f"Video frames must be uint8 (0..255), got {f.dtype}; use Video.from_tensor for floats")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"Video fps must be a positive number, got {self.fps}")
        self.fps = float(self.fps)
        self.metadata = {str(k): str(v) for k, v in (self.metadata or {}).items()}
        if FPS_KEY in self.metadata:
            raise ValueError(f"metadata key '{FPS_KEY}' is reserved (it records Video.fps); set fps instead")

    def __repr__(self) -> str:
        w, h = self.size
        return f"Video({len(self)} frames, {w}x{h}, {self.fps:g} fps, metadata={self.metadata})"

    # -- building one ------------------------------------------------------------------------------

    @classmethod
    def from_tensor(cls, x: torch.Tensor, fps: float = 8.0, metadata: dict[str, str] | None = None) -> Video:
        """From float frames `[F, 3, H, W]` in [-1, 1], as the VAE decodes them.

        Each value becomes `((x + 1) * 127.5).round().clamp(0, 255)` as uint8, computed in float32;
        `round` is round-half-to-even, so -1 -> 0, 0 -> 128 (127.5 rounds to even), 1 -> 255.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames [frames, 3, height, width], got {tuple(x.shape)}")
        x = x.detach().float()
        if not torch.isfinite(x).all():  # a fp16 VAE that overflowed; uint8 would turn NaN into black
            raise ValueError("frames contain NaN or infinity (did the VAE overflow in float16? try float32)")
        x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return cls(x.permute(0, 2, 3, 1).contiguous().cpu().numpy(), fps, dict(metadata or {}))

    @classmethod
    def from_pil(cls, images: Sequence[Image.Image], fps: float = 8.0, metadata: dict[str, str] | None = None) -> Video:
        if not images:
            raise ValueError("a Video needs at least one frame")
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise ValueError(f"all frames must have the same size, got {sorted(sizes)}")
        return cls(np.stack([np.asarray(im.convert("RGB")) for im in images]), fps, dict(metadata or {}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Video:
        """Read a video back: GIF, WebP, PNG (a file, or a folder of frames in natural name order), or
        anything PyAV decodes (mp4, mov, mkv, webm). `out.png` finds the folder `out/` that `save` wrote."""
        path = Path(path)
        if not path.exists() and path.suffix.lower() == ".png" and path.with_suffix("").is_dir():
            path = path.with_suffix("")
        if path.is_dir():
            return _load_png_folder(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot read {path}: no such file or folder")
        if path.suffix.lower() in (".gif", ".webp", ".png", ".apng"):
            return _load_animated_image(path)
        return _load_av(path)

    # -- views -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.frames.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), in PIL's order."""
        return self.frames.shape[2], self.frames.shape[1]

    @property
    def duration(self) -> float:
        """Seconds of playback."""
        return len(self) / self.fps

    def to_numpy(self) -> np.ndarray:
        """The frames `[F, H, W, 3]` uint8 themselves (not a copy)."""
        return self.frames

    def to_pil(self) -> list[Image.Image]:
        return [Image.fromarray(f) for f in self.frames]

    def to_tensor(self) -> torch.Tensor:
        """Float32 frames `[F, 3, H, W]` in [-1, 1]: the inverse of `from_tensor` on its outputs."""
        x = torch.from_numpy(np.ascontiguousarray(self.frames)).permute(0, 3, 1, 2)
        return x.float() / 127.5 - 1

    # -- writing -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, crf: int = 18, quality: int = 90, lossless: bool = False) -> Path:
        """Write the video in the format its suffix names and return the path written.

        `crf` is for .mp4 (lower is better; 18 looks lossless to most eyes; an odd width or height gains
        one repeated pixel row/column), `quality` is for .webp, and `lossless` makes .webp lossless and
        .mp4 exact RGB (libx264rgb). For `.png` the frames go
        to a folder named after the path without its suffix (`out.png` -> `out/0000.png, out/0001.png,
        ...`); that folder must be new or empty. An existing file of another format is replaced.
        """
        writable(path)
        fmt, target = _resolve(Path(path))
        if fmt == "png":
            _atomic(target, lambda tmp: _save_png_folder(self, tmp), folder=True)
        elif fmt == "mp4":
            _atomic(target, lambda tmp: _save_mp4(self, tmp, crf, lossless))
        elif fmt == "gif":
            _atomic(target, lambda tmp: _save_gif(self, tmp))
        else:
            _atomic(target, lambda tmp: _save_webp(self, tmp, quality, lossless))
        return target


def writable(path: str | os.PathLike) -> None:
    """Raise a one-line ValueError/OSError if `Video.save(path)` is bound to fail; call it before generating."""
    fmt, target = _resolve(Path(path))
    folder = target.parent
    if not folder.exists():
        raise FileNotFoundError(f"cannot write to {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write to {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {path}: folder {folder} is not writable")
    if fmt == "png":
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"cannot write frames to {target}: it is a file, not a folder")
        if target.is_dir() and any(target.iterdir()):
            raise FileExistsError(f"cannot write frames to {target}: the folder is not empty")
    elif target.is_dir():
        raise IsADirectoryError(f"cannot write to {path}: it is a folder")


def _resolve(path: Path) -> tuple[str, Path]:
    """(format, path actually written) for an output path."""
    suffix = path.suffix.lower()
    if suffix == "" or (path.is_dir() and suffix not in FORMATS):
        return "png", path
    if suffix == ".png":
        return "png", path.with_suffix("")
    if suffix not in FORMATS:
        raise ValueError(f"unsupported output format '{suffix}': use .mp4, .gif, .webp or .png (a folder of frames)")
    return suffix[1:], path


def _atomic(target: Path, write: Callable[[Path], None], folder: bool = False) -> None:
    """Run `write` on a hidden temporary path beside `target`, then rename it into place. The temporary
    sits in the same folder so the rename is atomic; it is removed on any error, Ctrl-C included."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        if folder:
            tmp.mkdir()
        write(tmp)
        if folder and target.is_dir():
            target.rmdir()  # known empty; renaming over a folder is not portable
        os.replace(tmp, target)
    finally:
        if folder and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


# -- metadata ----------------------------------------------------------------------------------------


def _payload(video: Video) -> dict[str, str]:
    return {**video.metadata, FPS_KEY: repr(video.fps)}  # repr round-trips a float exactly


def _to_json(video: Video) -> str:
    # ASCII-only JSON (non-ASCII escaped): GIF comments are 7-bit text.
    return json.dumps(_payload(video))


def _from_text(text: str) -> tuple[dict[str, str], float | None]:
    """(metadata, fps) from our JSON; any other text is kept as a plain comment."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"comment": text}, None
    return _split_fps({str(k): str(v) for k, v in data.items()})


def _split_fps(data: dict[str, str]) -> tuple[dict[str, str], float | None]:
    fps = data.pop(FPS_KEY, None)
    try:
        return data, float(fps) if fps is not None else None
    except ValueError:
        return data, None


# -- mp4 ---------------------------------------------------------------------------------------------


def _save_mp4(video: Video, tmp: Path, crf: int, lossless: bool = False) -> None:
    if lossless:
        return _save_mp4_rgb(video, tmp)
    # yuv420p keeps colour at half resolution, so libx264 needs an even width and height. An odd side
    # is padded by repeating its last row/column: one pixel at most, and no generated pixel is lost.
    frames = video.frames
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    if pad[1][1] or pad[2][1]:
        frames = np.pad(frames, pad, mode="edge")
    # A Fraction keeps 8 fps exact (and 23.976 as 2997/125) in the stream's time base.
    rate = Fraction(video.fps).limit_denominator(1001)
    # +faststart moves the index to the front, so browsers start playing before the download ends.
    with av.open(str(tmp), "w", format="mp4", container_options={"movflags": "+faststart"}) as container:
        container.metadata["comment"] = _to_json(video)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        # Tag the colours as BT.709 (what _to_yuv converts with): untagged, players guess BT.601 for
        # small frames and BT.709 for HD ones, and one of the two guesses shifts every hue.
        cc = stream.codec_context
        cc.colorspace, cc.color_range = Colorspace.ITU709, ColorRange.MPEG
        cc.color_primaries, cc.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
        for i, rgb in enumerate(frames):
            frame = _to_yuv(rgb)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the frames libx264 holds back for B-frame lookahead


def _save_mp4_rgb(video: Video, tmp: Path) -> None:
    """Exact RGB in H.264 (libx264rgb, crf 0): every pixel decodes back unchanged (datasets, archives);
    fewer players support it than yuv420p."""
    rate = Fraction(video.fps).limit_denominator(1001)
    with av.open(str(tmp), "w", format="mp4") as container:
        container.metadata["comment"] = _to_json(video)
        stream = container.add_stream("libx264rgb", rate=rate)
        stream.width, stream.height, stream.pix_fmt = video.frames.shape[2], video.frames.shape[1], "rgb24"
        stream.options = {"crf": "0", "preset": "veryfast"}
        for i, rgb in enumerate(video.frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _to_yuv(rgb: np.ndarray) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame.reformat(
        format="yuv420p",
        dst_colorspace=Colorspace.ITU709,
        dst_color_range=ColorRange.MPEG,
        dst_color_primaries=ColorPrimaries.BT709,
        dst_color_trc=ColorTrc.BT709,
    )


def _load_av(path: Path) -> Video:
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise ValueError(f"cannot read {path}: not a video PyAV can decode ({e})") from e
    with container:
        if not container.streams.video:
            raise ValueError(f"cannot read {path}: it has no video stream")
        stream = container.streams.video[0]
        # to_ndarray converts with the colour matrix the file is tagged with (BT.601 when untagged).
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        tags = dict(container.metadata)
        rate = stream.average_rate or stream.guessed_rate
    if not frames:
        raise ValueError(f"cannot read {path}: the video has no frames")
    if "comment" in tags:
        metadata, _ = _from_text(tags["comment"])
    else:  # someone else's file: keep its tags, less the muxer's own bookkeeping
        skip = {"major_brand", "minor_version", "compatible_brands", "encoder"}
        metadata = {k: v for k, v in tags.items() if k not in skip}
    return Video(np.stack(frames), float(rate) if rate else 8.0, metadata)


# -- gif and webp ------------------------------------------------------------------------------------


def _frame_durations(n: int, fps: float, step_ms: int) -> list[int]:
    """Per-frame delays in multiples of `step_ms` whose running sum stays within half a step of the true
    clock: 8 fps as GIF centiseconds is 120, 130, 120, 130... ms, which keeps 8 fps on average where a
    constant 120 ms would play 4% fast."""
    ends = [round((i + 1) * 1000 / fps / step_ms) * step_ms for i in range(n)]
    return [max(end - start, step_ms) for start, end in zip([0, *ends], ends)]


def _save_gif(video: Video, tmp: Path) -> None:
    # One palette for all frames (octree over a sample of every frame) and Floyd–Steinberg dithering.
    # Without dithering, 256 colours band visibly on the smooth gradients SD draws (skies, skin). A
    # palette per frame (PIL's default) lets a still background change colour from frame to frame, and
    # its dither pattern with it; a shared one keeps still pixels still. Measured on 16 512x512 frames
    # with a still background: under half the frame-to-frame shimmer of per-frame palettes, files a
    # third to half smaller, and 10x faster than PIL's per-frame median cut.
    frames = video.frames
    step = max(1, math.isqrt(frames.size // 3 // 2**20))  # sample about a million pixels
    sample = Image.fromarray(np.concatenate(list(frames[:, ::step, ::step])))
    palette = sample.quantize(256, method=Image.Quantize.FASTOCTREE)
    images = [im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for im in video.to_pil()]
    # GIF delays are whole centiseconds, and browsers slow delays under 20 ms to 100 ms: above 50 fps a
    # GIF plays slower than asked; use mp4 or webp for that.
    images[0].save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=_frame_durations(len(images), video.fps, 10),
        loop=0,  # forever
        optimize=False,  # keep the shared palette whole, so no frame needs a local colour table
        comment=_to_json(video),
    )


def _save_webp(video: Video, tmp: Path, quality: int, lossless: bool) -> None:
    images = video.to_pil()
    images[0].save(
        tmp,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=_frame_durations(len(images), video.fps, 1),
        loop=0,
        lossless=lossless,
        quality=quality,
        method=4,
        xmp=_xmp(_to_json(video)),
    )


_DC = "http://purl.org/dc/elements/1.1/"


def _xmp(text: str) -> bytes:
    """A minimal XMP packet carrying `text` as dc:description, which exiftool and image viewers show."""
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:dc="{_DC}"><dc:description><rdf:Alt>'
        f'<rdf:li xml:lang="x-default">{escape(text)}</rdf:li>'
        "</rdf:Alt></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


def _xmp_description(xmp: bytes | str) -> str | None:
    try:
        root = ET.fromstring(xmp)
    except ET.ParseError:
        return None
    node = root.find(f".//{{{_DC}}}description")
    return None if node is None else "".join(node.itertext())


def _load_animated_image(path: Path) -> Video:
    with Image.open(path) as im:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(im):
            frames.append(np.asarray(frame.convert("RGB")))  # loads the frame, which sets its duration
            durations.append(int(frame.info.get("duration") or 0))
        if im.format == "PNG":  # a still or an APNG: text chunks, as in a folder of frames (read after the pixels)
            metadata, fps = _split_fps({k: str(v) for k, v in im.text.items()})
        else:
            text = im.info.get("comment")
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            if text is None and "xmp" in im.info:
                text = _xmp_description(im.info["xmp"])
            metadata, fps = _from_text(text) if text else ({}, None)
    return Video(*_on_clock(frames, durations, fps), metadata)


def _on_clock(frames: list[np.ndarray], durations: list[int], fps: float | None) -> tuple[np.ndarray, float]:
    """Frames shown for `durations` ms -> (frames at a constant rate, that rate). GIF and WebP writers merge
    identical consecutive frames into one longer frame; this repeats them again."""
    total = sum(durations)
    if fps is None:  # not ours: the mean rate, or 10 fps (browsers show a missing GIF delay as 100 ms)
        fps = len(frames) * 1000 / total if total else 10.0
    if not total:
        return np.stack(frames), fps
    ticks = np.rint(np.cumsum([0, *durations]) * fps / 1000).astype(int)  # the frame index each one starts at
    repeats = np.diff(ticks)  # 0 for a frame shorter than half a tick: resampling drops it
    if repeats.sum() == 0:
        repeats[0] = 1
    return np.repeat(np.stack(frames), repeats, axis=0), fps


# -- png folder --------------------------------------------------------------------------------------


def _save_png_folder(video: Video, folder: Path) -> None:
    info = PngInfo()
    for key, value in _payload(video).items():
        info.add_text(key, value)  # tEXt, or UTF-8 iTXt when the value is not Latin-1
    digits = max(4, len(str(len(video) - 1)))
    for i, im in enumerate(video.to_pil()):
        im.save(folder / f"{i:0{digits}d}.png", format="PNG", pnginfo=info)


def _natural_key(path: Path) -> list[int | str]:
    """frame_2.png before frame_10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _load_png_folder(folder: Path) -> Video:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
    if not files:
        raise ValueError(f"cannot read {folder}: the folder holds no .png frames")
    images, text = [], {}
    for p in files:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))  # loads the pixels, and the text chunks that follow them
            text = text or {k: str(v) for k, v in getattr(im, "text", {}).items()}
    metadata, fps = _split_fps(text)
    return Video.from_pil(images, fps or 8.0, metadata)
