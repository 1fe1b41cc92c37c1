"""scikit-learn's bundled 8x8 handwritten digits as an :class:`ArrayDataset`.

A small *real* data set that ships with scikit-learn, so it works fully offline; useful
as a sanity check that a training setup learns more than synthetic shapes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deepedge.data.arrays import ArrayDataset
from deepedge.errors import SpecError

__all__ = ["load_digits"]


def load_digits(*, image_size: int = 16) -> ArrayDataset:
    """All 1797 digits as 1-channel uint8 images upscaled bilinearly to ``image_size``.

    The source pixels are 0..16 ink levels and are rescaled to 0..255 so the drift
    transforms and tensor normalisation work in the same units as for colour images.
    """
    if not 8 <= image_size <= 256:
        raise SpecError(f"image_size must be in 8..256, got {image_size}")
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return ArrayDataset(
        images=images,
        labels=bunch.target.astype(np.int64),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
    )
