"""Read a toy-world frame back into the scene that drew it, and score videos with what was read.

No network is trained here: the detector inverts world.py's own drawing. The palette, the texture tones and
the watermark are read from world.py's drawing code, and shapes are matched against `world.shape_polygon`.

    det = detect(frame)                            # Detection(color="red", shape="star", ...)
    m = video_metrics(frames, prompt_scene)        # adherence, consistency, flicker, displacement, ...
    motion_kind(m)                                 # "left", "zoom in", "pan right", "still", ...

Per frame:
  1. Background: the palette colour whose [base, texture tone] segment (see `world.draw_background`) lies
     nearest, in median, to the border pixels; its two tones are then measured on the border (a generated
     frame may carry a colour cast). The texture is read from tone changes along the border rows (x) and
     columns (y): none = plain, x only = striped, both = checkered.
  2. Object: every pixel is unmixed as alpha * object + (1 - alpha) * background (the anti-aliasing is a
     linear mix), with the palette colour that explains the clearly-foreground pixels best; the object is
     the largest 8-connected component of alpha > 0.2 (thin outlines dip below 0.5 at sharp corners),
     outside the watermark box when there is one, with its holes filled.
  3. Shape: the filled object's soft coverage is matched (soft IoU) against each shape drawn at its
     centroid, with the extent whose polygon area equals its area, over rotations in 3-degree steps.
  4. Style: alpha is compared with the best shape drawn filled and drawn outlined (PIL draws an outline
     of width round(0.22 r) inside the polygon); the closer wins. This also holds for small outlined
     stars, whose outline leaves no hole.

Measured on world.py's renders: colour, shape, background, texture, style and watermark all 100% on
6,000 random frames (filled and outlined), and > 99.9% on frames of every motion; about 2 ms a frame.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw

from animatediff.toy import world

__all__ = ["Detection", "detect", "motion_kind", "motion_matches", "video_metrics"]

_NAMES = tuple(world.COLORS)
_BASE = np.array([world.COLORS[n] for n in _NAMES], np.float32)  # [8, 3]
_N = world.SIZE
_YY, _XX = np.mgrid[0:_N, 0:_N].astype(np.float32) + 0.5  # pixel centres in scene coordinates

_SYMMETRY = {"circle": 0.0, "square": 90.0, "triangle": 120.0, "star": 72.0}  # degrees; circle: none
_ANGLE_STEP = 3.0
_TABLE_L, _TABLE_G = 1.6, 321  # shape tables cover [-L, L]^2 extents on a G x G grid
_OUTLINE = 0.22  # outline width / extent, as world.render draws it
_GROW = 0.12  # PIL fills every pixel its polygon touches: shapes come out ~1/8 px larger all round
_BG_MATCH = 40.0  # RGB distance under which a pixel is "background" (Lanczos ringing stays under it)
_FOREGROUND = 50.0  # RGB distance from the background above which a pixel surely shows the object
_WM_MATCH = 30.0  # mean abs difference to the watermark's fixed pixels under which it is present
_WM_NCC = 0.7  # or: correlation with those pixels above which it is present (a blurred watermark)
# the watermark box with the ringing around it: x0, y0, x1, y1 inclusive
_WM_AREA = tuple(v + d for v, d in zip(world.WATERMARK_BOX, (-2, -2, 2, 2)))


@dataclass(frozen=True)
class Detection:
    color: str | None  # palette name
    shape: str | None
    background: str | None
    texture: str  # plain / striped / checkered
    style: str  # filled / outlined
    x: float  # object centroid, scene coordinates (pixel j spans [j, j + 1))
    y: float
    size: float  # sqrt of the filled object area, pixels
    area: int
    angle: float  # degrees, modulo the shape's symmetry (0 for circles)
    watermark: bool
    found: bool  # False when no object is visible: the other fields are then best effort
    clipped: bool = False  # cut by the frame's edge or the watermark: shape, size and centroid are unreliable


# -- what world.py draws, read back from its own code ------------------------------------------------------


@lru_cache(maxsize=1)
def _tones() -> np.ndarray:
    """[8, 3] texture tone of each palette colour, read off `world.draw_background` (stripe 0 is the tone)."""
    s, out = world.SUPER, []
    for name in _NAMES:
        canvas = Image.new("RGB", (_N * s, _N * s))
        world.draw_background(ImageDraw.Draw(canvas), name, "striped", (0.0, 0.0), 1.0)
        row = np.asarray(canvas)[0].astype(np.float32)
        far = np.abs(row - _BASE[_NAMES.index(name)]).sum(-1)
        out.append(row[int(far.argmax())])
    return np.stack(out)


@lru_cache(maxsize=1)
def _watermark_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ys, xs, rgb) of the watermark pixels that do not depend on the background under them."""
    off = world.Scene("red", "circle", "small", "black", x=-100.0, y=-100.0)  # object off the canvas
    dark = world.render(off, watermark=True).astype(np.float32)
    light = world.render(world.Scene("red", "circle", "small", "white", x=-100.0, y=-100.0), watermark=True)
    fixed = np.abs(dark - light).max(-1) < 12
    x0, y0, x1, y1 = world.WATERMARK_BOX
    box = np.zeros_like(fixed)
    box[y0 : y1 + 1, x0 : x1 + 1] = True
    ys, xs = np.nonzero(fixed & box)
    return ys, xs, dark[ys, xs]


