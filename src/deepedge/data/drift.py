"""Data drift as a transform: turn source-domain images into target-domain ones.

The same function serves every data source, so a :class:`~deepedge.spec.DriftSpec` means
the same thing for synthetic shapes, an image folder or digits. Drift is applied *after*
the clean images exist, which keeps the underlying objects of a seed unchanged between
the source and the drifted version of a data set.

Order of effects, chosen to mimic a camera moved to a new site: the scene gets a cluttered
background, then the optics/exposure change (contrast, then brightness), then sensor noise
is added on top.
"""

from __future__ import annotations

import numpy as np

from deepedge.data.arrays import ArrayDataset
from deepedge.errors import DataError, SpecError
from deepedge.spec import DriftSpec

__all__ = ["apply_drift", "check_class_weights", "clutter", "reweight_classes"]

# Without a foreground mask we cannot *replace* the background, so clutter is blended over
# the whole image at this fraction of ``drift.background``; kept below 1 so the object
# stays recognisable at full strength.
_UNMASKED_BLEND = 0.5
# Clutter contrast relative to full 0..255 range. At 1.0 the demo drift hides objects so
# well that even a model re-trained on drifted data recovers slowly; 0.6 still costs a
# source-domain model 25+ points (measured) while leaving the target domain learnable.
_CLUTTER_AMPLITUDE = 0.6


def _interp_matrix(size: int, grid: int) -> np.ndarray:
    """``(size, grid)`` weights for linear interpolation of ``grid`` knots onto ``size`` px."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, grid - 2)
    frac = pos - lo
    m = np.zeros((size, grid), dtype=np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def clutter(n: int, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` cluttered textures, float32 ``(n, channels, size, size)`` within 0..255.

    Each mixes smooth random colour blobs (bilinearly upsampled noise) with an oriented
    sine grating. A model that learned "the object is whatever differs from a flat
    background" is misled by both, yet the texture has few sharp edges, so a model
    trained on the drifted domain can still learn to separate object from clutter.
    """
    grid = 5
    knots = rng.uniform(0, 255, size=(n, channels, grid, grid)).astype(np.float32)
    m = _interp_matrix(size, grid)
    blobs = m @ knots @ m.T  # (n, channels, size, size)

    f32 = np.float32
    ar = np.arange(size, dtype=f32)
    theta = rng.uniform(0, np.pi, size=n).astype(f32)[:, None, None]
    freq = (rng.uniform(1.5, 4.0, size=n) / size).astype(f32)[:, None, None]  # cycles/pixel
    phase = rng.uniform(0, 2 * np.pi, size=n).astype(f32)[:, None, None]
    arg = np.cos(theta) * ar[None, None, :] + np.sin(theta) * ar[None, :, None]
    wave = (f32(0.5) + f32(0.5) * np.sin(f32(2 * np.pi) * freq * arg + phase))[:, None]
    c1 = rng.uniform(0, 255, size=(n, channels, 1, 1)).astype(f32)
    c2 = rng.uniform(0, 255, size=(n, channels, 1, 1)).astype(f32)
    grating = c2 + wave * (c1 - c2)
    tex = 0.5 * blobs + 0.5 * grating
    return (128 + _CLUTTER_AMPLITUDE * (tex - 128)).astype(np.float32)


def apply_drift(
    images: np.ndarray,
    drift: DriftSpec,
    rng: np.random.Generator,
    *,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Return drifted copies of uint8 ``images`` ``(N, C, H, W)``; the input is untouched.

    * ``background`` s: with a ``foreground`` alpha ``(N, H, W)`` in 0..1 (the synthetic
      generator has one), background pixels become ``(1-s)·plain + s·clutter``; without
      it, clutter is blended over the whole image at ``s/2``.
    * ``contrast`` c: pixels move towards (c<1) or away from each image's mean level.
    * ``brightness`` b: pixels are multiplied by b (lighting).
    * ``noise_std``: additive gaussian noise in 0..255 units.

    ``class_weights`` is *not* handled here (it changes which samples exist, not how they
    look): see :func:`reweight_classes`. An identity ``DriftSpec()`` returns the images
    unchanged, bit for bit.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(
            f"apply_drift needs uint8 images (N, C, H, W), got "
            f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        )
    n, c, h, w = images.shape
    if (
        drift.background == 0
        and drift.contrast == 1
        and drift.brightness == 1
        and drift.noise_std == 0
    ):
        return images.copy()
    x = images.astype(np.float32)
    if drift.background > 0:
        if h != w:
            raise DataError(f"background drift needs square images, got {h}x{w}")
        tex = clutter(n, c, h, rng)
        s = np.float32(drift.background)
        if foreground is None:
            s = s * np.float32(_UNMASKED_BLEND)
            x += s * (tex - x)
        else:
            if foreground.shape != (n, h, w):
                raise DataError(
                    f"foreground mask shape {foreground.shape} does not match "
                    f"images {images.shape}; expected {(n, h, w)}"
                )
            bg = (1 - foreground.astype(np.float32))[:, None] * s
            x += bg * (tex - x)
    if drift.contrast != 1:
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = mean + np.float32(drift.contrast) * (x - mean)
    if drift.brightness != 1:
        x *= np.float32(drift.brightness)
    if drift.noise_std > 0:
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(drift.noise_std)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def check_class_weights(weights: list[float] | None, num_classes: int) -> np.ndarray | None:
    """Validate ``class_weights`` against ``num_classes``; return them as probabilities.

    A length mismatch is the typical mistake after changing ``num_classes`` in a spec,
    so the error names both numbers.
    """
    if weights is None:
        return None
    if len(weights) != num_classes:
        raise SpecError(
            f"drift.class_weights has {len(weights)} entries but num_classes is {num_classes}",
            hint="give exactly one weight per class",
        )
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise SpecError(
            f"drift.class_weights {list(weights)} must be finite, >= 0 and not all zero",
            hint="e.g. [1, 1, 0.2, ...] to make class 2 rare",
        )
    return w / w.sum()


def reweight_classes(
    ds: ArrayDataset, weights: list[float], n: int, rng: np.random.Generator
) -> ArrayDataset:
    """Resample ``n`` samples (with replacement) so classes appear with ``weights``.

    With replacement because an up-weighted class may need more samples than the split
    holds; duplicates within one split are harmless and train/test stay disjoint since
    each split is resampled only from itself.
    """
    p_class = check_class_weights(weights, ds.num_classes)
    if p_class is None:
        raise SpecError("reweight_classes needs class weights, got None")
    counts = ds.class_counts()
    missing = [i for i in range(ds.num_classes) if p_class[i] > 0 and counts[i] == 0]
    if missing:
        names = [ds.class_names[i] for i in missing]
        raise DataError(
            f"class_weights ask for classes {names} that have no samples in this split",
            hint="give them weight 0, or use a larger data set",
        )
    per_sample = p_class[ds.labels] / np.maximum(counts[ds.labels], 1)
    idx = rng.choice(len(ds), size=n, replace=True, p=per_sample / per_sample.sum())
    return ds.subset(idx)
