"""`deepedge meanet train|eval` end to end on a tiny data set, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import deepedge
from tests.cli import CliResult, run_cli


def run(*args: str) -> CliResult:
    return run_cli("meanet", *args)


def one_line_error(result: CliResult, says: str) -> None:
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in result.err, result.err


def test_train_then_eval_writes_checkpoints_sweep_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "m"
    tiny = ["--classes", "4", "--image-size", "8", "--train-size", "120", "--test-size", "40"]
    trained = run("train", "--out", str(out), *tiny, "--width", "4", "--epochs", "1")
    assert trained.code == 0, trained.err
    assert "hard classes" in trained.out
    for name in ("meanet-edge.ckpt", "meanet-cloud.ckpt", "meanet.json", "meanet.png"):
        assert (out / name).is_file(), name
    first = json.loads((out / "meanet.json").read_text())
    (out / "meanet.json").unlink()
    again = run("eval", str(out), "--max-cloud-share", "0.5")
    assert again.code == 0, again.err
    result = json.loads((out / "meanet.json").read_text())
    assert set(result["rows"]) >= {
        "main block only",
        "main + extension for every input",
        "cloud only",
    }
    # the same models on the same test set: the fixed configurations do not move
    assert result["rows"]["main block only"] == first["rows"]["main block only"]
    assert result["macs"]["extension"] > 0 and result["rows"]["cloud only"]["edge_macs"] == 0
    assert len(result["sweep"]) > 100


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    one_line_error(run("train", "--data", "imagenet"), "unknown data set")
    one_line_error(run("eval", str(tmp_path / "nothing")), "no MEANet checkpoint")
    one_line_error(run("train", "--data", "folder"), "needs a path")
    one_line_error(run("eval", str(tmp_path), "--max-cloud-share", "2"), "max-cloud-share")


def test_serve_refuses_a_bad_cloud_exit_in_one_line_before_booting(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    out = tmp_path / "m"
    tiny = ["--classes", "4", "--image-size", "8", "--train-size", "80", "--test-size", "20"]
    assert run("train", "--out", str(out), *tiny, "--width", "4", "--epochs", "1").code == 0
    assert (out / "test.npz").is_file()  # what serve sends a MEANet edge
    cluster = str(Path(deepedge.__file__).parent / "examples" / "meanet-cluster.yaml")
    edge = str(out / "meanet-edge.ckpt")

    def serve(*args: str) -> CliResult:
        return run_cli("serve", cluster, *args, "--out", str(tmp_path / "s"))

    one_line_error(serve(edge, "--cloud-device", "nowhere"), "'nowhere' is not in cluster")
    one_line_error(
        serve(edge, "--cloud-device", "cloud-1", "--devices", "cloud-1,orin-1"),
        "runs the cloud model",
    )
    one_line_error(serve(str(tiny_checkpoint), "--cloud-device", "cloud-1"), "needs a MEANet edge")
    one_line_error(
        serve(edge, "--images", str(Path(deepedge.__file__).parent / "py.typed")),
        "cannot read images",
    )
    one_line_error(serve(edge, "--cloud-device", "cloud-1", "--cloud-threshold", "2"), "[0, 1]")
    one_line_error(serve(edge, "--main-threshold", "0.5"), "--cloud-device")
    (out / "meanet-cloud.ckpt").unlink()
    one_line_error(serve(edge, "--cloud-device", "cloud-1"), "meanet-cloud.ckpt")
    assert not (tmp_path / "s").exists()  # nothing booted, nothing written
