"""A procedurally generated image classification task, deterministic by seed.

Why synthetic: the emulated cluster needs a data set that exists offline, at any size,
with a *controllable* domain shift, and that is still a genuine vision problem. Each class
is a shape in a band of hues: class ``k`` of ``K`` is shape ``k % 10`` (disk, square,
triangle, ring, plus, three stripe orientations, checker, dots) with a hue drawn around
``(k + 1) / (K + 1)`` of the colour wheel, at a random position, scale, rotation, saturation
and brightness, light-on-dark or dark-on-light, on a plain, softly lit background.

Hue bands overlap their neighbours, so colour is a quick but incomplete cue and a model
must learn shape to do well; that makes early training progress fast (useful for short
edge re-training runs) without making the task trivial. Classes sharing a shape are far
apart in hue, so up to :data:`MAX_CLASSES` classes stay distinct.

Shapes are rasterised from signed distance functions over all images at once (numpy,
no per-image Python loop), with one pixel of anti-aliasing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from deepedge.data.arrays import ArrayDataset
from deepedge.data.drift import apply_drift, check_class_weights
from deepedge.errors import SpecError
from deepedge.spec import DatasetSpec, DriftSpec

__all__ = [
    "MAX_CLASSES",
    "SHAPES",
    "class_names",
    "make_split",
    "make_synthetic",
    "split_seed",
]

Sdf = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _box(x: np.ndarray, y: np.ndarray, a: float, b: float | None = None) -> np.ndarray:
    return np.maximum(np.abs(x) - a, np.abs(y) - (a if b is None else b))


def _stripes(t: np.ndarray, period: float) -> np.ndarray:
    # Negative on the middle half of every period: bars as wide as the gaps.
    return (np.abs(t / period - np.floor(t / period) - 0.5) - 0.25) * period


def _triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = None
    for k in range(3):
        ang = math.pi / 2 + 2 * math.pi * k / 3
        e = x * math.cos(ang) + y * math.sin(ang) - 0.5
        d = e if d is None else np.maximum(d, e)
    return d


def _dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = 0.6
    qx = x - p * np.clip(np.rint(x / p), -1, 1)
    qy = y - p * np.clip(np.rint(y / p), -1, 1)
    return np.hypot(qx, qy) - 0.2


_P = 1.7 / 3  # stripe period inside a patch: three bars
_S2 = math.sqrt(0.5)

#: name -> (signed distance in object units, max rotation jitter in radians). Shapes whose
#: identity depends on orientation (stripes) get little jitter; symmetric ones get a lot.
SHAPES: dict[str, tuple[Sdf, float]] = {
    "disk": (lambda x, y: np.hypot(x, y) - 0.9, 0.0),
    "square": (lambda x, y: _box(x, y, 0.75), math.radians(25)),
    "triangle": (_triangle, math.pi),
    "ring": (lambda x, y: np.abs(np.hypot(x, y) - 0.7) - 0.2, 0.0),
    "plus": (
        lambda x, y: np.minimum(_box(x, y, 0.27, 0.9), _box(x, y, 0.9, 0.27)),
        math.radians(20),
    ),
    "hstripes": (
        lambda x, y: np.maximum(_box(x, y, 0.85), _stripes(y + _P / 4, _P)),
        math.radians(15),
    ),
    "vstripes": (
        lambda x, y: np.maximum(_box(x, y, 0.85), _stripes(x + _P / 4, _P)),
        math.radians(15),
    ),
    "dstripes": (
        lambda x, y: np.maximum(_box(x, y, 0.85), _stripes((x + y) * _S2, _P)),
        math.radians(15),
    ),
    "checker": (
        lambda x, y: np.maximum(
            _box(x, y, 0.85),
            -np.sin(np.pi * x / _P * 1.5) * np.sin(np.pi * y / _P * 1.5) * _P / (1.5 * np.pi),
        ),
        math.radians(20),
    ),
    "dots": (_dots, math.radians(20)),
}
_SHAPE_LIST = list(SHAPES.items())
#: Most classes offered: beyond this the hue bands get narrower than the colour shifts
#: that lighting and noise cause, and classes sharing a shape start to blur.
MAX_CLASSES = 80


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (all in 0..1) to RGB ``(n, 3)`` in 0..1."""
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], 1),
            np.stack([q, v, p], 1),
            np.stack([p, v, t], 1),
            np.stack([p, q, v], 1),
            np.stack([t, p, v], 1),
            np.stack([v, p, q], 1),
        ]
    )  # (6, n, 3)
    return table[i, np.arange(len(h))]


def _hue_centre(labels: np.ndarray | int, num_classes: int) -> np.ndarray:
    # K + 1 equal slots round the colour wheel with one left empty, so the last and the
    # first class (which share a shape when K = 10m + 1) do not overlap across the wrap.
    return (np.asarray(labels) + 1.0) / (num_classes + 1)


def _hue_halfwidth(num_classes: int) -> float:
    # A band two slots wide: every hue is shared by about two neighbouring classes (which
    # always differ in shape), so colour narrows the answer down but only shape settles
    # it. Classes sharing a shape are >= 2 slots apart in hue, so they never overlap.
    return 1.0 / (num_classes + 1)


def class_names(num_classes: int) -> tuple[str, ...]:
    """``shape`` for up to 10 classes (the shape alone names the class), else
    ``shape-hueDDD`` with the centre of the class's hue band in degrees."""
    if num_classes <= len(SHAPES):
        return tuple(_SHAPE_LIST[k][0] for k in range(num_classes))
    degrees = np.rint(360 * _hue_centre(np.arange(num_classes), num_classes)).astype(int)
    return tuple(f"{_SHAPE_LIST[k % len(SHAPES)][0]}-hue{d:03d}" for k, d in enumerate(degrees))