@cache
def _shape_table(shape: str) -> tuple[np.ndarray, float, float]:
    """(signed distance to the shape's outline on a grid over [-L, L]^2 in units of its extent, area, perimeter)."""
    poly = np.array(world.shape_polygon(shape, 0.0, 0.0, 1.0, 0.0), np.float64)
    g = np.linspace(-_TABLE_L, _TABLE_L, _TABLE_G)
    px, py = np.meshgrid(g, g)
    dist, inside = np.full(px.shape, np.inf), np.zeros(px.shape, bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        ex, ey = bx - ax, by - ay
        t = np.clip(((px - ax) * ex + (py - ay) * ey) / (ex * ex + ey * ey), 0, 1)
        dist = np.minimum(dist, np.hypot(px - ax - t * ex, py - ay - t * ey))
        inside ^= ((ay > py) != (by > py)) & (px < ax + (py - ay) * ex / (ey if ey else 1e-12))  # even-odd rule
    sdf = np.where(inside, dist, -dist).astype(np.float32)
    a, b = poly, np.roll(poly, -1, axis=0)
    area = 0.5 * abs(float((a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1]).sum()))
    perimeter = float(np.linalg.norm(b - a, axis=-1).sum())
    return sdf, area, perimeter


@cache
def _angles(shape: str) -> np.ndarray:
    period = _SYMMETRY[shape]
    return np.arange(0.0, period, _ANGLE_STEP) if period else np.zeros(1)


# -- image primitives on a 64x64 grid --------------------------------------------------------------------


