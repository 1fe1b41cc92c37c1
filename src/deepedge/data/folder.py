"""Load an image-folder tree in the Caltech-101/256 layout: ``root/<class_dir>/<image>``.

Caltech-256 class directories carry a numeric prefix (``001.ak47``) that is stripped from
the class name; Caltech-101 ships a ``BACKGROUND_Google`` distractor directory that is not
a real class and is skipped by default. Real-world folders contain the odd truncated or
mislabelled file, so unreadable images are skipped with a warning instead of aborting a
long load; only a folder where nothing is readable is an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from deepedge.data.arrays import ArrayDataset
from deepedge.errors import DataError, SpecError

__all__ = ["IMAGE_SUFFIXES", "clean_class_name", "load_image_folder"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
_NUMBERED = re.compile(r"^\d+\.(.+)$")


def clean_class_name(dirname: str) -> str:
    """``001.ak47`` -> ``ak47``; names without a numeric prefix are kept as they are."""
    m = _NUMBERED.match(dirname)
    return m.group(1) if m else dirname


def _read(path: Path, size: int) -> np.ndarray:
    """One image as uint8 ``(3, size, size)``: RGB, centre-cropped to square, resized."""
    with Image.open(path) as im:
        # JPEG draft mode decodes at a reduced scale directly: a large speed-up for
        # Caltech's ~300px photos when we only keep 32px.
        im.draft("RGB", (size * 2, size * 2))
        rgb = im.convert("RGB")
        fitted = ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)
        return np.asarray(fitted, dtype=np.uint8).transpose(2, 0, 1)


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in class_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def load_image_folder(
    root: str | Path,
    *,
    image_size: int = 32,
    max_per_class: int | None = None,
    skip_classes: Iterable[str] = ("BACKGROUND_Google",),
    seed: int = 0,
) -> ArrayDataset:
    """Read every class directory under ``root`` into an :class:`ArrayDataset`.

    Classes are ordered by directory name (so ``001.`` ... ``257.`` keep Caltech's order)
    and named with :func:`clean_class_name`. ``skip_classes`` matches either the raw or
    the cleaned directory name. ``max_per_class`` keeps a seeded random subset of each
    class (chosen before decoding, so it also bounds load time). Unreadable images are
    skipped with a warning; a class left with no readable image is dropped.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(
            f"image folder {base} does not exist or is not a directory",
            hint="point dataset.path at the folder holding one directory per class",
        )
    if not 8 <= image_size <= 256:
        raise SpecError(f"image_size must be in 8..256, got {image_size}")
    if max_per_class is not None and max_per_class < 1:
        raise SpecError(f"max_per_class must be >= 1 or None, got {max_per_class}")
    skip = set(skip_classes)
    class_dirs = sorted(
        d
        for d in base.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and d.name not in skip
        and clean_class_name(d.name) not in skip
    )
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) % 2**64))
    images: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    failed = attempted = 0
    for d in class_dirs:
        files = _image_files(d)
        if max_per_class is not None and len(files) > max_per_class:
            keep = np.sort(rng.permutation(len(files))[:max_per_class])
            files = [files[i] for i in keep]
        got = []
        for f in files:
            attempted += 1
            try:
                got.append(_read(f, image_size))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                failed += 1
                log.warning("skipping unreadable image %s: %s", f, err)
        if not got:
            if files:
                log.warning(
                    "dropping class %r: none of its %d images could be read", d.name, len(files)
                )
            continue
        images.extend(got)
        labels.extend([len(names)] * len(got))
        names.append(clean_class_name(d.name))
    if attempted == 0:
        raise DataError(
            f"no class directories with images under {base}",
            hint=f"expected {base}/<class>/<image>{{.jpg,.png,...}}",
        )
    if not images:
        raise DataError(
            f"none of the {attempted} images under {base} could be read",
            hint="check the files are valid images (see the warnings above)",
        )
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataError(
            f"class directories under {base} clean to duplicate names {dupes}",
            hint="rename the directories so each class name is unique",
        )
    if failed:
        log.warning("skipped %d of %d images under %s as unreadable", failed, attempted, base)
    return ArrayDataset(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=len(names),
        class_names=tuple(names),
    )
