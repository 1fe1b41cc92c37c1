"""Data sets: determinism, shapes, drift effects, splits, persistence and the loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deepedge.data import (
    ArrayDataset,
    apply_drift,
    build_dataset,
    clean_class_name,
    load_digits,
    load_image_folder,
    make_split,
    make_synthetic,
    reweight_classes,
    split_train_test,
)
from deepedge.errors import DataError, SpecError
from deepedge.spec import DatasetSpec, DriftSpec

DEMO_DRIFT = DriftSpec(brightness=0.55, contrast=0.7, noise_std=25, background=0.6)


def _tiny(n: int = 12, classes: int = 3, size: int = 8) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(
        images=rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
        labels=(np.arange(n) % classes).astype(np.int64),
        num_classes=classes,
        class_names=tuple(f"c{i}" for i in range(classes)),
    )


# -- ArrayDataset ---------------------------------------------------------------------


def test_array_dataset_rejects_bad_arrays() -> None:
    good = _tiny()
    with pytest.raises(DataError, match="uint8"):
        ArrayDataset(good.images.astype(np.float32), good.labels, 3, good.class_names)
    with pytest.raises(DataError, match="int64"):
        ArrayDataset(good.images, good.labels.astype(np.int32), 3, good.class_names)
    with pytest.raises(DataError, match="12 images but 11 labels"):
        ArrayDataset(good.images, good.labels[:-1], 3, good.class_names)
    with pytest.raises(DataError, match=r"label 2 is outside 0\.\.1"):
        ArrayDataset(good.images, good.labels, 2, ("a", "b"))
    with pytest.raises(DataError, match="2 class names"):
        ArrayDataset(good.images, good.labels, 3, ("a", "b"))


def test_to_tensors_normalises_and_keeps_labels() -> None:
    ds = _tiny()
    x, y = ds.to_tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (12, 3, 8, 8)
    assert torch.equal(y, torch.from_numpy(ds.labels))
    expected = (torch.from_numpy(ds.images).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5)
    assert x.min() >= -2.0 and x.max() <= 2.0


def test_subset_copies_rows_and_checks_range() -> None:
    ds = _tiny()
    sub = ds.subset([5, 0, 5])
    assert len(sub) == 3 and list(sub.labels) == [2, 0, 2]
    assert np.array_equal(sub.images[0], ds.images[5])
    sub.images[0] = 0
    assert ds.images[5].any()  # the original is untouched
    with pytest.raises(DataError, match="index 12 is out of range"):
        ds.subset([0, 12])


def test_save_load_round_trip(tmp_path: Path) -> None:
    ds = make_synthetic(20, num_classes=4, image_size=16, seed=3)
    back = ArrayDataset.load(ds.save(tmp_path / "d.npz"))
    assert np.array_equal(back.images, ds.images)
    assert np.array_equal(back.labels, ds.labels)
    assert back.num_classes == 4 and back.class_names == ds.class_names


def test_load_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data set file") as info:
        ArrayDataset.load(tmp_path / "nope.npz")
    assert info.value.hint
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="not a readable") as info:
        ArrayDataset.load(bad)
    assert "corrupt" in (info.value.hint or "")
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(_tiny().save(tmp_path / "ok.npz").read_bytes()[:300])
    with pytest.raises(DataError):
        ArrayDataset.load(truncated)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 80),
    classes=st.integers(2, 6),
    frac=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32),
)
def test_split_train_test_is_a_stratified_partition(
    n: int, classes: int, frac: float, seed: int
) -> None:
    ds = _tiny(n=n, classes=min(classes, n), size=4)
    # Tag each image with its index so we can tell which rows went where.
    ds.images[:, 0, 0, 0] = np.arange(n) % 256
    ds.images[:, 0, 0, 1] = np.arange(n) // 256
    train, test = split_train_test(ds, frac, seed)

    def ids(d: ArrayDataset) -> set[int]:
        tags = d.images[:, 0, 0, :2].astype(int)
        return set(tags[:, 0] + 256 * tags[:, 1])

    assert len(test) == round(frac * n) and len(train) + len(test) == n
    assert ids(train) | ids(test) == set(range(n)) and not ids(train) & ids(test)
    expected = ds.class_counts() * len(test) / n
    assert np.all(np.abs(test.class_counts() - expected) < 1 + 1e-9)
    again = split_train_test(ds, frac, seed)[1]
    assert np.array_equal(again.labels, test.labels)


def test_split_train_test_rejects_bad_fraction() -> None:
    with pytest.raises(SpecError, match=r"1\.5"):
        split_train_test(_tiny(), 1.5)


# -- synthetic --------------------------------------------------------------------------


def test_synthetic_shapes_dtypes_and_balance() -> None:
    ds = make_synthetic(103, num_classes=10, image_size=24, seed=1)
    assert ds.images.shape == (103, 3, 24, 24) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and len(ds.class_names) == 10
    counts = ds.class_counts()
    assert counts.max() - counts.min() <= 1
    assert len(set(ds.class_names)) == 10


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**63), classes=st.integers(2, 50))
def test_synthetic_is_deterministic_by_seed(seed: int, classes: int) -> None:
    a = make_synthetic(24, num_classes=classes, image_size=16, seed=seed)
    b = make_synthetic(24, num_classes=classes, image_size=16, seed=seed)
    c = make_synthetic(24, num_classes=classes, image_size=16, seed=seed + 1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert set(a.labels) <= set(range(classes))


def test_synthetic_classes_look_different() -> None:
    # Classes differ in shape: the mean object mask differs between, e.g., disk and ring.
    ds = make_synthetic(400, num_classes=10, image_size=32, seed=0)
    grey = ds.images.astype(float).mean(axis=1)
    contrast = np.abs(grey - np.median(grey, axis=(1, 2), keepdims=True)) > 30
    disk = contrast[ds.labels == 0].mean(axis=0)
    ring = contrast[ds.labels == 3].mean(axis=0)
    assert disk.mean() > ring.mean() * 1.2


def test_synthetic_supports_many_classes_and_rejects_too_many() -> None:
    ds = make_synthetic(100, num_classes=50, seed=0)
    assert ds.num_classes == 50 and len(set(ds.class_names)) == 50
    with pytest.raises(SpecError, match="num_classes=1"):
        make_synthetic(10, num_classes=1)
    with pytest.raises(SpecError, match="num_classes=500"):
        make_synthetic(10, num_classes=500)


def test_identity_drift_changes_nothing() -> None:
    plain = make_synthetic(30, seed=5)
    same = make_synthetic(30, seed=5, drift=DriftSpec())
    assert np.array_equal(plain.images, same.images)
    assert np.array_equal(plain.labels, same.labels)


def test_drift_keeps_objects_and_moves_pixel_statistics() -> None:
    plain = make_synthetic(300, seed=2)
    assert np.array_equal(make_synthetic(300, seed=2, drift=DEMO_DRIFT).labels, plain.labels)
    dark = make_synthetic(300, seed=2, drift=DriftSpec(brightness=0.5))
    assert np.array_equal(dark.labels, plain.labels)
    assert abs(dark.images.mean() - 0.5 * plain.images.mean()) < 1.0

    def image_std(ds: ArrayDataset) -> float:
        return float(ds.images.reshape(len(ds), -1).astype(float).std(axis=1).mean())

    flat = make_synthetic(300, seed=2, drift=DriftSpec(contrast=0.5))
    assert image_std(flat) == pytest.approx(0.5 * image_std(plain), rel=0.05)
    noisy = make_synthetic(300, seed=2, drift=DriftSpec(noise_std=20))
    diff = noisy.images.astype(float) - plain.images.astype(float)
    assert abs(diff.mean()) < 1.0 and 17 < diff.std() < 21


def test_background_drift_adds_texture_behind_the_object() -> None:
    plain = make_synthetic(300, seed=4)
    busy = make_synthetic(300, seed=4, drift=DriftSpec(background=1.0))

    def corner_spread(ds: ArrayDataset) -> float:
        # Per-channel std of an 8x8 corner patch, median over images: the plain background
        # is flat (only a soft lighting gradient and sensor noise), clutter is not.
        patch = ds.images[:, :, :8, :8].reshape(len(ds), 3, -1).astype(float)
        return float(np.median(patch.std(axis=2).mean(axis=1)))

    assert corner_spread(plain) < 5
    assert corner_spread(busy) > 3 * corner_spread(plain)
    # Objects stay where they were: image centres change much less than corners.
    delta = np.abs(busy.images.astype(int) - plain.images.astype(int)).mean(axis=(0, 1))
    assert delta[14:18, 14:18].mean() < 0.8 * delta[:5, :5].mean()


def test_class_weights_change_label_histogram() -> None:
    weights = [5.0, 1.0, 1.0, 0.0]
    ds = make_synthetic(2000, num_classes=4, seed=0, drift=DriftSpec(class_weights=weights))
    frac = ds.class_counts() / len(ds)
    assert frac[3] == 0
    assert frac[0] == pytest.approx(5 / 7, abs=0.04)
    assert frac[1] == pytest.approx(1 / 7, abs=0.03)


@pytest.mark.parametrize("bad", [[1.0, 1.0], [1.0] * 11])
def test_wrong_length_class_weights_is_a_spec_error(bad: list[float]) -> None:
    with pytest.raises(SpecError, match=f"has {len(bad)} entries but num_classes is 10"):
        make_synthetic(10, num_classes=10, drift=DriftSpec(class_weights=bad))
    spec = DatasetSpec(train_size=10, test_size=10, drift=DriftSpec(class_weights=bad))
    with pytest.raises(SpecError, match="num_classes is 10"):
        build_dataset(spec, "train", drifted=False)


def test_all_zero_class_weights_rejected() -> None:
    with pytest.raises(SpecError, match="not all zero"):
        make_synthetic(10, num_classes=2, drift=DriftSpec(class_weights=[0.0, 0.0]))


def test_make_split_train_and_test_are_distinct_streams() -> None:
    spec = DatasetSpec(train_size=40, test_size=30, image_size=16, seed=9, drift=DEMO_DRIFT)
    train = make_split(spec, "train", drifted=False)
    test = make_split(spec, "test", drifted=False)
    assert (len(train), len(test)) == (40, 30)
    flat_train = {row.tobytes() for row in train.images}
    assert not any(row.tobytes() in flat_train for row in test.images)
    again = make_split(spec, "train", drifted=False)
    assert np.array_equal(again.images, train.images)
    drifted = make_split(spec, "train", drifted=True)
    assert np.array_equal(drifted.labels, train.labels)
    assert drifted.images.mean() < train.images.mean()
    with pytest.raises(SpecError, match="'val'"):
        make_split(spec, "val", drifted=False)  # type: ignore[arg-type]


def test_apply_drift_validates_and_works_without_a_mask() -> None:
    rng = np.random.default_rng(0)
    imgs = np.full((4, 1, 8, 8), 200, dtype=np.uint8)
    out = apply_drift(imgs, DriftSpec(background=1.0, brightness=0.5), rng)
    assert out.dtype == np.uint8 and out.shape == imgs.shape
    assert out.std() > 0 and out.mean() < 200
    assert np.all(imgs == 200)  # input untouched
    with pytest.raises(DataError, match="uint8"):
        apply_drift(imgs.astype(np.float32), DriftSpec(), rng)


def test_reweight_classes_resamples_to_new_mix() -> None:
    ds = _tiny(n=300, classes=3, size=4)
    out = reweight_classes(ds, [0.0, 1.0, 3.0], 400, np.random.default_rng(1))
    frac = out.class_counts() / 400
    assert len(out) == 400 and frac[0] == 0
    assert frac[2] == pytest.approx(0.75, abs=0.06)


# -- image folder -----------------------------------------------------------------------


def _write_caltech_tree(root: Path) -> None:
    colours = {
        "001.ak47": (200, 30, 30),
        "002.american-flag": (30, 200, 30),
        "010.beer-mug": (30, 30, 200),
        "BACKGROUND_Google": (9, 9, 9),
    }
    for i, (cls, colour) in enumerate(colours.items()):
        d = root / cls
        d.mkdir(parents=True)
        for j in range(3 + i):
            size = (40 + 7 * j, 30 + 5 * i)  # non-square, various sizes
            Image.new("RGB", size, colour).save(d / f"img_{j:04d}.jpg")
    Image.new("L", (20, 20), 128).save(root / "002.american-flag" / "grey.png")
    (root / "001.ak47" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "001.ak47" / "notes.txt").write_text("not an image, ignored")
    (root / "empty_class").mkdir()


def test_image_folder_loader(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_caltech_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="deepedge.data.folder"):
        ds = load_image_folder(tmp_path, image_size=16)
    assert ds.class_names == ("ak47", "american-flag", "beer-mug")
    assert ds.images.shape == (3 + 5 + 5, 3, 16, 16)  # broken.jpg skipped, grey.png kept
    assert list(ds.class_counts()) == [3, 5, 5]
    assert "broken.jpg" in caplog.text and "skipped 1 of" in caplog.text
    red = ds.images[ds.labels == 0].mean(axis=(0, 2, 3))
    assert red[0] > 150 and red[1] < 80  # RGB channel order kept
    capped = load_image_folder(tmp_path, image_size=8, max_per_class=2, skip_classes=())
    assert "BACKGROUND_Google" in capped.class_names
    assert capped.class_counts().max() == 2


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_image_folder(tmp_path / "missing")
    assert info.value.hint
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no class directories"):
        load_image_folder(tmp_path)
    (tmp_path / "a" / "x.jpg").write_bytes(b"garbage")
    (tmp_path / "a" / "y.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 2 images"):
        load_image_folder(tmp_path)


def test_clean_class_name() -> None:
    assert clean_class_name("001.ak47") == "ak47"
    assert clean_class_name("257.clutter") == "clutter"
    assert clean_class_name("Faces_easy") == "Faces_easy"
    assert clean_class_name("3d.printer") == "3d.printer"


def test_build_dataset_image_folder_split_and_drift(tmp_path: Path) -> None:
    _write_caltech_tree(tmp_path)
    spec = DatasetSpec(
        kind="image_folder",
        path=str(tmp_path),
        num_classes=3,
        image_size=16,
        train_size=100,
        test_size=100,
        drift=DriftSpec(brightness=0.5),
    )
    train = build_dataset(spec, "train", drifted=False)
    test = build_dataset(spec, "test", drifted=False)
    assert len(train) + len(test) == 13 and len(test) == round(13 * 0.5)
    drifted = build_dataset(spec, "test", drifted=True)
    assert np.array_equal(drifted.labels, test.labels)
    assert drifted.images.mean() < 0.6 * test.images.mean()
    too_many = spec.model_copy(update={"num_classes": 5})
    with pytest.raises(SpecError, match="has only 3 classes"):
        build_dataset(too_many, "train", drifted=False)


# -- digits -----------------------------------------------------------------------------


def test_digits_loader_shapes() -> None:
    ds = load_digits(image_size=16)
    assert ds.images.shape == (1797, 1, 16, 16) and ds.images.dtype == np.uint8
    assert ds.num_classes == 10 and ds.class_names[3] == "3"
    assert ds.images.max() > 200  # rescaled from 0..16 ink levels
    assert load_digits(image_size=8).images.shape[2:] == (8, 8)


def test_build_dataset_digits_exact_sizes() -> None:
    spec = DatasetSpec(kind="digits", train_size=300, test_size=200, image_size=16, seed=1)
    train = build_dataset(spec, "train", drifted=False)
    test = build_dataset(spec, "test", drifted=False)
    assert (len(train), len(test)) == (300, 200)
    assert train.images.shape[1:] == (1, 16, 16)
    assert set(np.unique(test.labels)) == set(range(10))
    assert not {r.tobytes() for r in train.images} & {r.tobytes() for r in test.images}