def _dilate(mask: np.ndarray, diagonal: bool = True) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    if diagonal:
        out[1:, 1:] |= mask[:-1, :-1]
        out[1:, :-1] |= mask[:-1, 1:]
        out[:-1, 1:] |= mask[1:, :-1]
        out[:-1, :-1] |= mask[1:, 1:]
    return out


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return slice(0, 0), slice(0, 0)
    h, w = mask.shape
    return (slice(max(ys.min() - margin, 0), min(ys.max() + 1 + margin, h)),
            slice(max(xs.min() - margin, 0), min(xs.max() + 1 + margin, w)))  # fmt: skip


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component (computed on the mask's bounding box)."""
    box = _bbox(mask)
    out = np.zeros_like(mask)
    if mask.any():
        out[box] = _largest_in(mask[box])
    return out


def _largest_in(mask: np.ndarray) -> np.ndarray:
    """Min-label propagation with pointer jumping: fine on tiny grids, and numpy only."""
    h, w = mask.shape
    big = h * w
    ids = np.arange(big, dtype=np.int64).reshape(h, w)
    lab = np.where(mask, ids, big)
    while True:
        pad = np.pad(lab, 1, constant_values=big)
        new = lab
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                new = np.minimum(new, pad[dy : dy + h, dx : dx + w])
        new = np.where(mask, new, big)
        flat = np.append(new.ravel(), big)
        for _ in range(3):  # follow each label to its own label: converges in O(log) sweeps
            new = np.where(mask, flat[new], big)
            flat = np.append(new.ravel(), big)
        if np.array_equal(new, lab):
            break
        lab = new
    return lab == int(np.bincount(lab[mask]).argmax())


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not 4-connected to the border become part of the mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)  # a free ring around the bounding box reaches every outside pixel
    outside = np.zeros_like(crop)
    outside[0], outside[-1], outside[:, 0], outside[:, -1] = True, True, True, True
    while True:
        grown = _dilate(outside, diagonal=False) & ~crop
        if np.array_equal(grown, outside):
            break
        outside = grown
    out = mask.copy()
    out[y0:y1, x0:x1] = ~outside[1:-1, 1:-1]
    return out


# -- per frame -------------------------------------------------------------------------------------------


