"""load_served_model: a checkpoint becomes a servable model, or one clear line says why not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepedge.data import ArrayDataset
from deepedge.errors import CheckpointError, DeepEdgeError, SpecError
from deepedge.models import build_model
from deepedge.serving.model import input_shape, load_served_model
from deepedge.spec import DatasetSpec, JobSpec
from deepedge.train.checkpoint import save_checkpoint


def tiny_job(**dataset: object) -> JobSpec:
    data = {"kind": "synthetic", "num_classes": 8, "image_size": 16, "train_size": 64}
    return JobSpec.model_validate(
        {
            "name": "tiny",
            "model": {"arch": "small_cnn", "width": 4},
            "dataset": {**data, **dataset},
            "global_batch": 16,
        }
    )


def save_job(path: Path, job: JobSpec, *, prefix: str = "") -> torch.nn.Module:
    c, s, k = input_shape(job.dataset)
    torch.manual_seed(1)
    model = build_model(job.model, in_channels=c, num_classes=k, image_size=s)
    weights = {prefix + name: value for name, value in model.state_dict().items()}
    save_checkpoint(path, {"model": weights, "job": job.model_dump(mode="json")})
    return model.eval()


def one_line(exc: pytest.ExceptionInfo[DeepEdgeError]) -> str:
    text = exc.value.one_line()
    assert "\n" not in text and "Traceback" not in text
    return text


def test_input_shape_from_the_spec_alone() -> None:
    assert input_shape(DatasetSpec(kind="digits", image_size=16, num_classes=10)) == (1, 16, 10)
    assert input_shape(DatasetSpec(kind="synthetic", image_size=24, num_classes=5)) == (3, 24, 5)
    folder = DatasetSpec(kind="image_folder", path="/nowhere", image_size=32, num_classes=7)
    assert input_shape(folder) == (3, 32, 7)  # the folder is not read


def test_a_checkpoint_serves_the_trained_model(tmp_path: Path) -> None:
    job = tiny_job()
    model = save_job(tmp_path / "m.ckpt", job)
    served = load_served_model(tmp_path / "m.ckpt")
    assert (served.input_shape, served.num_classes, served.job_name) == ((3, 16, 16), 8, "tiny")
    assert served.payload_bytes == 3 * 16 * 16
    assert not served.model.training
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    # The same normalisation as training (ArrayDataset.to_tensors), so the same classes.
    x, _ = ArrayDataset(images, np.zeros(6, np.int64), 8, tuple("abcdefgh")).to_tensors()
    with torch.inference_mode():
        expected = model(x).argmax(dim=1).tolist()
    assert [served.predict(img.tobytes()) for img in images] == expected
    assert torch.equal(served.to_input(images[0].tobytes()), x[:1])


def test_digits_and_ddp_prefixed_weights(tmp_path: Path) -> None:
    job = tiny_job(kind="digits", num_classes=10)
    save_job(tmp_path / "d.ckpt", job, prefix="module.")
    served = load_served_model(tmp_path / "d.ckpt")
    assert served.input_shape == (1, 16, 16) and served.num_classes == 10
    assert 0 <= served.predict(bytes(256)) < 10


def test_missing_and_corrupt_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as exc:
        load_served_model(tmp_path / "nope.ckpt")
    one_line(exc)
    path = tmp_path / "m.ckpt"
    save_job(path, tiny_job())
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as exc:
        load_served_model(path)
    one_line(exc)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a deepedge checkpoint") as exc:
        load_served_model(path)
    one_line(exc)


def test_foreign_states_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="no job spec") as exc:
        load_served_model(path)
    one_line(exc)
    save_checkpoint(path, {"job": tiny_job().model_dump(mode="json"), "epoch": 3})
    with pytest.raises(CheckpointError, match="no model weights") as exc:
        load_served_model(path)
    one_line(exc)
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "job": {"model": {"arch": "vit"}}})
    with pytest.raises(SpecError, match=r"model\.arch") as exc:
        load_served_model(path)
    one_line(exc)
    # Weights of another architecture than the job's.
    other = tiny_job().model_copy(
        update={"model": tiny_job().model.model_copy(update={"width": 8})}
    )
    torch.manual_seed(0)
    weights = build_model(other.model, in_channels=3, num_classes=8, image_size=16).state_dict()
    save_checkpoint(path, {"model": weights, "job": tiny_job().model_dump(mode="json")})
    with pytest.raises(CheckpointError, match="do not fit") as exc:
        load_served_model(path)
    one_line(exc)


def test_custom_models_are_not_served_yet(tmp_path: Path) -> None:
    job = tiny_job().model_dump(mode="json")
    job["model"]["arch"] = "custom"
    job["custom"] = {
        "model": {"name": "net", "ref": "mypkg.nets:make"},
        "signature": "0123456789abcdef",
        "input_shape": [3, 16, 16],
    }
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "job": job})
    with pytest.raises(SpecError, match="custom model") as exc:
        load_served_model(path)
    assert "not supported" in one_line(exc)