def _render(
    labels: np.ndarray, num_classes: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the clean images; returns float32 RGB ``(n, 3, size, size)`` in 0..255 and the
    object alpha ``(n, size, size)`` (used to put clutter behind, not over, the object)."""
    n = len(labels)
    n_shapes = len(SHAPES)
    # Draw every random parameter for every image in a fixed order, whatever the labels,
    # so the same seed gives the same poses and colours with or without class re-weighting.
    half = rng.uniform(0.24, 0.42, n) * size  # object half-extent in pixels
    cx = rng.uniform(0, 1, n) * (size - 1.6 * half) + 0.8 * half
    cy = rng.uniform(0, 1, n) * (size - 1.6 * half) + 0.8 * half
    rot_u = rng.uniform(-1, 1, n)
    hue_u = rng.uniform(0, 1, n)
    sat_fg = rng.uniform(0.55, 1.0, n)
    dark_bg = rng.uniform(0, 1, n) < 0.5
    v_fg = np.where(dark_bg, rng.uniform(0.65, 1.0, n), rng.uniform(0.3, 0.55, n))
    v_bg = np.where(dark_bg, rng.uniform(0.05, 0.4, n), rng.uniform(0.65, 0.95, n))
    hue_bg = rng.uniform(0, 1, n)
    sat_bg = rng.uniform(0, 0.25, n)
    light = rng.normal(0, 0.08, (n, 2))  # soft linear lighting gradient
    sensor = rng.standard_normal((n, 3, size, size), dtype=np.float32)
    sensor *= np.float32(3.0)

    shape_idx = labels % n_shapes
    hue = _hue_centre(labels, num_classes) + (2 * hue_u - 1) * _hue_halfwidth(num_classes)
    fg = _hsv_to_rgb(hue % 1.0, sat_fg, v_fg) * 255
    bg = _hsv_to_rgb(hue_bg, sat_bg, v_bg) * 255

    ar = np.arange(size, dtype=np.float32) + 0.5
    alpha = np.zeros((n, size, size), dtype=np.float32)
    for s, (_, (sdf, jitter)) in enumerate(_SHAPE_LIST):
        sel = np.flatnonzero(shape_idx == s)
        if sel.size == 0:
            continue
        theta = (rot_u[sel] * jitter)[:, None, None]
        inv = (1.0 / half[sel])[:, None, None]
        dx = (ar[None, None, :] - cx[sel, None, None]) * inv
        dy = (ar[None, :, None] - cy[sel, None, None]) * inv
        ct, st = np.cos(theta), np.sin(theta)
        x, y = ct * dx + st * dy, -st * dx + ct * dy
        d = sdf(x.astype(np.float32), y.astype(np.float32))
        alpha[sel] = np.clip(0.5 - d * half[sel, None, None], 0, 1)

    grid = ar / size - 0.5
    shade = (
        1
        + light[:, 0, None, None] * grid[None, None, :]
        + light[:, 1, None, None] * grid[None, :, None]
    )  # (n, size, size)
    a = alpha[:, None]
    img = (a * fg[:, :, None, None] + (1 - a) * bg[:, :, None, None]) * shade[:, None]
    return img.astype(np.float32) + sensor, alpha


def make_synthetic(
    n: int,
    *,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    drift: DriftSpec | None = None,
) -> ArrayDataset:
    """``n`` RGB images ``(n, 3, image_size, image_size)`` of ``num_classes`` shape classes.

    Without ``drift.class_weights`` the classes are exactly balanced (up to one sample).
    ``drift`` is applied as a transform with its own random stream, so the same ``seed``
    gives the same objects (pose, colour, lighting) with and without drift; only
    ``class_weights`` changes which class each object is.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SpecError(f"number of samples must be an int >= 0, got {n!r}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise SpecError(
            f"synthetic data supports 2..{MAX_CLASSES} classes, got num_classes={num_classes}",
            hint="use an image_folder data set for more classes",
        )
    if not 8 <= image_size <= 256:
        raise SpecError(f"image_size must be in 8..256, got {image_size}")
    weights = check_class_weights(drift.class_weights if drift else None, num_classes)
    label_ss, draw_ss, drift_ss = np.random.SeedSequence(int(seed) % 2**64).spawn(3)
    label_rng = np.random.default_rng(label_ss)
    if weights is None:
        labels = label_rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
    else:
        labels = label_rng.choice(num_classes, size=n, p=weights).astype(np.int64)
    img, alpha = _render(labels, num_classes, image_size, np.random.default_rng(draw_ss))
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if drift is not None:
        images = apply_drift(images, drift, np.random.default_rng(drift_ss), foreground=alpha)
    return ArrayDataset(
        images=images, labels=labels, num_classes=num_classes, class_names=class_names(num_classes)
    )


def split_seed(seed: int, split: Literal["train", "test"]) -> int:
    """Independent 63-bit seed per split, so train and test are disjoint random streams."""
    if split not in ("train", "test"):
        raise SpecError(f"split must be 'train' or 'test', got {split!r}")
    ss = np.random.SeedSequence([int(seed) % 2**64, 0 if split == "train" else 1])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def make_split(
    spec: DatasetSpec, split: Literal["train", "test"], *, drifted: bool
) -> ArrayDataset:
    """The ``train`` or ``test`` split of a synthetic ``spec``, source or drifted domain."""
    seed = split_seed(spec.seed, split)
    return make_synthetic(
        spec.train_size if split == "train" else spec.test_size,
        num_classes=spec.num_classes,
        image_size=spec.image_size,
        seed=seed,
        drift=spec.drift if drifted else None,
    )
