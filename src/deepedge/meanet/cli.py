"""``deepedge meanet train|eval``: block-wise training, then the exit configurations and
the threshold sweep (a table, ``meanet.json`` and a PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from deepedge.errors import UsageError

if TYPE_CHECKING:
    from deepedge.data import ArrayDataset
    from deepedge.meanet.pipeline import MeanetModels

meanet_app = typer.Typer(
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="MEANet: block-wise edge training, exits at main/extension/cloud, costs per exit.",
)
console = Console()

_DATA = ("synthetic", "digits", "folder")


@meanet_app.command("train")
def train(
    out: Annotated[Path, typer.Option(help="folder for the checkpoints")] = Path("meanet-out"),
    data: Annotated[str, typer.Option(help="synthetic, digits or folder")] = "synthetic",
    path: Annotated[
        Path | None, typer.Option(help="folder data: ROOT/train/<class>, ROOT/test/<class>")
    ] = None,
    classes: Annotated[int, typer.Option(help="classes of the synthetic data")] = 20,
    image_size: Annotated[int, typer.Option(help="image side, pixels")] = 32,
    train_size: Annotated[int, typer.Option(help="synthetic training images")] = 4000,
    test_size: Annotated[int, typer.Option(help="synthetic test images")] = 1000,
    width: Annotated[int, typer.Option(help="main block's first-stage channels")] = 16,
    depth: Annotated[int, typer.Option(help="residual blocks per main-block stage")] = 1,
    epochs: Annotated[int, typer.Option(help="epochs per block")] = 10,
    seed: Annotated[int, typer.Option(help="data and initialisation seed")] = 0,
) -> None:
    """Train the main block, pick the hard classes, train the adaptive and extension blocks
    with the main block frozen, and train the cloud model; then evaluate (as `eval`)."""
    from deepedge.meanet.pipeline import MeanetConfig, load_data, train_models

    if data not in _DATA:
        raise UsageError(f"unknown data set {data!r}", hint=f"choose from {', '.join(_DATA)}")
    if epochs < 1 or width < 4 or depth < 1 or classes < 4:
        raise UsageError("need --epochs >= 1, --width >= 4, --depth >= 1 and --classes >= 4")
    cfg = MeanetConfig(
        data=data,  # type: ignore[arg-type]
        path=str(path) if path else None,
        classes=classes,
        image_size=image_size,
        train_size=train_size,
        test_size=test_size,
        width=width,
        depth=depth,
        epochs=epochs,
        seed=seed,
    )
    train_ds, test_ds = load_data(cfg)
    console.print(
        f"{data}: {len(train_ds)} training and {len(test_ds)} test images, "
        f"{train_ds.num_classes} classes, {train_ds.image_shape}"
    )
    with Progress(console=console) as bar:
        tasks = {
            stage: bar.add_task(f"{stage} ({what})", total=epochs)
            for stage, what in (
                ("main", "every class"),
                ("extension", "hard classes, main frozen"),
                ("cloud", "every class"),
            )
        }

        def on_epoch(stage: str, epoch: int, loss: float) -> None:
            bar.update(tasks[stage], completed=epoch + 1, description=f"{stage}: loss {loss:.3f}")

        models = train_models(cfg, train_ds, on_epoch=on_epoch)
    paths = models.save(out)
    hard = ", ".join(models.class_names[c] for c in models.hard_classes)
    console.print(f"hard classes: {hard}")
    console.print(f"saved {paths['edge']} and {paths['cloud']}")
    _report(models, test_ds, out, 0.1)


@meanet_app.command("eval")
def evaluate(
    out: Annotated[Path, typer.Argument(help="folder that `meanet train` wrote")] = Path(
        "meanet-out"
    ),
    max_cloud_share: Annotated[
        float, typer.Option(help="most inputs the knee may send to the cloud")
    ] = 0.1,
) -> None:
    """The exit configurations side by side and the threshold sweep's knee, on the test set
    of the data the models were trained on; writes meanet.json and meanet.png."""
    from deepedge.meanet.pipeline import load_data, load_models

    if not 0.0 <= max_cloud_share <= 1.0:
        raise UsageError(f"--max-cloud-share must be in [0, 1], got {max_cloud_share}")
    models = load_models(out)
    _, test_ds = load_data(models.config)
    _report(models, test_ds, out, max_cloud_share)


def _report(models: MeanetModels, test_ds: ArrayDataset, out: Path, max_cloud_share: float) -> None:
    from deepedge.meanet.pipeline import TEST_FILE
    from deepedge.meanet.pipeline import evaluate as run_evaluation
    from deepedge.meanet.plots import sweep_png

    evaluation = run_evaluation(models, test_ds, max_cloud_share=max_cloud_share)
    table = Table(title=f"{len(test_ds)} test images")
    for col in ("configuration", "accuracy", "edge MMACs/input", "to cloud", "energy mJ/input"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for name, row in evaluation.rows.items():
        table.add_row(
            name,
            f"{row['accuracy']:.2%}",
            f"{row['edge_macs'] / 1e6:.2f}",
            f"{row['cloud_share']:.1%}",
            f"{row['energy_j'] * 1e3:.3f}",
        )
    console.print(table)
    test_ds.save(out / TEST_FILE)  # what `deepedge serve` sends a MEANet edge checkpoint
    knee = evaluation.rows.get("MEANet at the knee")
    if knee is not None:
        console.print(
            f"the knee's exits: --main-threshold {knee['main_threshold']:g} "
            f"--cloud-threshold {knee['cloud_threshold']:g} (for deepedge serve "
            f"CLUSTER {out / 'meanet-edge.ckpt'} --cloud-device DEVICE)"
        )
    (out / "meanet.json").write_text(json.dumps(evaluation.as_dict(), indent=1))
    console.print(f"sweep: {sweep_png(evaluation, out / 'meanet.png')}, {out / 'meanet.json'}")
