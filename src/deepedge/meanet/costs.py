"""What an input costs at each exit: multiply-accumulates counted by torch's flop counter,
bytes over the link, and energy from per-MAC and per-byte coefficients with their sources.

MACs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one input
(convolutions and matrix products; a MAC is two FLOPs), per block, so an input's edge
cost is the main block's MACs, plus the adaptive and extension blocks' when it does not
exit at the main block. An input sent to the cloud costs its image over the link (uint8,
as captured) and the cloud model's MACs, which are not the edge's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deepedge.meanet.exits import Routing
from deepedge.models.meanet import MEANet

__all__ = ["DEFAULT_ENERGY", "BlockMacs", "EnergyModel", "block_macs", "count_macs", "exit_costs"]


@dataclass(frozen=True)
class EnergyModel:
    """Joules per MAC computed on the edge and per byte sent over its radio."""

    pj_per_mac: float
    uj_per_byte: float
    source: str

    def joules(self, macs: float, sent_bytes: float) -> float:
        return macs * self.pj_per_mac * 1e-12 + sent_bytes * self.uj_per_byte * 1e-6


DEFAULT_ENERGY = EnergyModel(
    pj_per_mac=50.0,
    uj_per_byte=5.2,
    source=(
        "per MAC: 20 GMAC/W, the middle of the 10-30 GMAC/W band that general-purpose "
        "processors reach (Sun et al., 'Assessing Trends in Performance per Watt for Signal "
        "Processing Applications', IEEE TVLSI 2016); per byte: 6.45e-7 J/bit for IEEE "
        "802.11b/g at 2-5 Mbit/s (Aalborg University, 'Energy measurements on mobile "
        "phones: data download for different technologies', mobiledevices.kom.aau.dk)"
    ),
)


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of one forward pass of ``module`` on ``inputs`` (half the counted FLOPs)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class BlockMacs:
    """MACs per input of each block and of the cloud model."""

    main: int
    adaptive: int
    extension: int
    cloud: int


def block_macs(model: MEANet, cloud: nn.Module | None, input_shape: Sequence[int]) -> BlockMacs:
    x = torch.zeros((1, *input_shape))
    with torch.no_grad():
        model.eval()
        features = model.main_features(x)
        joined = torch.cat([features, model.adaptive(x)], dim=1)
    return BlockMacs(
        main=count_macs(model.main, x),
        adaptive=count_macs(model.adaptive, x),
        extension=count_macs(model.extension, joined),
        cloud=count_macs(cloud, x) if cloud is not None else 0,
    )


def exit_costs(
    routing: Routing,
    macs: BlockMacs,
    input_bytes: int,
    energy: EnergyModel = DEFAULT_ENERGY,
) -> dict[str, float]:
    """Mean edge MACs, bytes sent and edge energy per input of ``routing``."""
    exit_ = routing.exit
    n = max(int(exit_.numel()), 1)
    past_main = int((exit_ >= 1).sum())
    sent = int((exit_ == 2).sum())
    edge_macs = (n * macs.main + past_main * (macs.adaptive + macs.extension)) / n
    sent_bytes = sent * input_bytes / n
    return {
        "edge_macs": edge_macs,
        "sent_bytes": sent_bytes,
        "cloud_share": sent / n,
        "energy_j": energy.joules(edge_macs, sent_bytes),
    }
