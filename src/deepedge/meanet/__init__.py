"""MEANet at the edge: block-wise training, exits at the main block, the extension block
or the cloud, and what each exit costs (MACs, bytes, energy).

Exported lazily (:mod:`deepedge.lazy`): the CLI registers ``deepedge meanet`` from
:mod:`deepedge.meanet.cli` without importing torch.
"""

from typing import TYPE_CHECKING

from deepedge.lazy import lazy_exports

if TYPE_CHECKING:
    from deepedge.meanet.costs import (
        DEFAULT_ENERGY,
        BlockMacs,
        EnergyModel,
        block_macs,
        count_macs,
        exit_costs,
    )
    from deepedge.meanet.exits import (
        EXITS,
        ExitOutputs,
        ExitRule,
        Routing,
        edge_distribution,
        exit_outputs,
        route,
    )
    from deepedge.meanet.pipeline import (
        Evaluation,
        MeanetConfig,
        MeanetModels,
        evaluate,
        load_data,
        load_models,
        train_models,
    )
    from deepedge.meanet.sweep import SweepPoint, knee, pareto_front, sweep
    from deepedge.meanet.training import (
        BlockTraining,
        class_accuracy,
        extension_loss,
        extension_output_loss,
        extension_targets,
        per_class_accuracy,
        select_hard_classes,
        train_blocks,
        train_classifier,
        train_extension,
    )
    from deepedge.models.meanet import MEANet, cloud_model

_LAZY = {
    **dict.fromkeys(
        ("DEFAULT_ENERGY", "BlockMacs", "EnergyModel", "block_macs", "count_macs", "exit_costs"),
        "deepedge.meanet.costs",
    ),
    **dict.fromkeys(
        (
            "EXITS",
            "ExitOutputs",
            "ExitRule",
            "Routing",
            "edge_distribution",
            "exit_outputs",
            "route",
        ),
        "deepedge.meanet.exits",
    ),
    **dict.fromkeys(
        (
            "Evaluation",
            "MeanetConfig",
            "MeanetModels",
            "evaluate",
            "load_data",
            "load_models",
            "train_models",
        ),
        "deepedge.meanet.pipeline",
    ),
    **dict.fromkeys(("SweepPoint", "knee", "pareto_front", "sweep"), "deepedge.meanet.sweep"),
    **dict.fromkeys(
        (
            "BlockTraining",
            "class_accuracy",
            "extension_loss",
            "extension_output_loss",
            "extension_targets",
            "per_class_accuracy",
            "select_hard_classes",
            "train_blocks",
            "train_classifier",
            "train_extension",
        ),
        "deepedge.meanet.training",
    ),
    **dict.fromkeys(("MEANet", "cloud_model"), "deepedge.models.meanet"),
}
__all__ = [
    "DEFAULT_ENERGY",
    "EXITS",
    "BlockMacs",
    "BlockTraining",
    "EnergyModel",
    "Evaluation",
    "ExitOutputs",
    "ExitRule",
    "MEANet",
    "MeanetConfig",
    "MeanetModels",
    "Routing",
    "SweepPoint",
    "block_macs",
    "class_accuracy",
    "cloud_model",
    "count_macs",
    "edge_distribution",
    "evaluate",
    "exit_costs",
    "exit_outputs",
    "extension_loss",
    "extension_output_loss",
    "extension_targets",
    "knee",
    "load_data",
    "load_models",
    "pareto_front",
    "per_class_accuracy",
    "route",
    "select_hard_classes",
    "sweep",
    "train_blocks",
    "train_classifier",
    "train_extension",
    "train_models",
]
__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
