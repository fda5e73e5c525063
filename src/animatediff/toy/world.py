"""A small procedural world: captioned images and videos of simple shapes, seeded and pure numpy/PIL.

    scene = sample_scene(rng)                      # what: colour, shape, size, background, style
    motion = sample_motion(rng)                    # how it moves over the clip
    frames = render_video(scene, motion, 16)       # uint8 [16, 64, 64, 3]
    caption(scene, motion)                         # "a small red star moving right on a blue background"

Objects: circle, square, triangle, star, upright, in eight colours and three sizes, on a plain or
textured (striped, checkered) background of another colour. Motions: translation in any of four directions,
bouncing, growing, shrinking, rotating, and camera pan and zoom (the whole scene moves). Two domain
markers let the paper's claims be measured: the *outlined* style (objects drawn as thick outlines:
the personalised model's look) and a *watermark* in the corner of every video frame (like WebVid's),
which still images lack. Shapes are drawn 4x larger and downsampled, for clean anti-aliased edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

VERSION = 2  # bumped whenever the same seed draws other samples (2: stills and videos start upright)
SIZE = 64  # pixels per side
SUPER = 4  # supersampling factor when drawing

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 135, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 14.0, "medium": 20.0, "large": 26.0}  # object "radius"-like extent in pixels
SCALE_RATE = 0.035  # growing / shrinking and zoom: size change per frame at speed 1 (a slide: 1 px per frame)
TEXTURES = ("plain", "striped", "checkered")
MOTIONS = ("left", "right", "up", "down", "bouncing", "growing", "shrinking", "rotating", "pan left",
           "pan right", "zoom in", "zoom out")  # fmt: skip
STYLES = ("filled", "outlined")
WATERMARK_BOX = (SIZE - 14, SIZE - 8, SIZE - 3, SIZE - 4)  # x0, y0, x1, y1 of the video watermark


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    size: str
    background: str
    texture: str = "plain"
    style: str = "filled"
    x: float = SIZE / 2  # object centre
    y: float = SIZE / 2
    angle: float = 0.0  # degrees


@dataclass(frozen=True)
class Motion:
    kind: str  # one of MOTIONS, or "still"
    speed: float = 1.5  # pixels (or degrees / 100, or scale %) per frame


def sample_scene(rng: np.random.Generator, style: str = "filled", upright: bool = True) -> Scene:
    """A random scene. Objects stand upright (a square's sides level, a triangle and a star pointing
    up), as things in photos mostly do: captions never name an orientation, and a tiny model trained on
    random ones averages them into round blobs. Turning stays in the "rotating" motion, and `upright=False`
    (the VAE's data) draws any angle; the angle is drawn either way, so the random stream is the same."""
    color = str(rng.choice(list(COLORS)))
    background = str(rng.choice([c for c in COLORS if c != color]))
    shape, size = str(rng.choice(SHAPES)), str(rng.choice(list(SIZES)))
    margin = SIZES[size] + 2
    texture = str(rng.choice(TEXTURES, p=[0.6, 0.2, 0.2]))
    x, y = float(rng.uniform(margin, SIZE - margin)), float(rng.uniform(margin, SIZE - margin))
    angle = float(rng.uniform(0, 90))
    return Scene(color, shape, size, background, texture, style, x, y,
                 0.0 if upright else angle)  # fmt: skip


def sample_motion(rng: np.random.Generator, kinds: tuple[str, ...] = MOTIONS, shape: str | None = None) -> Motion:
    """A motion; a circle is never "rotating" (it would not visibly move)."""
    if shape == "circle" and len(kinds) > 1:
        kinds = tuple(k for k in kinds if k != "rotating")
    return Motion(str(rng.choice(kinds)), float(rng.uniform(1.0, 2.0)))


def caption(scene: Scene, motion: Motion | None = None, with_size: bool = True) -> str:
    what = f"{scene.size} {scene.color} {scene.shape}" if with_size else f"{scene.color} {scene.shape}"
    how = ""
    if motion is not None and motion.kind != "still":
        how = f" moving {motion.kind}" if motion.kind in ("left", "right", "up", "down") else f" {motion.kind}"
        if motion.kind.startswith(("pan", "zoom")):
            how = f", camera {motion.kind},"
    where = "background" if scene.texture == "plain" else f"{scene.texture} background"
    return f"a {what}{how} on a {scene.background} {where}".replace(",,", ",")


# -- drawing ---------------------------------------------------------------------------------------------


def shape_polygon(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of extent r centred at (x, y), rotated by `angle` degrees."""
    a0 = math.radians(angle)
    if shape == "square":
        pts = [(r * math.cos(a0 + k * math.pi / 2 + math.pi / 4) * math.sqrt(2) * 0.75,
                r * math.sin(a0 + k * math.pi / 2 + math.pi / 4) * math.sqrt(2) * 0.75) for k in range(4)]  # fmt: skip
    elif shape == "triangle":
        angles = [a0 - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        pts = [(r * math.cos(t), r * math.sin(t)) for t in angles]
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            t = a0 - math.pi / 2 + k * math.pi / 5
            pts.append((rr * math.cos(t), rr * math.sin(t)))
    else:  # circle
        pts = [(r * math.cos(2 * math.pi * k / 48), r * math.sin(2 * math.pi * k / 48)) for k in range(48)]
    return [(x + px, y + py) for px, py in pts]


def _shade(rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """A lighter (amount > 0) or darker tone of a colour, for textured backgrounds."""
    target = 255 if amount > 0 else 0
    return tuple(round(c + (target - c) * abs(amount)) for c in rgb)


def draw_background(
    img: ImageDraw.ImageDraw, name: str, texture: str, offset: tuple[float, float], zoom: float
) -> None:
    """The background through the camera: screen = centre + (world - centre) * zoom + offset."""
    s, c = SUPER, SIZE / 2
    base = COLORS[name]
    img.rectangle([0, 0, SIZE * s, SIZE * s], fill=base)
    if texture == "plain":
        return
    tone = _shade(base, 0.35 if sum(base) < 500 else -0.25)
    period = 12.0  # world pixels per stripe pair / checker cell

    def screen(w: float, axis: int) -> float:
        return (c + (w - c) * zoom + offset[axis]) * s

    def cells(axis: int) -> range:  # world cell indices that reach the screen
        lo = c + (0 - offset[axis] - c) / zoom
        hi = c + (SIZE - offset[axis] - c) / zoom
        return range(math.floor(lo / period) - 1, math.ceil(hi / period) + 1)

    if texture == "striped":  # vertical stripes: they show horizontal camera motion
        for k in cells(0):
            img.rectangle([screen(k * period, 0), 0, screen(k * period + period / 2, 0), SIZE * s], fill=tone)
    else:  # checkered
        for i in cells(0):
            for j in cells(1):
                if (i + j) % 2 == 0:
                    img.rectangle([screen(i * period, 0), screen(j * period, 1), screen((i + 1) * period, 0),
                                   screen((j + 1) * period, 1)], fill=tone)  # fmt: skip


def render(scene: Scene, offset: tuple[float, float] = (0.0, 0.0), zoom: float = 1.0, scale: float = 1.0,
           watermark: bool = False) -> np.ndarray:  # fmt: skip
    """One frame, uint8 [SIZE, SIZE, 3]. `offset`/`zoom` move the camera; `scale` grows the object."""
    s = SUPER
    canvas = Image.new("RGB", (SIZE * s, SIZE * s))
    draw = ImageDraw.Draw(canvas)
    draw_background(draw, scene.background, scene.texture, offset, zoom)
    cx = (SIZE / 2 + (scene.x - SIZE / 2) * zoom + offset[0]) * s
    cy = (SIZE / 2 + (scene.y - SIZE / 2) * zoom + offset[1]) * s
    r = SIZES[scene.size] / 2 * zoom * scale * s
    poly = shape_polygon(scene.shape, cx, cy, r, scene.angle)
    color = COLORS[scene.color]
    if scene.style == "outlined":
        draw.polygon(poly, outline=color, width=max(1, round(0.22 * r)))
    else:
        draw.polygon(poly, fill=color)
    if watermark:
        x0, y0, x1, y1 = WATERMARK_BOX
        draw.rectangle([x0 * s, y0 * s, x1 * s, y1 * s], fill=(250, 250, 250), outline=(90, 90, 90), width=s)
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def trajectory(scene: Scene, motion: Motion, frames: int) -> list[dict]:
    """Per-frame render arguments for a motion (object moves, or the camera moves)."""
    out = []
    v = motion.speed
    for f in range(frames):
        t = f - (frames - 1) / 2  # centred: the middle frame is the scene as sampled
        args = {"scene": scene, "offset": (0.0, 0.0), "zoom": 1.0, "scale": 1.0}
        if motion.kind in ("left", "right", "up", "down"):
            dx = {"left": -v, "right": v}.get(motion.kind, 0.0) * t
            dy = {"up": -v, "down": v}.get(motion.kind, 0.0) * t
            args["scene"] = replace(scene, x=scene.x + dx, y=scene.y + dy)
        elif motion.kind == "bouncing":
            height = 2.5 * v * 4
            args["scene"] = replace(scene, y=scene.y - height * abs(math.sin(math.pi * f / (frames / 2))) + height / 2)
        elif motion.kind in ("growing", "shrinking"):
            rate = SCALE_RATE * v * (1 if motion.kind == "growing" else -1)
            args["scale"] = max(0.35, 1 + rate * t)
        elif motion.kind == "rotating":
            args["scene"] = replace(scene, angle=scene.angle + 6 * v * t)
        elif motion.kind in ("pan left", "pan right"):
            # the camera turns right: the scene slides left across the frame
            args["offset"] = (-v * t if motion.kind == "pan right" else v * t, 0.0)
        elif motion.kind in ("zoom in", "zoom out"):
            args["zoom"] = max(0.4, 1 + SCALE_RATE * v * t * (1 if motion.kind == "zoom in" else -1))
        out.append(args)
    return out


def render_video(scene: Scene, motion: Motion, frames: int = 16, watermark: bool = True) -> np.ndarray:
    """uint8 [frames, SIZE, SIZE, 3]."""
    return np.stack([render(**a, watermark=watermark) for a in trajectory(scene, motion, frames)])


def scene_for_prompt(prompt: str, rng: np.random.Generator) -> Scene:
    """The scene a prompt describes (unnamed attributes drawn at random), for evaluation."""
    words = prompt.lower().replace(",", " ").split()
    colors = [w for w in words if w in COLORS]
    shape = next((w for w in words if w in SHAPES), str(rng.choice(SHAPES)))
    size = next((w for w in words if w in SIZES), "medium")
    texture = next((w for w in words if w in TEXTURES), "plain")
    color = colors[0] if colors else str(rng.choice(list(COLORS)))
    background = colors[1] if len(colors) > 1 else str(rng.choice([c for c in COLORS if c != color]))
    return Scene(color, shape, size, background, texture)


def vocabulary() -> set[str]:
    """Every word the toy world's captions use."""
    words = {"a", "on", "background", "moving", "camera", "filled", "outlined"}
    words |= set(COLORS) | set(SHAPES) | set(SIZES) | set(TEXTURES)
    for m in MOTIONS:
        words |= set(m.split())
    return words