def _segment_distance(p: np.ndarray, base: np.ndarray, tone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of colours p [..., 3] to the segment base -> tone, and the position s in [0, 1] along it."""
    e = tone - base
    s = np.clip(((p - base) * e).sum(-1) / max(float((e * e).sum()), 1e-6), 0, 1)
    return np.linalg.norm(p - base - s[..., None] * e, axis=-1), s


def _watermark(img: np.ndarray) -> bool:
    """The watermark's background-independent pixels match (crisp), or correlate with it (softened)."""
    ys, xs, rgb = _watermark_template()
    p = img[ys, xs]
    if np.abs(p - rgb).mean() < _WM_MATCH:
        return True
    pc, tc = p - p.mean(0), rgb - rgb.mean(0)
    ncc = (pc * tc).sum() / (math.sqrt(float((pc * pc).sum() * (tc * tc).sum())) + 1e-6)
    return bool(ncc > _WM_NCC and pc.std() > 20)


_RING = np.zeros((_N, _N), bool)
_RING[:2], _RING[-2:], _RING[:, :2], _RING[:, -2:] = True, True, True, True
_RING[_WM_AREA[1] - 3 :, _WM_AREA[0] - 3 :] = False  # the watermark corner


def _background(img: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, str, float]:
    """(palette index, observed base colour, observed tone, texture, fraction of the border explained)."""
    p = img[_RING]
    tones = _tones()
    d = np.stack([_segment_distance(p, _BASE[i], tones[i])[0] for i in range(len(_NAMES))])  # [8, R]
    best = int(np.argmin(np.median(d, axis=1)))
    # colours as this frame shows them (a generated frame may carry a colour cast)
    # (pixels on the anti-aliased edges between the two tones are left out)
    near, s = d[best] < 1.5 * _BG_MATCH, _segment_distance(p, _BASE[best], tones[best])[1]
    base = np.median(p[near & (s < 0.25)], axis=0) if (near & (s < 0.25)).sum() >= 10 else _BASE[best]
    tone = np.median(p[near & (s > 0.75)], axis=0) if (near & (s > 0.75)).sum() >= 10 else tones[best]
    dist, s = _segment_distance(img, base, tone)
    explained = float((dist[_RING] < _BG_MATCH).mean())
    valid = dist < _BG_MATCH
    valid[_WM_AREA[1] - 3 :, _WM_AREA[0] - 3 :] = False

    def changes(lines: np.ndarray, ok: np.ndarray) -> float:
        """Tone changes per step along the border, after averaging its two lines and a 3-tap smoothing."""
        t, v = lines.mean(0), ok.all(0)
        t = np.convolve(t, np.ones(3) / 3, mode="same") > 0.5
        v = v & (np.convolve((~v).astype(np.float32), np.ones(3), mode="same") == 0)
        both = v[1:] & v[:-1]
        return float((both & (t[1:] != t[:-1])).sum() / max(int(both.sum()), 1))

    along_x = (changes(s[:2], valid[:2]) + changes(s[-2:], valid[-2:])) / 2
    along_y = (changes(s[:, :2].T, valid[:, :2].T) + changes(s[:, -2:].T, valid[:, -2:].T)) / 2
    texture = "plain" if along_x < 0.03 and along_y < 0.03 else "striped" if along_y < 0.03 else "checkered"
    if texture == "plain":
        tone = base
    return best, base, tone, texture, explained


def _unmix(p: np.ndarray, base: np.ndarray, tone: np.ndarray, obj: np.ndarray, textured: bool):
    """alpha [N] and residual [N] of p = alpha * obj + (1 - alpha) * q, q on the background's segment.

    Where the object colour lies on the texture's line (white on a black texture, black on a white one) the
    split is ambiguous; the small alpha penalty then explains the pixel as background.
    """
    qs = base + np.linspace(0, 1, 5)[:, None] * (tone - base) if textured else base[None]  # [K, 3]
    e = obj - qs  # [K, 3]
    rel = p[None] - qs[:, None]  # [K, N, 3]
    a = np.clip((rel * e[:, None]).sum(-1) / np.maximum((e * e).sum(-1), 1e-6)[:, None], 0, 1)
    res = np.linalg.norm(rel - a[..., None] * e[:, None], axis=-1)
    k = np.argmin(res + 2.0 * a, axis=0)
    idx = np.arange(p.shape[0])
    return a[k, idx], res[k, idx]


def _fit_shape(filled: np.ndarray, alpha: np.ndarray, region: np.ndarray):
    """(shape, angle, x, y, area, style) of the object seen as `alpha` (holes filled: `filled`) in `region`."""
    inner = ~_dilate(~filled, diagonal=False)  # all but the outer edge, whose coverage alpha tells
    w = np.where(region, np.where(inner, 1.0, np.clip(alpha, 0, 1)), 0).astype(np.float32)  # soft filled object
    area = float(w.sum())
    if not area > 0:  # stray pixels whose colour unmixes to no coverage at all: nothing to fit
        return None, 0.0, _N / 2, _N / 2, 0.0, "filled"
    cx, cy = float((w * _XX).sum() / area), float((w * _YY).sum() / area)
    ux, uy, target, a_obs = _XX[region] - cx, _YY[region] - cy, w[region], alpha[region]
    best = None
    for shape in world.SHAPES:
        sdf, k, perim = _shape_table(shape)
        g = _GROW * perim  # area grows by ~ perimeter * _GROW * r
        r = (-g + math.sqrt(g * g + 4 * k * area)) / (2 * k)
        th = np.radians(_angles(shape))[:, None]
        c, s = np.cos(th), np.sin(th)
        rx, ry = (c * ux + s * uy) / r, (-s * ux + c * uy) / r  # pixel positions in the unrotated shape's frame
        scale = (_TABLE_G - 1) / (2 * _TABLE_L)
        ix = np.clip(np.rint((rx + _TABLE_L) * scale), 0, _TABLE_G - 1).astype(np.intp)
        iy = np.clip(np.rint((ry + _TABLE_L) * scale), 0, _TABLE_G - 1).astype(np.intp)
        d = sdf[iy, ix] * r + _GROW  # signed distance in pixels, [A, N]
        cover = np.clip(0.5 + d, 0, 1)
        iou = np.minimum(cover, target).sum(-1) / np.maximum(cover, target).sum(-1)
        i = int(iou.argmax())
        if best is None or iou[i] > best[3]:
            best = (shape, float(_angles(shape)[i]), r, float(iou[i]), d[i])
    shape, angle, r, iou, d = best
    width = round(_OUTLINE * r * world.SUPER) / world.SUPER
    filled_t = np.clip(0.5 + d, 0, 1)
    outlined_t = filled_t - np.clip(0.5 + d - width, 0, 1)
    style = "outlined" if np.abs(a_obs - outlined_t).sum() < np.abs(a_obs - filled_t).sum() else "filled"
    return shape, angle, cx, cy, area, style


def _analyse(frame: np.ndarray) -> tuple[Detection, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The detection, the object's (filled) mask and the background's (base, tone) colours as seen."""
    img = np.asarray(frame, np.float32)[..., :3]
    if img.shape[:2] != (_N, _N):
        raise ValueError(f"expected a [{_N}, {_N}, 3] frame, got {tuple(np.shape(frame))}")
    watermark = _watermark(img)
    bg, base, tone, texture, explained = _background(img)
    textured = texture != "plain"
    allowed = np.ones((_N, _N), bool)
    if watermark:
        allowed[_WM_AREA[1] : _WM_AREA[3] + 1, _WM_AREA[0] : _WM_AREA[2] + 1] = False

    dist = _segment_distance(img, base, tone)[0]
    fg_all = (dist > _FOREGROUND) & allowed
    if fg_all.sum() < 3:
        return Detection(None, None, _NAMES[bg], texture, "filled", _N / 2, _N / 2, 0.0, 0, 0.0, watermark,
                         False), np.zeros((_N, _N), bool), (base, tone)  # fmt: skip
    fg = _largest_component(fg_all)
    p = img[fg]
    candidates = [i for i in range(len(_NAMES)) if i != bg]
    cost = [np.minimum(_unmix(p, base, tone, _BASE[i], textured)[1], 60.0).sum() for i in candidates]
    obj = candidates[int(np.argmin(cost))]

    box = _bbox(fg_all, margin=3)  # the object's anti-aliased edge lies within a pixel or two of fg
    crop = img[box]
    alpha = np.zeros((_N, _N), np.float32)
    alpha[box] = _unmix(crop.reshape(-1, 3), base, tone, _BASE[obj], textured)[0].reshape(crop.shape[:2])
    alpha[~allowed] = 0
    # thin outlines dip under alpha 0.5 at sharp corners: connect and close them at a lower level
    mask = _largest_component((alpha > 0.2) | fg)
    filled = _fill_holes(mask)
    region = _dilate(_dilate(filled)) & allowed
    shape, angle, cx, cy, area, style = _fit_shape(filled, alpha, region)
    found = explained > 0.5 and 4 <= area < 0.5 * _N * _N
    edge = filled[0].any() or filled[-1].any() or filled[:, 0].any() or filled[:, -1].any()
    clipped = bool(edge or (_dilate(filled) & ~allowed).any())  # cut by the frame, or hidden by the watermark
    det = Detection(_NAMES[obj], shape, _NAMES[bg], texture, style, cx, cy, math.sqrt(area), round(area), angle,
                    watermark, bool(found), clipped)  # fmt: skip
    return det, filled, (base, tone)


def detect(frame: np.ndarray) -> Detection:
    """Read one uint8 [64, 64, 3] toy-world frame (never raises on odd content: see `Detection.found`)."""
    return _analyse(frame)[0]


# -- per video -------------------------------------------------------------------------------------------


def _tone_map(img: np.ndarray, base: np.ndarray, tone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, s = _segment_distance(img, base, tone)
    return s, dist < _BG_MATCH


def _shift_x(s0, v0, s1, v1, flips: bool, reach: int = 4) -> float:
    """Horizontal shift (pixels, sub-pixel) that best carries tone map s0 onto s1.

    With `flips` a match may also swap the two tones: a checkerboard moved by one cell is its own negative,
    and world.py's checkered pans jump by one cell each time the offset wraps (`ox % period`).
    """
    errs = []
    for k in range(-reach, reach + 1):
        a, b = (s0[:, : _N - k], s1[:, k:]) if k >= 0 else (s0[:, -k:], s1[:, : _N + k])
        va, vb = (v0[:, : _N - k], v1[:, k:]) if k >= 0 else (v0[:, -k:], v1[:, : _N + k])
        both = va & vb
        if both.sum() < 50:
            errs.append(np.inf)
            continue
        err = np.abs(a - b)[both].mean()
        errs.append(min(err, np.abs(1 - a - b)[both].mean()) if flips else err)
    errs = np.array(errs)
    i = int(np.argmin(errs))
    if not np.isfinite(errs[i]):
        return 0.0
    off = 0.0
    if 0 < i < len(errs) - 1 and np.isfinite(errs[i - 1]) and np.isfinite(errs[i + 1]):
        den = errs[i - 1] - 2 * errs[i] + errs[i + 1]
        off = 0.5 * (errs[i - 1] - errs[i + 1]) / den if den > 1e-9 else 0.0
    return float(i - reach + off)


def _cell(s: np.ndarray, valid: np.ndarray) -> float:
    """Median distance (pixels, sub-pixel) between consecutive tone edges along x: half the texture period.

    Edges are located where the tone coordinate crosses 0.5, between valid pixels, so the figure does not
    depend on where the pattern's phase puts its edges (counting edges per row would).
    """
    d = s - 0.5
    cross = ((d[:, 1:] >= 0) != (d[:, :-1] >= 0)) & valid[:, 1:] & valid[:, :-1]
    gaps = []
    for y in range(_N):
        xs = np.nonzero(cross[y])[0]
        if len(xs) < 2:
            continue
        pos = xs + d[y, xs] / (d[y, xs] - d[y, xs + 1])  # linear interpolation of the crossing
        run = np.cumsum(~valid[y])  # consecutive crossings count only with no hidden pixel between them
        ok = run[xs[1:]] == run[xs[:-1] + 1]
        gaps.extend(np.diff(pos)[ok])
    return float(np.median(gaps)) if gaps else 0.0


def _ends(values: np.ndarray) -> tuple[float, float]:
    return float(np.median(values[:2])), float(np.median(values[-2:]))


def video_metrics(frames: np.ndarray, prompt_scene: world.Scene | None = None) -> dict:
    """Scores of one uint8 [F, 64, 64, 3] video, as a flat dict:

    identity   consistency (share of frames showing the video's majority (color, shape)), color, shape,
               background, texture, found, clipped; with `prompt_scene`: adherence (color, shape and
               background all as prompted) and color_ok, shape_ok, background_ok. Frames where the object
               is cut by the frame's edge or the watermark are not judged on identity (their shape is
               unreadable).
    domain     style_outlined, watermark (shares of frames)
    quality    flicker (mean |frame-to-frame change| of the background, 0-255), smoothness (mean
               |second difference| of the centroid track / (mean |first difference| + 0.5): 0 for constant
               velocity; ~0.2 of centroid noise for objects that do not translate), jumps (share of steps
               over 6 px)
    motion     dx, dy, displacement (centroid, median of the first / last two frames), scale_change (size
               last / first), rotation (degrees), y_range; bg_dx (pixels the background texture slid along
               x: negative for world.py's "pan right") and bg_scale (texture period last / first, > 1
               zooming in), both None on plain backgrounds; moving (`motion_kind`, which names the motion,
               is not "still").
    """
    frames = np.asarray(frames)
    analysed = [_analyse(f) for f in frames]
    dets = [a[0] for a in analysed]
    n = len(dets)
    found = [d for d in dets if d.found]
    # a frame whose edge (or watermark) cuts the object shows too little to read its shape: not judged
    judged = [d for d in dets if not (d.found and d.clipped)] or dets
    ids = Counter((d.color, d.shape) for d in judged if d.found)
    majority = ids.most_common(1)[0][0] if ids else (None, None)

    def share(judge) -> float:
        return sum(map(judge, judged)) / len(judged)

    m: dict = {"frames": n, "found": len(found) / max(n, 1), "clipped": sum(d.clipped for d in found) / max(n, 1)}
    m["consistency"] = share(lambda d: d.found and (d.color, d.shape) == majority)
    m["color"], m["shape"] = majority
    m["background"] = Counter(d.background for d in dets).most_common(1)[0][0] if dets else None
    m["texture"] = Counter(d.texture for d in dets).most_common(1)[0][0] if dets else "plain"
    m["style_outlined"] = sum(d.style == "outlined" for d in found) / max(len(found), 1)
    m["watermark"] = sum(d.watermark for d in dets) / max(n, 1)
    if prompt_scene is not None:
        want = {key: getattr(prompt_scene, key) for key in ("color", "shape", "background")}
        for key, value in want.items():  # the background can be read with no object in sight
            m[f"{key}_ok"] = share(lambda d, k=key, v=value: (d.found or k == "background") and getattr(d, k) == v)
        m["adherence"] = share(lambda d: d.found and all(getattr(d, k) == v for k, v in want.items()))

    # flicker: what changes outside the object(s) and the watermark
    keep = np.ones((_N, _N), bool)
    for d, mask, _ in analysed:
        if d.found:  # a frame of noise has no object, and no mask to leave out
            keep &= ~_dilate(_dilate(mask))
    keep[_WM_AREA[1] : _WM_AREA[3] + 1, _WM_AREA[0] : _WM_AREA[2] + 1] = False
    if n > 1 and keep.any():
        diffs = np.abs(np.diff(frames.astype(np.float32), axis=0))[:, keep]
        m["flicker"] = float(diffs.mean())
    else:
        m["flicker"] = 0.0

    # the object's track: frames where it was lost hold the nearest earlier (else later) position
    seen = [i for i, d in enumerate(dets) if d.found] or list(range(n))
    hold = [max((j for j in seen if j <= i), default=seen[0]) for i in range(n)]
    xs, ys = np.array([dets[i].x for i in hold]), np.array([dets[i].y for i in hold])
    sizes = np.array([max(dets[i].size, 1e-3) for i in hold])
    angles = [dets[i].angle for i in hold]
    whole = [i for i, d in enumerate(dets) if d.found and not d.clipped]  # sizes of cut objects are too small
    (x0, x1), (y0, y1), (s0, s1) = _ends(xs), _ends(ys), _ends(sizes[whole] if len(whole) >= 4 else sizes)
    m["dx"], m["dy"] = x1 - x0, y1 - y0
    m["displacement"] = math.hypot(m["dx"], m["dy"])
    m["scale_change"] = s1 / s0
    m["x_start"], m["y_start"], m["x_end"], m["y_end"] = x0, y0, x1, y1
    m["y_range"] = float(ys.max() - ys.min()) if n else 0.0
    step = np.hypot(np.diff(xs), np.diff(ys))
    accel = np.hypot(np.diff(xs, 2), np.diff(ys, 2))
    m["smoothness"] = float(accel.mean() / (step.mean() + 0.5)) if n > 2 else 0.0
    m["jumps"] = float((step > 6).mean()) if n > 1 else 0.0
    m["rotation"] = _rotation(angles, majority[1])

    # camera motion, from the background texture
    m["bg_dx"] = m["bg_scale"] = None
    if m["texture"] != "plain" and n > 1:
        seen = [colours for d, _, colours in analysed if d.texture == m["texture"]]
        base, tone = np.median([b for b, _ in seen], axis=0), np.median([t for _, t in seen], axis=0)
        maps = [_tone_map(f.astype(np.float32), base, tone) for f in frames]
        for (_, v), (_, mask, _) in zip(maps, analysed):
            v &= ~_dilate(_dilate(mask))
            v[_WM_AREA[1] - 1 :, _WM_AREA[0] - 1 :] = False
        flips = m["texture"] == "checkered"
        m["bg_dx"] = float(sum(_shift_x(*maps[i], *maps[i + 1], flips) for i in range(n - 1)))
        c0, c1 = _ends(np.array([_cell(s, v) for s, v in maps]))
        m["bg_scale"] = c1 / c0 if c0 > 0 and c1 > 0 else 1.0
    m["moving"] = motion_kind(m) != "still"
    return m


def _rotation(angles: list[float], shape: str | None) -> float:
    """Total rotation in degrees, unwrapped modulo the shape's symmetry (0 for circles and unknown shapes)."""
    period = _SYMMETRY.get(shape or "circle", 0.0)
    if not period or len(angles) < 2:
        return 0.0
    steps = (np.diff(np.asarray(angles)) + period / 2) % period - period / 2
    return float(steps.sum())


_SCALE = math.log(1.15)
# how far each motion goes over a 16-frame clip at the world's unit speed (world.trajectory, centred on
# the middle frame): a 15 px slide, or a size ratio of (1 + 7.5 r) / (1 - 7.5 r) = 1.71x. A clip that both
# slides and changes size is named by the larger of the two in these units
_UNIT_SLIDE = 15.0
_UNIT_SCALE = math.log((1 + 7.5 * world.SCALE_RATE) / (1 - 7.5 * world.SCALE_RATE))


def motion_kind(m: dict) -> str:
    """How the scene content moves: "left"/"right"/"up"/"down", "bouncing", "growing"/"shrinking",
    "rotating", "pan left"/"pan right", "zoom in"/"zoom out", or "still".

    Camera motion is named only with evidence for it: a textured background that slides ("pan ...") or
    whose period changes ("zoom ..."), or, on a plain background, an object that drifts away from / toward
    the frame centre as much as its size changes ("zoom ..."). Otherwise the label says what the content
    does: world.py's "pan right" on a plain background is "left" (the scene slides left), and a zoom on a
    centred object is "growing". An object that slides and changes size is named by whichever goes
    further for the world's speed (a 20 px slide with a 1.2x size drift is "left").
    `motion_matches` accepts the look-alikes.
    """
    bg_dx, bg_scale = m.get("bg_dx"), m.get("bg_scale")
    if bg_scale is not None and abs(math.log(bg_scale)) > _SCALE:
        return "zoom in" if bg_scale > 1 else "zoom out"
    if bg_dx is not None and abs(bg_dx) > 3:
        return "pan right" if bg_dx < 0 else "pan left"
    scale = m["scale_change"]
    if abs(math.log(scale)) > _SCALE:
        if bg_scale is None:  # plain background: a zoom also pushes the object away from the centre
            c = _N / 2
            o0 = np.array([m["x_start"] - c, m["y_start"] - c])
            o1 = np.array([m["x_end"] - c, m["y_end"] - c])
            # the zoom must account for most of the drift (by more than 1 px of tracking noise): an object
            # that crosses the centre while it shrinks slides, since a zoom out only pulls it inward
            unexplained, drift = np.linalg.norm(o1 - o0 * scale), np.linalg.norm(o1 - o0)
            if unexplained + 1.0 < drift and unexplained < 0.5 * drift:
                return "zoom in" if scale > 1 else "zoom out"
        if abs(math.log(scale)) / _UNIT_SCALE >= m["displacement"] / _UNIT_SLIDE:
            return "growing" if scale > 1 else "shrinking"
    if m["y_range"] > 5 and abs(m["dy"]) < 0.6 * m["y_range"] and abs(m["dx"]) < 3:
        return "bouncing"
    if m["displacement"] > 3:
        if abs(m["dx"]) >= abs(m["dy"]):
            return "right" if m["dx"] > 0 else "left"
        return "down" if m["dy"] > 0 else "up"
    if abs(m.get("rotation", 0.0)) > 20:
        return "rotating"
    return "still"


def motion_matches(m: dict, kind: str) -> bool:
    """Whether a video's motion is consistent with `kind` (a world.MOTIONS name or "still"), given what the
    frames can show: on a plain background a pan is the scene sliding the other way, and a zoom may look
    like the object growing or shrinking."""
    seen = motion_kind(m)
    if seen == kind:
        return True
    plain = m.get("bg_dx") is None
    look_alike = {"pan right": "left", "pan left": "right", "zoom in": "growing", "zoom out": "shrinking"}
    return plain and look_alike.get(kind) == seen
